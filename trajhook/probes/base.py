"""The probe contract: what a probe records, declared once, and how it runs.

A probe is to trajhook what a ``torchmetrics.Metric`` is to a metric collection: subclasses
declare their outputs (name, per-record shape, dtype) with :meth:`Probe.add_output`, which
fixes the HDF5 schema, and implement :meth:`Probe.setup` and :meth:`Probe.run`. The
:class:`~trajhook.Recorder` owns everything around them: eval mode, ``no_grad``, RNG, device
transfers and storage. A probe never touches a file.

A probe whose record splits into parts (one forward each, shared across ranks) declares how
each output is assembled from the parts where it declares the output, as a ``Metric`` declares
how each state reduces (``add_state(..., dist_reduce_fx="sum")``): ``add_output(...,
merge="cat" | "scatter" | "sum", fill=...)``. It then writes only :meth:`Probe.split` and
:meth:`Probe.run_part`; the one :meth:`Probe.merge` assembles every record.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from trajhook.errors import TrajhookError

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")

MERGES = ("cat", "scatter", "sum")
"""How an output of a split record is assembled from its parts (see :meth:`Probe.merge`)."""


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


def torch_dtype(dtype: np.dtype) -> torch.dtype:
    """The torch dtype of a declared numpy dtype, for building a record.

    >>> torch_dtype(np.dtype("float16")), torch_dtype(np.dtype("int64"))
    (torch.float16, torch.int64)
    """
    try:
        return torch.from_numpy(np.empty(0, dtype)).dtype
    except TypeError:
        raise TrajhookError(
            f"{dtype} has no torch dtype, so a record of it cannot be merged. HINT: declare e.g. 'float32' or 'int64'."
        ) from None


@dataclass(frozen=True)
class OutputSpec:
    """One recorded dataset: its name, the shape of one record, and its dtype.

    ``nan_marks_missing``: NaN in this output marks a missing value by design (e.g. padding), so
    NaN at the positions where the setup run had it is not warned about. ``merge`` and ``fill``:
    how :meth:`Probe.merge` assembles it from a split record's parts (None: the probe does not split).
    """

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nan_marks_missing: bool = False
    merge: str | None = None
    fill: float = 0.0

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

    A probe whose record splits into parts, so that ranks can share it, gives each output a
    ``merge`` and writes :meth:`split` and :meth:`run_part` instead of ``run``:

    >>> class Halves(Probe):
    ...     def setup(self, model, device):
    ...         self.inputs = torch.arange(8.0, device=device).reshape(4, 2)
    ...         self.add_output("out", (4, 2), merge="cat")  # the parts' rows, in part order
    ...         self.add_output("total", (), merge="sum")  # the parts' values added
    ...     def split(self, ranks):
    ...         return 2
    ...     def run_part(self, model, part, parts):  # one forward on two of the four rows
    ...         out = model(self.inputs[2 * part : 2 * part + 2])
    ...         return {"out": out, "total": out.sum()}
    >>> model, probe = torch.nn.Linear(2, 2), Halves("halves")
    >>> probe.setup(model, torch.device("cpu"))
    >>> with torch.no_grad():  # run() is every part of split(1) merged, as rank zero merges the ranks' parts
    ...     record, whole = probe.run(model), model(probe.inputs)
    >>> torch.equal(record["out"], whole), torch.allclose(record["total"], whole.sum())
    (True, True)
    """

    kind: ClassVar[str] = "custom"
    """What wrote a probe group: ``"maze"``, ``"prompts"``, ``"token_loss"``, ``"tensor"`` or ``"custom"``."""

    def __init__(self, name: str) -> None:
        self.name = check_name("probe", name)
        self.metadata: dict[str, Any] = {}
        self._outputs: dict[str, OutputSpec] = {}
        self.merge_device: torch.device | None = None
        """Where :meth:`merge` builds a record (the built-in probes set it at setup); None: where the parts are."""

    def add_output(
        self,
        name: str,
        shape: tuple[int, ...],
        dtype: Any = "float32",
        *,
        nan_marks_missing: bool = False,
        merge: str | None = None,
        fill: float = 0.0,
    ) -> None:
        """Declare one dataset that :meth:`run` returns at every record.

        :meth:`run` may return another dtype of the same kind (e.g. float16 or float64 for a
        declared float32): it is stored converted to ``dtype``. Set ``nan_marks_missing`` when
        NaN in this output means "no value here" (padding), so that it is not warned about.

        A probe that splits (see :meth:`split`) says how :meth:`merge` assembles this output
        from the parts, each of which returns it (or leaves it out) from :meth:`run_part`:

        - ``merge="cat"``: the parts' ``values``, concatenated along the first axis in part order;
        - ``merge="scatter"``: each part's ``(indices, values)`` put at ``indices``;
        - ``merge="sum"``: the parts' ``values`` (or ``(indices, values)``) added in part order.

        ``indices`` count the rows of the record flattened to ``values``' trailing shape: for
        values of shape ``(m,)``, positions in the flattened record; for ``(m, k)``, rows of
        ``k``. Positions no part gives hold ``fill`` (e.g. ``float("nan")``, with
        ``nan_marks_missing``). Parts are placed and added in the declared dtype.
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
        if merge is not None or fill != 0:  # a fill without a merge is told to name one
            fill = self._checked_merge(where, dtype, merge, fill)
        self._outputs[name] = OutputSpec(name, shape, dtype, bool(nan_marks_missing), merge, fill)

    @staticmethod
    def _checked_merge(where: str, dtype: np.dtype, merge: Any, fill: Any) -> float:
        """``fill`` as a number, once ``merge`` and ``fill`` are known to fit ``dtype``."""
        if merge not in MERGES:
            raise TrajhookError(
                f"{where} has merge={merge!r}. HINT: pass merge='cat', 'scatter' or 'sum' (see Probe.add_output)."
            )
        try:
            torch_dtype(dtype)
        except TrajhookError as err:
            raise TrajhookError(f"{where}: {err}") from None
        if merge == "sum" and dtype.kind == "b":
            raise TrajhookError(f"{where} is bool, which cannot be summed. HINT: use merge='scatter', or an int dtype.")
        if isinstance(fill, bool) or not isinstance(fill, int | float | np.number):
            raise TrajhookError(f"{where} has fill={fill!r}, not a number. HINT: pass e.g. fill=float('nan').")
        if dtype.kind != "f" and not float(fill).is_integer():
            raise TrajhookError(f"{where} is {dtype}, which cannot hold fill={fill!r}. HINT: pass e.g. fill=0.")
        return float(fill) if dtype.kind == "f" else int(fill)

    @property
    def outputs(self) -> dict[str, OutputSpec]:
        """The declared outputs, in declaration order."""
        return dict(self._outputs)

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Build and cache inputs on ``device``, once, and declare outputs if not done yet."""

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Run the model on the cached inputs and return one record.

        A probe that splits need not write it: by default it is every part of ``split(1)`` merged.
        """
        parts = self.split(1)
        if not parts:
            raise NotImplementedError(f"{type(self).__name__} must implement run(model).")
        return self.merge([self.run_part(model, i, parts) for i in range(parts)])

    # -- sharing a record's work across ranks (optional; see trajhook.distributed) -------------

    def split(self, ranks: int) -> int:
        """Into how many parts one record's work splits when ``ranks`` ranks share it; 0: it does not split.

        A probe that splits implements :meth:`run_part` and declares each output's ``merge``
        (:meth:`add_output`), such that ``merge([run_part(model, i, n) for i in range(n)])``
        equals ``run(model)``. Each part is one forward of the model (under FSDP and ZeRO-3
        every rank joins every forward). Rank zero merges.

        >>> Probe("p").split(2)
        0
        """
        return 0

    def run_part(self, model: torch.nn.Module, part: int, parts: int) -> dict[str, Any]:
        """Part ``part`` of ``parts`` of one record: one forward, returning ``{output: values}``.

        An output merged by ``"scatter"`` (or a ``"sum"`` at positions) is returned as
        ``(indices, values)``; an output a part has nothing for is left out.
        """
        raise NotImplementedError(f"{type(self).__name__} does not split: split() returns 0.")

    def merge(self, partials: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """One record from every part's result, in part order (on rank zero), as each output declares.

        Each output is built on :attr:`merge_device` in its declared dtype (see :meth:`add_output`).

        >>> probe = Probe("p")
        >>> probe.add_output("loss", (2, 3), merge="scatter", fill=float("nan"))
        >>> probe.add_output("top", (2, 2), "int64", merge="scatter")
        >>> first = {"loss": (torch.tensor([4]), torch.tensor([1.0])), "top": ([1], torch.tensor([[7, 8]]))}
        >>> second = {"loss": (torch.tensor([0, 1]), torch.tensor([2.0, 3.0])), "top": ([0], torch.tensor([[5, 6]]))}
        >>> record = probe.merge([first, second])
        >>> record["loss"]
        tensor([[2., 3., nan],
                [nan, 1., nan]])
        >>> record["top"].tolist()
        [[5, 6], [7, 8]]
        """
        where = f"{type(self).__name__} {self.name!r}"
        for i, part in enumerate(partials):
            unknown = sorted(part.keys() - self._outputs.keys()) if isinstance(part, Mapping) else None
            if unknown is None or unknown:
                got = f"the output {unknown[0]!r}, which it does not declare" if unknown else type(part).__name__
                raise TrajhookError(
                    f"{where}: part {i} returned {got}. HINT: run_part returns {{output: values}} for declared outputs."
                )
        device = self.merge_device if self.merge_device is not None else _first_device(partials)
        record = {}
        for name, spec in self._outputs.items():
            if spec.merge is None:
                raise TrajhookError(
                    f"{where}: output {name!r} declares no merge, so a split record cannot be assembled. "
                    "HINT: add_output(..., merge='cat', 'scatter' or 'sum'), or have split() return 0."
                )
            given = [
                _as_part(part[name], spec, f"{where}: part {i}") for i, part in enumerate(partials) if name in part
            ]
            record[name] = _assembled(spec, given, device, where)
        return record

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


Part = tuple[torch.Tensor | None, torch.Tensor]
"""One part's share of one output: ``(indices or None, values)``."""


