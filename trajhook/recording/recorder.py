"""The Recorder: runs the probes every N steps without disturbing training, and hands records
to a writer thread that owns the HDF5 store and the live sinks.

This module is the facade; the pieces it composes live in their own modules:
:mod:`trajhook.recording.checks` (arguments), :mod:`trajhook.schedule` (cadence), :mod:`trajhook.recording.probing`
(the guard around a probe run, device copies), :mod:`trajhook.recording.thread` (the writer thread) and
:mod:`trajhook.sinks` (W&B, TensorBoard). The training thread only runs the probes' forward passes
and starts the copies off the device; everything else happens on the writer thread.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from trajhook import distributed
from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe
from trajhook.recording.checks import (
    MAX_STEP,
    check_forward_context,
    check_on_error,
    check_options,
    check_recorder_args,
    check_text,
    checked_record,
    checked_scalar,
    checked_step,
)
from trajhook.recording.nan import NonfiniteWatch
from trajhook.recording.probing import (
    attempt_at_setup,
    attempt_at_step,
    checked_at_setup,
    model_device,
    moved_to,
    probing,
    start_copy_to_host,
)
from trajhook.recording.session import session_info
from trajhook.recording.thread import WriterThread
from trajhook.schedule import Schedule, as_schedule
from trajhook.sinks.base import Sink, SinkSet
from trajhook.sinks.resolve import resolve_sinks
from trajhook.store import EVENT_LABEL_BYTES, SCALAR_NAME_BYTES, StoreWriter

__all__ = ["MAX_STEP", "Recorder", "check_recorder_args", "model_device", "probing"]

_open_recorders: weakref.WeakSet[Recorder] = weakref.WeakSet()


@atexit.register
def _close_open_recorders() -> None:  # a forgotten close() must not lose buffered rows
    for recorder in list(_open_recorders):
        with contextlib.suppress(Exception):
            recorder.close()


class Recorder:
    """Run a fixed probe set through the model every ``every_n_steps`` steps and log it to HDF5.

    One line in a training loop: ``rec.maybe_record(model, step, loss=loss)``. Scalars are logged
    at every call; the probes run when the step is due (for an int N: the first call, then each
    step that crosses a multiple of N, ``step // N > last // N``; see :mod:`trajhook.schedule`).
    Each probe run is in eval mode under ``no_grad``, and restores every module's train flag and
    the RNG states of torch, numpy and Python, so training is bit-identical with and without the Recorder.

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
        check_options(metadata, overwrite, flush_every_s, max_queue, forward_context)
        self.on_error = check_on_error(on_error)
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.schedule = as_schedule(every_n_steps)
        self.metadata = dict(metadata or {})
        self.overwrite = overwrite
        self.flush_every_s = float(flush_every_s)
        self.max_queue = max_queue
        self.forward_context = forward_context or contextlib.nullcontext
        self._sinks = SinkSet(resolve_sinks(wandb=wandb, tensorboard=tensorboard, sinks=sinks))
        self._writer: WriterThread | None = None
        self._nonfinite = NonfiniteWatch()  # the NaN policy (trajhook.recording.nan)
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
        self._probes_on: torch.device | None = None  # the device the probes were last set up on
        self._scalar_names: set[str] = set()  # names already checked

    # -- the public hooks -----------------------------------------------------------------------

    def setup(self, model: torch.nn.Module) -> None:
        """Set up every probe on the model's device, run each once, and open the store.

        Called by the first ``record``; call it yourself before training so that bad inputs
        fail at once. Calling it again does nothing. A model moved to another device later (e.g.
        ``model.cuda()`` after this call) has its probes set up again there, once, at the next
        record. Under ``torch.distributed`` only global rank zero opens the store; see
        :mod:`trajhook.distributed` for which ranks run the probes.
        """
        if self._set_up:
            return
        self._check_open("setup")
        check_forward_context(self.forward_context)
        model = distributed.probe_target(model)
        self._writes = distributed.is_writer()
        records = self._probe(model, attempt_at_setup, checked_at_setup, setup=True)  # every rank: its share
        for probe in self.probes if records is not None else ():  # the writer's merged first records
            record = records[probe.name]
            self._setup_dtypes[probe.name] = {k: t.dtype for k, t in record.items()}
            self._nonfinite.at_setup(probe, record, warn=self._writes)
        if not self._writes:  # this rank ran its share of the probes; rank zero writes
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
            session=session_info(self.metadata),  # this session's row of /sessions (trajhook.recording.session)
        )
        self._sinks.open(self.probes, self.metadata)
        trackers = {p.name: p.stage_tracker for p in self.probes if getattr(p, "stage_tracker", None) is not None}
        self._writer = WriterThread(
            store,
            self._sinks,
            self.flush_every_s,
            self.max_queue,
            self.on_error,
            nonfinite=self._nonfinite,
            stage_trackers=trackers,  # opted in per probe (trajhook.analysis.online)
        )
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
        record = self._run_probes(model, step)
        if self._writer is None:  # another rank writes; this one ran its share
            self._recorded(step)
            return
        self._start(step)
        host, event = start_copy_to_host(record)
        self._writer.put_record((step, time.time(), host, event))
        self._recorded(step)

    def log_scalars(self, step: int, **scalars: float | torch.Tensor) -> None:
        """Log scalars (real numbers or one-element tensors, read off the device by the writer) at ``step``."""
        self._check_open("log_scalars")
        step = self._checked_step(step, "log_scalars", "scalar")
        values = {}
        for name, value in scalars.items():
            if name not in self._scalar_names:
                check_text("Recorder.log_scalars: scalar name", name, SCALAR_NAME_BYTES)
                self._scalar_names.add(name)
            values[name] = checked_scalar(name, value)
        self._put_small("scalars", (step, values))
        self._last_steps["scalar"] = step

    def mark(self, step: int, label: str) -> None:
        """Mark an event such as ``"fine-tuning starts"`` at ``step``; plots draw it as a line."""
        self._check_open("mark")
        step = self._checked_step(step, "mark", "event")
        check_text("Recorder.mark: label", label, EVENT_LABEL_BYTES)
        self._put_small("event", (step, label))
        self._last_steps["event"] = step

    def flush(self) -> None:
        """Wait until everything queued so far is written and committed."""
        self._check_open("flush")
        if self._writer is not None:
            self._writer.flush()

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
        try:
            self._writer.finish()
        finally:
            self._sinks.close()
        self._writer.raise_if_failed()

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
        return checked_step(step, method, self._last_steps[table], table)

    def _run_probes(self, model: torch.nn.Module, step: int) -> dict[str, dict[str, torch.Tensor]] | None:
        """Run every probe on ``model`` under the probing guard: the one call that runs probes at a step.

        Returns probe name -> output name -> tensor (still on the device), each record checked against
        what its probe declared, on the rank that writes; None on the others. Every rank runs its share
        of the work (:func:`trajhook.distributed.run_probes`); a failure on one raises on all. A model
        that moved since the probes were set up has them set up again on its device first, once.
        """
        return self._probe(
            model,
            lambda probe, run: attempt_at_step(probe, run, step),
            lambda probe, record: checked_record(probe, record, step, self._setup_dtypes.get(probe.name)),
        )

    def _probe(self, model: Any, attempt: Any, check: Any, setup: bool = False) -> dict[str, dict] | None:
        """Every probe on ``model`` under the probing guard, the work shared across ranks: the checked records on
        the writer, None elsewhere. ``setup``: set each probe up first, on the model's device; otherwise a model
        that moved since then has them set up again there, once. The one place a Recorder runs probes
        (:class:`trajhook.replay.committer.Committer` commits records computed elsewhere instead)."""
        device = model_device(model) if setup else moved_to(model_device(model), self._probes_on)
        with probing(model), self.forward_context():
            records = distributed.run_probes(model, self.probes, attempt, check, setup_device=device)
        if device is not None:
            self._probes_on = device
        return records

    def _recorded(self, step: int) -> None:
        """``step`` was recorded (or, on a rank that does not write, joined): the same cadence on every rank."""
        self._last_steps["record"] = self._last_recorded = step  # the same step checks on every rank
        if not self.recorded_steps or self.recorded_steps[-1] != step:
            self.recorded_steps.append(step)

    def _start(self, step: int) -> None:
        """On the first write of this session, drop rows a longer earlier run left from ``step`` on."""
        if not self._started:
            self._started = True
            assert self._writer is not None
            self._writer.drop_from(step)

    def _put_small(self, kind: str, payload: Any) -> None:
        if not self._writes:
            return  # one store and one set of panels: rank zero's
        if self._writer is None:  # before setup: keep it until the store is open
            self._early.append((kind, payload))
            return
        self._start(payload[0])
        self._writer.raise_if_failed()
        self._writer.put_small(kind, payload)

    def __repr__(self) -> str:
        names = [p.name for p in self.probes]
        return f"Recorder({str(self.path)!r}, probes={names}, every_n_steps={self.every_n_steps})"
