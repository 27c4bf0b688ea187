"""What one record costs against the number of ranks: the probe work shared, or run by every rank.

    python benchmarks/bench_dist.py [--ranks 1 2] [--rounds 15] [--tokens 8192]

For each rank count it starts ``torchrun --standalone --nproc-per-node N`` of itself (gloo, CPU, one
thread per rank). Each job trains nothing: it times ``Recorder.record`` of a TokenLossProbe (``--tokens``
tokens in 128-token windows, 8 windows per micro-batch) on a small causal LM, under DDP and under FSDP2
(``fully_shard`` per block), with the work shared across ranks (the default) against "every rank runs
everything" (``TRAJHOOK_SHARE_PROBES=0``: under DDP rank zero runs every micro-batch while the others
wait; under FSDP every rank runs every micro-batch). Each timed call starts and ends with a barrier, so
it is the slowest rank's time. Medians of interleaved runs (benchmarks/timing.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn


class CausalLM(nn.Module):
    """Embedding, then blocks that mix each position with the running mean of the ones before it."""

    def __init__(self, vocab: int = 512, width: int = 256, depth: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)) for _ in range(depth)
        )
        self.head = nn.Linear(width, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        steps = torch.arange(1, h.shape[1] + 1, device=h.device).reshape(1, -1, 1)
        for block in self.blocks:
            h = h + block(torch.cat([h, h.cumsum(1) / steps], -1))
        return self.head(h)


def timed_record(rec: object, model: nn.Module, step: int, share: str) -> None:
    """One record between two barriers: the slowest rank's time."""
    import torch.distributed as dist

    os.environ["TRAJHOOK_SHARE_PROBES"] = share
    dist.barrier()
    rec.record(model, step)
    dist.barrier()


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist
    from timing import interleaved
    from torch.distributed.fsdp import fully_shard

    from trajhook import Recorder, TokenLossProbe

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    stream = torch.randint(0, 512, (args.tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    results = {}
    for engine in ("ddp", "fsdp2"):
        torch.manual_seed(0)
        model = CausalLM()
        if engine == "ddp":
            model = nn.parallel.DistributedDataParallel(model)
        else:
            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
        probe = TokenLossProbe(stream, context=128, max_tokens_per_batch=8 * 128)
        path = Path(args.out) / f"{engine}_{world}.h5"
        with Recorder(path, [probe], every_n_steps=1, wandb=False, overwrite=True) as rec:
            rec.setup(model)
            steps = iter(range(10**9))
            contenders = {
                "everything": lambda r=rec, m=model, s=steps: timed_record(r, m, next(s), share="0"),
                "shared": lambda r=rec, m=model, s=steps: timed_record(r, m, next(s), share="1"),
            }
            medians = interleaved(contenders, args.rounds)
            rec.flush()
        results[engine] = {"parts": probe.split(world), **medians}
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from timing import machine

    print(machine())
    rows = []
    with tempfile.TemporaryDirectory() as out:
        for n in args.ranks:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
            cmd += [__file__, "--worker", "--out", out, "--rounds", str(args.rounds), "--tokens", str(args.tokens)]
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).parent))
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                sys.exit(f"torchrun with {n} ranks failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
            for engine, r in json.loads(lines[0].removeprefix("RESULT ")).items():
                rows.append((engine, n, r["parts"], r["everything"], r["shared"]))
    print(f"\nOne record of a TokenLossProbe of {args.tokens} tokens ({args.rounds} interleaved rounds, medians):")
    print(f"{'engine':8} {'ranks':>5} {'micro-batches':>13} {'every rank runs all':>20} {'shared':>10} {'ratio':>6}")
    for engine, n, parts, everything, shared in rows:
        ratio = shared / everything
        print(f"{engine:8} {n:>5} {parts:>13} {everything * 1e3:>17.0f} ms {shared * 1e3:>7.0f} ms {ratio:>6.2f}")


if __name__ == "__main__":
    main()
