"""A bounded, uniformly thinned subset of a run's records, for live analyses of any run length.

:class:`Thinned` keeps at most ``capacity`` records: every record while they fit, then every
second, every fourth, ... (the stride doubles each time the buffer is full, by dropping every
other kept record). At any time the kept records are exactly those whose index in the run is a
multiple of the stride (:func:`thinned_indices`): the offline analysis of the kept records is
the offline analysis of the same run recorded at a coarser, even cadence. Memory is
``capacity`` rows, whatever the run length; work per record is bounded by what an analysis does
with ``capacity`` rows, and a record that is not kept costs nothing.

Uniform thinning, not log-spaced or recent-heavy, because the PCA-turn statistic
(:func:`~trajhook.analysis.trajectory.turning_scores`) looks at chords of a fixed *share* of the
records (``records // 10``) of a trajectory resampled at equal arc length: thinning evenly keeps
that statistic's scale, so a turn of the full run is a turn of the kept records.

>>> kept = Thinned(capacity=4)
>>> for step in range(10):
...     moved = kept.add(step * 10, np.full(2, step)) if kept.due() else kept.skip()
>>> kept.stride, kept.size, kept.kept_steps().tolist(), thinned_indices(10, 4).tolist()
(4, 3, [0, 40, 80], [0, 4, 8])
"""

from __future__ import annotations

import numpy as np

from trajhook.errors import TrajhookError


def thinned_stride(n_seen: int, capacity: int) -> int:
    """The stride after ``n_seen`` records: the smallest power of two that keeps at most ``capacity``.

    >>> [thinned_stride(n, 4) for n in (0, 4, 5, 8, 9, 100)]
    [1, 1, 2, 2, 4, 32]
    """
    stride = 1
    while -(-n_seen // stride) > capacity:
        stride *= 2
    return stride


def thinned_indices(n_seen: int, capacity: int, start: int = 0) -> np.ndarray:
    """The indices (in the run) of the records :class:`Thinned` keeps after ``n_seen`` records
    (those from record ``start`` on: what to read of records ``start..n_seen-1``).

    >>> thinned_indices(5, 4).tolist(), thinned_indices(4, 4).tolist(), thinned_indices(9, 4, start=3).tolist()
    ([0, 2, 4], [0, 1, 2, 3], [4, 8])
    """
    stride = thinned_stride(n_seen, capacity)
    return np.arange(-(-start // stride) * stride, n_seen, stride)


class Thinned:
    """At most ``capacity`` records (rows of one fixed width) and their steps, at a uniform stride.

    For each new record, :meth:`add` it when :meth:`due`, else :meth:`skip` it (only counted); or take
    many stored records at once with :meth:`extend`, given only the ones kept.
    ``rows[:size]`` and ``steps[:size]`` are the kept records, oldest first; ``seen`` counts every
    record offered. An analysis that keeps per-record state of its own
    remaps it with the slots :meth:`add` returns after a thinning.
    """

    def __init__(self, capacity: int = 512, dtype: type = np.float32) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 4 or capacity % 2:
            raise TrajhookError(f"Thinned: capacity={capacity!r} is not an even int >= 4. HINT: e.g. capacity=512.")
        self.capacity = capacity
        self.dtype = np.dtype(dtype)
        self.stride = 1
        self.seen = 0
        self.size = 0
        self.steps = np.zeros(capacity, dtype=np.int64)
        self.rows: np.ndarray | None = None  # (capacity, width), allocated at the first record

    def due(self) -> bool:
        """Whether the next record is to be kept: :meth:`add` it, or else :meth:`skip` it."""
        return self.seen % self.stride == 0

    def skip(self) -> None:
        """Count a record that is not due, without keeping it."""
        self.seen += 1

    def add(self, step: int, row: np.ndarray) -> np.ndarray | None:
        """Keep a due record; return the slots kept if the buffer was thinned to make room, else None."""
        if not self.due():
            raise TrajhookError(f"Thinned: record {self.seen} is not due (stride {self.stride}). HINT: skip() it.")
        row = np.asarray(row).reshape(-1)
        self._check_width(row.size)
        kept = self._thin(self.stride * 2) if self.size == self.capacity else None
        self._append(step, row)
        self.seen += 1
        return kept

    def extend(self, n_seen: int, steps: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
        """Take the records up to ``n_seen`` at once, given only the ones kept: the ``steps`` and ``rows`` of
        records ``thinned_indices(n_seen, capacity, start=seen)``, oldest first (so a reader of a stored run
        reads no other record). The state is the one that :meth:`add` and :meth:`skip`, fed every record in
        turn, reach; returns the slots kept if the buffer was thinned, else None.

        >>> one, many = Thinned(capacity=4), Thinned(capacity=4)
        >>> for i in range(9):
        ...     _ = one.add(i, np.full(2, i)) if one.due() else one.skip()
        >>> for start, stop in ((0, 3), (3, 9)):
        ...     index = thinned_indices(stop, 4, start)
        ...     kept = many.extend(stop, index, np.repeat(index[:, None], 2, axis=1))
        >>> kept.tolist(), many.kept_steps().tolist(), many.stride, many.seen
        ([0], [0, 4, 8], 4, 9)
        >>> np.array_equal(many.kept_rows(), one.kept_rows()), (one.stride, one.seen)
        (True, (4, 9))
        """
        index = thinned_indices(n_seen, self.capacity, start=self.seen)
        if n_seen < self.seen or len(steps) != len(index) or len(rows) != len(index):
            raise TrajhookError(
                f"Thinned: extend({n_seen}) after {self.seen} records was given {len(steps)} steps and {len(rows)} "
                f"rows for the {len(index)} records it keeps. HINT: pass those of thinned_indices(n_seen, capacity, "
                "start=seen)."
            )
        if len(index):
            rows = np.asarray(rows).reshape(len(index), -1)
            self._check_width(rows.shape[1])
        stride = thinned_stride(n_seen, self.capacity)
        kept = self._thin(stride) if stride > self.stride and self.size else None
        self.stride = max(self.stride, stride)
        for step, row in zip(steps, rows, strict=True):
            self._append(step, row)
        self.seen = n_seen
        return kept

    def _check_width(self, width: int) -> None:
        """Allocate the rows at the first record; refuse a record of another width."""
        if self.rows is None:
            self.rows = np.zeros((self.capacity, width), dtype=self.dtype)
        elif width != self.rows.shape[1]:
            raise TrajhookError(
                f"Thinned: a record of {width} values after records of {self.rows.shape[1]}. "
                "HINT: keep one output of fixed shape."
            )

    def _thin(self, stride: int) -> np.ndarray:
        """Keep the records whose index the (larger) ``stride`` divides; return their slots."""
        kept = np.arange(0, self.size, stride // self.stride)
        assert self.rows is not None
        self.rows[: len(kept)] = self.rows[kept]
        self.steps[: len(kept)] = self.steps[kept]
        self.size = len(kept)
        self.stride = stride
        return kept

    def _append(self, step: int, row: np.ndarray) -> None:
        assert self.rows is not None
        self.rows[self.size] = row
        self.steps[self.size] = int(step)
        self.size += 1

    def kept_rows(self) -> np.ndarray:
        """The kept records ``(size, width)`` (a view)."""
        return np.zeros((0, 0), self.dtype) if self.rows is None else self.rows[: self.size]

    def kept_steps(self) -> np.ndarray:
        """The steps of the kept records (a view)."""
        return self.steps[: self.size]

    @property
    def nbytes(self) -> int:
        """Bytes held, fixed after the first record."""
        return self.steps.nbytes + (0 if self.rows is None else self.rows.nbytes)
