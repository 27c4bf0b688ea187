"""Checkpoint formats: for each, whether a path is one, the step it records, its weights' names and shapes, its weights.

One small class per format, each with the same four methods:

- ``matches(path)``: whether ``path`` is a checkpoint of this format;
- ``step(path)``: the step the checkpoint records (HF ``trainer_state.json``'s ``global_step``, Lightning's
  ``global_step``, SB3's ``num_timesteps``), or None where it records none (a bare torch file);
- ``header(path)``: the state dict's names and shapes, read cheaply (``torch.load(mmap=True)``, a
  safetensors header), so that every checkpoint is checked before anything is recorded;
- ``read(path)``: the state dict in memory (what the prefetch thread loads while the last one is probed);
- ``build(path)``: the model a self-describing checkpoint describes (HF with ``config.json``, SB3's policy),
  else None.

Nothing here imports a framework until a checkpoint of its format is read.

>>> step_in_name(Path("runs/model_40960.pth")), step_in_name(Path("epoch=3-step=120.ckpt")), step_in_name(Path("a.pt"))
(40960, 120, None)
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch

from trajhook.errors import TrajhookError

Header = dict[str, tuple[int, ...]]
"""A state dict's names and shapes."""

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".zip", ".safetensors", ".tar")
"""File suffixes taken as checkpoints when a folder of them is given."""

STATE_KEYS = ("model_state_dict", "state_dict", "model", "module", "policy", "net")
"""Where a torch file's state dict is looked for when the file is not a bare state dict, in this order."""

UNREADABLE = (OSError, EOFError, RuntimeError, ValueError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError)
"""What reading a checkpoint raises once it is truncated, deleted or damaged."""


def step_in_name(path: Path) -> int | None:
    """The last number in the file (or folder) name, without its suffix; None if it has none."""
    numbers = re.findall(r"\d+", path.name.removesuffix("".join(path.suffixes[-1:])) or path.name)
    return int(numbers[-1]) if numbers else None


def is_state_dict(obj: Any) -> bool:
    """A non-empty mapping of str to tensors."""
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def header_of(state: Mapping[str, torch.Tensor]) -> Header:
    return {k: tuple(v.shape) for k, v in state.items()}