def _as_part(value: Any, spec: OutputSpec, where: str) -> Part:
    """A part's value for ``spec`` as ``(indices, values)``: a scatter gives indices, a cat none, a sum either."""
    indexed = isinstance(value, tuple) and len(value) == 2
    if (spec.merge == "cat" and indexed) or (spec.merge == "scatter" and not indexed):
        form = "(indices, values)" if spec.merge == "scatter" else "values alone"
        raise TrajhookError(
            f"{where} returned {'(indices, values)' if indexed else type(value).__name__} for output {spec.name!r}, "
            f"which merges by {spec.merge!r}. HINT: return {form} for it."
        )
    if indexed:
        return torch.as_tensor(value[0]), torch.as_tensor(value[1])
    return None, torch.as_tensor(value)


def _assembled(spec: OutputSpec, parts: list[Part], device: torch.device, where: str) -> torch.Tensor:
    """One output of a record from its parts, in part order, as ``spec.merge`` and ``spec.fill`` say."""
    dtype = torch_dtype(spec.dtype)
    if spec.merge == "cat":
        if not parts:
            raise TrajhookError(f"{where}: no part returned output {spec.name!r}. HINT: return it from run_part.")
        return torch.cat([values.to(device=device, dtype=dtype) for _, values in parts])
    if spec.merge == "scatter":
        record = torch.full(spec.shape, spec.fill, dtype=dtype, device=device)
        for indices, values in parts:
            values = values.to(device=device, dtype=dtype)
            _rows(record, values)[indices.to(device)] = values
        return record
    record = torch.zeros(spec.shape, dtype=dtype, device=device)  # a sum, from zero
    given = torch.zeros(spec.shape, dtype=torch.bool, device=device)
    for indices, values in parts:
        values = values.to(device=device, dtype=dtype)
        if indices is None:  # whole values
            record += values
            given[...] = True
        else:
            _rows(record, values).index_add_(0, indices.to(device), values)
            _rows(given, values)[indices.to(device)] = True
    return record.masked_fill(~given, spec.fill)


def _rows(record: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``record`` flattened to rows of ``values``' trailing shape: where a part's indices point."""
    return record.view(-1, *values.shape[1:])


def _first_device(partials: list[dict[str, Any]]) -> torch.device:
    """The device of the first tensor the parts hold (CPU if none)."""
    for part in partials:
        for value in part.values():
            for tensor in value if isinstance(value, tuple) else (value,):
                if isinstance(tensor, torch.Tensor):
                    return tensor.device
    return torch.device("cpu")
