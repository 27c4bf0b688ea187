"""Live Weights & Biases panels: vector fields with a step slider, target curves, the PCA trajectory.

Every key is flat (``trajhook/<probe>/<metric>``, see :mod:`trajhook.sinks.panels`) and declared
with ``define_metric(key, step_metric="trajhook/step")`` by name before its first use; ``step=``
is never passed to ``run.log``, so trajhook's panels live beside Lightning's and HF's own
loggers without either dropping the other's data. Every W&B call, ``define_metric`` included,
is made on the sink's own thread (:class:`~trajhook.sinks.service.ServiceSink`): a W&B that
raises is retried with backoff, one that hangs is left behind, and training never waits.
Images are rate-limited, except that the last record's images are always logged at close.
"""

from __future__ import annotations

import netrc
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np

from trajhook.extras import require
from trajhook.probes.base import Probe
from trajhook.sinks.panels import EVENT_KEY, STEP_KEY, key_part
from trajhook.sinks.service import ServiceSink

__all__ = ["EVENT_KEY", "STEP_KEY", "WandbSink", "has_credentials", "is_run", "key_part"]


def has_credentials() -> bool:
    """Whether W&B could log online: an API key in the environment or in ~/.netrc for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def is_run(obj: Any) -> bool:
    """Whether ``obj`` looks like a W&B run (it can ``log`` and ``define_metric``).

    >>> is_run(object()), is_run(42)
    (False, False)
    """
    return callable(getattr(obj, "log", None)) and callable(getattr(obj, "define_metric", None))


class WandbSink(ServiceSink):
    """Log trajhook's panels to a W&B run. Used by ``Recorder(wandb=...)``; build one by hand to tune it.

    Args:
        run: ``"auto"``: the active ``wandb.run``, if any. ``True``: that, or a new run (offline,
            said once, when no credentials are configured). A run object: that run.
        **options: ``image_every_s`` (default 5: W&B advises few images per step),
            ``close_timeout_s``, ``call_timeout_s``, ``max_retries``, ``retry_backoff_s``,
            ``give_up_after``, ``max_queue``, ``pca_every_n_records``: see
            :class:`~trajhook.sinks.service.ServiceSink`.

    >>> WandbSink(close_timeout_s=5).close_timeout_s
    5.0
    """

    service = "W&B"

    def __init__(self, run: Any = "auto", **options: Any) -> None:
        super().__init__(**options)
        if run is True:  # asked for W&B: without it, an error now, before training
            require("wandb", "wandb", "Recorder(wandb=True)")
        self.run_arg = run
        self.run: Any = None
        self.started_run = False
        self._defined: set[str] = set()

    def open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        """Start the W&B thread; ``"auto"`` without an active run stays off (and never imports wandb)."""
        if self.run_arg == "auto" and getattr(sys.modules.get("wandb"), "run", None) is None:
            return
        super().open(probes, metadata)

    # -- on the W&B thread ----------------------------------------------------------------------

    def _service_open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        if self.run is None:
            self.run = self._resolve_run()
        if self.run is None:
            raise RuntimeError("no W&B run: call wandb.init() first, or pass wandb=True to start one")
        self._define(STEP_KEY, hidden=True)
        config = {k: v for p in self.panels for k, v in p.config().items()}
        if config and getattr(self.run, "config", None) is not None:
            self.run.config.update(config, allow_val_change=True)

    def _service_write(self, step: int, items: Mapping[str, Any]) -> None:
        wandb = require("wandb", "wandb", "WandbSink")

        row = {k: wandb.Image(v) if isinstance(v, np.ndarray) else v for k, v in items.items()}
        for key in row:
            self._define(key)
        self.run.log({**row, STEP_KEY: step})

    def _service_finish(self) -> None:
        if self.started_run and self.run is not None:
            self.run.finish()

    def _resolve_run(self) -> Any:
        wandb = require("wandb", "wandb", "WandbSink")

        if self.run_arg not in ("auto", True):
            return self.run_arg
        if wandb.run is not None or self.run_arg == "auto":
            return wandb.run
        mode = os.environ.get("WANDB_MODE")
        if mode is None and not has_credentials():
            mode = "offline"
            warnings.warn(
                "WandbSink: no W&B credentials are configured, so the run logs offline to ./wandb. "
                "HINT: `wandb login`, then `wandb sync wandb/offline-run-*` uploads it.",
                stacklevel=2,
            )
        self.started_run = True
        return wandb.init(mode=mode, project=os.environ.get("WANDB_PROJECT", "trajhook"))

    def _define(self, key: str, hidden: bool = False) -> None:
        if key not in self._defined:
            if hidden:
                self.run.define_metric(key, hidden=True)
            else:  # by name: Lightning's and HF's "*" globs would otherwise race with ours
                self.run.define_metric(key, step_metric=STEP_KEY)
            self._defined.add(key)  # after the call: a define that failed is made again on retry
