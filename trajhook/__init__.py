"""trajhook: watch a model change while it trains."""

from trajhook.errors import TrajhookError
from trajhook.probes.base import OutputSpec, Probe
from trajhook.probes.tensor import TensorProbe

__version__ = "0.1.0"
__all__ = ["OutputSpec", "Probe", "TensorProbe", "TrajhookError", "__version__"]
