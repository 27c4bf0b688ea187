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
from trajhook.integrations.base import EveryNSteps, RecordingCallback
from trajhook.probes.base import Probe

require("transformers", "hf", "trajhook.integrations.hf")
from transformers.trainer_callback import ExportableState, TrainerCallback  # noqa: E402

# The callbacks made in this process, by store path: HF's resume rebuilds a stateful callback as
# ``TrajectoryCallback(**state["args"])``, and that call hands back the instance the user made.
_LIVE: weakref.WeakValueDictionary[str, TrajectoryCallback] = weakref.WeakValueDictionary()


class TrajectoryCallback(TrainerCallback, ExportableState, RecordingCallback):
    """Record ``probes`` every ``every_n_steps`` optimizer steps of a ``transformers.Trainer``.

    ``Trainer(..., callbacks=[TrajectoryCallback("runs/log.h5", probes, every_n_steps=100)])``.

    - **Steps.** Records the weights training starts from (step 0, or the step a checkpoint
      resumed at), then at due optimizer steps (``state.global_step``, once per step under
      gradient accumulation): the record at step ``s`` holds the weights after ``s`` updates.
    - **Loss.** The ``loss`` HF reports (every ``logging_steps``, averaged over them) is logged at
      the last step whose weights computed it, ``global_step - 1``, as the Lightning callback does.
    - **Several trainers.** ``train()`` calls that start from step 0 after an earlier one on the
      same callback (SFT, then DPO) continue its x-axis: steps are offset by where the last ended.
    - **Events.** ``callback.mark("DPO starts")`` marks the current step (or pass ``step=``);
      between two ``train()`` calls, the step the next one starts at.
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
        every_n_steps: EveryNSteps = 100,
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
        self._init_recording(path, probes, every_n_steps, recorder_kwargs, log_loss)
        self.step_offset = 0  # where earlier train() calls on this callback ended
        self._train_ended = False
        _LIVE[self.path] = self

    # -- hooks: one line each ---------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record_start(model, self._start_step(state))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._record_if_due(model, state.global_step + self.step_offset)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        self._log_loss(state.global_step - 1 + self.step_offset, _loss_in(state, logs))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._close()

    def state(self) -> dict[str, Any]:
        """What HF saves in ``trainer_state.json`` (``ExportableState``)."""
        return {
            "args": {"path": self.path},
            "attributes": {"recorder_state": self._state(), "step_offset": self.step_offset},
        }

    # -- helpers ----------------------------------------------------------------------------------

    def _start_step(self, state: Any) -> int:
        """The step this ``train()`` starts at: ``global_step``, offset by where an earlier trainer ended."""
        if self._train_ended and state.global_step == 0:  # a new trainer after this one's last train()
            self.step_offset = self.step if self.step is not None else self.step_offset
        self._train_ended = False
        return state.global_step + self.step_offset

    def _close(self) -> None:
        self._train_ended = True
        super()._close()


def _loss_in(state: Any, logs: dict | None) -> float | None:
    """The ``loss`` in HF's logs (averaged over ``logging_steps``), once an update ran; else None."""
    if logs and "loss" in logs and state.global_step > 0:
        return float(logs["loss"])
    return None
