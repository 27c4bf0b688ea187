"""Which view can the PPO example's net read the maze from? A supervised check of each view, not training.

    python docs/maze_views.py            # about 10 minutes on 2 cores
    python docs/maze_views.py --steps 200 --levels 10   # seconds

The example's net (``examples/ppo_procgen_maze.py``: the narrow IMPALA CNN, soft-argmax keypoints, four
moves) is fitted, one copy per view, to put its probability on the shortest-path moves (BFS) of every free
cell of ``--levels`` training levels (10000 on, the cheese where procgen puts it), with the same batches
in the same order for every view. Printed: the agreement on held-out level 234 (the example's probe) and
on the training cells. It asks only whether a view shows enough of the walls for the net to tell the way;
the agent itself is never trained on these labels (its reward is procgen's alone).

The views, as the example's flags make them:

- ``centred128``: centred on the mouse on a 128x128 canvas, pooled 4x to 32x32 (``--no-fovea``); about
  one pixel per maze cell. The whole maze in view.
- ``fovea``: the same canvas as 6 channels at 32x32: its middle 64x64 pooled 2x, and all of it pooled 4x
  (``--fovea``, the default). The whole maze in view.
- ``plain64``: procgen's own 64x64 frame pooled 2x (``--no-centred``). The whole maze in view.
- ``centred64``: centred on a 64x64 canvas, pooled 2x (``--canvas 64``): about 7.5 cells around the
  mouse; the earlier, local view.

On this project's 2-core sandbox (AMD EPYC, shared with a PPO run), 2026-12-07, held-out agreement at
steps 500 / 1,000 / 1,500 / 2,000: centred128 0.45 / 0.47 / 0.50 / 0.55, fovea 0.63 / 0.74 / 0.86 / 0.88,
plain64 0.52 / 0.58 / 0.76 / 0.84, centred64 0.81 / 0.83 / 0.87 / 0.88; 54, 59, 30 and 36 ms per step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trajhook.analysis.maze import shortest_path_moves
from trajhook.probes.maze import load_maze_level

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ppo_procgen_maze.py"
VIEWS = {  # Agent(..., centred, canvas, fovea)
    "centred128": (True, 128, False),
    "fovea": (True, 128, True),
    "plain64": (False, 128, False),
    "centred64": (True, 64, False),
}


def example_globals() -> dict:
    """The example's module globals (its Agent, its drawing options), run for zero env steps."""
    with tempfile.TemporaryDirectory() as folder:
        argv = sys.argv
        sys.argv = ["ppo", "--total-timesteps", "0", "--num-envs", "8", "--out", f"{folder}/run.h5"]
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its own zero-step report
                return runpy.run_path(str(EXAMPLE))
        finally:
            sys.argv = argv


def labelled(levels, render_options) -> tuple[torch.Tensor, torch.Tensor]:
    """Every free cell's frame of each level, and which of the four moves start a shortest path there."""
    frames, moves = [], []
    for seed in levels:
        level = load_maze_level(seed, "easy", render_options=render_options)
        frames.append(level.observations)
        moves.append(shortest_path_moves(level.state.grid, level.state.cheese, level.cells))
    return torch.from_numpy(np.concatenate(frames)), torch.from_numpy(np.concatenate(moves))


def agreement(agent, frames: torch.Tensor, moves: torch.Tensor) -> float:
    """The share of cells whose most likely move starts a shortest path."""
    with torch.no_grad():
        best = agent.actor(agent.hidden(frames)).argmax(-1)
    return moves[torch.arange(len(best)), best].float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", type=int, default=150)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = example_globals()
    train_x, train_y = labelled(range(10_000, 10_000 + args.levels), g["RENDER_OPTIONS"])
    test_x, test_y = labelled([234], g["RENDER_OPTIONS"])
    print(f"{len(train_x)} training cells of {args.levels} levels; {len(test_x)} held-out cells (level 234)")
    torch.manual_seed(0)
    agents = {name: g["Agent"]((8, 16, 16), 32, True, *view) for name, view in VIEWS.items()}
    optimizers = {name: torch.optim.Adam(agent.parameters(), lr=args.lr) for name, agent in agents.items()}
    seconds = dict.fromkeys(agents, 0.0)
    batches = torch.Generator().manual_seed(0)
    for step in range(1, args.steps + 1):
        batch = torch.randint(len(train_x), (args.batch,), generator=batches)
        for name, agent in agents.items():  # interleaved: each view sees the same batch, in turn
            start = time.perf_counter()
            probs = torch.softmax(agent.actor(agent.hidden(train_x[batch])), -1)
            loss = -torch.log((probs * train_y[batch]).sum(-1) + 1e-6).mean()
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()
            seconds[name] += time.perf_counter() - start
        if step % max(1, args.steps // 8) == 0 or step == args.steps:
            print(
                f"step {step}: "
                + " | ".join(
                    f"{name} held-out {agreement(agent, test_x, test_y):.2f}, "
                    f"train {agreement(agent, train_x[:2000], train_y[:2000]):.2f} "
                    f"({1000 * seconds[name] / step:.0f} ms/step)"
                    for name, agent in agents.items()
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
