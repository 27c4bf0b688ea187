"""Benchmark: where a PPO env step goes in examples/ppo_procgen_maze.py, against cleanrl's settings.

Three parts of one env step, each a ratio of medians of interleaved runs in this one run:
1. the environment: act + observe for 64 easy mazes with the corner curriculum's state patch after
   each reset, in one procgen vector env of 64 against 8 vector envs of 8 (``set_state`` re-renders
   every env of a vector env, so the patch costs less in small groups);
2. the rollout forward: the example's agent (IMPALA 8, 16, 16 on 32x32 frames, 4 moves) against
   cleanrl's (16, 32, 32 on 64x64, 15 actions), per sample, batch 64;
3. one training pass (forward, backward, Adam step), per sample, minibatch 1024.
The example's env steps/s follow: 1 / (env + forward + epochs x update), its own progress lines
print the same split while it trains.

    python benchmarks/bench_ppo_maze.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timing import Figure, interleaved, machine, print_figures

from trajhook.procgen_state import corner_cells, parse_maze_state


class Res(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.c0, self.c1 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c1(F.relu(self.c0(F.relu(x))))


def impala(channels: tuple[int, int, int], size: int, actions: int) -> nn.Module:
    """cleanrl's IMPALA CNN with policy and value heads, on ``size`` x ``size`` frames (AvgPool from 64)."""
    layers: list[nn.Module] = [nn.AvgPool2d(64 // size)] if size < 64 else []
    c = 3
    for out in channels:
        layers += [nn.Conv2d(c, out, 3, padding=1), nn.MaxPool2d(3, 2, 1), Res(out), Res(out)]
        c = out
    side = size // 8
    return nn.Sequential(
        *layers, nn.Flatten(), nn.ReLU(), nn.Linear(c * side * side, 256), nn.ReLU(), nn.Linear(256, actions + 1)
    )


def env_stepper(group: int, num: int = 64, corner: int = 5):
    from procgen import ProcgenGym3Env

    rng = np.random.default_rng(0)
    envs = [
        ProcgenGym3Env(
            num=group,
            env_name="maze",
            start_level=10_000,
            num_levels=1_000_000,
            distribution_mode="easy",
            rand_seed=g,
            num_threads=1,
        )
        for g in range(num // group)
    ]

    def step() -> None:
        for env in envs:
            env.act(rng.choice([1, 3, 5, 7], group))
            _, _, first = env.observe()
            if first.any():
                states = env.callmethod("get_state")
                for i in np.flatnonzero(first):
                    state = parse_maze_state(states[i])
                    cells = corner_cells(state, corner)
                    states[i] = state.with_cheese(*cells[rng.integers(len(cells))])
                env.callmethod("set_state", states)
                env.observe()

    return step


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(machine())

    steps = 20  # env steps (of all 64 envs) per timed call
    one, groups = env_stepper(64), env_stepper(8)
    env = interleaved(
        {"64": lambda: [one() for _ in range(steps)], "8x8": lambda: [groups() for _ in range(steps)]}, args.repeats
    )
    env_ms = {k: v / steps / 64 * 1e3 for k, v in env.items()}

    nets = {"example": (impala((8, 16, 16), 32, 4), 4), "cleanrl": (impala((16, 32, 32), 64, 15), 15)}
    frames64, frames1024 = torch.rand(64, 3, 64, 64), torch.rand(1024, 3, 64, 64)
    optimizers = {name: torch.optim.Adam(net.parameters(), lr=5e-4) for name, (net, _) in nets.items()}

    def forward(name: str):
        def run() -> None:
            with torch.no_grad():
                nets[name][0](frames64)

        return run

    def update(name: str):
        def run() -> None:
            loss = nets[name][0](frames1024).square().mean()
            optimizers[name].zero_grad()
            loss.backward()
            optimizers[name].step()

        return run

    fwd = interleaved({name: forward(name) for name in nets}, args.repeats)
    upd = interleaved({name: update(name) for name in nets}, max(3, args.repeats // 2))
    fwd_ms = {k: v / 64 * 1e3 for k, v in fwd.items()}
    upd_ms = {k: v / 1024 * 1e3 for k, v in upd.items()}
    example_ms = env_ms["8x8"] + fwd_ms["example"] + 2 * upd_ms["example"]  # 2 epochs
    cleanrl_ms = env_ms["64"] + fwd_ms["cleanrl"] + 3 * upd_ms["cleanrl"]  # cleanrl's 3 epochs
    figures = [
        Figure(
            "env step, 64 mazes + corner patch, 8 groups of 8",
            f"{env_ms['8x8']:.3f} ms",
            f"one vec env of 64: {env_ms['64']:.3f} ms",
            env_ms["64"] / env_ms["8x8"],
        ),
        Figure(
            "rollout forward per sample, example's agent",
            f"{fwd_ms['example']:.3f} ms",
            f"cleanrl's: {fwd_ms['cleanrl']:.3f} ms",
            fwd_ms["cleanrl"] / fwd_ms["example"],
        ),
        Figure(
            "training pass per sample, example's agent",
            f"{upd_ms['example']:.3f} ms",
            f"cleanrl's: {upd_ms['cleanrl']:.3f} ms",
            upd_ms["cleanrl"] / upd_ms["example"],
        ),
        Figure(
            "env steps/s, example (2 epochs)",
            f"{1e3 / example_ms:.0f}",
            f"cleanrl's net, 3 epochs, one vec env: {1e3 / cleanrl_ms:.0f}",
            cleanrl_ms / example_ms,
        ),
    ]
    print_figures(f"PPO maze, {args.threads} torch thread(s), medians of {args.repeats} interleaved runs", figures)
    return figures


if __name__ == "__main__":
    main()
