"""Optional dependencies: import one by name, or say which extra to install.

``import trajhook`` needs torch, numpy and h5py only. Everything else is imported where it is
used, through :func:`require` (the one way trajhook imports an optional dependency), so a missing
one is a :class:`~trajhook.TrajhookError` that names the ``pip install`` to run:

=============  ==========================================  ============================================
extra          modules                                     required by
=============  ==========================================  ============================================
maze           procgen, gymnasium                          ``MazeProbe`` (at setup), ``trajhook.envs.maze``
lightning      pytorch_lightning (or lightning.pytorch)    ``trajhook.integrations.lightning``
wandb          wandb                                       ``Recorder(wandb=True)``, at construction
tensorboard    tensorboard                                 ``Recorder(tensorboard="runs/tb")``
hf             transformers                                ``trajhook.integrations.hf``
sb3            stable_baselines3                           ``trajhook.integrations.sb3``
serve          starlette, uvicorn                          ``trajhook serve``, ``trajhook.show``
=============  ==========================================  ============================================
"""

from __future__ import annotations

import importlib
from types import ModuleType

from trajhook.errors import TrajhookError


def require(module: str, extra: str, who: str) -> ModuleType:
    """Import ``module``, or raise a TrajhookError naming ``pip install 'trajhook[extra]'``.

    >>> require("json", "core", "doctest").__name__
    'json'
    >>> require("no_such_module_xyz", "maze", "MazeProbe")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: MazeProbe needs ... not installed. HINT: pip install 'trajhook[maze]'.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and not module.startswith(err.name):
            raise  # the module exists but one of its own imports is broken: show that error as it is
        raise TrajhookError(
            f"{who} needs the module {module!r}, which is not installed. HINT: pip install 'trajhook[{extra}]'."
        ) from None
