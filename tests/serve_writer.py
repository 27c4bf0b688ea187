"""A training process for the live-page tests: records a maze probe and a prompt probe every step.

``python serve_writer.py STORE --steps N --start S --interval SECONDS [--overwrite]``. After each
record is committed (``Recorder.flush``) it prints ``committed STEP UNIX_TIME`` and flushes stdout,
so a test knows when each record reached the file. Runs until killed when ``--steps`` is 0.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from fake_maze import VOCAB, GridProbe, TinyLM, policy, prompt_probe

from trajhook import Recorder


def write(path, steps: int = 0, start: int = 0, interval: float = 0.0, overwrite: bool = False, mark=None) -> None:
    """Train and record one step at a time (``steps`` 0: until killed); print each commit."""
    torch.manual_seed(start)
    model = nn.Module()
    model.lm, model.policy = TinyLM(), policy(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(start)
    right = torch.full((16,), 7)
    probes = [prompt_probe(), GridProbe(policy_fn=lambda m, x: m.policy(x))]
    order = range(start, start + steps) if steps else itertools.count(start)
    with Recorder(path, probes, every_n_steps=1, wandb=False, overwrite=overwrite, flush_every_s=0.05) as rec:
        for step in order:
            half = torch.randint(0, VOCAB, (8, 12), generator=g)
            ids = torch.cat([half, half], 1)
            loss = nn.functional.cross_entropy(model.lm(ids[:, :-1]).reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
            loss = loss + nn.functional.cross_entropy(model.policy(torch.rand(16, 2, generator=g)), right)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mark == step:
                rec.mark(step, "lr drop")
            rec.maybe_record(model, step, loss=float(loss.detach()))
            if interval:
                rec.flush()
                print(f"committed {step} {time.time():.4f}", flush=True)
                time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--steps", type=int, default=0, help="0: until killed")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--mark", type=int, default=None, help="an event at this step")
    args = parser.parse_args()
    write(args.path, args.steps, args.start, args.interval, args.overwrite, args.mark)


if __name__ == "__main__":
    main()
