"""How big and how slow ``trajhook report`` is on a 10,000-record maze store.

The store is written through the real Recorder by a probe with a MazeProbe's outputs on a
hard-mode-sized maze (25x25 world, 337 free cells: a random spanning-tree maze of 13x13 rooms),
so no procgen is needed. Run: ``python benchmarks/bench_report.py [--records 10000]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trajhook import Recorder
from trajhook.probes.base import Probe
from trajhook.probes.maze import DIRECTIONS, directions_to_vectors
from trajhook.procgen_state import CHEESE, EMPTY, WALL


def spanning_tree_maze(rooms: int = 13, seed: int = 0) -> np.ndarray:
    """A perfect maze of ``rooms`` x ``rooms`` rooms in a ``2 * rooms - 1`` world: 2 rooms^2 - 1 free cells."""
    rng = np.random.default_rng(seed)
    size = 2 * rooms - 1
    grid = np.full((size, size), WALL)
    seen = np.zeros((rooms, rooms), bool)
    stack = [(0, 0)]
    seen[0, 0] = True
    grid[0, 0] = EMPTY
    while stack:
        r, c = stack[-1]
        options = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))]
        options = [(a, b) for a, b in options if 0 <= a < rooms and 0 <= b < rooms and not seen[a, b]]
        if not options:
            stack.pop()
            continue
        a, b = options[rng.integers(len(options))]
        seen[a, b] = True
        grid[2 * a, 2 * b] = grid[r + a, c + b] = EMPTY
        stack.append((a, b))
    grid[size - 1, size - 1] = CHEESE
    return grid


class SyntheticMaze(Probe):
    """Direction probabilities that drift over training from uniform towards one direction per cell."""

    def __init__(self, grid: np.ndarray) -> None:
        super().__init__("maze")
        self.cells = np.argwhere(grid == EMPTY)
        n = len(self.cells)
        self.add_output("direction_probs", (n, 5), "float32")
        self.add_output("vectors", (n, 2), "float32")
        self.metadata.update(grid=grid, cells=self.cells, cheese=[len(grid) - 1] * 2, start=[0, 0],
                             directions=list(DIRECTIONS))  # fmt: skip
        self.goal = torch.randint(0, 4, (n,), generator=torch.Generator().manual_seed(0))

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        t = float(model.weight)  # training progress in [0, 1]
        logits = torch.zeros(len(self.cells), 5)
        logits[torch.arange(len(self.cells)), self.goal] = 4 * t
        probs = logits.softmax(-1)
        return {"direction_probs": probs, "vectors": directions_to_vectors(probs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--max-frames", type=int, default=120)
    args = parser.parse_args(argv)
    from trajhook.report import write_report

    folder = Path(tempfile.mkdtemp(prefix="trajhook-bench-report-"))
    store = folder / "maze.h5"
    model = torch.nn.Linear(1, 1, bias=False)
    probe = SyntheticMaze(spanning_tree_maze())
    start = time.perf_counter()
    with Recorder(store, [probe], every_n_steps=1, wandb=False, max_queue=64) as rec:
        for step in range(args.records):
            with torch.no_grad():
                model.weight.fill_(step / max(1, args.records - 1))
            if step in (2_000, 7_000):
                rec.mark(step, f"event at {step}")
            rec.maybe_record(model, step, loss=1.0 / (1 + step))
    write_s = time.perf_counter() - start
    start = time.perf_counter()
    out = write_report([store], folder / "report.html", max_frames=args.max_frames, progress=False)
    report_s = time.perf_counter() - start
    print(f"maze store: {args.records:,} records x {len(probe.cells)} cells, {store.stat().st_size / 1e6:.1f} MB, "
          f"written in {write_s:.1f} s")  # fmt: skip
    print(f"report: {out.stat().st_size / 1e6:.2f} MB (the live page's script and data inlined, no Plotly), "
          f"{args.max_frames} frames requested, built in {report_s:.1f} s")  # fmt: skip


if __name__ == "__main__":
    main()
