"""The Recorder: runs the probes every N steps without disturbing training, and hands records
to a writer thread that owns the HDF5 store and the live sinks.

The training thread only runs the probes' forward passes and starts the copies off the device;
everything else (waiting for copies, numpy conversion, HDF5, W&B) happens on the writer thread.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import math
import numbers
import operator
import os
import queue
import random
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajhook import distributed
from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe, numpy_dtype
from trajhook.schedule import Schedule, as_schedule
from trajhook.sinks.base import Sink, SinkSet
from trajhook.sinks.resolve import resolve_sinks
from trajhook.store import (
    EVENT_LABEL_BYTES,
    SCALAR_NAME_BYTES,
    StoreWriter,
    _dump_json,
    is_disk_full,
    open_for_reading,
    warn_dropped,
)

MAX_STEP = 2**63 - 1  # steps are stored as int64

_open_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _close_open_recorders() -> None:  # a forgotten close() must not lose buffered rows
    for recorder in list(_open_recorders):
        with contextlib.suppress(Exception):
            recorder.close()


def check_recorder_args(path: str | os.PathLike, probes: Sequence[Probe], every_n_steps: Any) -> Path:
    """Checks that need no model and no run; shared by the Recorder and the integrations."""
    as_schedule(every_n_steps)  # an int, log_spaced(...), a list of steps or a callable (see trajhook.schedule)
    if isinstance(probes, Probe) or not isinstance(probes, Sequence) or not probes:
        raise TrajhookError(
            f"Recorder: probes={probes!r} is not a non-empty list of probes. HINT: pass e.g. [TensorProbe(...)]."
        )
    names = [getattr(p, "name", None) for p in probes]
    for probe in probes:
        if not isinstance(probe, Probe):
            raise TrajhookError(
                f"Recorder: {probe!r} is not a trajhook Probe. HINT: subclass trajhook.Probe, or wrap "
                "fixed inputs in TensorProbe(name, inputs)."
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TrajhookError(
            f"Recorder: probe names {duplicates} are used more than once. "
            "HINT: give each probe its own name=, e.g. MazeProbe(seed=1, name='maze_seed1')."
        )
    if not isinstance(path, str | os.PathLike) or "\0" in os.fspath(path):
        raise TrajhookError(
            f"Recorder: path={path!r} is not a file path. HINT: pass a str or pathlib.Path, e.g. 'runs/log.h5'."
        )
    path = Path(path)
    if not distributed.is_writer():
        return path  # another rank writes the store: this one never touches the file
    if path.is_dir():
        raise TrajhookError(f"Recorder: path {str(path)!r} is a directory. HINT: pass a file path, e.g. 'runs/log.h5'.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrajhookError(
            f"Recorder: cannot create the folder {str(path.parent)!r} ({err.strerror}). "
            "HINT: choose a path in a writable folder."
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrajhookError(f"Recorder: path {str(path)!r} is not writable. HINT: choose a path in a writable folder.")
    if path.exists() and path.stat().st_size > 0:
        open_for_reading(path).close()  # raises if it is not a trajhook store
    return path


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def probing(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad inside; every module's train flag and all RNG states restored after.

    >>> net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(2)).train()
    >>> _ = net[1].eval()  # a mixed state, which `model.train()` at the end would not restore
    >>> before = torch.random.get_rng_state()
    >>> with probing(net):
    ...     _ = torch.rand(3), net.training
    >>> net[0].training, net[1].training, torch.equal(before, torch.random.get_rng_state())
    (True, False, True)
    """
    modes = [(module, module.training) for module in model.modules()]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_rng = np.random.get_state()
    python_rng = random.getstate()
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(numpy_rng)
        random.setstate(python_rng)


