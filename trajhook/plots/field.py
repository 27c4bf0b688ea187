"""The essential dynamics of a maze field: its PCA trajectory, the current step's point marked.

:func:`draw_field_trajectory` draws a :class:`~trajhook.analysis.field.FieldTrajectory` on an
axes; :func:`field_trajectory_figure` does it for arrays; :func:`field_dynamics` puts the
vector field at one step beside the trajectory with that step's point marked (what ``trajhook
pca`` writes for one maze store). Figures are made without pyplot, like every trajhook figure.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from trajhook.analysis.field import FieldTrajectory, field_trajectory, field_trajectory_from_log, maze_probe_name
from trajhook.plots.figures import inward_label, new_figure
from trajhook.plots.maze import vector_field
from trajhook.plots.prompts import _events

CURRENT_COLOR = "#d62728"


def _short(label: str) -> str:
    """An event label short enough to annotate a point.

    >>> _short("candidate stage boundary (PCA turn; confirmed at step 440)")
    'live PCA turn'
    >>> _short("LR drop")
    'LR drop'
    """
    if label.startswith("candidate stage boundary ("):
        return "live " + label.removeprefix("candidate stage boundary (").split(";")[0].rstrip(")")
    return label if len(label) <= 30 else label[:29] + "…"


def draw_field_trajectory(
    ax: Axes, trajectory: FieldTrajectory, step: int | None = None, events: Iterable[Any] = (), colorbar: bool = True
) -> None:
    """PC1 against PC2, points coloured by step, turns circled, events crossed, ``step``'s point marked."""
    coords = trajectory.coords if trajectory.coords.shape[1] >= 2 else np.pad(trajectory.coords, ((0, 0), (0, 1)))
    steps = trajectory.steps
    ax.plot(coords[:, 0], coords[:, 1], color="0.75", lw=0.8, zorder=1)
    points = ax.scatter(coords[:, 0], coords[:, 1], c=steps, cmap="viridis", s=12, zorder=2)
    if colorbar:
        ax.figure.colorbar(points, ax=ax, label="step")
    for index in trajectory.turns:
        ax.scatter(*coords[index, :2], s=160, facecolors="none", edgecolors="C3", lw=1.5, zorder=3)
        ax.annotate(f"turn @ {steps[index]}", coords[index, :2], color="C3", fontsize=8,
                    **inward_label(coords, index, 8, -12))  # fmt: skip
    for event_step, label in _events(events):
        index = trajectory.index_of(event_step)
        ax.scatter(*coords[index, :2], marker="x", s=60, color="k", zorder=3)
        ax.annotate(f"{_short(label)} ({event_step})", coords[index, :2], fontsize=8,
                    **inward_label(coords, index, 6, 6))  # fmt: skip
    if step is not None:
        index = trajectory.index_of(step)
        ax.scatter(*coords[index, :2], marker="o", s=110, color=CURRENT_COLOR, edgecolors="k", zorder=4,
                   label=f"step {steps[index]}")  # fmt: skip
        ax.legend(loc="best", fontsize=8)
    ratio = trajectory.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})" if len(ratio) > 1 else "PC2")
    ax.set_title("Field PCA trajectory (essential dynamics)")


def field_trajectory_figure(
    steps: Any, fields: Any, step: int | None = None, events: Iterable[Any] = (), ax: Axes | None = None
) -> Figure:
    """The PCA trajectory of fields ``(n_records, n_cells, 2)`` with ``step``'s point marked (default: the last).

    >>> t = np.arange(30.0)
    >>> fields = np.stack([np.minimum(t, 15), np.maximum(t - 15, 0)], 1)[:, None, :] * np.ones((1, 4, 1)) / 30
    >>> fig = field_trajectory_figure(np.arange(30) * 10, fields, step=150)
    >>> fig.axes[0].get_legend().get_texts()[0].get_text(), fig.axes[0].get_xlabel()
    ('step 150', 'PC1 (80%)')
    """
    trajectory = field_trajectory(steps, fields)
    fig = ax.figure if ax is not None else new_figure((5.5, 4.5))
    ax = ax if ax is not None else fig.add_subplot()
    draw_field_trajectory(ax, trajectory, trajectory.steps[-1] if step is None else step, events)
    return fig


def field_dynamics(
    log: Any,
    step: int | None = None,
    probe: str | None = None,
    output: str = "vectors",
    n_turns: int = 1,
    trajectory: FieldTrajectory | None = None,
) -> Figure:
    """The vector field at ``step`` (default: the last record) beside the field's PCA trajectory.

    ``log`` is a loaded store (``trajhook.load``) with a maze probe (default: its first); the
    log's events are crossed on the trajectory, and ``step``'s point is marked on it. Pass the
    probe's ``trajectory`` (``field_trajectory_from_log``) when drawing many steps, to fit it once.
    """
    name = maze_probe_name(log, probe)
    if trajectory is None:
        trajectory = field_trajectory_from_log(log, name, output, n_turns=n_turns)
    index = len(trajectory.steps) - 1 if step is None else trajectory.index_of(step)
    meta = log[name].metadata
    fig = new_figure((12, 5))
    ax_field, ax_pca = fig.subplots(1, 2)
    title = f"{name} (seed {meta.get('seed', '?')}), step {trajectory.steps[index]}"
    vector_field(
        meta["grid"], meta["cells"], np.asarray(log[name]["vectors"][index]), cheese=meta.get("cheese"),
        start=meta.get("start"), ax=ax_field, title=title,
    )  # fmt: skip
    draw_field_trajectory(ax_pca, trajectory, int(trajectory.steps[index]), log.events)
    if output != "vectors":
        ax_pca.set_title(f"PCA trajectory of {output}")
    fig.tight_layout()
    return fig
