"""A sink that talks to an outside service (W&B, TensorBoard) only from its own thread.

The writer thread hands each record, scalar and event to a bounded queue and returns at once;
the service's thread makes every call. A failed call is retried with exponential backoff; the
sink gives up only after ``give_up_after`` items in a row failed, or when one call hangs for
longer than ``call_timeout_s``. ``close`` waits at most ``close_timeout_s``. Whatever the
service missed (dropped on a full queue, failed, given up, left behind at close) is counted, by
kind, and said once, at close: the HDF5 store has it all.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe
from trajhook.sinks.base import Sink
from trajhook.sinks.panels import EVENT_KEY, Panels, Render, key_part, panels_for

KINDS = {"record": "records", "scalars": "scalar logs", "event": "events"}
"""What a sink is handed, each counted when sent and when missed (a scalar log: one step's scalars)."""


def _check_positive(owner: str, name: str, value: Any, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value < 0:
        kind = "integer" if integer else "number"
        raise TrajhookError(f"{owner}: {name}={value!r} is not a non-negative {kind}. HINT: e.g. {name}=3.")


class ServiceSink(Sink):
    """Base of the sinks that call an outside service; subclasses implement the ``_service_*`` methods.

    Args:
        close_timeout_s: the longest ``close`` waits for the service to take what is queued.
        call_timeout_s: a single call that runs longer than this is taken as hung: the sink stops
            sending (the hung call is left to finish on its daemon thread).
        max_retries: retries of a failed call, after waits of ``retry_backoff_s``, twice that, ...
        retry_backoff_s: the first wait before a retry.
        give_up_after: the sink stops after this many items in a row failed all their retries.
        max_queue: items waiting for the service; past that, items are dropped (and counted).
        pca_every_n_records: how often a PromptProbe's PCA-trajectory image is redrawn.
        image_every_s: at most one image per panel this often; the last record's images are
            drawn at close whatever this says, so the end of a run is never missing.
    """

    service = "the service"

    def __init__(
        self,
        *,
        close_timeout_s: float = 15.0,
        call_timeout_s: float = 60.0,
        max_retries: int = 3,
        retry_backoff_s: float = 0.5,
        give_up_after: int = 5,
        max_queue: int = 256,
        pca_every_n_records: int = 10,
        image_every_s: float = 5.0,
    ) -> None:
        owner = type(self).__name__
        _check_positive(owner, "image_every_s", image_every_s)
        for name, value in (("close_timeout_s", close_timeout_s), ("call_timeout_s", call_timeout_s)):
            _check_positive(owner, name, value)
        _check_positive(owner, "retry_backoff_s", retry_backoff_s)
        for name, value in (("max_retries", max_retries), ("give_up_after", give_up_after)):
            _check_positive(owner, name, value, integer=True)
        for name, value in (("max_queue", max_queue), ("pca_every_n_records", pca_every_n_records)):
            _check_positive(owner, name, value, integer=True)
            if value == 0:
                raise TrajhookError(f"{owner}: {name}=0 must be at least 1. HINT: e.g. {name}=10.")
        self.close_timeout_s = float(close_timeout_s)
        self.call_timeout_s = float(call_timeout_s)
        self.max_retries = int(max_retries)
        self.retry_backoff_s = float(retry_backoff_s)
        self.give_up_after = max(1, int(give_up_after))
        self.pca_every_n_records = int(pca_every_n_records)
        self.panels: list[Panels] = []
        self.sent = dict.fromkeys(KINDS, 0)  # items handed to this sink: records, scalar logs, events
        self.missed = dict.fromkeys(KINDS, 0)  # of those, the ones the service did not get
        self._queue: queue.Queue = queue.Queue(maxsize=int(max_queue))
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None  # when the running call started (None: idle)
        self._busy_with: str | None = None  # the kind of item of the running call
        self._failures_in_row = 0
        self._stopped_because: str | None = None  # set once the sink gives up
        self._last_error: BaseException | None = None
        self.image_every_s = float(image_every_s)
        self._last_image: dict[str, float] = {}
        self._broken_panels: set[str] = set()
        self._last_record: tuple[int, Mapping[str, Mapping[str, np.ndarray]]] | None = None
        self._last_record_complete = True
        self._count_lock = threading.Lock()  # records_missed grows on the writer's and the service's thread

    # -- the subclass's part: every call to the service, all on the service's thread -----------

    def _service_open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        """Connect (e.g. find or start the run) and declare what the keys mean. Raise to stop the sink."""

    def _service_write(self, step: int, items: Mapping[str, float | str | np.ndarray]) -> None:
        """Send scalars (floats), texts (str) and images (``(H, W, 3)`` uint8 arrays) at ``step``."""
        raise NotImplementedError

    def _service_finish(self) -> None:
        """Flush and release the service, after the last write."""

    # -- records, images and the end, the same for every service ----------------------------------

    def _record_items(self, step: int, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, Any]:
        """A record's scalars and its images due under the rate limit (drawn here, once, not per retry)."""
        items: dict[str, Any] = {}
        now = time.monotonic()
        complete = True
        for panels in self.panels:
            record = outputs[panels.probe]
            items.update(panels.scalars(record))
            for key, render in panels.images(step, record):
                if now - self._last_image.get(key, -np.inf) >= self.image_every_s:
                    self._last_image[key] = now
                    items.update(self._render(key, render))
                else:
                    complete = False
        self._last_record, self._last_record_complete = (step, outputs), complete
        return items

    def _closing_items(self) -> tuple[int, dict[str, Any]]:
        """The last record's images whatever the rate limit, and the trajectories over every record."""
        if self._last_record is None:
            return 0, {}
        step, outputs = self._last_record
        items: dict[str, Any] = {}
        if not self._last_record_complete:
            for panels in self.panels:
                if not panels.accumulates:  # images() of an accumulating panel would add the record twice
                    for key, render in panels.images(step, outputs[panels.probe]):
                        items.update(self._render(key, render))
        for key, render in (pair for p in self.panels for pair in p.final_images()):
            items.update(self._render(key, render))
        return step, items

    def _render(self, key: str, render: Render) -> dict[str, np.ndarray]:
        """``{key: image}``; a panel that cannot be drawn is warned about once and skipped, not retried."""
        if key in self._broken_panels:
            return {}
        try:
            return {key: render()}
        except Exception as err:
            self._broken_panels.add(key)
            warnings.warn(
                f"{type(self).__name__}: panel {key!r} cannot be drawn ({type(err).__name__}: {err}).", stacklevel=1
            )
            return {}

    # -- Sink interface (writer thread): queue and return -----------------------------------------

    def open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        self.panels = [panels_for(p, self.pca_every_n_records) for p in probes]
        self._thread = threading.Thread(target=self._work, name=f"trajhook-{type(self).__name__}", daemon=True)
        self._thread.start()
        self._put(("open", list(probes), dict(metadata)))

    @property
    def records_sent(self) -> int:
        return self.sent["record"]

    @property
    def records_missed(self) -> int:
        return self.missed["record"]

    def record(self, step: int, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self._send(("record", step, outputs))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._send(("scalars", step, dict(values)))

    def event(self, step: int, label: str) -> None:
        self._send(("event", step, label))

    def _send(self, item: tuple) -> None:
        """Queue a record, scalars or an event for the service; count it, and count it missed if dropped."""
        if self._thread is None:
            return  # off (e.g. W&B "auto" with no active run): nothing was meant to be sent
        self.sent[item[0]] += 1
        if not self._put(item):
            self._miss(item[0])

    def close(self) -> None:
        """Let the service take what is queued, waiting at most ``close_timeout_s``; then say what it missed."""
        deadline = time.monotonic() + self.close_timeout_s
        left_behind = False
        if self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put(("close",), timeout=max(0.0, deadline - time.monotonic()))
            self._thread.join(max(0.0, deadline - time.monotonic()))
            left_behind = self._thread.is_alive()
            if left_behind:  # what still waits is lost, and the item in a hung call
                for item in list(self._queue.queue):
                    self._miss(item[0])
                if self._busy_since is not None:
                    self._miss(self._busy_with)
        self._thread = None
        self._report(left_behind)

    # -- the service's thread -------------------------------------------------------------------

    def _put(self, item: tuple) -> bool:
        """Queue an item; False when the service will not get it (stopped, hung, or the queue is full)."""
        busy = self._busy_since
        if self._stopped_because is None and busy is not None and time.monotonic() - busy > self.call_timeout_s:
            self._stopped_because = f"a call hung for more than {self.call_timeout_s:g} s"
        if self._stopped_because is not None or self._thread is None:
            return False
        try:
            self._queue.put_nowait(item)
            return True
        except queue.Full:
            return False

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            kind, args = item[0], item[1:]
            if kind == "close":
                if self._stopped_because is None:
                    step, items = self._closing_items()
                    if items:
                        self._call(self._service_write, (step, items))
                    self._call(self._service_finish, ())
                return
            if self._stopped_because is not None:
                self._miss(kind)
                continue
            if kind == "open":
                if not self._call(self._service_open, args):
                    err = self._last_error
                    self._stopped_because = f"it could not start ({type(err).__name__}: {err})"
            elif kind == "record":
                step, outputs = args
                items = self._record_items(step, outputs)
                if items and not self._call(self._service_write, (step, items), "record"):
                    self._last_record_complete = False  # its images go again at close
            elif kind == "scalars":
                step, values = args
                items = {f"trajhook/{key_part(k, 80) or '_'}": float(v) for k, v in values.items()}
                self._call(self._service_write, (step, items), "scalars")
            else:
                step, label = args
                self._call(self._service_write, (step, {EVENT_KEY: label}), "event")

    def _call(self, method: Any, args: tuple, kind: str | None = None) -> bool:
        """One item (a record, scalars or an event: ``kind``; None for opening and closing), retried with
        backoff; counts what is missed and gives up after repeated failures."""
        for attempt in range(self.max_retries + 1):
            self._busy_with = kind
            self._busy_since = time.monotonic()
            try:
                method(*args)
                self._failures_in_row = 0
                return True
            except Exception as err:  # a service outage, a full disk: never reaches training
                self._last_error = err
            finally:
                self._busy_since = None
            if attempt < self.max_retries:
                time.sleep(self.retry_backoff_s * 2**attempt)
        self._miss(kind)
        self._failures_in_row += 1
        if self._failures_in_row >= self.give_up_after and self._stopped_because is None:
            err = self._last_error
            self._stopped_because = (
                f"{self._failures_in_row} items in a row failed after {self.max_retries} retries each; "
                f"last error {type(err).__name__}: {err}"
            )
        return False

    def _miss(self, kind: str | None) -> None:
        """Count one item of ``kind`` missed (opening, closing and None are not counted)."""
        if kind in self.missed:
            with self._count_lock:
                self.missed[kind] += 1

    def _report(self, left_behind: bool) -> None:
        """The one warning: how many records the service missed, and why."""
        reasons = []
        if self._stopped_because is not None:
            reasons.append(f"stopped sending because {self._stopped_because}")
        elif self._last_error is not None and any(self.missed.values()):
            reasons.append(f"last error {type(self._last_error).__name__}: {self._last_error}")
        if left_behind:
            reasons.append(f"it did not finish within close_timeout_s={self.close_timeout_s:g} s and was left behind")
        if any(self.missed.values()) or reasons:
            also = [f"{self.missed[k]} of {self.sent[k]} {KINDS[k]}" for k in ("scalars", "event") if self.missed[k]]
            warnings.warn(
                f"{type(self).__name__}: {self.service} missed {self.missed['record']} of {self.sent['record']} "
                f"records ({'; '.join(reasons) or 'its queue was full'})"
                + (f", and {' and '.join(also)}" if also else "")
                + ". Training went on and the HDF5 store has every record, scalar and event.",
                stacklevel=3,
            )
