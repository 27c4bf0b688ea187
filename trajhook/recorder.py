"""The Recorder: runs the probes every N steps without disturbing training, and hands records
to a writer thread that owns the HDF5 store and the live sinks.

The training thread only runs the probes' forward passes and starts the copies off the device;
everything else (waiting for copies, numpy conversion, HDF5, W&B) happens on the writer thread.
"""

from __future__ import annotations

import atexit
import contextlib
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
from trajhook.probes.base import Probe
from trajhook.sinks.base import Sink, SinkSet
from trajhook.store import EVENT_LABEL_BYTES, SCALAR_NAME_BYTES, StoreWriter, open_for_reading, warn_dropped

_open_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _close_open_recorders() -> None:  # a forgotten close() must not lose buffered rows
    for recorder in list(_open_recorders):
        with contextlib.suppress(Exception):
            recorder.close()


def check_recorder_args(path: str | os.PathLike, probes: Sequence[Probe], every_n_steps: int) -> Path:
    """Checks that need no model and no run; shared by the Recorder and the integrations."""
    if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps <= 0:
        raise TrajhookError(
            f"Recorder: every_n_steps={every_n_steps!r} is not a positive integer. "
            "HINT: pass e.g. every_n_steps=100 to record every 100 optimizer steps."
        )
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


class _Writer(threading.Thread):
    """The one thread that writes the file and feeds the sinks."""

    def __init__(self, store: StoreWriter, sinks: SinkSet, flush_every_s: float, max_queue: int) -> None:
        super().__init__(name="trajhook-writer", daemon=True)
        self.store = store
        self.sinks = sinks
        self.flush_every_s = flush_every_s
        self.records: queue.Queue = queue.Queue(maxsize=max_queue)
        self.small: list[tuple[str, Any]] = []  # scalars and events: tiny, never block training
        self.small_lock = threading.Lock()
        self.drop_from_step: int | None = None
        self.error: BaseException | None = None
        self.nonfinite_warned: set[str] = set()
        self.setup_nonfinite: dict[str, dict[str, np.ndarray]] = {}  # e.g. NaN padding, by design
        self._stopping = threading.Event()

    def run(self) -> None:
        next_flush = time.monotonic() + self.flush_every_s
        try:
            while True:
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
        except BaseException as err:  # surfaced on the training thread at the next call
            self.error = err

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

    def put_small(self, kind: str, payload: Any) -> None:
        with self.small_lock:
            self.small.append((kind, payload))

    def stop(self) -> None:
        self._stopping.set()


