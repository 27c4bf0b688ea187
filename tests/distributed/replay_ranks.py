"""Run by tests/test_replay.py under ``torchrun --nproc_per_node 2``: one ``trajhook.replay`` line on every rank.

The ranks share the checkpoint series (rank r takes every other one); rank zero gathers the records and writes
the store. Each rank saves what its call returned.
"""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from test_replay import make_net, make_probes

import trajhook

ckpts, out_dir = sys.argv[1], Path(sys.argv[2])
dist.init_process_group("gloo")
result = trajhook.replay(ckpts, make_probes(), out_dir / "ranks.h5", model=make_net, wandb=False)
info = {"rank": dist.get_rank(), "recorded": result.recorded}
(out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(info))
dist.destroy_process_group()
