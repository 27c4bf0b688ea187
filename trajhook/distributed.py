"""The one place that knows ``torch.distributed``: who writes, who probes, what to call, how the work is shared.

The same ``Recorder`` line runs on every rank of a job (``torchrun``, Ray Train, Lightning, HF ``Trainer``):

- **The writer** is global rank zero (never ``LOCAL_RANK``, which is zero once per node): it opens the
  store, runs the writer thread and the sinks; the other ranks never touch the file.
- **Which object to call** (:func:`probe_target`): the module under ``DistributedDataParallel`` or a
  ``DeepSpeedEngine``; the FSDP1 root under Lightning's ``FSDPStrategy`` (``trainer.strategy.model``:
  ``pl_module(x)`` would skip the root's pre-forward); the module itself under FSDP2, ZeRO-3 and
  Lightning's ``ModelParallelStrategy``. The whole model is never gathered.
- **Who joins a forward** (:func:`engine`): with sharded parameters (FSDP2 ``fully_shard``, FSDP1,
  DeepSpeed ZeRO-3) every forward all-gathers them, so every rank joins every probe forward, each with
  its own micro-batch; ranks with fewer micro-batches repeat one, so all run the same number. With a
  whole model on each rank (DDP, ZeRO-1/2, one process) the ranks run their shares independently.
  Sharding trajhook does not know (tensor or pipeline parallel, an unknown ``DTensor`` layout) is a
  :class:`TrajhookError` naming it, before any forward.
- **Sharing the work** (:func:`run_probes`): a probe that splits (``Probe.split``: PromptProbe and
  TokenLossProbe micro-batches, MazeProbe cells) has its parts dealt round-robin across the ranks;
  rank zero gathers them and merges them in order. A probe that does not split runs whole, on one
  rank (a whole model per rank) or on all (sharded). ``TRAJHOOK_SHARE_PROBES=0`` turns sharing off.
- **Agreeing on failure.** Ranks agree on a side group (gloo, timeout ``TRAJHOOK_AGREE_TIMEOUT_S``,
  default 60 s) before each probe forward (a forward pre-hook on the called module) and after each
  probe: a failure on one rank raises the same :class:`TrajhookError` on every rank at once, instead
  of leaving the others in the model's all-gather until the job's collective timeout.
- **After the probe** every FSDP2 module is resharded (Accelerate leaves some with
  ``reshard_after_forward=False``, and the root is never resharded after a forward).

Outside ``torch.distributed`` (or before ``init_process_group``, where torchrun's ``RANK`` environment
variable decides) every answer is that of a single process, and trajhook imports none of
``torch.distributed``'s FSDP or ``DTensor`` modules that the process did not import itself (seconds at
the first record otherwise):

>>> is_writer(), rank(), world_size(), engine(torch.nn.Linear(2, 2))
(True, 0, 1, 'replicated')
>>> net = torch.nn.Linear(2, 2)
>>> probe_target(net) is net
True
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from trajhook.errors import TrajhookError

COLLECTIVE = ("fsdp2", "fsdp1", "zero3")
"""Engines whose forward all-gathers sharded parameters: every rank joins every probe forward."""


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group, else torchrun's ``RANK``, else 0."""
    if _initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """How many ranks share the job: from the process group, else 1."""
    return torch.distributed.get_world_size() if _initialized() else 1


def is_writer() -> bool:
    """Whether this rank writes the store and feeds the sinks: global rank zero only."""
    return rank() == 0


def agree_timeout_s() -> float:
    """How long a rank waits for the others at an agreement (``TRAJHOOK_AGREE_TIMEOUT_S``, default 60 s)."""
    return float(os.environ.get("TRAJHOOK_AGREE_TIMEOUT_S", "60"))


def shares_probes() -> bool:
    """Whether ranks share the probe work (``TRAJHOOK_SHARE_PROBES``, default on; ``0`` runs it as before)."""
    return os.environ.get("TRAJHOOK_SHARE_PROBES", "1") not in ("0", "false", "no")


# -- which object to call ---------------------------------------------------------------------------------


def _class_names(obj: Any) -> set[str]:
    return {c.__name__ for c in type(obj).__mro__}


