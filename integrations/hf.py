"""Hugging Face ``transformers.Trainer`` (and every TRL trainer built on it): one added callback.

>>> import tempfile, torch
>>> from trajhook import TensorProbe
>>> from trajhook.integrations.hf import TrajectoryCallback
>>> cb = TrajectoryCallback(tempfile.mkdtemp() + "/run.h5", [TensorProbe("x", torch.ones(1, 2))], every_n_steps=50)
>>> cb.state()["args"]["path"].endswith("run.h5")
True
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import Any

from trajhook.errors import TrajhookError
from trajhook.extras import require
from trajhook.probes.base import Probe
from trajhook.recorder import Recorder, check_recorder_args

require("transformers", "hf", "trajhook.integrations.hf")
from transformers.trainer_callback import ExportableState, TrainerCallback  # noqa: E402

# The callbacks made in this process, by store path: HF's resume rebuilds a stateful callback as
# ``TrajectoryCallback(**state["args"])``, and that call hands back the instance the user made.
_LIVE: weakref.WeakValueDictionary[str, TrajectoryCallback] = weakref.WeakValueDictionary()


class TrajectoryCallback(TrainerCallback, ExportableState):
    """Record ``probes`` every ``every_n_steps`` optimizer steps of a ``transformers.Trainer``.

    ``Trainer(..., callbacks=[TrajectoryCallback("runs/log.h5", probes, every_n_steps=100)])``.

    - **Steps.** Records the weights training starts from (step 0, or the step a checkpoint
      resumed at), then at due optimizer steps (``state.global_step``, once per step under
      gradient accumulation): the record at step ``s`` holds the weights after ``s`` updates.
    - **Loss.** The ``loss`` HF reports (every ``logging_steps``, averaged over them) is logged at
      the last step whose weights computed it, ``global_step - 1``, as the Lightning callback does.
    - **Several trainers.** ``train()`` calls that start from step 0 after an earlier one on the
      same callback (SFT, then DPO) continue its x-axis: steps are offset by where the last ended.
    - **Events.** ``callback.mark("DPO starts")`` marks the current step (or pass ``step=``).
    - **Ranks.** The Recorder writes from global rank zero only (:mod:`trajhook.distributed`).
    - **Resume.** The state travels in HF's checkpoint (``ExportableState``; HF restores it
      with ``TrainingArguments(restore_callback_states_from_checkpoint=True)``); either way the
      resumed store drops the rows a longer earlier run left, so there are no ghost rows.
    - **W&B.** With HF's ``WandbCallback`` active, trajhook logs into the same run by its own step
      key, never touching HF's step.

    Further keyword arguments go to :class:`trajhook.Recorder` (``metadata=``, ``wandb=``...).
    """

    def __new__(cls, path: str | os.PathLike | None = None, probes: Sequence[Probe] | None = None, *a: Any, **kw: Any):
        if probes is None and path is not None and os.fspath(path) in _LIVE:
            return _LIVE[os.fspath(path)]  # HF rebuilding it from a checkpoint: keep the user's object
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        probes: Sequence[Probe] | None = None,
        every_n_steps: int = 100,
        *,
        log_loss: bool = True,
        **recorder_kwargs: Any,
    ) -> None:
        if probes is None and path is not None and _LIVE.get(os.fspath(path)) is self:
            return  # rebuilt from a checkpoint's state: already initialized
        if path is None or probes is None:
            raise TrajhookError(
                f"TrajectoryCallback: path={path!r}, probes={probes!r}; both are needed. HINT: "
                "TrajectoryCallback('runs/log.h5', [PromptProbe(...)], every_n_steps=100). When resuming "
                "from a checkpoint, pass a callback with the same path to the new Trainer."
            )
        check_recorder_args(path, probes, every_n_steps)
        self.path = os.fspath(path)
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.log_loss = log_loss
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self.recorder_state: dict[str, Any] = {}  # the Recorder's state_dict, saved in HF checkpoints
        self.step_offset = 0  # where earlier train() calls on this callback ended
        self.step: int | None = None  # trajhook's current step: global_step + step_offset
        self._train_ended = False
        _LIVE[self.path] = self

    # -- hooks: one line each ---------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record_start(state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record_if_due(state, model)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        self._log_loss(state, logs)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()

    def state(self) -> dict[str, Any]:
        """What HF saves in ``trainer_state.json`` (``ExportableState``)."""
        recorder_state = self.recorder.state_dict() if self.recorder is not None else self.recorder_state
        return {
            "args": {"path": self.path},
            "attributes": {"recorder_state": recorder_state, "step_offset": self.step_offset},
        }

    def mark(self, *args: Any) -> None:
        """``mark(label)`` at the current step, or ``mark(step, label)``: a line in every plot.

        Between two ``train()`` calls (say after SFT, before DPO) it marks the step the next one starts
        at, and is written when that one starts.
        """
        if len(args) == 1:
            step, (label,) = self.step, args
        elif len(args) == 2:
            step, label = args
        else:
            raise TrajhookError(f"TrajectoryCallback.mark{args!r}: pass (label) or (step, label).")
        if step is None:
            step = 0
        self._ensure_recorder().mark(step, label)

    # -- helpers ----------------------------------------------------------------------------------

    def _ensure_recorder(self) -> Recorder:
        if self.recorder is None:
            self.recorder = Recorder(self.path, self.probes, self.every_n_steps, **self.recorder_kwargs)
            self.recorder.load_state_dict(self.recorder_state)
            self.recorder_kwargs["overwrite"] = False  # a later train() on this callback continues the store
        return self.recorder

    def _record_start(self, state: Any, model: Any) -> None:
        """Record the weights training starts from: step 0, or the step a checkpoint resumed at."""
        if self._train_ended and state.global_step == 0:  # a new trainer after this one's last train()
            self.step_offset = self.step if self.step is not None else self.step_offset
        self._train_ended = False
        self.step = state.global_step + self.step_offset
        recorder = self._ensure_recorder()
        recorder.setup(model)  # runs every probe once: bad inputs fail before the first update
        recorder.record(model, self.step)

    def _record_if_due(self, state: Any, model: Any) -> None:
        self.step = state.global_step + self.step_offset
        if self.recorder is not None:
            self.recorder.maybe_record(model, self.step)

    def _log_loss(self, state: Any, logs: dict | None) -> None:
        if self.log_loss and self.recorder is not None and logs and "loss" in logs and state.global_step > 0:
            self.recorder.log_scalars(state.global_step - 1 + self.step_offset, loss=float(logs["loss"]))

    def _close(self) -> None:
        self._train_ended = True
        if self.recorder is not None:
            self.recorder_state = self.recorder.state_dict()
            self.recorder, recorder = None, self.recorder
            recorder.close()  # a later train() opens a new Recorder, which resumes the store