def _start_copy_to_host(record: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[dict, Any]:
    """Start device-to-host copies without waiting; returns host tensors and a CUDA event or None."""
    host: dict[str, dict[str, torch.Tensor]] = {}
    on_cuda = False
    for probe, outputs in record.items():
        host[probe] = {}
        for key, tensor in outputs.items():
            tensor = tensor.detach()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            if tensor.device.type == "cuda":
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host[probe][key] = pinned.copy_(tensor, non_blocking=True)
                on_cuda = True
            elif tensor.device.type == "cpu":
                host[probe][key] = tensor.clone()  # the probe may return a view of a live tensor
            else:
                host[probe][key] = tensor.to("cpu")
    event = None
    if on_cuda:
        event = torch.cuda.Event()
        event.record()
    return host, event


def _new_nonfinite(array: np.ndarray, at_setup: np.ndarray | None) -> bool:
    """Whether ``array`` is NaN or inf anywhere the probe's setup run was finite."""
    nonfinite = ~np.isfinite(array)
    if at_setup is not None:
        nonfinite &= ~at_setup
    return bool(nonfinite.any())


def _check_options(metadata: Any, overwrite: Any, flush_every_s: Any, max_queue: Any, forward_context: Any) -> None:
    """The Recorder's keyword arguments, checked once at construction."""
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise TrajhookError(
                f"Recorder: metadata={metadata!r:.80} is not a dict with str keys. "
                "HINT: pass e.g. metadata={'lr': 3e-4}."
            )
        _dump_json(dict(metadata), "Recorder metadata")
    if not isinstance(overwrite, bool | np.bool_):
        raise TrajhookError(f"Recorder: overwrite={overwrite!r} is not a bool. HINT: pass overwrite=True or False.")
    if (
        isinstance(flush_every_s, bool)
        or not isinstance(flush_every_s, numbers.Real)
        or not math.isfinite(flush_every_s)
        or flush_every_s <= 0
    ):
        raise TrajhookError(
            f"Recorder: flush_every_s={flush_every_s!r} is not a positive number of seconds. "
            "HINT: pass e.g. flush_every_s=5.0."
        )
    if isinstance(max_queue, bool) or not isinstance(max_queue, int | np.integer) or max_queue <= 0:
        raise TrajhookError(f"Recorder: max_queue={max_queue!r} is not a positive integer. HINT: e.g. max_queue=8.")
    if forward_context is not None and not callable(forward_context):
        raise TrajhookError(
            f"Recorder: forward_context={forward_context!r} is not callable. HINT: pass a function that returns a "
            "context manager, e.g. forward_context=lambda: torch.autocast('cpu'), or leave it out."
        )


def _check_text(who: str, text: Any, max_bytes: int) -> None:
    """A scalar name or event label: a non-empty str of at most ``max_bytes`` UTF-8 bytes, with no NUL."""
    problem = None
    if not isinstance(text, str) or not text:
        problem = "is not a non-empty string"
    elif "\0" in text:
        problem = "contains a NUL character, which the store cannot hold"
    else:
        try:
            if len(text.encode()) > max_bytes:
                problem = f"is over {max_bytes} bytes"
        except UnicodeEncodeError:
            problem = "is not valid Unicode (a lone surrogate)"
    if problem:
        raise TrajhookError(f"{who} {text!r:.80} {problem}. HINT: pass a short readable text, e.g. 'LR drop'.")


def _checked_scalar(name: str, value: Any) -> float | torch.Tensor:
    """A real number as a float, or a one-element tensor detached and copied (read off the device later)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TrajhookError(
                f"Recorder.log_scalars: scalar {name!r} has shape {tuple(value.shape)}. "
                "HINT: pass one number, e.g. loss=loss.detach()."
            )
        if value.is_complex() or value.layout != torch.strided:
            raise TrajhookError(
                f"Recorder.log_scalars: scalar {name!r} is a {value.dtype} {value.layout} tensor; the store holds "
                "real numbers. HINT: pass e.g. value.abs() or value.real."
            )
        return value.detach().clone()  # a running total updated in place must log its value now
    if isinstance(value, complex | np.complexfloating):
        raise TrajhookError(
            f"Recorder.log_scalars: scalar {name}={value!r} is complex; the store holds real numbers. "
            "HINT: pass e.g. abs(value) or value.real."
        )
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise TrajhookError(f"Recorder.log_scalars: scalar {name}={value!r:.80} is not a number. HINT: pass a float.")
    try:
        return float(value)
    except OverflowError:
        raise TrajhookError(
            f"Recorder.log_scalars: scalar {name}={value} is too large for a float64. HINT: pass a float."
        ) from None


class _Writer(threading.Thread):
    """The one thread that writes the file and feeds the sinks."""

    def __init__(
        self, store: StoreWriter, sinks: SinkSet, flush_every_s: float, max_queue: int, on_error: str = "raise"
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
        self.error: BaseException | None = None
        self.nonfinite_warned: set[str] = set()
        self.setup_nonfinite: dict[str, dict[str, np.ndarray]] = {}  # e.g. NaN padding, by design
        self.stage_trackers: dict[str, Any] = {}  # probe name -> StageTracker (trajhook.analysis.online)
        self._stopping = threading.Event()

    def run(self) -> None:
        next_flush = time.monotonic() + self.flush_every_s
        while True:
            item = None
            try:
                try:
                    item = self.records.get(timeout=max(0.0, min(0.2, next_flush - time.monotonic())))
                except queue.Empty:
                    item = None
                self._drain_small()
                if isinstance(item, _FlushMarker):
                    self.store.flush()
                    item.done.set()
                elif item is not None:
                    self._write_record(*item)
                if time.monotonic() >= next_flush:
                    self.store.flush()
                    next_flush = time.monotonic() + self.flush_every_s
                if self._stopping.is_set() and self.records.empty():
                    self._drain_small()
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
            if isinstance(item, _FlushMarker):  # after the error is set: flush() must not return as if committed
                item.done.set()
            return False
        if isinstance(item, _FlushMarker):
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
            items, self.small = self.small, []
        if drop is not None:
            warn_dropped(self.store.path, drop, self.store.drop_from(drop))
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
        for probe, outputs in arrays.items():
            if probe not in self.nonfinite_warned:
                expected = self.setup_nonfinite.get(probe, {})
                bad = [k for k, a in outputs.items() if a.dtype.kind == "f" and _new_nonfinite(a, expected.get(k))]
                if bad:
                    self.nonfinite_warned.add(probe)
                    warnings.warn(
                        f"Recorder: probe {probe!r} produced NaN or inf in {bad} at step {step}; stored as is "
                        "(warned once per probe).",
                        stacklevel=1,
                    )
        self.store.add_record(step, wall_time, arrays)
        self.sinks.record(step, arrays)
        self._track_stages(step, arrays)

    def _track_stages(self, step: int, arrays: dict) -> None:
        """Feed the opted-in probes' stage trackers; an event they confirm goes to the store and the sinks."""
        for probe, tracker in list(self.stage_trackers.items()):
            try:
                found = tracker.update(step, arrays[probe][tracker.output])
            except Exception as err:  # a tracker never stops the writer: the store stays complete
                del self.stage_trackers[probe]
                warnings.warn(f"Recorder: the stage tracker of {probe!r} failed and is off: {err!r}", stacklevel=1)
                continue
            for at_step, label in found:
                self.store.add_event(at_step, label)
                self.sinks.event(at_step, label)

    def put_small(self, kind: str, payload: Any) -> None:
        with self.small_lock:
            self.small.append((kind, payload))

    def stop(self) -> None:
        self._stopping.set()


class Recorder:
    """Run a fixed probe set through the model every ``every_n_steps`` steps and log it to HDF5.

    One line in a training loop: ``rec.maybe_record(model, step, loss=loss)``. Scalars are logged
    at every call; the probes run when the step is due (for an int N: the first call, then
    whenever ``step - last_recorded >= N``; see :mod:`trajhook.schedule`). Each probe run is in eval
    mode under ``no_grad``, and restores every module's train flag and the RNG states of torch,
    numpy and Python, so training is bit-identical with and without the Recorder.

    Steps are ints in 0..2**63-1 (numpy ints and integer 0-d tensors too) that never decrease
    within one Recorder, table by table (records, scalars, events): a step below the last one it
    wrote to that table, or a second record at the same step, is a :class:`TrajhookError` at the
    call. A new Recorder on the same path (a resume from an
    earlier checkpoint) may start lower; its first write drops the rows from that step on.

    Args:
        path: the HDF5 store. An existing store is resumed: rows at or after the first step this
            Recorder writes are dropped (no ghost rows after restoring an earlier checkpoint).
        probes: the probes, with unique names.
        every_n_steps: the recording cadence, in the caller's steps: an int, ``trajhook.log_spaced(...)``,
            a list of steps, or a callable ``step -> bool`` (see :mod:`trajhook.schedule`).
        metadata: JSON-serializable facts about the run, stored as a root attribute.
        overwrite: replace an existing store instead of resuming it.
        flush_every_s: how often buffered rows are written and committed.
        max_queue: records waiting for the writer before ``record`` blocks (memory bound).
        wandb: ``"auto"`` logs to the active ``wandb.run`` if any; ``True`` starts one if needed;
            ``False`` never logs; or a run object. See :class:`trajhook.sinks.wandb.WandbSink`.
        tensorboard: a log folder, a ``SummaryWriter`` or a
            :class:`~trajhook.sinks.tensorboard.TensorBoardSink` for live TensorBoard panels.
        sinks: further sinks, each receiving every record, scalar and event.
        forward_context: a callable returning a context manager wrapped around each probe run,
            e.g. Lightning's precision context.
        on_error: what a write error (e.g. a full disk) does: ``"raise"`` raises a TrajhookError at
            the next call; ``"warn"`` warns once and training goes on without the store. Either
            way everything committed before stays loadable and the process exits normally.

    >>> import tempfile
    >>> from trajhook import TensorProbe
    >>> model = torch.nn.Linear(2, 1)
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> with Recorder(path, [TensorProbe("lin", torch.ones(1, 2))], every_n_steps=2, wandb=False) as rec:
    ...     rec.setup(model)  # runs each probe once: bad inputs fail here, before training
    ...     for step in range(5):
    ...         recorded = rec.maybe_record(model, step, loss=0.5)
    >>> rec.recorded_steps
    [0, 2, 4]
    """

    def __init__(
        self,
        path: str | os.PathLike,
        probes: Sequence[Probe],
        every_n_steps: int | Schedule | Sequence[int] | Callable[[int], bool] = 100,
        *,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        flush_every_s: float = 5.0,
        max_queue: int = 8,
        wandb: Any = "auto",
        tensorboard: Any = None,
        sinks: Sequence[Sink] = (),
        forward_context: Callable[[], AbstractContextManager] | None = None,
        on_error: str = "raise",
    ) -> None:
        self.path = check_recorder_args(path, probes, every_n_steps)
        _check_options(metadata, overwrite, flush_every_s, max_queue, forward_context)
        if on_error not in ("raise", "warn"):
            raise TrajhookError(
                f"Recorder: on_error={on_error!r} is not 'raise' or 'warn'. HINT: 'raise' stops training at a "
                "write error (e.g. a full disk); 'warn' warns once and lets training go on without the store."
            )
        self.on_error = on_error
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.schedule = as_schedule(every_n_steps)
        self.metadata = dict(metadata or {})
        self.overwrite = overwrite
        self.flush_every_s = float(flush_every_s)
        self.max_queue = max_queue
        self.forward_context = forward_context or contextlib.nullcontext
        self._sinks = SinkSet(resolve_sinks(wandb=wandb, tensorboard=tensorboard, sinks=sinks))
        self._writer: _Writer | None = None
        self._early: list[tuple[str, Any]] = []  # scalars and events logged before setup
        self._started = False
        self._closed = False
        self._set_up = False
        self._writes = distributed.is_writer()  # asked again at setup, once the process group exists
        self.recorded_steps: list[int] = []
        # The highest step this session wrote, per table: each table's steps never decrease, which is
        # what a resume's drop relies on. Tables are apart because a framework logs the loss at the
        # step whose weights computed it, after the record of the next step (HF's on_log).
        self._last_steps = {"record": 0, "scalar": 0, "event": 0}
        self._last_recorded: int | None = None  # this session's last record
        self._setup_dtypes: dict[str, dict[str, torch.dtype]] = {}
        self._scalar_names: set[str] = set()  # names already checked

    # -- the public hooks -----------------------------------------------------------------------

    def setup(self, model: torch.nn.Module) -> None:
        """Set up every probe on the model's device, run each once, and open the store.

        Called by the first ``record``; call it yourself before training so that bad inputs
        fail at once. Calling it again does nothing. Under ``torch.distributed`` only global rank
        zero opens the store; see :mod:`trajhook.distributed` for which ranks run the probes.
        """
        if self._set_up:
            return
        self._check_open("setup")
        self._check_forward_context()
        model = distributed.probe_target(model)
        self._writes = distributed.is_writer()
        if not distributed.runs_probe(model):
            self._set_up, self._early = True, []
            return
        device = model_device(model)
        setup_nonfinite, warned = {}, set()
        for probe in self.probes:
            with probing(model), self.forward_context():
                record = self._first_run(probe, model, device)
            self._setup_dtypes[probe.name] = {k: t.dtype for k, t in record.items()}
            nonfinite = {
                k: ~np.isfinite(t.detach().float().cpu().numpy()) for k, t in record.items() if t.is_floating_point()
            }
            missing = {k for k, spec in probe.outputs.items() if spec.nan_marks_missing}
            setup_nonfinite[probe.name] = {k: a for k, a in nonfinite.items() if k in missing}
            bad = [k for k, a in nonfinite.items() if k not in missing and a.any()]
            if bad and self._writes:
                warned.add(probe.name)
                warnings.warn(
                    f"Recorder: probe {probe.name!r} produced NaN or inf in {bad} at setup, before training; stored "
                    "as is (warned once per probe). HINT: check the model's weights and the probe's inputs; if NaN "
                    "marks missing values by design, declare the output with nan_marks_missing=True.",
                    stacklevel=2,
                )
        if not self._writes:  # a sharded model: this rank joined the forwards; rank zero writes
            self._set_up, self._early = True, []
            return
        schema = {p.name: p.outputs for p in self.probes}
        store = StoreWriter(
            self.path,
            schema,
            {p.name: p.metadata for p in self.probes},
            metadata=self.metadata,
            overwrite=self.overwrite,
            kinds={p.name: p.kind for p in self.probes},
        )
        self._sinks.open(self.probes, self.metadata)
        self._writer = _Writer(store, self._sinks, self.flush_every_s, self.max_queue, self.on_error)
        self._writer.setup_nonfinite = setup_nonfinite
        self._writer.nonfinite_warned |= warned
        trackers = {p.name: p.stage_tracker for p in self.probes if getattr(p, "stage_tracker", None) is not None}
        self._writer.stage_trackers = trackers  # opted in per probe (trajhook.analysis.online)
        self._writer.start()
        self._set_up = True
        _open_recorders.add(self)
        early, self._early = self._early, []
        for kind, payload in early:
            self._put_small(kind, payload)

    def maybe_record(self, model: torch.nn.Module, step: int, **scalars: float | torch.Tensor) -> bool:
        """Log ``scalars`` at ``step``, and record the probes if ``step`` is due. Returns whether it recorded."""
        if type(step) is not int or step < self._last_steps["record"]:  # the one check on the hot path
            step = self._checked_step(step, "maybe_record", "record")
        if scalars:
            self.log_scalars(step, **scalars)
        last = self.recorded_steps[-1] if self.recorded_steps else None
        if last == step or not self.schedule.is_due(step, last):
            return False
        self.record(model, step)
        return True

    def record(self, model: torch.nn.Module, step: int) -> None:
        """Run every probe now and queue the record for the writer."""
        self._check_open("record")
        step = self._checked_step(step, "record", "record")
        if step == self._last_recorded:
            raise TrajhookError(
                f"Recorder.record: step {step} was already recorded in this session. HINT: pass the next step, "
                "or call maybe_record(model, step), which skips a step that is already recorded."
            )
        model = distributed.probe_target(model)
        self.setup(model)
        if self._writer is None:  # another rank writes
            self._follow(model, step)
            return
        self._start(step)
        record = {}
        with probing(model), self.forward_context():
            for probe in self.probes:
                record[probe.name] = self._checked(probe, self._run(probe, model, step), step)
            host, event = _start_copy_to_host(record)
        self._put_record((step, time.time(), host, event))
        self._last_steps["record"] = self._last_recorded = step
        if not self.recorded_steps or self.recorded_steps[-1] != step:
            self.recorded_steps.append(step)

    def log_scalars(self, step: int, **scalars: float | torch.Tensor) -> None:
        """Log scalars (real numbers or one-element tensors, read off the device by the writer) at ``step``."""
        self._check_open("log_scalars")
        step = self._checked_step(step, "log_scalars", "scalar")
        values = {}
        for name, value in scalars.items():
            if name not in self._scalar_names:
                _check_text("Recorder.log_scalars: scalar name", name, SCALAR_NAME_BYTES)
                self._scalar_names.add(name)
            values[name] = _checked_scalar(name, value)
        self._put_small("scalars", (step, values))
        self._last_steps["scalar"] = step

    def mark(self, step: int, label: str) -> None:
        """Mark an event such as ``"fine-tuning starts"`` at ``step``; plots draw it as a line."""
        self._check_open("mark")
        step = self._checked_step(step, "mark", "event")
        _check_text("Recorder.mark: label", label, EVENT_LABEL_BYTES)
        self._put_small("event", (step, label))
        self._last_steps["event"] = step

    def flush(self) -> None:
        """Wait until everything queued so far is written and committed."""
        self._check_open("flush")
        if self._writer is None:
            return
        done = threading.Event()
        self._put_record(_FlushMarker(done))
        while not done.wait(0.05):
            self._raise_if_writer_failed()
            if not self._writer.is_alive():
                raise TrajhookError(f"Recorder: the writer of {str(self.path)!r} stopped. HINT: create a new Recorder.")
        self._raise_if_writer_failed()  # a flush that failed never returns as if it had committed

    def close(self) -> None:
        """Write everything queued, close the store and the sinks. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        _open_recorders.discard(self)
        if self._writer is None:
            if not self._writes:
                return  # this rank never opened the store or the sinks
            if self._early:
                warnings.warn(
                    f"Recorder: {len(self._early)} scalar/event call(s) were not written: no record ever ran, so "
                    f"{str(self.path)!r} was never opened. HINT: call rec.setup(model) before training.",
                    stacklevel=2,
                )
            self._sinks.close()
            return
        self._writer.stop()
        self._writer.join()
        try:
            if self._writer.error is None:
                self._writer.store.close()
            else:  # what was committed is on disk, the rest never was; the handle is never touched
                self._writer.store.abandon()
        finally:
            self._sinks.close()
        self._raise_if_writer_failed()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        """What a framework checkpoint should carry to resume this Recorder."""
        return {"recorded_steps": list(self.recorded_steps)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.recorded_steps = list(state.get("recorded_steps", []))

    # -- helpers --------------------------------------------------------------------------------

    def _check_open(self, method: str) -> None:
        if self._closed:
            raise TrajhookError(
                f"Recorder.{method} after close(): {str(self.path)!r} is closed. "
                "HINT: create a new Recorder on the same path; it resumes the store."
            )

    def _checked_step(self, step: Any, method: str, table: str) -> int:
        """``step`` as an int in [0, 2**63), not below the last step this session wrote to ``table``."""
        if type(step) is not int:
            try:
                if isinstance(step, bool | np.bool_):
                    raise TypeError
                step = operator.index(step)  # numpy ints and integer 0-d tensors too
            except TypeError:
                raise TrajhookError(
                    f"Recorder.{method}: step={step!r} is not an integer. "
                    "HINT: pass the optimizer step as an int, e.g. trainer.global_step."
                ) from None
        if not 0 <= step <= MAX_STEP:
            raise TrajhookError(
                f"Recorder.{method}: step={step} is outside 0..2**63-1, the range the store holds. "
                "HINT: pass the optimizer step, counted from 0."
            )
        if step < self._last_steps[table]:
            raise TrajhookError(
                f"Recorder.{method}: step {step} is below step {self._last_steps[table]}, which this session already "
                f"wrote to its {table}s. "
                "HINT: pass steps that never decrease (e.g. the optimizer step); to go back to an earlier "
                "checkpoint, create a new Recorder on the same path: it resumes the store and drops the rows "
                "from the first step it writes on."
            )
        return step

    @staticmethod
    def _run(probe: Probe, model: torch.nn.Module, step: int) -> Any:
        """``probe.run(model)``; an error names the probe and the step."""
        try:
            return probe.run(model)
        except TrajhookError as err:
            raise TrajhookError(f"{err} (at step {step})") from err
        except Exception as err:
            raise TrajhookError(
                f"{type(probe).__name__} {probe.name!r} failed at step {step}: {type(err).__name__}: {err}. "
                "HINT: the probe ran at setup; check what changed in the model since."
            ) from err

    def _check_forward_context(self) -> None:
        context = self.forward_context()
        if not (hasattr(context, "__enter__") and hasattr(context, "__exit__")):
            raise TrajhookError(
                f"Recorder: forward_context() returned {type(context).__name__}, not a context manager. "
                "HINT: pass a callable that returns one, e.g. forward_context=lambda: torch.autocast('cpu')."
            )

    def _first_run(self, probe: Probe, model: torch.nn.Module, device: torch.device) -> dict[str, torch.Tensor]:
        where = f"{type(probe).__name__} {probe.name!r}"
        try:
            probe.setup(model, device)
            record = probe.run(model)
        except TrajhookError:
            raise
        except Exception as err:
            raise TrajhookError(
                f"{where} failed on its first run at setup, before training: {type(err).__name__}: {err}. "
                "HINT: check that the probe's inputs fit the model (shape, dtype, device)."
            ) from err
        if not probe.outputs:
            raise TrajhookError(f"{where} declares no outputs. HINT: call self.add_output(...) in __init__ or setup.")
        return self._checked(probe, record, step=None)

    def _checked(self, probe: Probe, record: Any, step: int | None) -> dict[str, torch.Tensor]:
        when = "at setup" if step is None else f"at step {step}"
        where = f"{type(probe).__name__} {probe.name!r}"
        if not isinstance(record, Mapping):
            raise TrajhookError(
                f"{where}.run returned {type(record).__name__} {when}; it must return a dict of tensors. "
                "HINT: return {output name: tensor} for every output declared with add_output."
            )
        declared = probe.outputs
        if set(record) != set(declared):
            raise TrajhookError(
                f"{where}.run returned {sorted(record)} {when}, but declares {sorted(declared)}. "
                "HINT: return exactly the outputs declared with add_output."
            )
        setup_dtypes = self._setup_dtypes.get(probe.name, {})
        for key, spec in declared.items():
            value = record[key]
            if isinstance(value, torch.Tensor) and value.layout != torch.strided:
                raise TrajhookError(
                    f"{where} output {key!r} is a {value.layout} tensor {when}; the store holds dense arrays. "
                    "HINT: return value.to_dense()."
                )
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != spec.shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TrajhookError(
                    f"{where} output {key!r} is {got} {when}, declared {spec.describe()}. "
                    "HINT: every record must have the declared shape."
                )
            if step is not None and value.dtype != setup_dtypes.get(key, value.dtype):
                raise TrajhookError(
                    f"{where} output {key!r} is {value.dtype} {when}, but was {setup_dtypes[key]} at setup. "
                    f"HINT: return the same dtype at every record, e.g. value.to({setup_dtypes[key]})."
                )
            if step is None and not np.can_cast(numpy_dtype(value.dtype), spec.dtype, "same_kind"):
                raise TrajhookError(
                    f"{where} output {key!r} is {value.dtype} {when}, declared {spec.describe()}: storing it would "
                    f"change its values. HINT: return {spec.dtype} values, or declare the dtype the output has."
                )
        return dict(record)

    def _start(self, step: int) -> None:
        """On the first write of this session, drop rows a longer earlier run left from ``step`` on."""
        if not self._started:
            self._started = True
            assert self._writer is not None
            if any(self._writer.store.counts):
                with self._writer.small_lock:
                    self._writer.drop_from_step = int(step)

    def _follow(self, model: torch.nn.Module, step: int) -> None:
        """On a rank that does not write: join the probe forwards if the parameters are sharded."""
        if distributed.runs_probe(model):
            with probing(model), self.forward_context():
                for probe in self.probes:
                    probe.run(model)
        self._last_steps["record"] = self._last_recorded = step  # the same step checks on every rank
        if not self.recorded_steps or self.recorded_steps[-1] != step:
            self.recorded_steps.append(step)  # the same cadence on every rank

    def _put_small(self, kind: str, payload: Any) -> None:
        if not self._writes:
            return  # one store and one set of panels: rank zero's
        if self._writer is None:  # before setup: keep it until the store is open
            self._early.append((kind, payload))
            return
        self._start(payload[0])
        self._raise_if_writer_failed()
        self._writer.put_small(kind, payload)

    def _put_record(self, item: Any) -> None:
        """Queue a record (or a flush marker); blocks while the queue is full, never drops."""
        assert self._writer is not None
        while True:
            self._raise_if_writer_failed()
            try:
                self._writer.records.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _raise_if_writer_failed(self) -> None:
        if self._writer is not None and self._writer.error is not None:
            err = self._writer.error
            raise TrajhookError(
                f"Recorder: writing {str(self.path)!r} failed: {type(err).__name__}: {err}. "
                "Everything committed before is intact. HINT: check disk space and permissions."
            ) from err

    def __repr__(self) -> str:
        names = [p.name for p in self.probes]
        return f"Recorder({str(self.path)!r}, probes={names}, every_n_steps={self.every_n_steps})"


class _FlushMarker:
    """Queued by ``Recorder.flush``: the writer commits everything before it, then sets ``done``."""

    def __init__(self, done: threading.Event) -> None:
        self.done = done
