"""The probe contract: what a probe records, declared once, and how it runs.

A probe is to trajhook what a ``torchmetrics.Metric`` is to a metric collection: subclasses
declare their outputs (name, per-record shape, dtype) with :meth:`Probe.add_output`, which
fixes the HDF5 schema, and implement :meth:`Probe.setup` and :meth:`Probe.run`. The
:class:`~trajhook.Recorder` owns everything around them: eval mode, ``no_grad``, RNG, device
transfers and storage. A probe never touches a file.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from trajhook.errors import TrajhookError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")


def check_name(kind: str, name: str) -> str:
    """Return ``name`` if it can be an HDF5 and W&B key part, else raise.

    A name starts with a letter, digit or ``_`` (so ``"."`` and ``".."``, which HDF5 reads as
    paths, are refused) and has at most 100 characters.

    >>> check_name("probe", "maze_seed1")
    'maze_seed1'
    >>> check_name("probe", ".")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: probe name '.' is not valid. HINT: ...
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise TrajhookError(
            f"{kind} name {name!r} is not valid. HINT: start with a letter, digit or '_' and use letters, digits, "
            "'_', '.' and '-' only (at most 100 characters), e.g. 'maze' or 'prompts'."
        )
    return name


def stage_tracker(track_stages: Any, where: str, **defaults: Any) -> Any:
    """A probe's ``track_stages=`` argument as a StageTracker, or None when off.

    :mod:`trajhook.analysis.online` is imported only when tracking is on: ``import trajhook``
    imports no analysis module.

    >>> stage_tracker(False, "MyProbe") is None
    True
    """
    if track_stages is None or track_stages is False:
        return None
    from trajhook.analysis.online import as_tracker

    return as_tracker(track_stages, where, **defaults)


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype a tensor of ``dtype`` is stored as (bfloat16 is widened to float32).

    >>> numpy_dtype(torch.bfloat16), numpy_dtype(torch.int64)
    (dtype('float32'), dtype('int64'))
    """
    if dtype == torch.bfloat16:
        return np.dtype("float32")
    try:
        return np.dtype(str(dtype).removeprefix("torch."))
    except TypeError:
        raise TrajhookError(
            f"{dtype} has no numpy dtype, so it cannot be stored. HINT: return e.g. tensor.float() from the probe."
        ) from None


@dataclass(frozen=True)
class OutputSpec:
    """One recorded dataset: its name, the shape of one record, and its dtype.

    ``nan_marks_missing``: NaN in this output marks a missing value by design (e.g. padding), so
    NaN at the positions where the setup run had it is not warned about.
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nan_marks_missing: bool = False

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
    >>> probe.kind  # stored with the probe's group; readers (CLI, sinks, report, serve) dispatch on it
    'custom'
    """

    kind: ClassVar[str] = "custom"
    """What wrote a probe group: ``"maze"``, ``"prompts"``, ``"token_loss"``, ``"tensor"`` or ``"custom"``."""

    def __init__(self, name: str) -> None:
        self.name = check_name("probe", name)
        self.metadata: dict[str, Any] = {}
        self._outputs: dict[str, OutputSpec] = {}

    def add_output(
        self, name: str, shape: tuple[int, ...], dtype: Any = "float32", *, nan_marks_missing: bool = False
    ) -> None:
        """Declare one dataset that :meth:`run` returns at every record.

        :meth:`run` may return another dtype of the same kind (e.g. float16 or float64 for a
        declared float32): it is stored converted to ``dtype``. Set ``nan_marks_missing`` when
        NaN in this output means "no value here" (padding), so that it is not warned about.
        """
        where = f"{type(self).__name__} {self.name!r}: output {name!r}"
        check_name(f"{type(self).__name__} {self.name!r}: output", name)
        try:
            shape = tuple(operator.index(s) for s in shape)
        except TypeError:
            raise TrajhookError(
                f"{where} has shape {shape!r}, not a tuple of ints. HINT: pass e.g. shape=(96, 2)."
            ) from None
        if any(s < 0 for s in shape):
            raise TrajhookError(f"{where} has negative shape {shape}. HINT: pass sizes >= 0, e.g. shape=(96, 2).")
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TrajhookError(f"{where} has dtype {dtype!r}, not a numpy dtype. HINT: e.g. 'float32'.") from None
        if dtype.kind not in "biuf":
            raise TrajhookError(
                f"{where} has dtype {dtype}, which the store cannot hold. HINT: use a bool, int or float dtype."
            )
        self._outputs[name] = OutputSpec(name, shape, dtype, bool(nan_marks_missing))

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """The declared outputs, in declaration order."""
        return dict(self._outputs)

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Build and cache inputs on ``device``, once, and declare outputs if not done yet."""

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Run the model on the cached inputs and return one record."""
        raise NotImplementedError(f"{type(self).__name__} must implement run(model).")

    # -- sharing a record's work across ranks (optional; see trajhook.distributed) -------------

    def split(self, ranks: int) -> int:
        """Into how many parts one record's work splits when ``ranks`` ranks share it; 0: it does not split.

        A probe that splits implements :meth:`run_part` and :meth:`merge`, such that
        ``merge([run_part(model, i, n) for i in range(n)])`` equals ``run(model)``. Each part is one
        forward of the model (under FSDP and ZeRO-3 every rank joins every forward). Rank zero merges.

        >>> Probe("p").split(2)
        0
        """
        return 0

    def run_part(self, model: torch.nn.Module, part: int, parts: int) -> Any:
        """Part ``part`` of ``parts`` of one record: one forward, returning tensors (any nesting of dicts/lists)."""
        raise NotImplementedError(f"{type(self).__name__} does not split: split() returns 0.")

    def merge(self, partials: list[Any]) -> dict[str, torch.Tensor]:
        """One record from every part's result, in order (on rank zero)."""
        raise NotImplementedError(f"{type(self).__name__} does not split: split() returns 0.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
