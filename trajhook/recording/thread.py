"""The writer thread: owns the HDF5 store and feeds the sinks, so the training thread never waits on disk or
on a service.

The training thread queues records (host copies of the probe outputs, still in flight from the device)
into a bounded queue, and scalars and events into a small list; the writer waits for the copies,
converts to numpy, appends, commits every ``flush_every_s`` and at each flush marker, feeds the
sinks and the probes' stage trackers. A write error is kept and raised on the training thread at its
next call (``on_error="raise"``), or warned about once (``"warn"``).
"""

from __future__ import annotations

import collections
import errno
import functools
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from trajhook.errors import TrajhookError
from trajhook.recording.nan import NonfiniteWatch
from trajhook.sinks.base import SinkSet
from trajhook.store import StoreWriter, is_disk_full, warn_dropped


class WriterThread(threading.Thread):
    """The one thread that writes the file and feeds the sinks; the training thread only queues.

    ``nonfinite`` is the Recorder's NaN policy (:mod:`trajhook.recording.nan`), already told what the setup run
    found; ``stage_trackers`` maps probe names to their :class:`~trajhook.analysis.online.StageTracker`.
    """

    def __init__(
        self,
        store: StoreWriter,
        sinks: SinkSet,
        flush_every_s: float,
        max_queue: int,
        on_error: str = "raise",
        *,
        nonfinite: NonfiniteWatch | None = None,
        stage_trackers: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(name="trajhook-writer", daemon=True)
        self.store = store
        self.on_error = on_error
        self.sinks = sinks
        self.flush_every_s = flush_every_s
        self.records: queue.Queue = queue.Queue(maxsize=max_queue)
        self.small: list[tuple[str, Any]] = []  # scalars and events: tiny, never block training
        self.small_lock = threading.Lock()
        self.drop_from_step: int | None = None
        self.session_start: int | None = None  # this session's first step, until the writer has taken it
        self.error: BaseException | None = None
        self.nonfinite = nonfinite or NonfiniteWatch()
        # probe name -> StageTracker (trajhook.analysis.online): opted in per probe; rebuilt from the store's records
        # before this session's first write, so a resumed run tracks as if it had gone straight through
        self.stage_trackers: dict[str, Any] = dict(stage_trackers or {})
        self._stage_events: set[tuple[int, str]] = set()  # (step, kind) of the stage events in the store
        # probe name -> its tracker's rebuild (the stored records, then the records that came meanwhile)
        self._rebuilding: dict[str, Iterator[list[tuple[int, str]]]] = {}
        self._waiting: dict[str, collections.deque] = {}  # probe name -> (step, outputs) fed after the rebuild
        self._stopping = threading.Event()

    def run(self) -> None:
        next_flush = time.monotonic() + self.flush_every_s
        while True:
            item = None
            try:
                try:  # while a tracker is rebuilt, do not wait: go on with the rebuild
                    timeout = max(0.0, min(0.2, next_flush - time.monotonic()))
                    item = self.records.get(block=not self._rebuilding, timeout=timeout)
                except queue.Empty:
                    item = None
                self._drain_small()
                if isinstance(item, FlushMarker):
                    self.store.flush()
                    item.done.set()
                elif item is not None:
                    self._write_record(*item)
                if self._rebuilding:
                    self._go_on_rebuilding(REBUILD_SLICE_S)
                if time.monotonic() >= next_flush:
                    self.store.flush()
                    next_flush = time.monotonic() + self.flush_every_s
                if self._stopping.is_set() and self.records.empty():
                    self._drain_small()
                    self._go_on_rebuilding(None)  # at close: to the end
                    self.store.flush()
                    return
            except BaseException as err:
                if not self._failed(err, item):
                    return

    def _failed(self, err: BaseException, item: Any) -> bool:
        """After a write error the store's handle is never touched again (HDF5 can crash on it later).

        ``on_error="raise"``: the error reaches the training thread at its next call; the writer stops.
        ``on_error="warn"``: one warning, then the writer goes on draining the queue (the sinks still
        get each record; the store ignores it), so training runs to its end. Returns whether to go on.
        """
        warned = self.store.failed
        self.store.abandon()  # committed rows are on disk; the file is left as a crash leaves it
        if is_disk_full(err):  # HDF5's own message runs over several lines: say it plainly
            err = OSError(errno.ENOSPC, "No space left on device")
        if self.on_error != "warn" or not isinstance(err, Exception):
            self.error = err  # surfaced on the training thread at the next call
            if isinstance(item, FlushMarker):  # after the error is set: flush() must not return as if committed
                item.done.set()
            return False
        if isinstance(item, FlushMarker):
            item.done.set()
        if warned:
            return True
        warnings.warn(
            f"Recorder: writing {str(self.store.path)!r} failed: {type(err).__name__}: {err}. Recording to the "
            "store stopped; training goes on. Everything committed before is intact. HINT: free disk space, "
            "then resume the store with a new Recorder on the same path.",
            stacklevel=1,
        )
        return True

    def _drain_small(self) -> None:
        """Apply a pending resume drop, then write the scalars and events queued so far."""
        with self.small_lock:  # taken together, so a drop never falls after this session's own rows
            drop, self.drop_from_step = self.drop_from_step, None
            start, self.session_start = self.session_start, None
            items, self.small = self.small, []
        if drop is not None:
            warn_dropped(self.store.path, drop, self.store.drop_from(drop, self._confirmed_from(drop)))
        if start is not None:  # this session's first write: the rows before it are what it continues
            self.store.start_session(start)
            self._rebuild_trackers()
        for kind, payload in items:
            if kind == "scalars":
                step, values = payload
                values = {k: float(v) for k, v in values.items()}  # a tensor's .item() waits here
                for name, value in values.items():
                    self.store.add_scalar(step, name, value)
                self.sinks.scalars(step, values)
            else:
                step, label = payload
                self.store.add_event(step, label)
                self.sinks.event(step, label)

    def _write_record(self, step: int, wall_time: float, host: dict, event: Any) -> None:
        if event is not None:
            event.synchronize()
        arrays = {p: {k: t.numpy() for k, t in outputs.items()} for p, outputs in host.items()}
        self.nonfinite.at_step(step, arrays)
        self.store.add_record(step, wall_time, arrays)
        self.sinks.record(step, arrays)
        self._track_stages(step, arrays)

    def _track_stages(self, step: int, arrays: dict) -> None:
        """Feed the opted-in probes' stage trackers; an event they confirm goes to the store and the sinks."""
        for probe, tracker in list(self.stage_trackers.items()):
            if probe in self._rebuilding:  # fed once the rebuild has caught up: a copy of the output it follows
                followed = {k: np.array(v) for k, v in arrays[probe].items() if k == tracker.output}
                self._waiting[probe].append((step, followed))
            else:
                self._feed_tracker(probe, functools.partial(_update, tracker, step, arrays[probe]))

    def _feed_tracker(self, probe: str, feed: Callable[[], list[tuple[int, str]]]) -> None:
        """Run ``feed()`` (a tracker's update or replay) and write the events it confirms, each once.

        An event already in the store (the same kind at the same step: a resumed session's tracker
        finds again what the session before it found) is not written twice.
        """
        try:
            found = feed()
        except Exception as err:  # a tracker never stops the writer: the store stays complete
            del self.stage_trackers[probe]
            warnings.warn(f"Recorder: the stage tracker of {probe!r} failed and is off: {err!r}", stacklevel=1)
            return
        from trajhook.analysis.online import parse_label  # imported once a tracker has found something

        for at_step, label in found:
            key = (at_step, parse_label(label)[0])
            if key not in self._stage_events:
                self._stage_events.add(key)
                self.store.add_event(at_step, label)
                self.sinks.event(at_step, label)

    def _rebuild_trackers(self) -> None:
        """At a session's first write, start rebuilding every stage tracker from the committed records before it.

        A resumed session's trackers then hold what they would had the run gone straight through
        (within each tracker's thinning, which decides which stored records are read), so they
        report the same events at the same steps. The rebuild runs on this thread a slice at a time
        (:meth:`_go_on_rebuilding`), between the session's records, which wait for it.
        """
        if not self.stage_trackers or self.store.failed:
            return
        from trajhook.analysis.online import parse_label

        self._stage_events = {
            (step, kind[0]) for step, label in self.store.committed_events() if (kind := parse_label(label))
        }
        steps = self.store.committed_steps()
        for probe, tracker in self.stage_trackers.items():
            tracker.reset()  # a probe object reused by a new Recorder: start from the store, not from memory
            read = functools.partial(self.store.committed_row, probe, tracker.output)
            self._waiting[probe] = collections.deque()
            self._rebuilding[probe] = _rebuild(tracker, steps, read, self._waiting[probe])

    def _go_on_rebuilding(self, budget_s: float | None) -> None:
        """Go on with the trackers' rebuilds for about ``budget_s`` seconds (None: to the end)."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        for probe, rebuilding in list(self._rebuilding.items()):
            done: list[bool] = []
            self._feed_tracker(probe, functools.partial(_advance, rebuilding, deadline, done))
            if done or probe not in self.stage_trackers:  # caught up (or failed and off)
                del self._rebuilding[probe], self._waiting[probe]

    @staticmethod
    def _confirmed_from(step: int) -> Callable[[int, str], bool]:
        """Whether a stored event is a stage event confirmed at ``step`` or later (a resume drops it)."""
        from trajhook.analysis.online import parse_label

        def confirmed_later(at_step: int, label: str) -> bool:
            parsed = parse_label(label)
            return parsed is not None and parsed[1] >= step

        return confirmed_later

    def put_small(self, kind: str, payload: Any) -> None:
        with self.small_lock:
            self.small.append((kind, payload))

    def stop(self) -> None:
        self._stopping.set()

    # -- called on the training thread ----------------------------------------------------------

    def put_record(self, item: Any) -> None:
        """Queue a record ``(step, wall_time, host, event)`` or a flush marker; blocks while the queue is full,
        never drops. A write error raised on this thread since is raised here."""
        while True:
            self.raise_if_failed()
            try:
                self.records.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def flush(self) -> None:
        """Wait until everything queued so far is written and committed."""
        done = threading.Event()
        self.put_record(FlushMarker(done))
        while not done.wait(0.05):
            self.raise_if_failed()
            if not self.is_alive():
                raise TrajhookError(
                    f"Recorder: the writer of {str(self.store.path)!r} stopped. HINT: create a new Recorder."
                )
        self.raise_if_failed()  # a flush that failed never returns as if it had committed

    def drop_from(self, step: int) -> None:
        """This session's first write is at ``step``: before it, drop the rows an earlier, longer run left from
        ``step`` on (a resume), and rebuild the stage trackers from the rows before it."""
        with self.small_lock:
            self.session_start = int(step)
            if any(self.store.counts):
                self.drop_from_step = int(step)

    def finish(self) -> None:
        """Write everything queued, then close the store (or leave it as a crash leaves it after an error)."""
        self.stop()
        self.join()
        if self.error is None:
            self.store.close()
        else:  # what was committed is on disk, the rest never was; the handle is never touched
            self.store.abandon()

    def raise_if_failed(self) -> None:
        """Carry a write error from this thread to the training thread, as a TrajhookError."""
        if self.error is not None:
            err = self.error
            raise TrajhookError(
                f"Recorder: writing {str(self.store.path)!r} failed: {type(err).__name__}: {err}. "
                "Everything committed before is intact. HINT: check disk space and permissions."
            ) from err


REBUILD_SLICE_S = 0.05
"""The longest the writer rebuilds trackers before it looks at the queue again."""


def _update(tracker: Any, step: int, outputs: dict[str, np.ndarray]) -> list[tuple[int, str]]:
    return tracker.update(step, outputs[tracker.output])


def _rebuild(
    tracker: Any, steps: np.ndarray, read: Callable[[int], np.ndarray], waiting: collections.deque
) -> Iterator[list[tuple[int, str]]]:
    """A tracker's rebuild, one record at a time: the stored records, then those that came meanwhile."""
    yield from tracker.replaying(steps, read)
    while waiting:
        yield _update(tracker, *waiting.popleft())


def _advance(
    rebuilding: Iterator[list[tuple[int, str]]], deadline: float | None, done: list[bool]
) -> list[tuple[int, str]]:
    """Run a rebuild until ``deadline`` (None: to its end); the events it found. Appends to ``done`` at the end."""
    found = []
    for events in rebuilding:
        found += events
        if deadline is not None and time.monotonic() >= deadline:
            return found
    done.append(True)
    return found


class FlushMarker:
    """Queued by ``WriterThread.flush``: the writer commits everything before it, then sets ``done``."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done