def torch_load(path: Path | io.BytesIO, mmap: bool = False) -> Any:
    """``torch.load`` on the CPU, tensors only (``weights_only=True``), memory-mapped where the file allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise TrajhookError(
            f"replay: {path} holds Python objects that torch.load(weights_only=True) refuses to run "
            f"({str(err).splitlines()[0][:160]}). HINT: re-save the weights alone, "
            "torch.save({'model_state_dict': model.state_dict()}, path); trajhook never unpickles code."
        ) from None
    except RuntimeError:
        if not mmap:
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # a legacy (non-zip) file: no mmap


def state_dict_in(obj: Any, path: Path) -> Mapping[str, torch.Tensor]:
    """The state dict in what a torch file holds: the file itself, or under one key (:data:`STATE_KEYS` first).

    >>> sd = {"w": torch.zeros(2)}
    >>> state_dict_in({"model_state_dict": sd, "optimizer_state_dict": {"state": {}}}, Path("m.pth")) is sd
    True
    """
    if is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in STATE_KEYS:
            if is_state_dict(obj.get(key)):
                return obj[key]
        found = [k for k, v in obj.items() if is_state_dict(v)]
        if len(found) == 1:
            return obj[found[0]]
        keys = sorted(map(str, obj))[:12]
        what = f"{len(found)} state dicts ({found})" if found else "no state dict"
        raise TrajhookError(
            f"replay: {path} holds {what} under its keys {keys}. HINT: save the model's weights bare or under "
            f"one of {list(STATE_KEYS)}, e.g. torch.save({{'model_state_dict': model.state_dict()}}, path)."
        )
    raise TrajhookError(
        f"replay: {path} holds a {type(obj).__name__}, not a state dict. HINT: save model.state_dict(), "
        "not the model object."
    )


class Source:
    """One checkpoint format (see the module's docstring)."""

    name: ClassVar[str] = "checkpoint"

    def matches(self, path: Path) -> bool:
        raise NotImplementedError

    def step(self, path: Path) -> int | None:
        return None

    def header(self, path: Path) -> Header:
        return header_of(self.read(path))

    def read(self, path: Path) -> Mapping[str, torch.Tensor]:
        raise NotImplementedError

    def build(self, path: Path) -> Any:
        """The model the checkpoint describes itself, or None: then ``model=`` is needed."""
        return None

    def scalars(self, path: Path) -> dict[int, dict[str, float]]:
        """Scalars the checkpoint carries, by the step a live callback logs them at (HF: the loss)."""
        return {}

    def __repr__(self) -> str:
        return self.name


# -- Hugging Face: checkpoint-N/ folders ------------------------------------------------------------------------

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


class HFFolder(Source):
    """A ``transformers.Trainer`` ``checkpoint-N/`` folder (or any ``save_pretrained`` folder)."""

    name = "Hugging Face checkpoint folder"

    def matches(self, path: Path) -> bool:
        return path.is_dir() and any((path / f).is_file() for f in (*HF_WEIGHTS, "trainer_state.json"))

    def step(self, path: Path) -> int | None:
        state = path / "trainer_state.json"
        if not state.is_file():
            return None
        return int(json.loads(state.read_text())["global_step"])

    def scalars(self, path: Path) -> dict[int, dict[str, float]]:
        """``log_history``'s losses at ``step - 1``, the step whose weights computed them (as the HF callback logs)."""
        state = path / "trainer_state.json"
        if not state.is_file():
            return {}
        rows = json.loads(state.read_text()).get("log_history", [])
        return {int(r["step"]) - 1: {"loss": float(r["loss"])} for r in rows if "loss" in r and r.get("step", 0) > 0}

    def _files(self, path: Path) -> list[Path]:
        for name in HF_WEIGHTS:
            if (path / name).is_file():
                if name.endswith(".index.json"):  # HF's own shards (each a whole part of the model, not FSDP's)
                    index = json.loads((path / name).read_text())
                    return [path / f for f in sorted(set(index["weight_map"].values()))]
                return [path / name]
        raise TrajhookError(
            f"replay: {path} has no model weights ({' or '.join(HF_WEIGHTS[::2])}). HINT: point at a checkpoint "
            "folder that Trainer wrote with save_only_model=False or save_pretrained, not a sharded one."
        )

    def header(self, path: Path) -> Header:
        header: Header = {}
        for file in self._files(path):
            if file.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(file, framework="pt") as f:
                    header.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
            else:
                header.update(header_of(state_dict_in(torch_load(file, mmap=True), file)))
        return header

    def read(self, path: Path) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for file in self._files(path):
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                state.update(load_file(file, device="cpu"))
            else:
                state.update(state_dict_in(torch_load(file), file))
        return state

    def build(self, path: Path) -> Any:
        if not (path / "config.json").is_file():
            return None
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        architectures = getattr(config, "architectures", None) or []
        cls = getattr(transformers, architectures[0], None) if architectures else None
        cls = cls or transformers.AutoModel
        return cls.from_pretrained(path)  # a local folder: nothing is downloaded


# -- Lightning .ckpt -------------------------------------------------------------------------------------------


class _Peeked:
    """The last torch file loaded memory-mapped: matches, step and header read it once, not three times."""

    path: Path | None = None
    key: Any = None
    obj: Any = None

    @classmethod
    def load(cls, path: Path) -> Any:
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if cls.path != path or cls.key != key:
            cls.path, cls.key, cls.obj = None, None, None
            cls.obj, cls.key, cls.path = torch_load(path, mmap=True), key, path
        return cls.obj

    @classmethod
    def forget(cls) -> None:
        cls.path, cls.key, cls.obj = None, None, None


def _is_torch_file(path: Path) -> bool:
    """A file with a torch suffix, or any other file in torch's own format (a zip holding ``*/data.pkl``)."""
    return path.is_file() and (path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".tar") or _torch_zip(path))


