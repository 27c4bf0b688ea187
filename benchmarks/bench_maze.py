"""Benchmark: one maze vector field with MazeProbe vs the per-cell way, and vs a bare forward.

The per-cell way is how earlier maze tools record a vector field: for every cell, create (reset)
a procgen environment, move the mouse there through the serialized state, observe, preprocess,
and run one forward pass on that single observation. MazeProbe renders all cells once at setup
and each record is one batched forward over the cached observations; the floor is that batched
forward alone (``model(cached_inputs)``), without the probe's bookkeeping.

    python benchmarks/bench_maze.py [--seed 0] [--mode hard] [--repeats 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from trajhook.probes.maze import MazeProbe, float_nchw, make_maze_env
from trajhook.procgen_state import parse_maze_state


def policy() -> nn.Module:
    """A small IMPALA-like policy (conv + pool stacks, 256-unit head, 15 logits), fixed weights."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = 3
    for out in (16, 32, 32):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.ReLU()]
        layers += [nn.Conv2d(out, out, 3, padding=1), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 15)).eval()


def per_cell_vector_field(model: nn.Module, seed: int, mode: str, cells: np.ndarray) -> np.ndarray:
    """The per-cell way: one environment creation and one single-observation forward per cell."""
    vectors = np.empty((len(cells), 2), dtype=np.float32)
    for i, (row, col) in enumerate(cells):
        env = make_maze_env(seed, mode)
        state = parse_maze_state(env.callmethod("get_state")[0])
        env.callmethod("set_state", [state.with_mouse(row, col, reflected=False)])
        _, obs, _ = env.observe()
        p = torch.softmax(model(float_nchw(torch.from_numpy(obs["rgb"]))), dim=-1)[0]
        vectors[i] = (float(p[6:9].sum() - p[0:3].sum()), float(p[5] - p[3]))
    return vectors


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="hard", choices=["easy", "hard"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--per-cell-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = policy()
    probe = MazeProbe(seed=args.seed, distribution_mode=args.mode)
    make_maze_env(args.seed, args.mode)  # procgen's one-off global init (asset loading), not counted
    with torch.no_grad():
        start = time.perf_counter()
        probe.setup(model, torch.device("cpu"))
        setup_s = time.perf_counter() - start
        cached = float_nchw(torch.from_numpy(probe.observations))  # what the probe caches
        floor_s = median_seconds(lambda: model(cached), args.repeats)
        probe_s = median_seconds(lambda: probe.run(model), args.repeats)
        per_cell_s = median_seconds(
            lambda: per_cell_vector_field(model, args.seed, args.mode, probe.cells), args.per_cell_repeats
        )
        same = np.allclose(
            per_cell_vector_field(model, args.seed, args.mode, probe.cells),
            probe.run(model)["vectors"].numpy(),
            atol=1e-5,
        )

    n = len(probe.cells)
    rows = [
        ("per-cell (env + forward per cell)", per_cell_s, per_cell_s / probe_s),
        ("MazeProbe.run (one batched forward)", probe_s, 1.0),
        ("bare batched forward (floor)", floor_s, floor_s / probe_s),
        ("MazeProbe.setup (once: render cells)", setup_s, setup_s / probe_s),
    ]
    print(f"maze vector field, {args.mode} seed {args.seed}: {n} cells, torch threads {args.threads}")
    print(f"{'method':40s} {'ms / field':>12s} {'x MazeProbe':>12s}")
    for name, seconds, ratio in rows:
        print(f"{name:40s} {seconds * 1e3:12.1f} {ratio:12.2f}")
    print(
        f"speed-up of MazeProbe over per-cell: {per_cell_s / probe_s:.1f}x; "
        f"probe overhead over the floor: {(probe_s - floor_s) * 1e3:.2f} ms; same vectors: {same}"
    )
    return {"per_cell_s": per_cell_s, "probe_s": probe_s, "floor_s": floor_s, "setup_s": setup_s, "cells": n}


if __name__ == "__main__":
    main()
