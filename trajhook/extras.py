"""Optional dependencies: import one by name, or say which extra to install.

``import trajhook`` needs torch, numpy and h5py only. Everything else (procgen, Lightning, W&B,
TensorBoard, transformers, Stable-Baselines3) is imported where it is used, through
:func:`require`, so a missing one is a :class:`~trajhook.TrajhookError` that names the
``pip install`` to run.
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
