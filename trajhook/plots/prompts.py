"""Plots for the PromptProbe: target log-prob and logit curves, and the PCA trajectory.

Each function takes either a loaded log (anything with ``.steps``, ``[probe][output]``,
``[probe].metadata``, ``.scalars`` and ``.events``, as :func:`trajhook.load` returns) or
plain arrays, draws with matplotlib and returns the Figure. Figures are made without pyplot
(no global state, no backend switch, nothing to close), so a sink can call these at every
record; ``wandb.Image(fig)`` and ``fig.savefig`` work, and Jupyter displays them.
Events are ``(step, label)`` pairs or objects with ``.step`` and ``.label``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from trajhook.analysis.trajectory import trajectory_pca, turning_points
from trajhook.plots.figures import inward_label, new_figure


def _events(events: Iterable[Any]) -> list[tuple[int, str]]:
    """Normalise events to ``(step, label)`` pairs.

    >>> from types import SimpleNamespace
    >>> _events([(5, "a"), SimpleNamespace(step=9, label="b")])
    [(5, 'a'), (9, 'b')]
    """
    result = []
    for event in events or ():
        if hasattr(event, "step"):
            result.append((int(event.step), str(event.label)))
        else:
            step, label = event
            result.append((int(step), str(label)))
    return result


def _draw_events(ax: Any, events: list[tuple[int, str]], label: bool = True) -> None:
    for step, text in events:
        ax.axvline(step, color="0.3", ls="--", lw=1)
        if label:
            ax.annotate(
                text, (step, 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3), textcoords="offset points",
                va="top", fontsize=8, color="0.3",
            )  # fmt: skip


def _is_log(obj: Any) -> bool:
    return hasattr(obj, "steps") and hasattr(obj, "scalars")


def pca_trajectory(
    steps: Any,
    data: np.ndarray | None = None,
    events: Iterable[Any] = (),
    ax: Any = None,
    *,
    probe: str = "prompts",
    output: str = "token_loss",
    n_turning_points: int = 1,
    smoothing: float = 1.0,
) -> Figure:
    """PC1 against PC2 of the records ``data`` ``(n_records, ...)``, coloured by step.

    Events are marked at the record nearest their step, and the ``n_turning_points``
    sharpest turns (:func:`~trajhook.analysis.trajectory.turning_points`) are circled. Pass a
    loaded log instead of ``steps`` (and no ``data``) to plot ``log[probe][output]`` with the
    log's events.

    >>> t = np.linspace(0, 1, 30)
    >>> data = np.stack([t, np.where(t > 0.5, t - 0.5, 0.0), 0 * t], 1)
    >>> fig = pca_trajectory(np.arange(30) * 10, data, events=[(150, "switch")])
    >>> fig.axes[0].get_xlabel()[:3]
    'PC1'
    >>> fig.canvas.draw(); fig.canvas.buffer_rgba().shape  # what wandb.Image reads
    (450, 550, 4)
    """
    if data is None:
        if not _is_log(steps):
            raise TypeError("pca_trajectory: pass (steps, data) arrays or a loaded log")
        log = steps
        steps, data = log.steps, log[probe][output]
        events = list(events) or log.events
    steps = np.asarray(steps)
    events = _events(events)
    pca = trajectory_pca(np.asarray(data), n_components=2)
    coords = pca.coords if pca.coords.shape[1] == 2 else np.pad(pca.coords, ((0, 0), (0, 1)))
    fig = ax.figure if ax is not None else new_figure((5.5, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    ax.plot(coords[:, 0], coords[:, 1], color="0.75", lw=0.8, zorder=1)
    points = ax.scatter(coords[:, 0], coords[:, 1], c=steps, cmap="viridis", s=12, zorder=2)
    fig.colorbar(points, ax=ax, label="step")
    if len(coords) >= 3 and n_turning_points > 0:
        for index in turning_points(coords, n=n_turning_points, smoothing=smoothing):
            ax.scatter(*coords[index], s=160, facecolors="none", edgecolors="C3", lw=1.5, zorder=3)
            ax.annotate(f"turn @ {steps[index]}", coords[index], color="C3", **inward_label(coords, index, 10, -14))
    for step, label in events:
        index = int(np.argmin(np.abs(steps - step)))
        ax.scatter(*coords[index], marker="x", s=70, color="k", zorder=3)
        ax.annotate(f"{label} ({step})", coords[index], fontsize=8, **inward_label(coords, index, 8, 6))
    ratio = pca.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax.set_title("PCA trajectory")
    return fig


def _target_labels(metadata: dict[str, Any]) -> list[list[str]]:
    return [
        [f"{name}: {text!r}" for text in texts]
        for name, texts in zip(metadata["prompt_names"], metadata["target_texts"], strict=True)
    ]


def target_curves(
    steps: Any,
    target_logprob: np.ndarray | None = None,
    target_first_logit: np.ndarray | None = None,
    *,
    labels: Sequence[Sequence[str]] | None = None,
    loss: tuple[np.ndarray, np.ndarray] | None = None,
    events: Iterable[Any] = (),
    select: Sequence[str] | None = None,
    probe: str = "prompts",
) -> Figure:
    """Log-prob and first-token logit of target continuations over steps, beside the loss.

    ``target_logprob`` and ``target_first_logit`` are ``(n_records, n_prompts,
    max_targets)`` (NaN where a prompt has fewer targets); ``labels[p][k]`` names target
    ``k`` of prompt ``p``; ``loss`` is ``(steps, values)`` of the training loss; ``select``
    keeps only the targets whose label contains one of its strings. Pass a loaded log
    instead of ``steps`` to take all of these from it.

    >>> lp = np.log(np.array([[[0.1, np.nan]], [[0.5, np.nan]], [[0.9, np.nan]]]))
    >>> fig = target_curves([0, 10, 20], lp, 3 * lp, labels=[["capital: ' Paris'"]],
    ...                     loss=([0, 10, 20], [3.0, 2.0, 1.0]), events=[(10, "fine-tuning starts")])
    >>> [ax.get_title() for ax in fig.axes]
    ['Training loss', 'Target log-probability', "Target's first-token logit"]
    """
    if target_logprob is None:
        if not _is_log(steps):
            raise TypeError("target_curves: pass (steps, target_logprob, ...) arrays or a loaded log")
        log = steps
        steps = log.steps
        if "target_logprob" not in log[probe]:
            raise ValueError(f"probe {probe!r} recorded no targets: give the PromptProbe targets=...")
        target_logprob = log[probe]["target_logprob"]
        target_first_logit = log[probe]["target_first_logit"]
        labels = labels or _target_labels(log[probe].metadata)
        if loss is None and "loss" in log.scalars:
            loss = (log.scalars["loss"].steps, log.scalars["loss"].values)
        events = list(events) or log.events
    steps = np.asarray(steps)
    events = _events(events)
    logprob = np.asarray(target_logprob, dtype=float)
    logprob = logprob.reshape(len(logprob), -1) if logprob.ndim > 1 else logprob[:, None]
    n_slots = logprob.shape[1]
    flat_labels = [label for row in labels for label in row] if labels is not None else []
    if labels is not None and logprob.ndim == 2 and np.asarray(target_logprob).ndim == 3:
        # labels are ragged per prompt; lay them out on the (n_prompts, max_targets) grid.
        width = np.asarray(target_logprob).shape[2]
        grid = [""] * n_slots
        for p, row in enumerate(labels):
            for k, label in enumerate(row):
                grid[p * width + k] = label
        flat_labels = grid
    flat_labels = flat_labels or [f"target {i}" for i in range(n_slots)]
    keep = [
        i
        for i in range(n_slots)
        if np.isfinite(logprob[:, i]).any() and (select is None or any(s in flat_labels[i] for s in select))
    ]
    panels = [("Target log-probability", logprob, "log p(target | prompt)")]
    if target_first_logit is not None:
        logit = np.asarray(target_first_logit, dtype=float).reshape(len(logprob), -1)
        panels.append(("Target's first-token logit", logit, "logit"))
    n_axes = len(panels) + (loss is not None)
    fig = new_figure((5 * n_axes, 4))
    axes = list(fig.subplots(1, n_axes, squeeze=False)[0])
    if loss is not None:
        ax = axes.pop(0)
        ax.plot(np.asarray(loss[0]), np.asarray(loss[1]), lw=0.8, color="0.4")
        ax.set(title="Training loss", xlabel="step", ylabel="loss")
        _draw_events(ax, events)
    for ax, (title, values, ylabel) in zip(axes, panels, strict=True):
        for i in keep:
            ax.plot(steps, values[:, i], label=flat_labels[i], lw=1.2)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        _draw_events(ax, events)
    if keep:
        axes[-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def prompt_record(log: Any, step: int | None = None, probe: str = "prompts") -> Figure:
    """One record of a PromptProbe: each prompt's per-token loss over positions, and each target's
    log-probability, at ``step`` (``None``: the last record).

    ``log`` is a loaded log (see :func:`trajhook.load`); the step must be a recorded one.
    """
    from trajhook.plots.maze import _record_index

    steps = np.asarray(log.steps)
    index = _record_index(steps, step, who="prompt_record")
    record = log[probe]
    meta = record.metadata
    names = list(meta.get("prompt_names", []))
    has_targets = "target_logprob" in record
    fig = new_figure((11 if has_targets else 6, 4))
    axes = list(fig.subplots(1, 2 if has_targets else 1, squeeze=False)[0])
    ax = axes[0]
    if "token_loss" in record:
        loss = np.asarray(record["token_loss"][index], dtype=float)
        for i, row in enumerate(loss):
            ax.plot(np.arange(1, len(row) + 1), row, lw=1.2, label=names[i] if i < len(names) else f"prompt {i}")
        ax.set(title=f"{probe}: per-token loss at step {int(steps[index]):,}", xlabel="token position", ylabel="loss")
        ax.legend(fontsize=8)
    if has_targets:
        ax = axes[-1]
        labels = [label for row in _target_labels(meta) for label in row]
        values = [
            float(record["target_logprob"][index][i, j])
            for i, texts in enumerate(meta["target_texts"])
            for j in range(len(texts))
        ]
        ax.barh(np.arange(len(values)), values, color="C0")
        ax.set_yticks(np.arange(len(values)), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set(title=f"target log-probability at step {int(steps[index]):,}", xlabel="log p(target | prompt)")
    fig.tight_layout()
    return fig


def pca_trajectories(
    runs: Sequence[tuple[str, np.ndarray, np.ndarray, Iterable[Any]]],
    n_turning_points: int = 1,
    smoothing: float = 1.0,
) -> Figure:
    """Several runs' trajectories in ONE PCA basis, fitted jointly (Olsson et al.).

    ``runs`` holds ``(name, steps, data, events)`` per run, ``data`` ``(n_records, ...)`` with
    the same record shape in every run. Each run is a line; events are crosses, the sharpest
    turns circles.

    >>> t = np.linspace(0, 1, 20)
    >>> a = np.stack([t, t**2, 0 * t], 1)
    >>> fig = pca_trajectories([("a", np.arange(20), a, []), ("b", np.arange(20), a[::-1] + 0.1, [(5, "x")])])
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['a', 'b']
    """
    pca = trajectory_pca([np.asarray(data) for _, _, data, _ in runs], n_components=2)
    fig = new_figure((6.5, 5))
    ax = fig.add_subplot()
    for k, ((name, steps, _, events), coords) in enumerate(zip(runs, pca.coords, strict=True)):
        coords = coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 1)))
        steps = np.asarray(steps)
        colour = f"C{k % 10}"
        ax.plot(coords[:, 0], coords[:, 1], color=colour, lw=1, marker=".", ms=4, label=name)
        ax.scatter(*coords[0], marker="o", s=30, color=colour, edgecolors="k", zorder=3)
        if len(coords) >= 5 and n_turning_points > 0:
            for index in turning_points(coords, n=n_turning_points, smoothing=smoothing):
                ax.scatter(*coords[index], s=160, facecolors="none", edgecolors="C3", lw=1.5, zorder=3)
                ax.annotate(f"turn @ {steps[index]}", coords[index], color="C3", fontsize=8,
                            **inward_label(coords, index, 8, -12))  # fmt: skip
        for step, label in _events(events):
            index = int(np.argmin(np.abs(steps - step)))
            ax.scatter(*coords[index], marker="x", s=70, color="k", zorder=3)
            ax.annotate(f"{label} ({step})", coords[index], fontsize=8, **inward_label(coords, index, 6, 6))
    ratio = pca.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax.set_title("PCA trajectory, one basis for all runs (dot: first record)")
    ax.legend(fontsize=8)
    return fig
