"""Compact wire forms for the live page: a binary frame per maze record, bucketed overview curves.

Pure functions, shared by the server and by the static report, so both pages decode the same bytes.

A frame is a 20-byte little-endian header, then the vectors, then the probabilities::

    magic b"THF1" | n_cells uint32 | n_dirs uint8 | flags uint8 (bit 0: probabilities) | 2 pad | step float64
    vectors float32 (n_cells, 2) | probabilities uint8 (n_cells, n_dirs), round(p * 255)

About 13 bytes a cell (4.4 kB for a 337-cell maze): the arrows exact, the probabilities to 1/510.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

MAGIC = b"THF1"
HEADER = struct.Struct("<4sIBBxxd")
MAX_BUCKETS = 1024


def encode_frame(step: int, vectors: np.ndarray, probs: np.ndarray | None = None) -> bytes:
    """One maze record as bytes.

    >>> blob = encode_frame(40, np.array([[0.5, -1.0]]), np.array([[0.1, 0.2, 0.3, 0.4, 0.0]]))
    >>> len(blob), decode_frame(blob)[0], decode_frame(blob)[1].tolist()
    (33, 40, [[0.5, -1.0]])
    >>> decode_frame(blob)[2].round(3).tolist()
    [[0.102, 0.2, 0.298, 0.4, 0.0]]
    """
    vectors = np.nan_to_num(np.asarray(vectors, dtype="<f4").reshape(-1, 2))
    n = len(vectors)
    if probs is None:
        return HEADER.pack(MAGIC, n, 0, 0, float(step)) + vectors.tobytes()
    probs = np.asarray(probs, dtype=np.float64).reshape(n, -1)
    quantized = np.rint(np.clip(np.nan_to_num(probs), 0.0, 1.0) * 255).astype(np.uint8)
    return HEADER.pack(MAGIC, n, probs.shape[1], 1, float(step)) + vectors.tobytes() + quantized.tobytes()


def decode_frame(blob: bytes) -> tuple[int, np.ndarray, np.ndarray | None]:
    """``(step, vectors (n, 2), probabilities (n, n_dirs) or None)``: what the page's decoder reads."""
    magic, n, dirs, flags, step = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ValueError(f"not a trajhook frame (magic {magic!r})")
    vectors = np.frombuffer(blob, "<f4", 2 * n, HEADER.size).reshape(n, 2)
    probs = None
    if flags & 1:
        probs = np.frombuffer(blob, np.uint8, n * dirs, HEADER.size + 8 * n).reshape(n, dirs) / 255.0
    return int(step), vectors, probs


def bucket_width(last_step: int, max_buckets: int = MAX_BUCKETS) -> int:
    """The smallest power of two ``w`` with ``last_step // w < max_buckets``: a grid fixed at step 0.

    Appends only touch the last bucket until the width doubles, when pairs of buckets merge, so a
    live curve never reshuffles.

    >>> bucket_width(1000), bucket_width(1024), bucket_width(5000)
    (1, 2, 8)
    """
    width = 1
    while max(int(last_step), 0) // width >= max_buckets:
        width *= 2
    return width


def bucket_minmax(
    steps: np.ndarray, values: np.ndarray, keep_steps: Sequence[int] = (), max_buckets: int = MAX_BUCKETS
) -> np.ndarray:
    """Indices of the points an overview curve draws: per bucket its min and max (in step order),
    always the last point, and the points at or just before each of ``keep_steps`` (events).

    ``steps`` ascending. NaN values are skipped in a bucket (the last point is kept as it is).

    >>> steps = np.arange(10)
    >>> values = np.array([5, 1, 9, 3, 4, 8, 0, 2, 6, 7.0])  # buckets of 8 steps: 0..7 and 8..9
    >>> bucket_minmax(steps, values, keep_steps=[4], max_buckets=2).tolist()  # min 6, max 2; min 8, max 9; event 4
    [2, 4, 6, 8, 9]
    """
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    n = len(steps)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    width = bucket_width(int(steps[-1]), max_buckets)
    bucket = steps // width
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    finite = np.where(np.isfinite(values), values, np.nan)
    chosen = [n - 1]
    if np.isfinite(finite).any():
        lows = np.where(np.isfinite(finite), finite, np.inf)
        highs = np.where(np.isfinite(finite), finite, -np.inf)
        low_at = _segment_arg(lows, starts, np.minimum)
        high_at = _segment_arg(-highs, starts, np.minimum)
        ok = np.isfinite(finite[low_at])
        chosen.extend(low_at[ok].tolist())
        chosen.extend(high_at[ok].tolist())
    for step in keep_steps:
        at = int(np.searchsorted(steps, step, side="right")) - 1
        if at >= 0:
            chosen.append(at)
    return np.unique(np.asarray(chosen, dtype=np.int64))


def _segment_arg(values: np.ndarray, starts: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    """The index of each segment's minimum (segments begin at ``starts``), the first on ties."""
    best = ufunc.reduceat(values, starts)
    segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(values)]))
    hits = np.flatnonzero(values == best[segment])
    first = np.r_[True, segment[hits][1:] != segment[hits][:-1]]
    out = starts.copy()
    out[segment[hits][first]] = hits[first]
    return out