def _unknown(what: str, hint: str) -> TrajhookError:
    return TrajhookError(
        f"trajhook.distributed: {what}: a sharding trajhook does not know, so a probe forward could hang or read "
        f"a part of the model. HINT: {hint}"
    )


def probe_target(model: Any, trainer: Any = None) -> Any:
    """The object to run probes on, given what a framework hands over (``trainer``: a Lightning Trainer).

    ``DistributedDataParallel`` and ``DeepSpeedEngine`` give their module (DDP's forward would broadcast
    buffers; ZeRO-3's hooks live on the modules); Lightning's ``FSDPStrategy`` gives its FSDP1 root.
    """
    if trainer is not None:
        model = _lightning_target(model, trainer)
    names = _class_names(model)
    if names & {"PipelineEngine", "PipelineModule"}:
        raise _unknown(
            f"{type(model).__name__} (DeepSpeed pipeline parallel) holds one stage of the model per rank",
            "record with data parallel or ZeRO-3, or probe a checkpoint afterwards.",
        )
    if "DeepSpeedEngine" in names:
        return model.module
    if torch.distributed.is_available() and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _lightning_target(pl_module: Any, trainer: Any) -> Any:
    strategy = getattr(trainer, "strategy", None)
    names = _class_names(strategy)
    if "ModelParallelStrategy" in names and getattr(strategy, "_tensor_parallel_size", 1) not in (1, "auto"):
        raise _unknown(
            f"Lightning ModelParallelStrategy with tensor_parallel_size={strategy._tensor_parallel_size}",
            "use tensor_parallel_size=1 (FSDP2 only), or probe a checkpoint afterwards.",
        )
    if "FSDPStrategy" in names and torch.distributed.is_available():
        from torch.distributed.fsdp import FullyShardedDataParallel

        root = getattr(strategy, "model", None)
        if isinstance(root, FullyShardedDataParallel):
            return root  # the root's forward all-gathers its own parameters; pl_module(x) skips it
    return pl_module


# -- which engine holds the parameters --------------------------------------------------------------------


def engine(model: torch.nn.Module) -> str:
    """How ``model``'s parameters are held: ``"fsdp2"``, ``"fsdp1"``, ``"zero3"`` or ``"replicated"``.

    Raises a :class:`TrajhookError` for a layout trajhook does not know (a ``DTensor`` placed other than
    by FSDP, e.g. tensor parallel), before any forward.

    >>> engine(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    'replicated'
    """
    if not torch.distributed.is_available() or not isinstance(model, torch.nn.Module):
        return "replicated"
    fsdp2, fsdp1 = _fsdp_classes()
    fsdp2_modules = [m for m in model.modules() if isinstance(m, fsdp2)]
    _check_dtensors(model, fsdp2_modules)
    if fsdp2_modules:
        return "fsdp2"
    if any(isinstance(m, fsdp1) for m in model.modules()):
        return "fsdp1"
    if any(hasattr(p, "ds_id") and hasattr(p, "ds_status") for p in model.parameters()):
        return "zero3"  # DeepSpeed ZeRO-3 partitioned parameters (shape [0] outside a forward)
    return "replicated"


def _fsdp_classes() -> tuple[type | tuple, type | tuple]:
    """FSDP2's ``FSDPModule`` and FSDP1's ``FullyShardedDataParallel``; ``()`` each (matching nothing) where
    FSDP was never imported, so no module can be one."""
    if not _loaded("torch.distributed.fsdp"):
        return (), ()
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return FSDPModule, FullyShardedDataParallel


def _check_dtensors(model: torch.nn.Module, fsdp2: Sequence[torch.nn.Module]) -> None:
    """Every ``DTensor`` parameter must be FSDP2's: under an ``FSDPModule``, on dim 0 (HSDP: replicated first)."""
    if not _loaded("torch.distributed.tensor"):
        return  # no DTensor exists in this process
    from torch.distributed.tensor import DTensor, Replicate, Shard

    managed = {id(p) for m in fsdp2 for p in m.parameters()}
    for name, param in model.named_parameters():
        if not isinstance(param, DTensor):
            continue
        mesh, placements = param.device_mesh, tuple(param.placements)
        dim0 = isinstance(placements[-1], Shard) and placements[-1].dim == 0 and type(placements[-1]) is Shard
        hsdp = mesh.ndim == 2 and isinstance(placements[0], Replicate)
        if id(param) not in managed or not dim0 or not (mesh.ndim == 1 or hsdp):
            raise _unknown(
                f"parameter {name!r} is a DTensor on a {mesh.ndim}-D mesh{_names(mesh)} placed "
                f"{placements}{'' if id(param) in managed else ' outside any fully_shard module'} (tensor or "
                "sequence parallel?)",
                "record with FSDP2 (fully_shard on a 1-D mesh, or HSDP), DDP or ZeRO-3; or probe a checkpoint "
                "afterwards.",
            )


