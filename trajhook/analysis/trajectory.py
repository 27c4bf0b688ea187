"""Trajectories of recorded outputs across training: joint PCA, ICL score, turning points.

Pure numpy, made for arrays read from a loaded log, e.g. ``log["prompts"]["token_loss"]``
with shape ``(n_records, n_prompts, n_positions)``. Following Olsson et al. (2022) and the
"essential dynamics" of timaeus: one vector per record, PCA over the records (fitted jointly
on several runs so they share one basis), and stage boundaries at sharp turns of the smoothed
trajectory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from trajhook.errors import TrajhookError


@dataclass(frozen=True)
class TrajectoryPCA:
    """A PCA fitted on the records of one or several runs.

    ``coords`` has one ``(n_records, n_components)`` array per run (a single array when a
    single array was passed); ``components`` is ``(n_components, n_kept_columns)``;
    ``kept_columns`` is the boolean mask over the flattened record of the columns used
    (those finite in every record of every run).
    """

    coords: np.ndarray | list[np.ndarray]
    explained_variance_ratio: np.ndarray
    components: np.ndarray
    mean: np.ndarray
    kept_columns: np.ndarray

    def transform(self, data: np.ndarray) -> np.ndarray:
        """Project records ``(n, ...)`` onto the fitted components."""
        flat = np.asarray(data, dtype=np.float64).reshape(len(data), -1)[:, self.kept_columns]
        return (flat - self.mean) @ self.components.T


def _flatten(array: np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim < 1 or len(array) == 0:
        raise TrajhookError(
            f"trajectory_pca: {what} has shape {array.shape}, no records. "
            "HINT: pass an array of shape (n_records, ...), e.g. log['prompts']['token_loss']."
        )
    return array.reshape(len(array), -1)


def trajectory_pca(data: np.ndarray | Sequence[np.ndarray], n_components: int = 2) -> TrajectoryPCA:
    """Centre, SVD, and project: the PCA of records ``(n_records, ...)`` across training.

    ``data`` is one array or a list of arrays (one per run, same record shape; fitted
    jointly). Columns that are NaN or infinite in any record are dropped (positions past a
    prompt's end, say). ``n_components`` is clipped to what the data can give.

    >>> t = np.arange(5.0)
    >>> line = np.stack([t, 2 * t, np.full(5, np.nan)], axis=1)  # a straight line + a NaN column
    >>> pca = trajectory_pca(line, n_components=2)
    >>> pca.explained_variance_ratio.round(6).tolist(), pca.kept_columns.tolist()
    ([1.0, 0.0], [True, True, False])
    >>> np.abs(pca.coords[:, 0]).round(3).tolist()
    [4.472, 2.236, 0.0, 2.236, 4.472]
    >>> joint = trajectory_pca([line[:3], line[3:]], n_components=1)
    >>> [c.shape for c in joint.coords]
    [(3, 1), (2, 1)]
    """
    single = not isinstance(data, list | tuple)
    runs = [_flatten(data, "data")] if single else [_flatten(d, f"run {i}") for i, d in enumerate(data)]
    if len({r.shape[1] for r in runs}) != 1:
        raise TrajhookError(
            f"trajectory_pca: runs have different record sizes {[r.shape[1] for r in runs]}. "
            "HINT: fit jointly only runs recorded with the same probe (same prompts and positions)."
        )
    stacked = np.concatenate(runs)
    kept = np.isfinite(stacked).all(axis=0)
    if not kept.any():
        raise TrajhookError(
            f"trajectory_pca: every one of the {stacked.shape[1]} columns is NaN in some record. "
            "HINT: select a part of the record that is always finite, e.g. token_loss[:, :, :40]."
        )
    x = stacked[:, kept]
    mean = x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
    variance = singular**2
    total = variance.sum()
    k = max(1, min(int(n_components), len(singular)))
    ratio = variance[:k] / total if total > 0 else np.zeros(k)
    components = vt[:k]
    coords_all = (x - mean) @ components.T
    splits = np.cumsum([len(r) for r in runs])[:-1]
    coords: np.ndarray | list[np.ndarray] = coords_all if single else np.split(coords_all, splits)
    return TrajectoryPCA(coords, ratio, components, mean, kept)


def icl_score(token_loss: np.ndarray, late: int = 500, early: int = 50) -> np.ndarray | float:
    """In-context-learning score: loss at token ``late`` minus loss at token ``early``.

    ``token_loss`` is ``(..., n_prompts, n_positions)`` (e.g. a log's ``(n_records,
    n_prompts, n_positions)``); each position index is clipped, per prompt, to that prompt's
    last finite position, and the difference is averaged over prompts (Olsson et al. use
    tokens 500 and 50). A negative score means later tokens are easier: in-context learning.

    >>> loss = np.array([[4.0, 4.0, 4.0, 1.0, 0.5, np.nan],
    ...                  [4.0, 3.0, 3.0, 1.0, 1.0, 1.5]])
    >>> float(icl_score(loss, late=500, early=1))  # late clipped to 4 and 5: mean of -3.5 and -1.5
    -2.5
    >>> icl_score(np.stack([loss, loss + 1]), late=3, early=0).tolist()
    [-3.0, -3.0]
    """
    loss = np.asarray(token_loss, dtype=np.float64)
    if loss.ndim < 2 or loss.shape[-1] == 0:
        raise TrajhookError(
            f"icl_score: token_loss has shape {loss.shape}. "
            "HINT: pass (..., n_prompts, n_positions), e.g. log['prompts']['token_loss']."
        )
    finite = np.isfinite(loss)
    positions = np.arange(loss.shape[-1])
    last_finite = np.where(finite, positions, -1).max(axis=-1, keepdims=True)
    last_finite = np.maximum(last_finite, 0)
    late_idx = np.minimum(int(late), last_finite)
    early_idx = np.minimum(int(early), last_finite)
    difference = np.take_along_axis(loss, late_idx, -1)[..., 0] - np.take_along_axis(loss, early_idx, -1)[..., 0]
    with np.errstate(invalid="ignore"):
        score = np.nanmean(difference, axis=-1) if np.isfinite(difference).any() else difference.mean(axis=-1)
    return float(score) if np.ndim(score) == 0 else score


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along the first axis (edges repeat the end values).

    >>> smooth(np.array([0.0, 0.0, 3.0, 0.0, 0.0]), sigma=1.0).round(2).tolist()
    [0.16, 0.73, 1.2, 0.73, 0.16]
    """
    values = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(values) < 2:
        return values.copy()
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([np.repeat(values[:1], radius, 0), values, np.repeat(values[-1:], radius, 0)])
    flat = padded.reshape(len(padded), -1)
    out = np.stack([np.convolve(flat[:, j], kernel, mode="valid") for j in range(flat.shape[1])], axis=1)
    return out.reshape(values.shape)


