"""Replay a checkpoint series into a store, as a live run would have recorded it: ``trajhook.replay(...)``.

``trajhook.replay`` is this package, and calling it calls :func:`~trajhook.replay.runner.replay`, so both
``trajhook.replay("ckpts/*.pth", probes, "out.h5", model=make_model)`` and
``from trajhook.replay import replay, ReplayResult`` work, whichever was imported first.

- :mod:`~trajhook.replay.sources`: the checkpoint formats (header, step, weights);
- :mod:`~trajhook.replay.model`: the model the weights load into, checked against each header;
- :mod:`~trajhook.replay.committer`: the Recorder that writes records computed elsewhere;
- :mod:`~trajhook.replay.runner`: the series, the loop, workers and ranks, one writer in step order.
"""

import sys
import types
from typing import Any

from trajhook.replay.runner import ReplayResult, replay


class _CallableModule(types.ModuleType):
    """``trajhook.replay(...)`` calls the function even where Python binds the name to this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> ReplayResult:
        return replay(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["ReplayResult", "replay"]
