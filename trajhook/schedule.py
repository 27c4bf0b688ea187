"""When to record: the cadence behind ``Recorder(..., every_n_steps=...)``.

``every_n_steps`` takes any of:

- an ``int`` ``N`` (numpy ints too): the aligned cadence. A step is due when nothing was recorded
  yet, or when the count crosses a multiple of ``N`` since the last record
  (``step // N > last_recorded // N``). A loop counting 1, 2, 3, ... records 1, N, 2N, ...; a loop
  whose step jumps (SB3's ``num_timesteps``, CleanRL's ``global_step``) records once per multiple
  crossed; two runs with the same ``N`` record the same grid, and a resume keeps it;
- :func:`log_spaced`: dense early, sparse later, as Pythia's checkpoints are spaced;
- a list (tuple, range, numpy array) of steps, e.g. ``[0, 10, 100, 1000]``;
- a callable ``step -> bool``, asked at every call of ``maybe_record``.

Schedules with explicit steps (a list, :func:`log_spaced`) are due at ``step`` when some
scheduled step ``s`` with ``last_recorded < s <= step`` exists: a loop that skips over a
scheduled step (steps counted in environment frames, a resume between two scheduled steps)
records at the first call past it, once. The last recorded step comes from
``Recorder.recorded_steps``, which ``Recorder.state_dict`` carries, so resumed runs keep their
cadence. Integrations never decide themselves: they call ``recorder.maybe_record``.

>>> schedule = as_schedule(log_spaced(first=1, per_decade=4, until=100, then_every=50))
>>> schedule.steps(300)
[0, 1, 2, 3, 6, 10, 18, 32, 56, 100, 150, 200, 250, 300]
>>> [step for step in range(20) if schedule.is_due(step, last=None if step == 0 else step - 1)]
[0, 1, 2, 3, 6, 10, 18]
>>> every_3 = as_schedule(3)
>>> every_3.is_due(7, last=None), every_3.is_due(5, last=4), every_3.is_due(6, last=5)
(True, False, True)
>>> [step for step in range(1, 12) if every_3.is_due(step, last=None if step == 1 else step - 1)]
[1, 3, 6, 9]
"""

from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from trajhook.errors import TrajhookError

__all__ = ["CallableSchedule", "EveryN", "LogSpaced", "Schedule", "StepList", "as_schedule", "log_spaced"]

_HINT = (
    "HINT: pass a positive int (every_n_steps=100), trajhook.log_spaced(first=1, per_decade=10, until=1000), "
    "a list of steps, or a function step -> bool."
)


class Schedule:
    """Decides whether ``step`` is due, given the last recorded step (``None``: none yet)."""

    def is_due(self, step: int, last: int | None) -> bool:
        raise NotImplementedError

    def steps(self, until: int) -> list[int]:
        """The steps a loop calling at every step ``0..until`` would record."""
        chosen: list[int] = []
        for step in range(int(until) + 1):
            if self.is_due(step, chosen[-1] if chosen else None):
                chosen.append(step)
        return chosen


class EveryN(Schedule):
    """Due when nothing was recorded yet or ``step`` has crossed a multiple of ``n`` since ``last``.

    >>> EveryN(10).steps(35)
    [0, 10, 20, 30]
    >>> every_5 = EveryN(5)
    >>> [s for s in range(1, 31) if every_5.is_due(s, last=None if s == 1 else s - 1)]  # counting from 1
    [1, 5, 10, 15, 20, 25, 30]
    >>> every_5.is_due(12, last=8), every_5.is_due(14, last=10)  # a jump over 10; no multiple crossed
    (True, False)
    """

    def __init__(self, n: int) -> None:
        self.n = int(n)

    def is_due(self, step: int, last: int | None) -> bool:
        return last is None or step // self.n > last // self.n

    def __repr__(self) -> str:
        return f"every {self.n} steps"