def _loaded(module: str) -> bool:
    """Whether this process imported ``module`` already: an object of its classes (an FSDP module, a
    ``DTensor``) exists only once it is, so a process that never imported it has nothing to check there,
    and does not pay seconds for the import (a single process's first record).

    >>> _loaded("torch"), _loaded("trajhook.no_such_module")
    (True, False)
    """
    return module in sys.modules


def _names(mesh: Any) -> str:
    return f" {mesh.mesh_dim_names}" if mesh.mesh_dim_names else ""


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded across ranks (FSDP1, FSDP2, ZeRO-3).

    >>> is_sharded(torch.nn.Linear(2, 2))
    False
    """
    return engine(model) in COLLECTIVE


def reshard(model: torch.nn.Module) -> None:
    """Free the gathered parameters every FSDP2 module still holds after a no-grad forward (a local step)."""
    if not torch.distributed.is_available() or not _loaded("torch.distributed.fsdp"):
        return
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


# -- agreeing on success ----------------------------------------------------------------------------------


class _AgreedFailure(TrajhookError):
    """A failure every rank already knows of (raised the same on each)."""


@dataclass
class _SideGroups:
    world: Any  # the default group these were made for
    entry: Any  # gloo, the job's own timeout: ranks may reach a record at different times
    agree: Any  # gloo, a short timeout: between agreements there is only trajhook's own work


_groups: _SideGroups | None = None


def _side_groups() -> _SideGroups:
    """Two gloo groups beside the job's (made once per process group, by every rank at its first record)."""
    global _groups
    world = torch.distributed.group.WORLD
    if _groups is None or _groups.world is not world:
        entry = torch.distributed.new_group(backend="gloo")
        agree = torch.distributed.new_group(backend="gloo", timeout=timedelta(seconds=agree_timeout_s()))
        _groups = _SideGroups(world, entry, agree)
    return _groups


def _agree(group: Any, error: BaseException | None) -> None:
    """Every rank says whether it failed; if one did, every rank raises the same error (the first rank's)."""
    flag = torch.tensor([0 if error is None else 1], dtype=torch.int32)
    try:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=group)
        if not flag.item():
            return
        messages: list[Any] = [None] * world_size()
        torch.distributed.all_gather_object(messages, None if error is None else str(error), group=group)
    except RuntimeError as err:  # a rank did not answer in time (it is stuck, or it died)
        where = f"rank {rank()} failed: {str(error).rstrip('.')}. " if error is not None else ""
        raise TrajhookError(
            f"trajhook.distributed: {where}The other ranks did not reach trajhook's agreement within "
            f"{agree_timeout_s():g} s ({type(err).__name__}: {str(err)[:200]}). HINT: a probe forward failed or hung "
            "on some rank inside the model; see that rank's error, or raise TRAJHOOK_AGREE_TIMEOUT_S."
        ) from error
    failed = next(r for r, m in enumerate(messages) if m is not None)
    agreed = _AgreedFailure(f"{messages[failed]} [on rank {failed} of {world_size()}; every rank stopped]")
    raise agreed from error