class Recorder:
    """Run a fixed probe set through the model every ``every_n_steps`` steps and log it to HDF5.

    One line in a training loop: ``rec.maybe_record(model, step, loss=loss)``. Scalars are logged
    at every call; the probes run when ``step % every_n_steps == 0``. Each probe run is in eval
    mode under ``no_grad``, and restores every module's train flag and the RNG states of torch,
    numpy and Python, so training is bit-identical with and without the Recorder.

    Args:
        path: the HDF5 store. An existing store is resumed: rows at or after the first step this
            Recorder writes are dropped (no ghost rows after restoring an earlier checkpoint).
        probes: the probes, with unique names.
        every_n_steps: the recording cadence, in the caller's steps.
        metadata: JSON-serializable facts about the run, stored as a root attribute.
        overwrite: replace an existing store instead of resuming it.
        flush_every_s: how often buffered rows are written and committed.
        max_queue: records waiting for the writer before ``record`` blocks (memory bound).
        wandb: ``"auto"`` logs to the active ``wandb.run`` if any; ``True`` starts one if needed;
            ``False`` never logs; or a run object. See :class:`trajhook.sinks.wandb.WandbSink`.
        sinks: further sinks, each receiving every record, scalar and event.
        forward_context: a callable returning a context manager wrapped around each probe run,
            e.g. Lightning's precision context.

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
        every_n_steps: int = 100,
        *,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        flush_every_s: float = 5.0,
        max_queue: int = 8,
        wandb: Any = "auto",
        sinks: Sequence[Sink] = (),
        forward_context: Callable[[], AbstractContextManager] | None = None,
    ) -> None:
        self.path = check_recorder_args(path, probes, every_n_steps)
        if not flush_every_s > 0:
            raise TrajhookError(f"Recorder: flush_every_s={flush_every_s!r} must be > 0. HINT: e.g. 5.0.")
        if not (isinstance(max_queue, int) and max_queue > 0):
            raise TrajhookError(f"Recorder: max_queue={max_queue!r} must be a positive integer. HINT: e.g. 8.")
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.metadata = dict(metadata or {})
        self.overwrite = overwrite
        self.flush_every_s = flush_every_s
        self.max_queue = max_queue
        self.forward_context = forward_context or contextlib.nullcontext
        self._sinks = SinkSet(list(sinks), wandb=wandb)
        self._writer: _Writer | None = None
        self._early: list[tuple[str, Any]] = []  # scalars and events logged before setup
        self._started = False
        self._closed = False
        self._set_up = False
        self._writes = distributed.is_writer()  # asked again at setup, once the process group exists
        self.recorded_steps: list[int] = []

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
        model = distributed.probe_target(model)
        self._writes = distributed.is_writer()
        if not distributed.runs_probe(model):
            self._set_up, self._early = True, []
            return
        device = model_device(model)
        setup_nonfinite = {}
        for probe in self.probes:
            with probing(model), self.forward_context():
                record = self._first_run(probe, model, device)
            setup_nonfinite[probe.name] = {
                k: ~np.isfinite(t.detach().float().cpu().numpy()) for k, t in record.items() if t.is_floating_point()
            }
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
        )
        self._sinks.open(self.probes, self.metadata)
        self._writer = _Writer(store, self._sinks, self.flush_every_s, self.max_queue)
        self._writer.setup_nonfinite = setup_nonfinite
        self._writer.start()
        self._set_up = True
        _open_recorders.add(self)
        early, self._early = self._early, []
        for kind, payload in early:
            self._put_small(kind, payload)

    def maybe_record(self, model: torch.nn.Module, step: int, **scalars: float | torch.Tensor) -> bool:
        """Log ``scalars`` at ``step``, and record the probes if ``step`` is due. Returns whether it recorded."""
        if scalars:
            self.log_scalars(step, **scalars)
        if step % self.every_n_steps or (self.recorded_steps and self.recorded_steps[-1] == step):
            return False
        self.record(model, step)
        return True

    def record(self, model: torch.nn.Module, step: int) -> None:
        """Run every probe now and queue the record for the writer."""
        self._check_open("record")
        model = distributed.probe_target(model)
        self.setup(model)
        if self._writer is None:  # another rank writes
            self._follow(model, step)
            return
        self._start(step)
        record = {}
        with probing(model), self.forward_context():
            for probe in self.probes:
                record[probe.name] = self._checked(probe, probe.run(model), step)
            host, event = _start_copy_to_host(record)
        self._put_record((int(step), time.time(), host, event))
        if not self.recorded_steps or self.recorded_steps[-1] != step:
            self.recorded_steps.append(int(step))

    def log_scalars(self, step: int, **scalars: float | torch.Tensor) -> None:
        """Log scalars (floats or 0-d tensors, read off the device by the writer) at ``step``."""
        self._check_open("log_scalars")
        values = {}
        for name, value in scalars.items():
            if len(name.encode()) > SCALAR_NAME_BYTES:
                raise TrajhookError(f"Recorder: scalar name {name[:40]!r}... is over {SCALAR_NAME_BYTES} bytes.")
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise TrajhookError(
                        f"Recorder: scalar {name!r} has shape {tuple(value.shape)}. "
                        "HINT: pass one number, e.g. loss=loss.detach()."
                    )
                value = value.detach().clone()  # a running total updated in place must log its value now
            elif not isinstance(value, int | float | np.number) or isinstance(value, bool):
                raise TrajhookError(f"Recorder: scalar {name}={value!r} is not a number. HINT: pass a float.")
            values[name] = value
        self._put_small("scalars", (int(step), values))

    def mark(self, step: int, label: str) -> None:
        """Mark an event such as ``"fine-tuning starts"`` at ``step``; plots draw it as a line."""
        self._check_open("mark")
        if not isinstance(label, str) or not label or len(label.encode()) > EVENT_LABEL_BYTES:
            raise TrajhookError(
                f"Recorder.mark: label {label!r} must be a non-empty string of at most {EVENT_LABEL_BYTES} bytes."
            )
        self._put_small("event", (int(step), label))

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
            else:  # release the file: what was committed is on disk, the rest never was
                with contextlib.suppress(Exception):
                    self._writer.store.file.close()
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

    @staticmethod
    def _checked(probe: Probe, record: Any, step: int | None) -> dict[str, torch.Tensor]:
        when = "at setup" if step is None else f"at step {step}"
        where = f"{type(probe).__name__} {probe.name!r}"
        if not isinstance(record, Mapping):
            raise TrajhookError(
                f"{where}.run returned {type(record).__name__} {when}; it must return a dict of tensors."
            )
        declared = probe.outputs
        if set(record) != set(declared):
            raise TrajhookError(
                f"{where}.run returned {sorted(record)} {when}, but declares {sorted(declared)}. "
                "HINT: return exactly the outputs declared with add_output."
            )
        for key, spec in declared.items():
            value = record[key]
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != spec.shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TrajhookError(
                    f"{where} output {key!r} is {got} {when}, declared {spec.describe()}. "
                    "HINT: every record must have the declared shape."
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
        if not self.recorded_steps or self.recorded_steps[-1] != step:
            self.recorded_steps.append(int(step))  # the same cadence on every rank

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