def _torch_zip(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/data.pkl") for n in z.namelist())


class LightningCkpt(Source):
    """A Lightning ``.ckpt``: a torch file with ``global_step``, ``state_dict`` (the LightningModule's own keys)."""

    name = "Lightning checkpoint"

    def matches(self, path: Path) -> bool:
        if not (path.is_file() and path.suffix == ".ckpt"):
            return False
        obj = _Peeked.load(path)
        return isinstance(obj, Mapping) and "state_dict" in obj and "global_step" in obj

    def step(self, path: Path) -> int | None:
        return int(_Peeked.load(path)["global_step"])

    def header(self, path: Path) -> Header:
        return header_of(_Peeked.load(path)["state_dict"])

    def read(self, path: Path) -> Mapping[str, torch.Tensor]:
        return torch_load(path)["state_dict"]

    def build(self, path: Path) -> Any:
        return None  # the LightningModule class is not in the file: model= names it


# -- Stable-Baselines3 .zip -----------------------------------------------------------------------------------


class SB3Zip(Source):
    """A Stable-Baselines3 ``model.save`` zip (``CheckpointCallback``'s ``rl_model_<steps>_steps.zip``)."""

    name = "Stable-Baselines3 zip"

    def matches(self, path: Path) -> bool:
        if not (path.is_file() and zipfile.is_zipfile(path)):
            return False
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
        return "data" in names and "policy.pth" in names

    def step(self, path: Path) -> int | None:
        with zipfile.ZipFile(path) as z:  # the JSON SB3 writes: no SB3 import, no unpickling
            return int(json.loads(z.read("data"))["num_timesteps"])

    def read(self, path: Path) -> Mapping[str, torch.Tensor]:
        with zipfile.ZipFile(path) as z:
            return state_dict_in(torch_load(io.BytesIO(z.read("policy.pth"))), path)

    def build(self, path: Path) -> Any:
        """The policy, built from the classes and spaces the zip records (SB3's deserialisation, no ``PPO.load``)."""
        from stable_baselines3.common.save_util import load_from_zip_file

        data, _, _ = load_from_zip_file(path, device="cpu", load_data=True)
        try:
            kwargs = dict(data.get("policy_kwargs") or {})
            if "use_sde" in data:
                kwargs["use_sde"] = data["use_sde"]
            return data["policy_class"](data["observation_space"], data["action_space"], lambda _: 0.0, **kwargs)
        except Exception as err:
            raise TrajhookError(
                f"replay: cannot build the policy {path} describes ({type(err).__name__}: {err}). HINT: pass "
                "model= the algorithm class (e.g. model=PPO), the model, or its policy."
            ) from None


# -- a torch file holding a state dict -------------------------------------------------------------------------


class TorchFile(Source):
    """A torch file holding a state dict, bare or under a key (train-procgen-pytorch's ``model_<t>.pth``)."""

    name = "torch state-dict file"

    def matches(self, path: Path) -> bool:
        return _is_torch_file(path)

    def step(self, path: Path) -> int | None:
        return None  # the file name's last number (see replay)

    def header(self, path: Path) -> Header:
        return header_of(state_dict_in(_Peeked.load(path), path))

    def read(self, path: Path) -> Mapping[str, torch.Tensor]:
        return state_dict_in(torch_load(path), path)


class SafetensorsFile(Source):
    """A bare ``.safetensors`` file."""

    name = "safetensors file"

    def matches(self, path: Path) -> bool:
        return path.is_file() and path.suffix == ".safetensors"

    def header(self, path: Path) -> Header:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118

    def read(self, path: Path) -> Mapping[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(path, device="cpu")


SOURCES: tuple[Source, ...] = (HFFolder(), SB3Zip(), LightningCkpt(), SafetensorsFile(), TorchFile())
"""Every format, asked in this order (an SB3 zip before a torch file, a Lightning .ckpt before a torch file)."""


# -- what this round refuses -------------------------------------------------------------------------------------


def sharded(path: Path) -> str | None:
    """What a sharded checkpoint (FSDP, DeepSpeed ZeRO, torch.distributed.checkpoint) is, or None."""
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if ".metadata" in names:
            return "a torch.distributed.checkpoint (FSDP / DCP) folder, one shard per rank"
        if any(n.startswith("pytorch_model_fsdp") for n in names):
            return "an FSDP sharded state dict (Accelerate's pytorch_model_fsdp_*)"
        if any("zero_pp_rank" in n or n.endswith("_optim_states.pt") for n in names) or (
            (path / "checkpoint").is_dir() and not any(n in names for n in HF_WEIGHTS)
        ):
            return "a DeepSpeed ZeRO checkpoint, one shard per rank"
        if not any(n in names for n in HF_WEIGHTS) and any(n.startswith("global_step") for n in names):
            return "a DeepSpeed checkpoint (global_step*/) without the gathered model weights"
    return None


def identify(path: Path) -> Source:
    """The format of ``path``, or a TrajhookError naming it and what is wrong."""
    if not path.exists():
        raise TrajhookError(f"replay: {path} does not exist. HINT: check the path or glob.")
    what = sharded(path)
    if what is not None:
        raise TrajhookError(
            f"replay: {path} is {what}. Sharded checkpoints are not supported this round. HINT: consolidate it into "
            "one state dict first (torch.distributed.checkpoint.format_utils.dcp_to_torch_save, DeepSpeed's "
            "zero_to_fp32.py, or HF's save_pretrained), then replay that."
        )
    for source in SOURCES:
        try:
            if source.matches(path):
                return source
        except TrajhookError:
            raise
        except UNREADABLE as err:
            raise TrajhookError(
                f"replay: {path} cannot be read as a {source.name} ({type(err).__name__}: {str(err)[:160]}). "
                "HINT: it may be truncated or still being written; remove it from the list or wait for it."
            ) from None
    raise TrajhookError(
        f"replay: {path} is not a checkpoint format trajhook knows. HINT: pass Hugging Face checkpoint-N/ folders, "
        "Lightning .ckpt files, Stable-Baselines3 .zip files or torch files holding a state dict."
    )


def close_peeked() -> None:
    """Drop the memory-mapped file kept by the last header read."""
    with contextlib.suppress(Exception):
        _Peeked.forget()