@contextlib.contextmanager
def _agree_before_each_forward(model: Any, group: Any) -> Iterator[None]:
    """A forward pre-hook (before FSDP's or ZeRO-3's own) agreeing that every rank is about to run the forward."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    handle = model.register_forward_pre_hook(lambda *_: _agree(group, None), prepend=True)
    try:
        yield
    finally:
        handle.remove()


def _attempted(attempt: Attempt, probe: Any, fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    """``attempt(probe, fn)`` as (value, None), or (None, the TrajhookError); an agreed failure raises at once."""
    try:
        return attempt(probe, fn), None
    except TrajhookError as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, _AgreedFailure):
                raise TrajhookError(str(cause)) from err  # every rank knows already: no second agreement
            cause = cause.__cause__
        return None, err


# -- running the probes -----------------------------------------------------------------------------------

Attempt = Callable[[Any, Callable[[], Any]], Any]
Check = Callable[[Any, dict], dict]


def run_probes(
    model: Any, probes: Sequence[Any], attempt: Attempt, check: Check, *, setup_device: torch.device | None = None
) -> dict[str, dict] | None:
    """Run every probe on ``model`` with the work shared across ranks; the records on the writer, else None.

    ``attempt(probe, fn)`` runs ``fn()`` and turns a failure into a :class:`TrajhookError` naming the probe;
    ``check(probe, record)`` checks a merged record on the writer. With ``setup_device``, each probe is set
    up first (``probe.setup(model, device)``, on every rank). Called by every rank, in the same order,
    inside the Recorder's eval/no_grad guard.
    """
    kind = engine(model) if isinstance(model, torch.nn.Module) else "replicated"
    try:
        if world_size() <= 1:
            records = {}
            for probe in probes:
                if setup_device is not None:
                    attempt(probe, lambda p=probe: p.setup(model, setup_device))
                records[probe.name] = check(probe, attempt(probe, lambda p=probe: p.run(model)))
            return records
        return _run_shared(model, probes, attempt, check, setup_device, kind)
    finally:
        if kind == "fsdp2":
            reshard(model)


def _run_shared(
    model: Any, probes: Sequence[Any], attempt: Attempt, check: Check, setup_device: Any, kind: str
) -> dict[str, dict] | None:
    """Every rank runs its share of the probes; rank zero gathers the parts, merges and checks the records."""
    groups = _side_groups()
    _agree(groups.entry, None)  # every rank has reached this record
    mine: dict[str, dict[int, Any]] = {p.name: {} for p in probes}  # part (-1: whole record) -> value
    kept: dict[str, Any] = {}  # whole records the writer computed while every rank ran them (sharded)
    if kind in COLLECTIVE:
        share = shares_probes()
        with _agree_before_each_forward(model, groups.agree):
            for probe in probes:
                _run_collective(model, probe, attempt, setup_device, share, mine[probe.name], kept, groups.agree)
    else:
        share, swap = _sharing(model, groups.agree)
        with swap:
            error = _run_dealt(model, probes, attempt, setup_device, share, mine)
        _agree(groups.entry, error)  # no collective ran meanwhile: the job's own timeout for uneven shares
    gathered: list[Any] = [None] * world_size()
    torch.distributed.gather_object(_to_cpu(mine), gathered if rank() == 0 else None, dst=0, group=groups.agree)
    records, error = _merged(probes, gathered, kept, attempt, check) if rank() == 0 else (None, None)
    _agree(groups.agree, error)
    return records


def _sharing(model: Any, group: Any) -> tuple[bool, contextlib.AbstractContextManager]:
    """Whether the ranks share the probes' work (only if they hold the same weights), and the buffers to probe with.

    Ranks holding different weights (no DDP): the writer runs everything. Ranks with the same weights but
    different buffers (e.g. BatchNorm statistics under DDP) probe with the writer's buffers.
    """
    same, same_buffers = _same_weights(model, group)
    share = shares_probes() and same
    return share, _writer_buffers(model, group) if share and not same_buffers else contextlib.nullcontext()


def _run_dealt(
    model: Any, probes: Sequence[Any], attempt: Attempt, setup_device: Any, share: bool, mine: dict
) -> BaseException | None:
    """Run this rank's deal of whole probes and parts into ``mine``; the first failure, else None.

    Parts are dealt round-robin across probes (so several small probes go to different ranks); without
    sharing the writer runs every probe whole.
    """
    me, world = rank(), world_size()
    offset = 0
    for probe in probes:
        if setup_device is not None:
            _, error = _attempted(attempt, probe, lambda p=probe: p.setup(model, setup_device))
            if error is not None:
                return error
        parts = int(probe.split(world)) if share else 0
        for part in range(parts or 1):
            if ((offset + part) % world if share else 0) != me:
                continue
            run = (
                functools.partial(probe.run_part, model, part, parts) if parts else functools.partial(probe.run, model)
            )
            mine[probe.name][part if parts else -1], error = _attempted(attempt, probe, run)
            if error is not None:
                return error
        offset += parts or 1
    return None


def _merged(
    probes: Sequence[Any], gathered: list[Any], kept: dict, attempt: Attempt, check: Check
) -> tuple[dict[str, dict], BaseException | None]:
    """On the writer: each probe's record from every rank's parts, merged and checked; the first failure."""
    records: dict[str, dict] = {}
    for probe in probes:
        parts = {k: v for rank_parts in gathered for k, v in rank_parts[probe.name].items()}
        if probe.name in kept:
            whole, error = kept[probe.name], None
        elif -1 in parts:
            whole, error = parts[-1], None
        else:
            ordered = [parts[i] for i in range(len(parts))]
            whole, error = _attempted(attempt, probe, lambda p=probe, o=ordered: p.merge(o))
        if error is None:
            whole, error = _attempted(attempt, probe, lambda p=probe, w=whole: check(p, w))
        if error is not None:
            return records, error
        records[probe.name] = whole
    return records, None


def _run_collective(
    model: Any, probe: Any, attempt: Attempt, setup_device: Any, share: bool, out: dict, kept: dict, group: Any
) -> None:
    """One probe on a sharded model: every rank runs the same number of forwards, each on its own part."""
    me, world = rank(), world_size()
    if setup_device is not None:
        _, error = _attempted(attempt, probe, lambda: probe.setup(model, setup_device))
        _agree(group, error)  # the next forward must not start on some ranks only
    parts = int(probe.split(world)) if share else 0
    error = None
    if parts:
        for round_ in range(math.ceil(parts / world)):
            part = round_ * world + me
            if part < parts:
                out[part], error = _attempted(attempt, probe, lambda i=part: probe.run_part(model, i, parts))
            else:  # no part left for this rank: repeat the last (smallest) one, so that all join the forward
                _, error = _attempted(attempt, probe, lambda: probe.run_part(model, parts - 1, parts))
            if error is not None:
                break
    else:  # a probe that does not split: every rank runs it whole, the writer keeps its record
        value, error = _attempted(attempt, probe, lambda: probe.run(model))
        if me == 0:
            kept[probe.name] = value
    _agree(group, error)


def _to_cpu(value: Any) -> Any:
    """Tensors inside dicts and lists copied to the CPU, for gloo's object gather."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _fingerprint(tensors: Sequence[torch.Tensor]) -> list[float]:
    """Two sums over a strided sample of every tensor: equal on ranks holding the same values (float64)."""
    if not tensors:
        return [0.0, 0.0]
    sums = []
    for t in tensors:
        flat = t.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 1024)]
        sums.append(sample.double().sum() if sample.is_floating_point() else sample.long().sum().double())
    stacked = torch.stack([s.cpu() for s in sums])
    return [float(stacked.sum()), float((stacked * torch.arange(1, len(sums) + 1, dtype=torch.float64)).sum())]


def _same_weights(model: Any, group: Any) -> tuple[bool, bool]:
    """Whether every rank holds the same parameters, and the same buffers (a fingerprint each, compared)."""
    if not isinstance(model, torch.nn.Module):
        return True, True
    mine = (_fingerprint(list(model.parameters())), _fingerprint(list(model.buffers())))
    every: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(every, mine, group=group)
    return all(e[0] == mine[0] for e in every), all(e[1] == mine[1] for e in every)


@contextlib.contextmanager
def _writer_buffers(model: torch.nn.Module, group: Any) -> Iterator[None]:
    """Rank zero's buffers on every rank while probing (DDP broadcasts them at its next forward anyway); restored."""
    buffers = list(model.buffers())
    saved = [b.detach().clone() for b in buffers]
    for b in buffers:
        host = b.detach().cpu()
        torch.distributed.broadcast(host, src=0, group=group)
        b.data.copy_(host)
    try:
        yield
    finally:
        for b, s in zip(buffers, saved, strict=True):
            b.data.copy_(s)
