"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: one Recorder line on every rank.

Part 1, DDP: a model with BatchNorm (whose buffers DDP broadcasts in its forward) trained with the
one-line hook; rank zero saves the direct forward of the unwrapped model at every recorded step.
Part 2, FSDP (``fully_shard``): every rank joins each probe forward; at every recorded step the
full weights are gathered (``get_model_state_dict``, a collective) and rank zero saves the forward
of an unsharded copy. Each rank also saves whether the store's path is open in this process.
"""

import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from trajhook import Recorder, TensorProbe
from trajhook.sinks.base import Sink

out_dir = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
PROBE_X = torch.linspace(-1, 1, 24).reshape(6, 4)
STEPS, EVERY = 10, 3


def open_paths() -> set:
    return {
        os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    }


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 4, generator=g)
    return x, x.sum(1, keepdim=True)


def direct(model: nn.Module) -> torch.Tensor:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        y = model(PROBE_X).clone()
    for m, t in modes:
        m.training = t
    return y


class CountingSink(Sink):
    def __init__(self):
        self.calls = 0

    def open(self, probes, metadata):
        self.calls += 1

    def record(self, step, outputs):
        self.calls += 1

    def close(self):
        self.calls += 1


def train(model, path, expected, before_step=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    fds = {}
    sink = CountingSink()
    with Recorder(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=EVERY, wandb=False, sinks=[sink]) as rec:
        rec.setup(model)
        for step in range(STEPS):
            x, y = batch(step)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 5:
                rec.mark(step, "halfway")
            if step % EVERY == 0:
                expected[step] = before_step(model)
            rec.maybe_record(model, step, loss=loss.detach())
        rec.flush()
        fds["open_while_training"] = os.path.realpath(path) in open_paths()
    fds["sink_calls"] = sink.calls
    return fds


# -- part 1: DDP ------------------------------------------------------------------------------------------
torch.manual_seed(0)
ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)))
ddp_expected = {}
ddp_fds = train(ddp, f"{out_dir}/ddp.h5", ddp_expected, before_step=lambda m: direct(m.module))

# -- part 2: FSDP2 -----------------------------------------------------------------------------------------
torch.manual_seed(0)
full = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
reference = copy.deepcopy(full)
sharded = copy.deepcopy(full)
for layer in (sharded[0], sharded[2]):
    fully_shard(layer)
fully_shard(sharded)


def gathered_forward(model):
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    reference.load_state_dict(state)
    return direct(reference)


fsdp_expected = {}
fsdp_fds = train(sharded, f"{out_dir}/fsdp.h5", fsdp_expected, before_step=gathered_forward)

torch.save(
    {"ddp": ddp_expected, "fsdp": fsdp_expected, "ddp_fds": ddp_fds, "fsdp_fds": fsdp_fds},
    f"{out_dir}/rank{rank}.pt",
)
dist.barrier()
dist.destroy_process_group()
