"""The model a checkpoint series is loaded into: built from ``model=``, checked against each checkpoint's header.

``model=`` is a module, a zero-argument factory, a class (a LightningModule class is built by Lightning's
``load_from_checkpoint``, an SB3 algorithm class by its ``load``, a Hugging Face model class by
``from_pretrained``), an SB3 algorithm or policy, ``"pkg.module:name"`` for any of these, or None for a
self-describing checkpoint (a Hugging Face folder with ``config.json``, an SB3 zip).

>>> net = torch.nn.Linear(2, 1)
>>> prefix_for({"module.weight": (1, 2), "module.bias": (1,)}, model_header(net), Path("m.pth"))
'module.'
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from trajhook.errors import TrajhookError
from trajhook.replay.sources import Header, Source

PREFIXES = ("module.", "_orig_mod.", "model.")
"""Key prefixes a wrapper adds (DDP, torch.compile, a wrapping module), stripped when the model's keys lack them."""


def load_object(spec: str, what: str) -> Any:
    """The object ``"pkg.module:name"`` names (``what`` words the error)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TrajhookError(f"replay: {what} {spec!r} is not 'pkg.module:name'. HINT: e.g. {what} mypkg.models:make.")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise TrajhookError(
            f"replay: {what} {spec!r} cannot be imported ({type(err).__name__}: {err}). HINT: check that the module "
            "is on PYTHONPATH and defines that name."
        ) from None
    return obj


def _names(obj: Any) -> set[str]:
    cls = obj if isinstance(obj, type) else type(obj)
    return {c.__name__ for c in cls.__mro__}


def _as_module(obj: Any, what: str) -> torch.nn.Module:
    """A module, or an SB3 algorithm's policy."""
    if "BaseAlgorithm" in _names(obj):
        return obj.policy
    if isinstance(obj, torch.nn.Module):
        return obj
    raise TrajhookError(
        f"replay: {what} gave a {type(obj).__name__}, not a torch.nn.Module. HINT: pass model= a module, a "
        "zero-argument function returning one, or its class."
    )


def build_model(model: Any, source: Source, first: Path) -> torch.nn.Module:
    """The module the checkpoints load into (``first``: the series' first checkpoint, which some classes build from)."""
    if isinstance(model, str):
        model = load_object(model, "--model")
    if model is None:
        built = source.build(first)
        if built is None:
            raise TrajhookError(
                f"replay: {first} is a {source.name}, which does not say what model it holds. HINT: pass model= "
                "the module, a zero-argument function building it, or (Lightning) the LightningModule class."
            )
        return _as_module(built, str(first))
    if isinstance(model, type):
        names = _names(model)
        if "LightningModule" in names:
            return model.load_from_checkpoint(first, map_location="cpu")
        if "BaseAlgorithm" in names:
            return model.load(first, device="cpu").policy
        if "PreTrainedModel" in names:
            return model.from_pretrained(first)
    if isinstance(model, torch.nn.Module) or "BaseAlgorithm" in _names(model):
        return _as_module(model, "model=")
    if callable(model):
        return _as_module(model(), f"model={getattr(model, '__name__', model)!r}()")
    raise TrajhookError(
        f"replay: model={model!r:.80} is not a module, a class or a function. HINT: pass model= a module or a "
        "zero-argument function returning one."
    )


def model_header(model: torch.nn.Module) -> Header:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def tied_keys(model: torch.nn.Module) -> dict[str, set[str]]:
    """For each state-dict key, the other keys holding the same tensor (tied weights, e.g. an LM head)."""
    by_tensor: dict[int, set[str]] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(value), set()).add(key)
    return {k: group - {k} for group in by_tensor.values() for k in group}


def prefix_for(header: Header, expected: Header, path: Path, tied: Mapping[str, set[str]] | None = None) -> str:
    """The key prefix to strip so that ``header`` fits ``expected`` (the model's); a TrajhookError naming ``path``
    and the keys that do not fit otherwise. A key missing from the checkpoint is fine when a tied key is there."""
    prefix = next((p for p in PREFIXES if header and all(k.startswith(p) for k in header)), "")
    if prefix and any(k.startswith(prefix) for k in expected):
        prefix = ""
    keys = {k[len(prefix) :]: shape for k, shape in header.items()}
    tied = tied or {}
    missing = sorted(k for k in expected if k not in keys and not (tied.get(k, set()) & set(keys)))
    unexpected = sorted(k for k in keys if k not in expected)
    wrong = sorted(f"{k} {keys[k]} (model: {expected[k]})" for k in keys if k in expected and keys[k] != expected[k])
    if missing or unexpected or wrong:
        parts = [
            f"{what} {values[:5]}{' ...' if len(values) > 5 else ''}"
            for what, values in (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong))
            if values
        ]
        raise TrajhookError(
            f"replay: the weights in {path} do not fit the model: {'; '.join(parts)}. HINT: pass the model these "
            "checkpoints were saved from (model=, --model), built with the same configuration."
        )
    return prefix


def load_into(model: torch.nn.Module, state: Mapping[str, torch.Tensor], prefix: str) -> None:
    """Copy ``state`` (keys with ``prefix`` stripped) into ``model``; keys were checked against it before."""
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items()}
    model.load_state_dict(state, strict=False)  # strict would refuse a tied key saved once (checked above)
