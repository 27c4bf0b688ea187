"""Run by tests/test_distributed.py: under FSDP2, rank one fails *inside* a probe forward (an out-of-memory,
say), after the all-gather of the root and before that of the next layer, where rank zero then waits.

Rank one's agreement times out after ``TRAJHOOK_AGREE_TIMEOUT_S`` (the test sets 5 s) and raises a
TrajhookError, uncaught as in a user's script: the job must end then, not after the 30-minute gloo timeout.
"""

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard

from trajhook import Recorder, TensorProbe

dist.init_process_group("gloo")


class Fails(nn.Module):
    armed = False

    def forward(self, x):
        if self.armed and dist.get_rank() == 1:
            raise RuntimeError("out of memory inside the forward, on rank one")
        return x


torch.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), Fails(), nn.Linear(8, 1))
fully_shard(model[2])
fully_shard(model)
rec = Recorder("inside_forward.h5", [TensorProbe("fixed", torch.ones(3, 4))], every_n_steps=1, wandb=False)
rec.setup(model)
model[1].armed = True
rec.record(model, 1)
