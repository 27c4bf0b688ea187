"""What a resume costs: rebuilding a stage tracker from the store, on the writer thread.

    python benchmarks/bench_resume.py [--records 1000,10000,60000] [--width 1024] [--after 100]

For each size it writes a store of that many records of ``width`` float32 values (a random walk
that turns halfway, as a per-token-loss probe's records do), then resumes it with a Recorder
whose probe tracks stages and records ``after`` more records back to back, and measures:

- ``rows read``: the stored records the rebuild read (only those the tracker's thinning keeps);
- ``longest record ms``: the training thread's longest ``record`` call after the resume. The writer
  rebuilds the tracker a slice (50 ms) at a time between the records it writes, so training never
  waits for the whole rebuild (before, the rebuild ran at once and a loop that recorded more than
  ``max_queue`` records meanwhile waited for all of it);
- ``close s``: ``close()``, which finishes the rebuild, feeds the records that waited and commits;
- ``same as straight``: whether the rebuilt tracker kept the steps and found the events of a
  tracker fed every record live (the check, not a timing).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from timing import machine

from trajhook import Recorder, load
from trajhook.analysis.online import StageTracker
from trajhook.probes.base import Probe
from trajhook.store import StoreWriter


class Row(Probe):
    """One row of ``width`` values: the model applied to ones."""

    def __init__(self, width: int) -> None:
        super().__init__("p")
        self.width = width
        self.add_output("row", (width,), "float32")

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {"row": model(torch.ones(self.width))}


def walk(n: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, width))
    t = np.linspace(0, 2, n)[:, None]
    return (np.minimum(t, 1) * a + np.maximum(t - 1, 0) * b + 0.01 * rng.normal(size=(n, width))).astype(np.float32)


def run(n: int, width: int, after: int) -> dict[str, float]:
    records = walk(n, width)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "run.h5")
        store = StoreWriter(path, {"p": Row(width).outputs}, {"p": {}})
        for step, row in enumerate(records):
            store.add_record(step * 10, 0.0, {"p": {"row": row}})
        store.close()
        probe = Row(width)
        probe.stage_tracker = tracker = StageTracker("row")
        read = []
        rec = Recorder(path, [probe], every_n_steps=10, wandb=False)
        model = torch.nn.Linear(width, width, bias=False)
        rec.setup(model)
        store = rec._writer.store
        original = store.committed_row
        store.committed_row = lambda *args: read.append(args[-1]) or original(*args)
        calls = []
        for step in range(n * 10, (n + after) * 10, 10):
            start = time.perf_counter()
            rec.record(model, step)
            calls.append(time.perf_counter() - start)
        start = time.perf_counter()
        rec.close()
        close = time.perf_counter() - start
        log = load(path)  # the same records, fed live to a new tracker: the run straight through
        straight = StageTracker("row")
        events = [e for step, row in zip(log.steps, log["p"]["row"], strict=True) for e in straight.update(step, row)]
        same = tracker.steps == straight.steps and tracker.events == events
        return {"read": len(read), "longest_ms": 1e3 * max(calls), "close": close, "same": same}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", default="1000,10000,60000")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--after", type=int, default=100, help="records after the resume")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(machine())
    print(f"records of {args.width} float32; default StageTracker (max_records=512)")
    print(f"| records | rows read | longest record ms ({args.after} after the resume) | close s | same as straight |")
    print("|---:|---:|---:|---:|---|")
    for n in (int(x) for x in args.records.split(",")):
        r = run(n, args.width, args.after)
        print(f"| {n:,} | {r['read']:,} | {r['longest_ms']:.1f} | {r['close']:.1f} | {r['same']} |", flush=True)


if __name__ == "__main__":
    main()
