"""trajhook: watch a model change while it trains.

``import trajhook`` imports torch, numpy and h5py only. ``trajhook.plots`` (matplotlib),
``trajhook.analysis``, :class:`StageTracker` and the sinks load on first use, and each framework
only where it is used (:mod:`trajhook.extras`).
"""

import importlib
from typing import Any

from trajhook._version import __version__
from trajhook.errors import TrajhookError
from trajhook.probes.base import OutputSpec, Probe
from trajhook.probes.maze import MazeProbe
from trajhook.probes.prompts import PromptProbe
from trajhook.probes.tensor import TensorProbe
from trajhook.probes.token_loss import TokenLossProbe
from trajhook.recording.recorder import Recorder
from trajhook.schedule import log_spaced
from trajhook.store import Event, ProbeLog, Series, TrajectoryLog, load

# name -> module: loaded on first access, so that `import trajhook` stays light
_LAZY = {
    "StageTracker": "trajhook.analysis.online",
    "Sink": "trajhook.sinks.base",
    "WandbSink": "trajhook.sinks.wandb",
    "TensorBoardSink": "trajhook.sinks.tensorboard",
    "show": "trajhook.serve.notebook",  # the live page inline in a notebook (trajhook[serve])
    "verify": "trajhook.store.reader",
}

__all__ = [
    "Event",
    "MazeProbe",
    "OutputSpec",
    "Probe",
    "ProbeLog",
    "PromptProbe",
    "Recorder",
    "Series",
    "Sink",
    "StageTracker",
    "TensorBoardSink",
    "TensorProbe",
    "TokenLossProbe",
    "TrajectoryLog",
    "TrajhookError",
    "WandbSink",
    "__version__",
    "analysis",
    "load",
    "log_spaced",
    "plots",
    "replay",
    "show",
    "verify",
]


def __getattr__(name: str) -> Any:
    if name in ("plots", "analysis", "replay"):  # trajhook.replay: the package, callable as the function
        return importlib.import_module(f"trajhook.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trajhook' has no attribute {name!r}")
