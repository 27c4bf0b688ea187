"""PyTorch Lightning: ``TrajectoryCallback`` records the probes every N optimizer steps.

>>> from trajhook.integrations.lightning import TrajectoryCallback
>>> from trajhook import TensorProbe
>>> import torch, tempfile
>>> cb = TrajectoryCallback(tempfile.mkdtemp() + "/run.h5", [TensorProbe("x", torch.ones(1, 2))], every_n_steps=50)
>>> cb.state_key.startswith("TrajectoryCallback")
True
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from trajhook import distributed
from trajhook.errors import TrajhookError
from trajhook.extras import require
from trajhook.integrations.base import EveryNSteps, RecordingCallback
from trajhook.probes.base import Probe

_PACKAGES = ("pytorch_lightning", "lightning.pytorch")  # two copies of the same classes


def _callback_base() -> type:
    """The ``Callback`` of the Lightning package the user imported, else of ``pytorch_lightning``."""
    for name in (n for n in _PACKAGES if n in sys.modules):
        return sys.modules[name].Callback
    try:
        return require("pytorch_lightning", "lightning", "trajhook.integrations.lightning").Callback
    except TrajhookError:  # the other package ships the same classes
        with contextlib.suppress(ImportError):
            return importlib.import_module("lightning.pytorch").Callback
        raise


def _accepted_by_every_imported_trainer(cls: type) -> type:
    """``cls``, or a subclass that is also a ``Callback`` of each Lightning package imported now.

    A Trainer checks callbacks against its own package's ``Callback``; with both packages
    imported, the callback must be an instance of both, whatever the import order.
    """
    missing = tuple(n for n in _PACKAGES if n in sys.modules and not issubclass(cls, sys.modules[n].Callback))
    return _also_callback_of(missing) if missing else cls


def _also_callback_of(packages: tuple[str, ...]) -> type:
    """``TrajectoryCallback`` that also subclasses these packages' ``Callback``; pickle finds it by name."""
    name = "TrajectoryCallback__" + "__".join(p.replace(".", "_") for p in packages)
    if name not in _BOTH:
        bases = tuple(importlib.import_module(p).Callback for p in packages)
        _BOTH[name] = type(name, (TrajectoryCallback, *bases), {"__module__": __name__})
    return _BOTH[name]


def __getattr__(name: str) -> type:  # unpickling (ddp_spawn) a callback made while both packages were imported
    if name.startswith("TrajectoryCallback__"):
        return _also_callback_of(tuple(p for p in _PACKAGES if p.replace(".", "_") in name.split("__")[1:]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_BOTH: dict[str, type] = {}


class TrajectoryCallback(_callback_base(), RecordingCallback):
    """Record ``probes`` every ``every_n_steps`` optimizer steps (``trainer.global_step``).

    Records at the start of training (step 0, or the step a checkpoint resumed at: the first
    write of a session drops the rows an earlier run left from there on, see
    :class:`~trajhook.Recorder`) and then exactly once per due optimizer step, also
    under gradient accumulation; never during the sanity check. Logs the training loss as the
    scalar ``loss`` once per optimizer step, at the step whose weights computed it (the step the
    record of those weights carries, and the step Lightning's own loggers use). Writes on global
    rank zero only, runs the probes under the trainer's precision context, and resumes with the
    trainer's checkpoint. The probes are set up at ``on_fit_start``, once the strategy has placed
    the model on its device (and wrapped or sharded it), before the sanity check and the first step.
    Accepted by ``pytorch_lightning.Trainer`` and ``lightning.pytorch.Trainer`` alike. Under
    ``ModelParallelStrategy`` (``fully_shard``), ``FSDPStrategy`` and ``DeepSpeedStrategy`` stage 3
    every rank joins each probe forward (:mod:`trajhook.distributed` says which object it calls).
    ``callback.mark("LR drop")`` marks the current step (or pass ``step=``).
    Further keyword arguments go to :class:`trajhook.Recorder` (``metadata=``, ``wandb=``...).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> TrajectoryCallback:
        return super().__new__(_accepted_by_every_imported_trainer(cls))

    def __init__(
        self,
        path: str | os.PathLike,
        probes: Sequence[Probe],
        every_n_steps: EveryNSteps = 100,
        *,
        log_loss: bool = True,
        **recorder_kwargs: Any,
    ) -> None:
        super().__init__()
        self._init_recording(path, probes, every_n_steps, recorder_kwargs, log_loss)

    @property
    def state_key(self) -> str:  # the same key whichever Lightning packages were imported
        return f"TrajectoryCallback{ ({'path': self.path})!r}"

    # -- hooks: one line each ---------------------------------------------------------------------

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self._open(trainer, distributed.probe_target(pl_module, trainer))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._record_start(distributed.probe_target(pl_module, trainer), trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._on_batch_end(trainer, pl_module, outputs)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self._close()

    def state_dict(self) -> dict[str, Any]:
        return self._state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._load_state(state_dict)

    # -- helpers ----------------------------------------------------------------------------------

    def _open(self, trainer: Any, model: Any) -> None:
        """Open the Recorder with the trainer's precision context, W&B run and TensorBoard writer, and set the
        probes up on ``model`` (what :func:`~trajhook.distributed.probe_target` calls), where the strategy placed it.

        At ``on_fit_start``: after the strategy has moved, wrapped or sharded the model (``strategy.setup``;
        Lightning's ``setup`` hook comes before it, and before ``configure_model``), and before the sanity
        check and the first step, so bad inputs still fail before training. A sharding trajhook does not know
        failed already, in :func:`~trajhook.distributed.probe_target`.
        """
        if self.recorder is not None:
            return  # every rank makes a Recorder: it knows which rank writes and which ranks probe
        extra: dict[str, Any] = {"forward_context": trainer.precision_plugin.forward_context}
        if self.recorder_kwargs.get("wandb", "auto") == "auto":
            extra["wandb"] = _wandb_logger_run(trainer) or "auto"
        if self.recorder_kwargs.get("tensorboard") is None:
            extra["tensorboard"] = _tensorboard_logger_writer(trainer)
        self._open_recorder(**extra).setup(model)  # runs every probe once: bad inputs fail before training

    def _on_batch_end(self, trainer: Any, pl_module: Any, outputs: Any) -> None:
        """Once per optimizer step: the loss at the step whose weights computed it, then the record if due."""
        step = trainer.global_step
        if self.recorder is None or trainer.sanity_checking or step == self.step:
            return  # the same global_step again: a micro-batch under gradient accumulation
        self._log_loss(step - 1, _loss_of(outputs) if self.log_loss else None)  # as Lightning's own loggers do
        self._record_if_due(distributed.probe_target(pl_module, trainer), step)


def _wandb_logger_run(trainer: Any) -> Any:
    """The run of a ``WandbLogger`` among the trainer's loggers (started now if it is not yet)."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger":
            return logger.experiment
    return None


def _tensorboard_logger_writer(trainer: Any) -> Any:
    """The ``SummaryWriter`` of a ``TensorBoardLogger`` among the trainer's loggers, if any."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "TensorBoardLogger":
            return logger.experiment
    return None


def _loss_of(outputs: Any) -> Any:
    """The loss in what ``training_step`` returned: a tensor, or a dict with ``"loss"``."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    if hasattr(outputs, "numel") and outputs.numel() == 1:
        return outputs.detach()
    return None
