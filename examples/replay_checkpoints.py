"""Replay a checkpoint series: train a small maze policy that only saves checkpoints, then record them afterwards.

This is the workflow of the seed's own picture ("a fixed validation-set seed which Uli used to visualize the
checkpoint policies"): training saves ``torch.save({'model_state_dict': ..., 'optimizer_state_dict': ...},
f'model_{t}.pth')`` as train-procgen-pytorch does, and nothing else. Afterwards ``trajhook.replay`` loads each
checkpoint in step order, runs a ``MazeProbe`` on a held-out level, and writes the same store a live
``Recorder`` would have written, ready for ``trajhook serve``, ``report``, ``pca`` and the analysis.

The policy imitates shortest-path moves (labels from a BFS on each level's grid). The default 200 steps show
the workflow, not learning: ``examples/maze_lightning.py``'s imitation turns after about 1,100 steps, so pass
``--steps 2000`` to see the held-out agreement rise.

    python examples/replay_checkpoints.py            # about a minute on 2 CPU cores
    python examples/replay_checkpoints.py --small    # the smoke-test settings
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import trajhook
from trajhook.analysis.maze import path_agreement, shortest_path_moves
from trajhook.probes.maze import float_nchw, load_maze_level

MOVE_ACTIONS = torch.tensor([1, 7, 5, 3])  # procgen's LEFT, RIGHT, UP, DOWN


class Policy(nn.Module):
    """A small CNN: float32 ``(n, 3, 64, 64)`` in [0, 1] -> logits over procgen's 15 actions."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * 64, 128), nn.ReLU(), nn.Linear(128, 15))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x))


def make_policy() -> Policy:
    """What replay builds in each worker (a module-level function: spawned workers import it)."""
    return Policy()


def make_probes() -> list[trajhook.Probe]:
    return [trajhook.MazeProbe(seed=1, distribution_mode="easy")]  # level 1 is held out of training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
    parser.add_argument("--save-every", type=int, default=20, help="save a checkpoint every N steps")
    parser.add_argument("--levels", type=int, default=40, help="training levels 1000 .. 1000 + N - 1")
    parser.add_argument("--workers", type=int, default=2, help="replay processes")
    parser.add_argument("--checkpoints", default="runs/replay_ckpts", help="the folder the training saves into")
    parser.add_argument("--out", default="runs/replay.h5", help="the store the replay writes")
    parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
    args = parser.parse_args()
    if args.small:
        args.steps, args.save_every, args.levels = 20, 5, 6
    torch.manual_seed(0)
    folder = Path(args.checkpoints)
    folder.mkdir(parents=True, exist_ok=True)

    # 1. Data: every free cell of each training level, labelled with the move that starts a shortest path.
    observations, labels = [], []
    for seed in range(1000, 1000 + args.levels):
        level = load_maze_level(seed, "easy")
        moves = shortest_path_moves(level.state.grid, level.state.cheese, level.cells)
        observations.append(torch.from_numpy(level.observations))
        labels.append(MOVE_ACTIONS[torch.from_numpy(moves.argmax(axis=1))])
    obs, actions = torch.cat(observations), torch.cat(labels)

    # 2. Training that saves checkpoints in train-procgen-pytorch's format, and records nothing.
    policy = make_policy()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    start = time.perf_counter()
    for t in range(args.steps + 1):
        if t % args.save_every == 0:
            state = {"model_state_dict": policy.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
            torch.save(state, folder / f"model_{t}.pth")
        if t == args.steps:
            break
        batch = torch.randint(len(obs), (64,))
        loss = F.cross_entropy(policy(float_nchw(obs[batch])), actions[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.0f} s, checkpoints in {folder}/")

    # 3. Replay: one line. Headers are checked first; the store is a live run's (resumable: run again and it
    #    continues after its last step).
    start = time.perf_counter()
    result = trajhook.replay(
        folder, make_probes, args.out, model=make_policy, workers=args.workers, overwrite=True, wandb=False
    )
    print(f"{result.summary()} in {time.perf_counter() - start:.0f} s")

    # 4. The store reads like any other.
    log = trajhook.load(args.out)
    meta = log["maze"].metadata
    on_path = shortest_path_moves(np.asarray(meta["grid"]), tuple(meta["cheese"]), np.asarray(meta["cells"]))
    agreement = np.atleast_1d(path_agreement(log["maze"]["direction_probs"], on_path))
    print(f"held-out level 1: shortest-path agreement {agreement[0]:.2f} at step 0 -> {agreement[-1]:.2f} at step "
          f"{log.steps[-1]}")  # fmt: skip
    print(f"see it: trajhook serve {args.out}")


if __name__ == "__main__":  # replay's workers are spawned processes: they import this file
    main()
