"""The one place that knows ``torch.distributed``: which rank writes, which ranks probe, what to call.

The same ``Recorder`` line runs on every rank of a ``torchrun`` job:

- **the writer** is global rank zero: it opens the store, runs the writer thread and the sinks;
  the other ranks never touch the file;
- **the probe forward** runs on rank zero only when each rank holds the whole model (plain, DDP),
  on the unwrapped module, so that DDP's buffer broadcast cannot hang a lone rank; it runs on
  every rank when the parameters are sharded (FSDP, ``fully_shard``), because each forward
  all-gathers the parameters and every rank must join it.

Outside ``torch.distributed`` (or before ``init_process_group``, where torchrun's ``RANK``
environment variable decides) every answer is that of a single process:

>>> is_writer(), rank(), runs_probe(torch.nn.Linear(2, 2))
(True, 0, True)
>>> net = torch.nn.Linear(2, 2)
>>> probe_target(net) is net
True
"""

from __future__ import annotations

import os

import torch


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's global rank: from the process group, else torchrun's ``RANK``, else 0."""
    if _initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def is_writer() -> bool:
    """Whether this rank writes the store and feeds the sinks: global rank zero only."""
    return rank() == 0


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model``'s parameters are sharded across ranks (FSDP1, FSDP2 ``fully_shard``, DTensor).

    >>> is_sharded(torch.nn.Linear(2, 2))
    False
    """
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    if any(isinstance(m, FSDPModule | FullyShardedDataParallel) for m in model.modules()):
        return True
    return any(isinstance(p, DTensor) for p in model.parameters())


def probe_target(model: torch.nn.Module) -> torch.nn.Module:
    """The module to run probes on: the wrapped module of a ``DistributedDataParallel``, else ``model``."""
    if torch.distributed.is_available() and isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def runs_probe(model: torch.nn.Module) -> bool:
    """Whether this rank runs the probe forward: every rank of a sharded model, else the writer only."""
    return is_writer() or (_initialized() and is_sharded(model))