class _Scheduled(Schedule):
    """Explicit scheduled steps: due when a scheduled ``s`` with ``last < s <= step`` exists."""

    def next_after(self, last: int | None) -> int | None:
        """The first scheduled step above ``last`` (the first one when ``last`` is None), or None."""
        raise NotImplementedError

    def is_due(self, step: int, last: int | None) -> bool:
        upcoming = self.next_after(last)
        return upcoming is not None and upcoming <= step

    def steps(self, until: int) -> list[int]:
        chosen: list[int] = []
        upcoming = self.next_after(None)
        while upcoming is not None and upcoming <= until:
            chosen.append(upcoming)
            upcoming = self.next_after(upcoming)
        return chosen


class StepList(_Scheduled):
    """An explicit, finite list of steps (sorted and deduplicated here).

    >>> StepList([100, 0, 10, 10]).steps(1000)
    [0, 10, 100]
    >>> StepList([0, 10, 100]).is_due(50, last=0), StepList([0, 10, 100]).is_due(50, last=10)
    (True, False)
    """

    def __init__(self, steps: Iterable[int]) -> None:
        self.scheduled = sorted({int(s) for s in steps})

    def next_after(self, last: int | None) -> int | None:
        index = 0 if last is None else bisect.bisect_right(self.scheduled, last)
        return self.scheduled[index] if index < len(self.scheduled) else None

    def __repr__(self) -> str:
        shown = ", ".join(map(str, self.scheduled[:6])) + (", ..." if len(self.scheduled) > 6 else "")
        return f"steps [{shown}]"


