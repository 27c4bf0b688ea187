"""The probe contract: what a probe records, declared once, and how it runs.

A probe is to trajhook what a ``torchmetrics.Metric`` is to a metric collection: subclasses
declare their outputs (name, per-record shape, dtype) with :meth:`Probe.add_output`, which
fixes the HDF5 schema, and implement :meth:`Probe.setup` and :meth:`Probe.run`. The
:class:`~trajhook.Recorder` owns everything around them: eval mode, ``no_grad``, RNG, device
transfers and storage. A probe never touches a file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trajhook.errors import TrajhookError

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it can be an HDF5 and W&B key part, else raise.

    >>> check_name("probe", "maze")
    'maze'
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise TrajhookError(
            f"{kind} name {name!r} is not valid. "
            "HINT: use letters, digits, '_', '.' and '-' only, e.g. 'maze' or 'prompts'."
        )
    return name


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a tensor of ``dtype`` is stored as (bfloat16 is widened to float32).

    >>> numpy_dtype(torch.bfloat16), numpy_dtype(torch.int64)
    (dtype('float32'), dtype('int64'))
    """
    if dtype == torch.bfloat16:
        return np.dtype("float32")
    return np.dtype(str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class OutputSpec:
    """One recorded dataset: its name, the shape of one record, and its dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def describe(self) -> str:
        """A short text form used in schema errors.

        >>> OutputSpec("vectors", (96, 2), np.dtype("float32")).describe()
        'vectors(96, 2) float32'
        """
        return f"{self.name}{self.shape} {self.dtype}"


class Probe:
    """Base class of all probes.

    Subclasses call :meth:`add_output` (in ``__init__`` or in :meth:`setup`) for every tensor
    that :meth:`run` returns, put static facts in :attr:`metadata`, and implement
    :meth:`setup` (build inputs on the model's device, once) and :meth:`run` (one forward,
    returning ``{output name: tensor}``). ``run`` is always called by the Recorder in eval
    mode under ``torch.no_grad()``; it must not change the model.

    >>> class Norm(Probe):
    ...     def setup(self, model, device):
    ...         self.add_output("weight_norm", (), "float32")
    ...     def run(self, model):
    ...         return {"weight_norm": model.weight.norm()}
    >>> probe = Norm("norm")
    >>> probe.setup(torch.nn.Linear(2, 2), torch.device("cpu"))
    >>> probe.outputs["weight_norm"].describe()
    'weight_norm() float32'
    """

    def __init__(self, name: str) -> None:
        self.name = check_name("probe", name)
        self.metadata: dict[str, Any] = {}
        self._outputs: dict[str, OutputSpec] = {}

    def add_output(self, name: str, shape: tuple[int, ...], dtype: Any = "float32") -> None:
        """Declare one dataset that :meth:`run` returns at every record."""
        check_name(f"{type(self).__name__} {self.name!r}: output", name)
        shape = tuple(int(s) for s in shape)
        if any(s < 0 for s in shape):
            raise TrajhookError(f"{type(self).__name__} {self.name!r}: output {name!r} has negative shape {shape}.")
        self._outputs[name] = OutputSpec(name, shape, np.dtype(dtype))

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """The declared outputs, in declaration order."""
        return dict(self._outputs)

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Build and cache inputs on ``device``, once, and declare outputs if not done yet."""

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Run the model on the cached inputs and return one record."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(model).")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
