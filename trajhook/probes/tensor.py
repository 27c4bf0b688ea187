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


def _check_inputs(name: str, inputs: Any) -> None:
    """Inputs are a tensor, or a non-empty tuple/list or dict whose values are all tensors."""
    if isinstance(inputs, torch.Tensor):
        return
    if isinstance(inputs, Mapping):
        values = list(inputs.values())
    elif isinstance(inputs, Sequence) and not isinstance(inputs, str | bytes):
        values = list(inputs)
    else:
        values = None
    if values is None or not values or not all(isinstance(v, torch.Tensor) for v in values):
        if values is None:
            got = f"inputs of type {type(inputs).__name__} are"
        elif not values:
            got = f"an empty {type(inputs).__name__} of inputs is"
        else:
            bad = next(v for v in values if not isinstance(v, torch.Tensor))
            got = f"a {type(inputs).__name__} of inputs holding {type(bad).__name__} is"
        raise TrajhookError(
            f"TensorProbe {name!r}: {got} not supported. HINT: pass a tensor, a tuple of tensors or a dict of tensors."
        )


def _as_record(out: Any, name: str) -> dict[str, torch.Tensor]:
    """The model's output as ``{output name: tensor}``; a clear error names the probe otherwise."""
    if isinstance(out, torch.Tensor):
        record = {"output": out}
    elif isinstance(out, Mapping):
        record = dict(out)
    elif isinstance(out, Sequence) and not isinstance(out, str | bytes):
        record = {f"output_{i}": t for i, t in enumerate(out)}
    else:
        raise TrajhookError(
            f"TensorProbe {name!r}: the model returned {type(out).__name__}, not a tensor, a tuple of tensors or a "
            "dict of tensors. HINT: pass fn=lambda model, inputs: ... that returns tensors."
        )
    for key, value in record.items():
        if not isinstance(value, torch.Tensor):
            raise TrajhookError(
                f"TensorProbe {name!r}: output {key!r} is {type(value).__name__}, not a tensor. "
                "HINT: pass fn=lambda model, inputs: ... that returns only tensors, e.g. model(**inputs).logits."
            )
    return record


class TensorProbe(Probe):
    """Record ``model(*inputs)`` (or ``fn(model, inputs)``) on a fixed batch, every record.

    ``inputs`` is a tensor, a tuple of tensors (positional arguments) or a dict (keyword
    arguments). The output may be a tensor (stored as ``output``), a tuple (``output_0``,
    ``output_1``, ...) or a dict of tensors (stored under its keys). Pass ``nan_marks_missing=True``
    when NaN in the output means "no value here" by design (e.g. padding): NaN at the positions
    where the setup run had it is then not warned about.

    >>> probe = TensorProbe("grid", torch.linspace(-1, 1, 8).reshape(4, 2))
    >>> probe.setup(torch.nn.Linear(2, 3), torch.device("cpu"))
    >>> probe.outputs["output"].describe()
    'output(4, 3) float32'
    """

    kind = "tensor"

    def __init__(
        self,
        name: str,
        inputs: Inputs,
        fn: Callable[[torch.nn.Module, Inputs], Any] | None = None,
        *,
        nan_marks_missing: bool = False,
    ) -> None:
        super().__init__(name)
        _check_inputs(name, inputs)
        if fn is not None and not callable(fn):
            raise TrajhookError(
                f"TensorProbe {name!r}: fn={fn!r} is not callable. HINT: pass fn=lambda model, inputs: model(inputs)."
            )
        self.inputs = inputs
        self.fn = fn
        self.nan_marks_missing = bool(nan_marks_missing)

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        self.inputs = _to_device(self.inputs, device)
        with torch.no_grad():
            record = self.run(model)
        for key, value in record.items():
            try:
                dtype = numpy_dtype(value.dtype)
            except TrajhookError as err:
                raise TrajhookError(f"TensorProbe {self.name!r}: output {key!r}: {err}") from None
            self.add_output(key, tuple(value.shape), dtype, nan_marks_missing=self.nan_marks_missing)

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        if self.fn is not None:
            return _as_record(self.fn(model, self.inputs), self.name)
        if isinstance(self.inputs, torch.Tensor):
            return _as_record(model(self.inputs), self.name)
        if isinstance(self.inputs, Mapping):
            return _as_record(model(**self.inputs), self.name)
        return _as_record(model(*self.inputs), self.name)
