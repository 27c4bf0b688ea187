"""What every framework callback shares: the argument checks, the Recorder it opens and closes,
``overwrite`` handled once, the state a checkpoint carries, and ``mark(label, step=None)``.

A framework adapter (:mod:`trajhook.integrations.lightning`, ``hf``, ``sb3``) subclasses its
framework's callback class and :class:`RecordingCallback`, and its hooks are one line each:

- at the start of training, :meth:`~RecordingCallback._record_start` opens the Recorder, runs
  every probe once (bad inputs fail before the first update) and records the starting weights;
- at each step, :meth:`~RecordingCallback._record_if_due` asks the Recorder whether the step is due;
- at the end, :meth:`~RecordingCallback._close` closes the store; a later training run on the same
  callback opens a new Recorder that resumes it (``overwrite`` applies to the first one only).

>>> import tempfile, torch
>>> from trajhook import TensorProbe
>>> cb = RecordingCallback()
>>> cb._init_recording(tempfile.mkdtemp() + "/run.h5", [TensorProbe("x", torch.ones(1, 2))], 10, {})
>>> cb.mark("warm-up ends", step=5)  # no training runs: written when the next one starts
>>> cb.pending_marks
[(5, 'warm-up ends')]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch

from trajhook.probes.base import Probe
from trajhook.recording.checks import check_recorder_args, check_text, checked_step
from trajhook.recording.recorder import Recorder
from trajhook.schedule import Schedule
from trajhook.store import EVENT_LABEL_BYTES

EveryNSteps = int | Schedule | Sequence[int] | Callable[[int], bool]
"""What ``every_n_steps`` takes: an int N (the aligned cadence), ``log_spaced(...)``, a list of steps or a callable."""


class RecordingCallback:
    """The part of ``TrajectoryCallback`` that is the same in every framework (a mixin; no framework here)."""

    path: str
    probes: list[Probe]
    every_n_steps: EveryNSteps
    log_loss: bool
    recorder_kwargs: dict[str, Any]
    recorder: Recorder | None
    recorder_state: dict[str, Any]
    step: int | None
    pending_marks: list[tuple[int, str]]

    def _init_recording(
        self,
        path: str | os.PathLike,
        probes: Sequence[Probe],
        every_n_steps: EveryNSteps,
        recorder_kwargs: dict[str, Any],
        log_loss: bool = True,
    ) -> None:
        """The checks and state every callback's ``__init__`` shares; bad arguments fail here, before training."""
        check_recorder_args(path, probes, every_n_steps)
        self.path = os.fspath(path)
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.log_loss = log_loss
        self.recorder_kwargs = dict(recorder_kwargs)
        self.recorder = None
        self.recorder_state = {}  # the Recorder's state_dict, carried by the framework's checkpoint
        self.step = None  # trajhook's current step, as the last hook saw it
        self.pending_marks = []  # marks made while no Recorder is open: written when the next one opens

    # -- the public method, the same in every framework -------------------------------------------

    def mark(self, label: str, step: int | None = None) -> None:
        """Mark an event such as ``"DPO starts"`` at ``step`` (default: the current step); plots draw a line there.

        Between two training runs on this callback it marks the step the last one ended at (the
        step the next one continues from) and is written when the next one starts.
        """
        name = f"{type(self).__name__.split('__')[0]}.mark"  # Lightning's both-packages subclass: its base's name
        check_text(f"{name}: label", label, EVENT_LABEL_BYTES)
        step = checked_step((self.step or 0) if step is None else step, "mark")
        if self.recorder is None:
            self.pending_marks.append((step, label))
        else:
            self.recorder.mark(step, label)

    # -- the helpers the hooks call ---------------------------------------------------------------

    def _open_recorder(self, **extra: Any) -> Recorder:
        """This training run's Recorder (opened once, resuming the store and the cadence); ``extra``: framework's."""
        if self.recorder is None:
            self.recorder = Recorder(self.path, self.probes, self.every_n_steps, **{**self.recorder_kwargs, **extra})
            self.recorder.load_state_dict(self.recorder_state)
            self.recorder_kwargs["overwrite"] = False  # a later run on this callback continues the store
            marks, self.pending_marks = self.pending_marks, []
            for step, label in marks:
                self.recorder.mark(step, label)
        return self.recorder

    def _record_start(
        self, model: torch.nn.Module, step: int, forward_context: Callable[[], AbstractContextManager] | None = None
    ) -> None:
        """Open the Recorder, run every probe once (bad inputs fail before the first update), record ``step``."""
        self.step = step
        extra = {} if forward_context is None else {"forward_context": forward_context}
        recorder = self._open_recorder(**extra)
        recorder.setup(model)
        recorder.record(model, step)

    def _record_if_due(self, model: torch.nn.Module, step: int) -> None:
        """Record ``step`` if it is due (the Recorder's cadence decides)."""
        self.step = step
        if self.recorder is not None:
            self.recorder.maybe_record(model, step)

    def _log_loss(self, step: int, loss: Any) -> None:
        """Log the training loss at ``step``, the step whose weights computed it (``log_loss=False``: never)."""
        if self.log_loss and self.recorder is not None and loss is not None:
            self.recorder.log_scalars(step, loss=loss)

    def _close(self) -> None:
        """Close the store and the sinks, keeping the state for the next run; safe to call twice."""
        if self.recorder is not None:
            self.recorder_state = self.recorder.state_dict()
            self.recorder, recorder = None, self.recorder
            recorder.close()  # a later run opens a new Recorder, which resumes the store

    def _state(self) -> dict[str, Any]:
        """The state a framework checkpoint carries: the Recorder's, for the cadence to resume."""
        return self.recorder.state_dict() if self.recorder is not None else dict(self.recorder_state)

    def _load_state(self, state: Mapping[str, Any]) -> None:
        self.recorder_state = dict(state)
        if self.recorder is not None:
            self.recorder.load_state_dict(state)