class LogSpaced(_Scheduled):
    """Steps ``round(first * 10 ** (k / per_decade))`` for k = 0, 1, ... (duplicates merged) below
    ``until``; then ``until``, ``until + then_every``, ... forever. Step 0 first when ``zero``.
    Create it with :func:`log_spaced`.
    """

    def __init__(self, first: float, per_decade: float, until: int | None, then_every: int | None, zero: bool) -> None:
        self.first, self.per_decade, self.until, self.then_every, self.zero = first, per_decade, until, then_every, zero

    def _log_step(self, k: int) -> int:
        return max(1, round(self.first * 10 ** (k / self.per_decade)))

    def _next_log_step(self, above: int) -> int:
        """The smallest log-spaced step greater than ``above`` (>= 0)."""
        k = max(0, math.floor(self.per_decade * math.log10(max(above, 1) / self.first)) - 2)
        while self._log_step(k) <= above:
            k += 1
        return self._log_step(k)

    def next_after(self, last: int | None) -> int | None:
        if last is None and self.zero:
            return 0
        last = -1 if last is None else last
        candidate = self._next_log_step(max(last, 0))
        if self.until is None or candidate < self.until:
            return candidate
        if last < self.until:
            return self.until
        if self.then_every is None:
            return None
        return self.until + ((last - self.until) // self.then_every + 1) * self.then_every

    def __repr__(self) -> str:
        text = f"log_spaced(first={self.first}, per_decade={self.per_decade}"
        if self.until is not None:
            text += f", until={self.until}, then_every={self.then_every}"
        return text + ")"


class CallableSchedule(Schedule):
    """Due when ``fn(step)`` is true (never twice at the same step).

    >>> CallableSchedule(lambda step: step % 7 == 3).steps(20)
    [3, 10, 17]
    """

    def __init__(self, fn: Callable[[int], Any]) -> None:
        self.fn = fn

    def is_due(self, step: int, last: int | None) -> bool:
        if last == step:
            return False
        try:
            return bool(self.fn(int(step)))
        except TrajhookError:
            raise
        except Exception as err:
            raise TrajhookError(
                f"Recorder: the schedule function {self.fn!r} failed at step {step}: {type(err).__name__}: {err}. "
                "HINT: every_n_steps=fn must map an int step to True or False."
            ) from err

    def __repr__(self) -> str:
        return f"callable {getattr(self.fn, '__name__', self.fn)!r}"


def log_spaced(
    first: float = 1,
    per_decade: float = 10,
    until: int | None = None,
    then_every: int | None = None,
    *,
    zero: bool = True,
) -> LogSpaced:
    """Dense early, sparse later: ``per_decade`` steps per factor of 10 from ``first``, then a fixed interval.

    Step 0 (the initial weights) comes first unless ``zero=False``. From ``until`` on the steps are
    ``until, until + then_every, ...`` (``then_every`` defaults to ``until``); without ``until``
    the spacing stays logarithmic forever. ``first`` and ``per_decade`` may be fractional (the
    steps are rounded). Pythia's checkpoints are roughly
    ``log_spaced(first=1, per_decade=3.3, until=1000, then_every=1000)``.

    >>> log_spaced(first=1, per_decade=10).steps(60)
    [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32, 40, 50]
    >>> log_spaced(first=10, per_decade=2, until=1000, then_every=500, zero=False).steps(2500)
    [10, 32, 100, 316, 1000, 1500, 2000, 2500]
    >>> log_spaced(first=1, per_decade=3.3, until=1000, then_every=1000).steps(3000)
    [0, 1, 2, 4, 8, 16, 33, 66, 132, 266, 534, 1000, 2000, 3000]
    """
    where = "log_spaced"
    if isinstance(first, bool) or not isinstance(first, numbers.Real) or not first > 0:
        raise TrajhookError(f"{where}: first={first!r} is not a positive number. HINT: e.g. first=1.")
    if isinstance(per_decade, bool) or not isinstance(per_decade, numbers.Real) or not per_decade > 0:
        raise TrajhookError(f"{where}: per_decade={per_decade!r} is not a positive number. HINT: e.g. per_decade=10.")
    if until is not None and (not _is_int(until) or until < 1):
        raise TrajhookError(f"{where}: until={until!r} is not a positive int. HINT: e.g. until=1000, or leave it out.")
    if then_every is not None:
        if until is None:
            raise TrajhookError(
                f"{where}: then_every={then_every!r} needs until=, the step where the fixed interval starts. "
                "HINT: e.g. log_spaced(until=1000, then_every=1000)."
            )
        if not _is_int(then_every) or then_every < 1:
            raise TrajhookError(f"{where}: then_every={then_every!r} is not a positive int. HINT: e.g. then_every=100.")
    until = None if until is None else int(until)
    then_every = until if then_every is None and until is not None else then_every
    return LogSpaced(float(first), float(per_decade), until, None if then_every is None else int(then_every), zero)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def as_schedule(every_n_steps: Any) -> Schedule:
    """The :class:`Schedule` for an ``every_n_steps`` argument; a ``TrajhookError`` for anything else.

    >>> import numpy as np
    >>> as_schedule(np.int64(10)).steps(25), as_schedule([5, 1]).steps(25)
    ([0, 10, 20], [1, 5])
    """
    if isinstance(every_n_steps, Schedule):
        return every_n_steps
    if _is_int(every_n_steps):
        if every_n_steps <= 0:
            raise TrajhookError(f"Recorder: every_n_steps={every_n_steps!r} is not a positive integer. {_HINT}")
        return EveryN(int(every_n_steps))
    if callable(every_n_steps):
        return CallableSchedule(every_n_steps)
    listed = isinstance(every_n_steps, Sequence) and not isinstance(every_n_steps, str | bytes)
    if listed or hasattr(every_n_steps, "tolist"):  # list, tuple, range, numpy array; a generator reads only once
        steps = list(every_n_steps.tolist() if hasattr(every_n_steps, "tolist") else every_n_steps)
        bad = [s for s in steps if not _is_int(s) or s < 0]
        if not steps or bad:
            problem = "is empty" if not steps else f"holds {bad[0]!r}, not a step (an int >= 0)"
            raise TrajhookError(f"Recorder: the list of steps every_n_steps={steps!r:.80} {problem}. {_HINT}")
        return StepList(steps)
    raise TrajhookError(f"Recorder: every_n_steps={every_n_steps!r} is not a positive integer or a schedule. {_HINT}")
