"""trajhook: watch a model change while it trains.

``import trajhook`` imports torch, numpy and h5py only; ``trajhook.plots`` (matplotlib) and
``trajhook.analysis`` load on first use, and each framework only where it is used.
"""

import importlib
from typing import Any

from trajhook.errors import TrajhookError
from trajhook.probes.base import OutputSpec, Probe
from trajhook.probes.maze import MazeProbe
from trajhook.probes.prompts import PromptProbe
from trajhook.probes.tensor import TensorProbe
from trajhook.probes.token_loss import TokenLossProbe
from trajhook.recorder import Recorder
from trajhook.schedule import log_spaced
from trajhook.store import Event, ProbeLog, Series, TrajectoryLog, load

__version__ = "0.1.0"
__all__ = [
    "Event",
    "MazeProbe",
    "OutputSpec",
    "Probe",
    "ProbeLog",
    "PromptProbe",
    "Recorder",
    "Series",
    "TensorProbe",
    "TokenLossProbe",
    "TrajectoryLog",
    "TrajhookError",
    "__version__",
    "analysis",
    "load",
    "log_spaced",
    "plots",
]


def __getattr__(name: str) -> Any:
    if name in ("plots", "analysis"):
        return importlib.import_module(f"trajhook.{name}")
    if name == "show":  # the live page inline in a notebook (trajhook[serve])
        return importlib.import_module("trajhook.serve.notebook").show
    raise AttributeError(f"module 'trajhook' has no attribute {name!r}")