def _turns(coords: np.ndarray, smoothing: float, lag: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per record: the turning angle in degrees and the straightness of its two legs (NaN at the ends)."""
    points = np.asarray(coords, dtype=np.float64)
    points = points.reshape(len(points), -1)
    n = len(points)
    angles, straightness = np.full(n, np.nan), np.full(n, np.nan)
    if n < 3:
        return angles, straightness
    path = smooth(points, smoothing)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    if arc[-1] <= 0:
        return angles, straightness
    grid = np.linspace(0.0, arc[-1], n)
    resampled = np.stack([np.interp(grid, arc, path[:, j]) for j in range(path.shape[1])], axis=1)
    k = max(1, n // 10) if lag is None else max(1, int(lag))
    if 2 * k >= n:
        k = max(1, (n - 1) // 2)
    before = resampled[k : n - k] - resampled[: n - 2 * k]
    after = resampled[2 * k :] - resampled[k : n - k]
    norm_before, norm_after = np.linalg.norm(before, axis=1), np.linalg.norm(after, axis=1)
    cos = (before * after).sum(1) / np.maximum(norm_before * norm_after, 1e-300)
    leg_angles = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    # A leg is straight when its chord is as long as the path it spans; jitter makes it short.
    leg_straightness = np.minimum(norm_before, norm_after) / (k * (grid[1] - grid[0]))
    # Each resampled point lies at arc length grid[j]; it belongs to the record nearest in arc length.
    for j, angle, straight in zip(range(k, n - k), leg_angles, leg_straightness, strict=True):
        record = int(np.argmin(np.abs(arc - grid[j])))
        if not angle * straight <= angles[record] * straightness[record]:  # keep the strongest (NaN: False)
            angles[record], straightness[record] = angle, straight
    return angles, straightness


def turning_angles(coords: np.ndarray, smoothing: float = 1.0, lag: int | None = None) -> np.ndarray:
    """How sharply a trajectory ``(n, d)`` turns at each record, in degrees (NaN at the ends).

    The trajectory is smoothed, resampled at equal arc length (so stalls and sprints do not
    count as turns), and the angle is taken between the chord arriving at a point and the
    chord leaving it, each ``lag`` resampled points long (default: 1/10 of the length).

    >>> corner = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [3, 1], [3, 2], [3, 3]], float)
    >>> angles = turning_angles(corner, smoothing=0, lag=2)
    >>> int(np.nanargmax(angles)), round(float(np.nanmax(angles)))
    (3, 90)
    """
    return _turns(coords, smoothing, lag)[0]


def turning_scores(coords: np.ndarray, smoothing: float = 1.0, lag: int | None = None) -> np.ndarray:
    """Turning angle (degrees) times the straightness (0..1) of the legs before and after.

    A real stage boundary is a turn between two purposeful legs; the jitter of a trajectory
    that has settled also turns a lot, but along legs whose chords are short for the path
    they span. This is what :func:`turning_points` ranks by.

    >>> corner = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [3, 1], [3, 2], [3, 3]], float)
    >>> jitter = np.array([[0, 0], [1, 0], [0, 0], [1, 0], [0, 0], [1, 0], [0, 0]], float)
    >>> [round(float(np.nanmax(turning_scores(path, smoothing=0, lag=2)))) for path in (corner, jitter)]
    [90, 0]
    """
    angles, straightness = _turns(coords, smoothing, lag)
    return angles * straightness


def turning_points(
    coords: np.ndarray,
    n: int = 1,
    smoothing: float = 1.0,
    lag: int | None = None,
    min_separation: int | None = None,
) -> np.ndarray:
    """Indices of the ``n`` sharpest turns of a trajectory, sharpest first: candidate stage boundaries.

    Ranked by :func:`turning_scores` (the angle discounted for jittery legs).
    Turns closer than ``min_separation`` records (default: the lag) to a sharper one are
    skipped. Map the indices to steps with ``log.steps[indices]``.

    >>> t = np.linspace(0, 1, 21)
    >>> path = np.concatenate([np.stack([t, 0 * t], 1), np.stack([1 + 0 * t[1:], t[1:]], 1)])
    >>> turning_points(path, n=1).tolist()
    [20]
    """
    angles = turning_scores(coords, smoothing=smoothing, lag=lag)
    n_records = len(angles)
    separation = (max(1, n_records // 10) if lag is None else int(lag)) if min_separation is None else min_separation
    chosen: list[int] = []
    for index in np.argsort(-np.nan_to_num(angles, nan=-1.0)):
        if len(chosen) >= n or np.isnan(angles[index]):
            break
        if all(abs(int(index) - c) >= separation for c in chosen):
            chosen.append(int(index))
    return np.array(chosen, dtype=np.int64)
