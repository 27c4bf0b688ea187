"""Stage boundaries while the run is going: an online tracker of a trajectory of records.

:class:`StageTracker` takes one record at a time (``update(step, array)``) and returns the
events it has just confirmed, each at the step *where the change happened*, which is earlier
than the step that confirmed it. It applies the offline analysis of
:mod:`trajhook.analysis.trajectory` to the records so far:

**Bounded.** The tracker keeps at most ``max_records`` (default 512) records, evenly thinned
(:class:`~trajhook.analysis.thinned.Thinned`): every record until then, after that every 2nd,
4th, ... record of the run (the stride doubles when the buffer is full). Everything below runs
on the kept records, so on a run that fits it is exactly the offline analysis of the whole run,
and on a longer one the offline analysis of the run at an even, coarser cadence. Memory is
fixed (``max_records`` records, a ``max_records²`` Gram matrix: 8 MB and 2 MB for 4,096-token
records), and so is the work per record; a record that is not kept costs nothing.

**PCA turn.** The records are projected on their first ``n_components`` principal components
(refitted at every record from a Gram matrix kept up to date: O(records x tokens) for the new
row, then a few warm-started subspace iterations, O(records²) each), and :func:`turning_scores` (smoothed
trajectory, equal-arc-length resampling, angle between the chords ``lag`` resampled points
before and after, discounted for jitter) is computed, with ``lag`` = ``max(min_lag, records //
10)`` as offline unless given. While those components explain at least ``min_explained`` of the variance, a record whose
score is at least ``min_turn`` and the largest
within ``lag`` records on either side is a candidate; a candidate that stays one (give or take a
record) for ``confirm`` consecutive records is reported, once, as ``"candidate stage boundary
(PCA turn; confirmed at step S)"``, unless it lies within ``min_separation`` records of a turn
reported before.

**ICL drop** (with ``icl=(late, early)``). The in-context-learning score
(:func:`icl_score`: loss at position ``late`` minus loss at ``early``) is smoothed with
``smoothing``. When it has fallen from its start by at least ``min_drop`` (nats) and by at least
6 times its record-to-record noise, and its lowest value has not fallen further by more than
10% of the drop over the last ``confirm`` records (the fall has levelled off), the event
``"candidate stage boundary (ICL drop)"`` is reported at the first record below halfway
between the start and the lowest value: the offline definition of the drop step.

**Delay.** An event is always reported at the step where the change happened, and its label
says at which step it was confirmed. A PCA turn is scored only once the leg after it is ``lag``
resampled records long (at least ``min_lag`` = 5), and reported after ``confirm`` (default 6)
more records: 8 records after a clean corner, typically 15-20 records on a noisy run (the
after-leg grows with the run, as ``records // 10``). An ICL drop is confirmed ``confirm``
records after the fall levels off. On the induction-heads example (one record every 10 steps
by then) the PCA turn at step ~280 was confirmed 17 records (170 steps) later, and the ICL drop
at ~500 about 19 records (190 steps) later.

Past ``max_records`` records, "records" above means kept records: the lag, the smoothing and
``confirm`` count those, so the delay stays the same share of the run. The tracker is pure
numpy and keeps its records as float32. It runs on the Recorder's writer thread, never the
training thread; a probe opts in with ``track_stages=True`` (or a configured ``StageTracker``):
:class:`~trajhook.TokenLossProbe` and :class:`~trajhook.PromptProbe` follow ``token_loss``,
:class:`~trajhook.MazeProbe` its field's ``vectors``.

>>> t = np.linspace(0, 1, 30)
>>> corner = np.concatenate([np.stack([t, 0 * t], 1), np.stack([1 + 0 * t, t], 1)])  # right, then up
>>> rng = np.random.default_rng(0)
>>> records = corner @ rng.normal(size=(2, 50)) + 0.002 * rng.normal(size=(60, 50))
>>> tracker = StageTracker()
>>> [(step, label) for step, r in enumerate(records) for step, label in tracker.update(step, r)]
[(29, 'candidate stage boundary (PCA turn; confirmed at step 40)')]
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from trajhook.analysis.thinned import Thinned
from trajhook.analysis.trajectory import icl_score, smooth, turning_scores
from trajhook.errors import TrajhookError

PCA_TURN = "PCA turn"
ICL_DROP = "ICL drop"


def event_label(kind: str, confirmed_at: int) -> str:
    """The event text: what was found, and at which step the tracker confirmed it (its delay).

    >>> event_label(PCA_TURN, 440)
    'candidate stage boundary (PCA turn; confirmed at step 440)'
    """
    return f"candidate stage boundary ({kind}; confirmed at step {confirmed_at})"


_LABEL = re.compile(r"candidate stage boundary \((.+?); confirmed at step (\d+)\)")


def parse_label(label: str) -> tuple[str, int] | None:
    """``(kind, confirmed_at)`` of a stage event's label (:func:`event_label`); None for any other label.

    >>> parse_label(event_label(ICL_DROP, 700)), parse_label("fine-tuning starts")
    (('ICL drop', 700), None)
    """
    match = _LABEL.fullmatch(label)
    return None if match is None else (match[1], int(match[2]))


class StageTracker:
    """Follow a trajectory of records (per-token losses, a maze field) one by one; report PCA turns and ICL drops.

    Args:
        output: the probe output it follows (``"token_loss"``).
        n_components: principal components of the trajectory.
        smoothing: Gaussian smoothing of the trajectory and of the ICL score, in records.
        lag: chord length of the turning angle, in (resampled) records. Default
            ``max(min_lag, records // 10)``, growing with the run as offline.
        min_lag: the shortest default ``lag``.
        min_turn: the smallest :func:`turning_scores` value reported (degrees times straightness).
        confirm: consecutive records a turn must stay a candidate (and records after the end of a
            fall) before it is reported. Default ``3 + ceil(3 * smoothing)``.
        min_separation: records between two reported turns. Default ``2 * lag``.
        min_records: no turn is looked for before this many records.
        min_explained: no turn is looked for while the ``n_components`` explain less than this
            share of the variance of the records (a trajectory that is mostly noise).
        icl: ``(late, early)`` token positions of the ICL score, or None for no ICL tracking.
        min_drop: the smallest ICL drop reported, in nats.
        reshape: maps one record to ``(n_sequences, n_positions)`` for the ICL score; probes set it.
        max_records: the most records kept (an even number, at least ``2 * min_records``); past
            it the kept records are thinned evenly (see the module docstring).

    See the module docstring for how each is used and for the delay.
    """

    def __init__(
        self,
        output: str = "token_loss",
        *,
        n_components: int = 2,
        smoothing: float = 1.0,
        lag: int | None = None,
        min_turn: float = 30.0,
        confirm: int | None = None,
        min_separation: int | None = None,
        icl: tuple[int, int] | None = None,
        min_drop: float = 0.3,
        min_records: int = 20,
        min_lag: int = 5,
        min_explained: float = 0.5,
        reshape: Callable[[np.ndarray], np.ndarray] | None = None,
        max_records: int = 512,
    ) -> None:
        def positive(name: str, value: Any, integer: bool = True, zero: bool = False) -> None:
            kind = int if integer else (int, float)
            if isinstance(value, bool) or not isinstance(value, kind) or value < 0 or (value == 0 and not zero):
                raise TrajhookError(f"StageTracker: {name}={value!r} is not a positive number. HINT: e.g. the default.")

        positive("n_components", n_components)
        positive("smoothing", smoothing, integer=False, zero=True)
        if lag is not None:
            positive("lag", lag)
        positive("min_turn", min_turn, integer=False)
        positive("min_drop", min_drop, integer=False)
        positive("min_records", min_records)
        positive("min_lag", min_lag)
        positive("min_explained", min_explained, integer=False)
        if confirm is not None:
            positive("confirm", confirm)
        positive("max_records", max_records)
        if max_records % 2 or max_records < 2 * min_records:
            raise TrajhookError(
                f"StageTracker: max_records={max_records!r} is odd or below 2 * min_records ({2 * min_records}). "
                "HINT: e.g. the default max_records=512."
            )
        if min_separation is not None:
            positive("min_separation", min_separation)
        if icl is not None and (
            not isinstance(icl, tuple | list) or len(icl) != 2 or not all(isinstance(i, int) and i >= 0 for i in icl)
        ):
            raise TrajhookError(f"StageTracker: icl={icl!r} is not (late, early). HINT: e.g. icl=(500, 50).")
        self.output = output
        self.n_components = n_components
        self.smoothing = float(smoothing)
        self.lag = lag
        self.min_turn = float(min_turn)
        self.confirm = 3 + math.ceil(3 * smoothing) if confirm is None else confirm
        self.min_separation = min_separation
        self.icl = None if icl is None else (int(icl[0]), int(icl[1]))
        self.min_drop = float(min_drop)
        self.min_records = min_records
        self.min_lag = min_lag
        self.min_explained = float(min_explained)
        self.reshape = reshape
        self.max_records = max_records
        self.reset()

    def reset(self) -> None:
        """Forget every record and event, keeping the parameters: the state of a new tracker."""
        max_records = self.max_records
        self.explained = 0.0  # the variance share of the components, at the last record
        self._kept = Thinned(max_records)  # the records the analysis runs on
        self._width: int | None = None
        self._gram = np.zeros((max_records, max_records))  # of the kept records, top-left size x size
        self._finite: np.ndarray | None = None
        self._icl = np.zeros(max_records)  # the ICL score of each kept record
        self._icl_origin = 0
        self.turns: list[int] = []  # steps of reported turns
        self._turn_slots: list[int] = []  # where they are among the kept records
        self._candidates: dict[int, int] = {}  # record index -> consecutive updates it has been a turn
        self._basis: np.ndarray | None = None  # the top eigenvectors of the centred Gram matrix, warm start
        self.events: list[tuple[int, str]] = []

    # ---------------------------------------------------------------------------------------- feeding
    @property
    def steps(self) -> list[int]:
        """The steps of the records kept (every record until ``max_records``, then a uniform subset)."""
        return self._kept.kept_steps().tolist()

    @property
    def n_records(self) -> int:
        """Every record seen, kept or not."""
        return self._kept.seen

    @property
    def nbytes(self) -> int:
        """The bytes of the tracker's arrays: fixed once the first record is in, whatever the run length."""
        basis = 0 if self._basis is None else self._basis.nbytes
        finite = 0 if self._finite is None else self._finite.nbytes
        return self._kept.nbytes + self._gram.nbytes + self._icl.nbytes + basis + finite

    def update(self, step: int, record: np.ndarray) -> list[tuple[int, str]]:
        """Add one record; return the ``(step, label)`` events confirmed by it (usually none)."""
        record = np.asarray(record)
        if self._width is not None and record.size != self._width:
            raise TrajhookError(
                f"StageTracker: a record of {record.size} values after records of {self._width}. "
                "HINT: track one output of fixed shape."
            )
        self._width = record.size
        if not self._kept.due():
            self._kept.skip()  # thinned out: the analysis runs on the kept records only
            return []
        flat = record.astype(np.float32).reshape(-1)
        finite = np.isfinite(flat)
        kept = self._kept.add(step, np.where(finite, flat, 0.0))
        if kept is not None:
            self._thinned(kept)
        if self._finite is None or not np.array_equal(finite & self._finite, self._finite):
            self._finite = finite if self._finite is None else finite & self._finite
            self._recompute_gram()
        else:
            self._append_gram()
        if self.icl is not None:
            shaped = self.reshape(record) if self.reshape is not None else record
            self._icl[self._kept.size - 1] = float(icl_score(shaped, late=self.icl[0], early=self.icl[1]))
        found = self._pca_turn() + (self._icl_drop() if self.icl is not None else [])
        self.events += found
        return found

    def replay(self, steps: Sequence[int], read: Callable[[int], np.ndarray]) -> list[tuple[int, str]]:
        """Feed stored records, in order, as :meth:`update` would; returns the events they confirm.

        ``read(i)`` gives the record at ``steps[i]``; it is called only for the records the tracker
        keeps (its thinning), so rebuilding a tracker from a long store reads at most a few times
        ``max_records`` records. A tracker fed this way is in the state it would be in had it been
        fed every record live (:meth:`reset` it first to rebuild from scratch).

        >>> records = np.random.default_rng(0).normal(size=(50, 3))
        >>> live, rebuilt = StageTracker(max_records=40), StageTracker(max_records=40)
        >>> _ = [live.update(s, r) for s, r in enumerate(records)]
        >>> read = []
        >>> _ = rebuilt.replay(range(50), lambda i: read.append(i) or records[i])
        >>> rebuilt.steps == live.steps, len(read)  # records 41, 43, ... were thinned out unread
        (True, 45)
        """
        return [event for found in self.replaying(steps, read) for event in found]

    def replaying(self, steps: Sequence[int], read: Callable[[int], np.ndarray]) -> Iterator[list[tuple[int, str]]]:
        """:meth:`replay` one kept record at a time: yields the events each confirms (usually none).

        The Recorder's writer thread rebuilds a resumed tracker this way, a slice at a time between
        the records it writes, so that training never waits on the rebuild.
        """
        for i, step in enumerate(steps):
            if self._kept.due():
                yield self.update(int(step), read(i))
            else:
                self._kept.skip()

    def _thinned(self, kept: np.ndarray) -> None:
        """The buffer dropped every other record: keep the per-record state of the ones left."""
        m = len(kept)
        self._gram[:m, :m] = self._gram[np.ix_(kept, kept)]
        self._icl[:m] = self._icl[kept]
        self._icl_origin = int(np.searchsorted(kept, self._icl_origin))
        candidates: dict[int, int] = {}
        for index, count in self._candidates.items():
            new = min(int(np.searchsorted(kept, index)), m - 1)
            candidates[new] = max(count, candidates.get(new, 0))
        self._candidates = candidates
        self._turn_slots = [int(np.searchsorted(kept, t)) for t in self._turn_slots]
        self._basis = None  # a cold start on the thinned records

    def _recompute_gram(self) -> None:
        n = self._kept.size
        x = self._kept.kept_rows()[:, self._finite].astype(np.float64)
        self._gram[:n, :n] = x @ x.T

    def _append_gram(self) -> None:
        n = self._kept.size
        rows = self._kept.kept_rows()
        columns = self._finite
        everything = bool(columns.all())
        new = (rows[n - 1] if everything else rows[n - 1, columns]).astype(np.float64)
        if n > 1:
            old = (rows[: n - 1] if everything else rows[: n - 1, columns]).astype(np.float64) @ new
            self._gram[n - 1, : n - 1] = self._gram[: n - 1, n - 1] = old
        self._gram[n - 1, n - 1] = new @ new

    # ---------------------------------------------------------------------------------------- PCA turn
    def coords(self) -> np.ndarray:
        """The kept records on their first ``n_components`` principal components.

        Subspace iteration on the centred Gram matrix, warm-started from the previous record's
        basis, then an exact small eigenproblem: no O(records³) LAPACK call, whose thread pool
        would compete with training for the cores.
        """
        n = self._kept.size
        gram = self._gram[:n, :n]
        mean_rows = gram.mean(axis=1)
        centred = gram - mean_rows[:, None] - mean_rows[None, :] + mean_rows.mean()
        k = min(n, self.n_components + 2)
        basis = self._basis
        if basis is None or basis.shape[1] != k:
            basis, iterations = np.random.default_rng(0).normal(size=(n, k)), 40
        else:
            basis, iterations = np.vstack([basis, np.ones((n - len(basis), k)) / n]), 6
        for _ in range(iterations):
            basis = np.linalg.qr(centred @ basis)[0]
        small = basis.T @ centred @ basis
        values, vectors = np.linalg.eigh((small + small.T) / 2)
        top = np.argsort(values)[::-1]
        self._basis = basis @ vectors[:, top]
        top = top[: self.n_components]
        total = np.trace(centred)
        self.explained = float(np.clip(values[top], 0.0, None).sum() / total) if total > 0 else 0.0
        return self._basis[:, : self.n_components] * np.sqrt(np.clip(values[top], 0.0, None))

    def _pca_turn(self) -> list[tuple[int, str]]:
        n = self._kept.size
        lag = max(self.min_lag, n // 10) if self.lag is None else self.lag
        if n < max(2 * lag + 1, self.min_records):
            return []
        coords = self.coords()
        if self.explained < self.min_explained:
            self._candidates = {}
            return []  # mostly noise: no direction to turn from
        scores = np.nan_to_num(turning_scores(coords, smoothing=self.smoothing, lag=lag), nan=-1.0)
        separation = 2 * lag if self.min_separation is None else self.min_separation
        counts = {}
        for index in np.flatnonzero(scores >= self.min_turn):
            index = int(index)
            if scores[index] < scores[max(0, index - lag) : index + lag + 1].max():
                continue  # a stronger turn is close by
            if any(abs(index - t) < separation for t in self._turn_slots):
                continue
            counts[index] = 1 + max(self._candidates.get(j, 0) for j in (index - 1, index, index + 1))
        self._candidates = counts
        confirmed = [i for i, count in counts.items() if count >= self.confirm]
        if not confirmed:
            return []
        index = max(confirmed, key=lambda i: scores[i])
        steps = self._kept.kept_steps()
        self.turns.append(int(steps[index]))
        self._turn_slots.append(index)
        del self._candidates[index]
        return [(int(steps[index]), event_label(PCA_TURN, int(steps[-1])))]

    # ---------------------------------------------------------------------------------------- ICL drop
    def _icl_drop(self) -> list[tuple[int, str]]:
        values = self._icl[self._icl_origin : self._kept.size]
        if len(values) < self.confirm + 3:
            return []
        smoothed = smooth(values, self.smoothing)
        lowest = int(np.argmin(smoothed))
        drop = smoothed[0] - smoothed[lowest]
        noise = np.median(np.abs(np.diff(values))) * 1.4826 / math.sqrt(2)  # robust per-record noise
        if drop < max(self.min_drop, 6 * noise):
            return []
        recent_low = smoothed[-self.confirm :].min()
        before_low = smoothed[: len(smoothed) - self.confirm].min()
        if before_low - recent_low > 0.1 * drop or lowest >= len(smoothed) - self.confirm // 2:
            return []  # still falling
        halfway = (smoothed[0] + smoothed[lowest]) / 2
        index = self._icl_origin + int(np.argmax(smoothed < halfway))
        self._icl_origin += lowest  # a later drop is measured from this plateau
        steps = self._kept.kept_steps()
        return [(int(steps[index]), event_label(ICL_DROP, int(steps[-1])))]


def as_tracker(track_stages: Any, where: str, **defaults: Any) -> StageTracker | None:
    """A probe's ``track_stages=`` argument: False/None (off), True (a tracker with ``defaults``) or a tracker."""
    if track_stages is None or track_stages is False:
        return None
    if track_stages is True:
        return StageTracker(**defaults)
    if isinstance(track_stages, StageTracker):
        return track_stages
    raise TrajhookError(
        f"{where}: track_stages={track_stages!r} is not True, False or a StageTracker. "
        "HINT: pass track_stages=True, or track_stages=StageTracker(icl=(500, 50)) to choose the parameters."
    )
