"""trajhook: watch a model change while it trains."""

from trajhook.errors import TrajhookError
from trajhook.probes.base import OutputSpec, Probe
from trajhook.probes.tensor import TensorProbe
from trajhook.recorder import Recorder
from trajhook.store import Event, ProbeLog, Series, TrajectoryLog, load

__version__ = "0.1.0"
__all__ = [
    "Event",
    "OutputSpec",
    "Probe",
    "ProbeLog",
    "Recorder",
    "Series",
    "TensorProbe",
    "TrajectoryLog",
    "TrajhookError",
    "__version__",
    "load",
]
