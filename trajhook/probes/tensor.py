"""TensorProbe: record the model's output on a fixed batch of inputs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe, numpy_dtype

Inputs = torch.Tensor | Sequence[torch.Tensor] | Mapping[str, torch.Tensor]


def _to_device(inputs: Inputs, device: torch.device) -> Inputs:
    if isinstance(inputs, torch.Tensor):
        return inputs.to(device)
    if isinstance(inputs, Mapping):
        return {k: v.to(device) for k, v in inputs.items()}
    return tuple(v.to(device) for v in inputs)


def _as_record(out: Any) -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {"output": out}
    if isinstance(out, Mapping):
        return dict(out)
    if isinstance(out, Sequence):
        return {f"output_{i}": t for i, t in enumerate(out)}
    raise TypeError(f"expected a tensor, a tuple of tensors or a dict of tensors, got {type(out).__name__}")


class TensorProbe(Probe):
    """Record ``model(*inputs)`` (or ``fn(model, inputs)``) on a fixed batch, every record.

    ``inputs`` is a tensor, a tuple of tensors (positional arguments) or a dict (keyword
    arguments). The output may be a tensor (stored as ``output``), a tuple (``output_0``,
    ``output_1``, ...) or a dict of tensors (stored under its keys).

    >>> probe = TensorProbe("grid", torch.linspace(-1, 1, 8).reshape(4, 2))
    >>> probe.setup(torch.nn.Linear(2, 3), torch.device("cpu"))
    >>> probe.outputs["output"].describe()
    'output(4, 3) float32'
    """

    def __init__(
        self,
        name: str,
        inputs: Inputs,
        fn: Callable[[torch.nn.Module, Inputs], Any] | None = None,
    ) -> None:
        super().__init__(name)
        if not isinstance(inputs, torch.Tensor | Sequence | Mapping):
            raise TrajhookError(
                f"TensorProbe {name!r}: inputs of type {type(inputs).__name__} are not supported. "
                "HINT: pass a tensor, a tuple of tensors or a dict of tensors."
            )
        self.inputs = inputs
        self.fn = fn

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        self.inputs = _to_device(self.inputs, device)
        with torch.no_grad():
            record = self.run(model)
        for key, value in record.items():
            self.add_output(key, tuple(value.shape), numpy_dtype(value.dtype))

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.fn is not None:
            return _as_record(self.fn(model, self.inputs))
        if isinstance(self.inputs, torch.Tensor):
            return _as_record(model(self.inputs))
        if isinstance(self.inputs, Mapping):
            return _as_record(model(**self.inputs))
        return _as_record(model(*self.inputs))
