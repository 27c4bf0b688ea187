"""Live TensorBoard panels: the vector field as an image on TensorBoard's step slider, target
curves and scalar outputs as scalars, events as text.

The keys are those of the W&B sink (:mod:`trajhook.sinks.panels`), and TensorBoard's own step
is trajhook's step. Every write happens on the sink's own thread
(:class:`~trajhook.sinks.service.ServiceSink`), so a slow or full disk never stalls training.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trajhook.errors import TrajhookError
from trajhook.extras import require
from trajhook.probes.base import Probe
from trajhook.sinks.service import ServiceSink

CONFIG_KEY = "trajhook/config"


class TensorBoardSink(ServiceSink):
    """Write trajhook's panels as TensorBoard event files under ``logdir``.

    Args:
        logdir: the folder for the event files (``tensorboard --logdir`` it). Or pass ``writer=``.
        writer: an open ``SummaryWriter`` to share (e.g. Lightning's ``TensorBoardLogger.experiment``);
            it is flushed at close but left open for its owner.
        **options: ``image_every_s`` (default 5: a 600x500 PNG frame is ~60 KB, so an image at every one of
            10,000 records would be ~0.6 GB of event file; the last record's image is always written),
            ``close_timeout_s``, ``max_retries``... see :class:`~trajhook.sinks.service.ServiceSink`.

    >>> import tempfile
    >>> TensorBoardSink(tempfile.mkdtemp()).service
    'TensorBoard'
    """

    service = "TensorBoard"

    def __init__(self, logdir: str | os.PathLike | None = None, *, writer: Any = None, **options: Any) -> None:
        super().__init__(**options)
        if (logdir is None) == (writer is None):
            raise TrajhookError(
                f"TensorBoardSink: pass exactly one of logdir= and writer= (got logdir={logdir!r}, "
                f"writer={writer!r}). HINT: TensorBoardSink('runs/tb')."
            )
        if writer is not None and not callable(getattr(writer, "add_scalar", None)):
            raise TrajhookError(
                f"TensorBoardSink: writer={writer!r} is not a SummaryWriter (it has no add_scalar). "
                "HINT: pass torch.utils.tensorboard.SummaryWriter(...) or a logdir."
            )
        if writer is None:
            if not isinstance(logdir, str | os.PathLike):
                raise TrajhookError(
                    f"TensorBoardSink: logdir={logdir!r} is not a path. HINT: e.g. TensorBoardSink('runs/tb')."
                )
            require("tensorboard", "tensorboard", "TensorBoardSink")
        self.logdir = None if logdir is None else os.fspath(logdir)
        self.writer = writer
        self._owns_writer = writer is None

    def _service_open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(self.logdir)
        config = {k: v for p in self.panels for k, v in p.config().items()}
        if config:
            table = "\n".join(f"| `{k}` | {v!r} |" for k, v in config.items())
            self.writer.add_text(CONFIG_KEY, f"| key | text |\n|---|---|\n{table}", 0)

    def _service_write(self, step: int, items: Mapping[str, Any]) -> None:
        for key, value in items.items():
            if isinstance(value, np.ndarray):
                self.writer.add_image(key, value, step, dataformats="HWC")
            elif isinstance(value, str):
                self.writer.add_text(key, value, step)
            else:
                self.writer.add_scalar(key, value, step)

    def _service_finish(self) -> None:
        if self.writer is not None:
            self.writer.flush()
            if self._owns_writer:
                self.writer.close()
