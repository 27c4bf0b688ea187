"""One function turns the user's ``wandb=``, ``tensorboard=`` and ``sinks=`` into sink objects.

Checked at ``Recorder(...)``: a bad argument is a :class:`~trajhook.TrajhookError` before
training, not a warning mid-run. Nothing here imports wandb or tensorboard.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from trajhook import distributed
from trajhook.errors import TrajhookError
from trajhook.sinks.base import Sink


def resolve_sinks(wandb: Any = "auto", tensorboard: Any = None, sinks: Sequence[Sink] = ()) -> list[Sink]:
    """The sinks a Recorder feeds.

    ``wandb``: ``"auto"`` (the active ``wandb.run`` at setup, if any), ``True`` (that or a new
    run), ``False``/``None``, a W&B run object, or a :class:`~trajhook.sinks.wandb.WandbSink`.
    ``tensorboard``: ``None``/``False``, a log folder, a ``SummaryWriter``, or a
    :class:`~trajhook.sinks.tensorboard.TensorBoardSink`. ``sinks``: further :class:`Sink` objects.
    Only global rank zero (:func:`trajhook.distributed.is_writer`) gets the W&B and TensorBoard sinks.

    >>> resolve_sinks(wandb=False)
    []
    >>> resolve_sinks(wandb="yes")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: Recorder: wandb='yes' is not a W&B setting. HINT: pass wandb="auto" ...
    """
    from trajhook.sinks.tensorboard import TensorBoardSink
    from trajhook.sinks.wandb import WandbSink, is_run

    if isinstance(sinks, Sink) or not isinstance(sinks, Sequence) or not all(isinstance(s, Sink) for s in sinks):
        raise TrajhookError(
            f"Recorder: sinks={sinks!r} is not a list of trajhook Sinks. HINT: pass e.g. sinks=[MySink()], "
            "where MySink subclasses trajhook.sinks.base.Sink."
        )
    resolved = list(sinks)
    rank_zero = distributed.is_writer()  # other ranks of a torchrun job stay quiet
    if isinstance(wandb, WandbSink):
        wandb_sink = wandb
    elif wandb is True or (isinstance(wandb, str) and wandb == "auto") or is_run(wandb):
        wandb_sink = WandbSink(run=wandb)
    elif wandb is False or wandb is None:
        wandb_sink = None
    else:
        raise TrajhookError(
            f'Recorder: wandb={wandb!r} is not a W&B setting. HINT: pass wandb="auto" (log to the active '
            "wandb.run), True (start one if needed), False, a run from wandb.init(), or a WandbSink."
        )
    if isinstance(tensorboard, TensorBoardSink):
        tb_sink = tensorboard
    elif tensorboard is None or tensorboard is False:
        tb_sink = None
    elif isinstance(tensorboard, str | os.PathLike):
        tb_sink = TensorBoardSink(tensorboard)
    elif callable(getattr(tensorboard, "add_scalar", None)):
        tb_sink = TensorBoardSink(writer=tensorboard)
    else:
        raise TrajhookError(
            f"Recorder: tensorboard={tensorboard!r} is not a TensorBoard setting. HINT: pass a log folder "
            "(tensorboard='runs/tb'), a SummaryWriter, a TensorBoardSink, or None."
        )
    if rank_zero:
        resolved += [s for s in (wandb_sink, tb_sink) if s is not None]
    return resolved
