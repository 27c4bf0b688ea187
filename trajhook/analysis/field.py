"""Essential dynamics of a maze policy: the PCA trajectory of its recorded vector fields.

One vector per record (the field ``vectors`` ``(n_cells, 2)`` flattened, or the direction
probabilities), PCA over the records, and candidate stage boundaries at the sharpest turns of
the smoothed trajectory: the analysis the "essential dynamics" work runs on checkpoints,
here on the fields the :class:`~trajhook.MazeProbe` recorded during training. Pure numpy, on
arrays from ``trajhook.load``; :func:`field_trajectory` is what every view calls (``trajhook
pca``, the report, the live page), and :func:`field_trajectory_from_log` picks the arrays out
of a loaded log.

Why the field, and not the direction probabilities, by default: the field is the picture, so a
turn of its trajectory is a change one sees in the arrows. The direction probabilities also
carry the "no-op" share (7 of procgen's 15 actions do nothing in the maze) and the sums
``P_left + P_right``, ``P_up + P_down``, which move early in training without changing any arrow.
Pass ``output="direction_probs"`` for those.

>>> steps = np.arange(40) * 100
>>> t = np.minimum(np.arange(40), 20)[:, None, None] * np.array([1.0, 0.0])  # right for 20 records ...
>>> u = np.maximum(np.arange(40) - 20, 0)[:, None, None] * np.array([0.0, 1.0])  # ... then up
>>> fields = 0.02 * (t + u) * np.ones((1, 6, 1))  # six cells, all turning
>>> trajectory = field_trajectory(steps, fields)
>>> trajectory.coords.shape, trajectory.turn_steps.tolist(), trajectory.index_of(2_049)
((40, 2), [2000], 20)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trajhook.analysis.trajectory import TrajectoryPCA, trajectory_pca, turning_points
from trajhook.errors import TrajhookError

FIELD_OUTPUTS = ("vectors", "direction_probs", "action_probs")


@dataclass(frozen=True)
class FieldTrajectory:
    """The PCA trajectory of a run's fields.

    ``steps`` ``(n,)``; ``coords`` ``(n, n_components)`` (PC1, PC2, ...); ``explained_variance_ratio``
    per component; ``turns``: record indices of the sharpest turns, sharpest first
    (:func:`~trajhook.analysis.trajectory.turning_points`); ``pca``: the fit (its ``transform``
    projects other fields of the same level, e.g. a live record, into the same basis).
    """

    steps: np.ndarray
    coords: np.ndarray
    explained_variance_ratio: np.ndarray
    turns: np.ndarray
    pca: TrajectoryPCA

    @property
    def turn_steps(self) -> np.ndarray:
        """The steps of :attr:`turns`."""
        return self.steps[self.turns]

    def index_of(self, step: int) -> int:
        """The record nearest ``step`` (the point to mark for the current step)."""
        return int(np.argmin(np.abs(self.steps - int(step))))


def field_trajectory(
    steps: Any,
    fields: Any,
    *,
    n_components: int = 2,
    n_turns: int = 1,
    smoothing: float = 1.0,
    lag: int | None = None,
) -> FieldTrajectory:
    """The PCA trajectory of fields ``(n_records, n_cells, ...)`` recorded at ``steps`` ``(n_records,)``.

    Each record is flattened, the records are centred and decomposed by SVD
    (:func:`~trajhook.analysis.trajectory.trajectory_pca`), and the ``n_turns`` sharpest turns of
    the trajectory, smoothed by ``smoothing`` records, with chords of ``lag`` records (default
    a tenth of the run), are found as offline everywhere else in trajhook.
    """
    steps = np.asarray(steps)
    fields = np.asarray(fields)
    if steps.ndim != 1 or fields.ndim < 2 or len(steps) != len(fields) or len(steps) == 0:
        raise TrajhookError(
            f"field_trajectory: steps {steps.shape} and fields {fields.shape} do not match. "
            "HINT: pass log.steps and log['maze']['vectors'] (n_records, n_cells, 2) of the same log."
        )
    pca = trajectory_pca(fields, n_components=n_components)
    coords = np.asarray(pca.coords)
    turns = (
        turning_points(coords, n=n_turns, smoothing=smoothing, lag=lag)
        if len(coords) >= 3 and n_turns > 0
        else np.zeros(0, np.int64)
    )
    return FieldTrajectory(steps, coords, pca.explained_variance_ratio, turns, pca)


def maze_probe_name(log: Any, probe: str | None = None) -> str:
    """``probe`` if the log has it, else the log's first maze probe (by its stored kind)."""
    if probe is not None:
        if probe not in log:
            raise TrajhookError(
                f"{str(getattr(log, 'path', 'the log'))!r} has no probe {probe!r}; it has {sorted(log)}. "
                "HINT: pass the MazeProbe's name."
            )
        return probe
    mazes = [name for name in log if getattr(log[name], "kind", None) == "maze"]
    if not mazes:
        raise TrajhookError(
            f"{str(getattr(log, 'path', 'the log'))!r} has no maze probe (probes: {sorted(log)}). "
            "HINT: record a MazeProbe, or pass probe=<its name>."
        )
    return mazes[0]


def field_trajectory_from_log(
    log: Any, probe: str | None = None, output: str = "vectors", **options: Any
) -> FieldTrajectory:
    """:func:`field_trajectory` of a loaded log's maze probe (default: its first) and ``output``."""
    name = maze_probe_name(log, probe)
    if output not in log[name]:
        raise TrajhookError(
            f"probe {name!r} has no output {output!r}; it has {sorted(log[name])}. HINT: use one of {FIELD_OUTPUTS}."
        )
    return field_trajectory(log.steps, log[name][output], **options)
