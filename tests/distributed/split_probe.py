"""A custom probe that splits, written with ``add_output(..., merge=)``, ``split`` and ``run_part`` only.

Imported by tests/test_probe_merge.py (one process), and run by it under ``torchrun --nproc_per_node 2``
(gloo, CPU, DDP): one Recorder line on both ranks; each rank saves the parts it ran, and rank zero the
direct forward of the final weights on all rows.
"""

import sys

import torch
from torch import nn

from trajhook import Probe

ROWS = torch.linspace(-2, 2, 40).reshape(10, 4)


class Strided(Probe):
    """The model's outputs on 10 fixed rows in 3 parts, part ``i`` taking rows ``i, i + 3, ...``."""

    def __init__(self, name: str = "strided") -> None:
        super().__init__(name)
        self.ran: list[int] = []

    def setup(self, model, device):
        self.rows = ROWS.to(device)
        self.add_output("out", (10, 3), merge="scatter")  # rows back in their places
        self.add_output("even_first", (10,), nan_marks_missing=True, merge="scatter", fill=float("nan"))
        self.add_output("part_max", (3,), merge="cat")  # one value per part, in part order
        self.add_output("total", (), merge="sum")  # whole values added
        self.add_output("argmax_counts", (3,), "int64", merge="sum")  # added at positions

    def split(self, ranks):
        return 3

    def run_part(self, model, part, parts):
        self.ran.append(part)
        at = torch.arange(part, len(self.rows), parts)
        out = model(self.rows[at])
        even = at % 2 == 0
        return {
            "out": (at, out),
            "even_first": (at[even], out[even, 0]),
            "part_max": out.max().reshape(1),
            "total": out.sum(),
            "argmax_counts": (out.argmax(1), torch.ones(len(at), dtype=torch.long)),
        }


def train(model, optimizer, rec, steps: int, rank: int = 0) -> None:
    for step in range(steps):
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(100 * step + rank))
        loss = (model(x) - x[:, :3]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rec.maybe_record(model, step)


if __name__ == "__main__":
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from trajhook import Recorder

    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    module = nn.Linear(4, 3)
    model = DistributedDataParallel(module)
    probe = Strided()
    with Recorder(f"{out_dir}/split.h5", [probe], every_n_steps=2, wandb=False) as rec:
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), rec, steps=5, rank=rank)
    with torch.no_grad():
        direct = module(ROWS)
    torch.save({"ran": probe.ran, "direct": direct}, f"{out_dir}/rank{rank}.pt")
    dist.barrier()  # as the sibling scripts do: without it, rank 1 once aborted in teardown under load
    dist.destroy_process_group()
