"""Run by tests/test_distributed.py on each of two ``torchrun --nnodes 2 --nproc-per-node 1`` agents.

Each agent runs in its own working directory (a node-local disk); the store path is relative, so it
exists only on the node of global rank zero. ``LOCAL_RANK`` is 0 on both nodes. Each rank writes a
file naming its global rank; rank zero saves the direct forward of its module at every recorded step.
"""

import os

import torch
import torch.distributed as dist
from torch import nn

from trajhook import Recorder, TensorProbe

dist.init_process_group("gloo")
rank = dist.get_rank()
assert os.environ["LOCAL_RANK"] == "0"
open(f"global_rank{rank}", "w").close()
PROBES = [TensorProbe("grid", torch.linspace(-1, 1, 12).reshape(3, 4)), TensorProbe("ones", torch.ones(2, 4))]
torch.manual_seed(0)
model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
expected = {}
with Recorder("runs/two_nodes.h5", PROBES, every_n_steps=2, wandb=False) as rec:
    for step in range(6):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(10 * step + rank))
        loss = nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2 == 0:
            with torch.no_grad():
                expected[step] = {p.name: model.module(p.inputs).clone() for p in PROBES}
        rec.maybe_record(model, step, loss=loss.detach())
if rank == 0:
    torch.save(expected, "expected.pt")
dist.barrier()
dist.destroy_process_group()
