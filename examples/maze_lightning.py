"""Watch a maze policy learn: imitation of shortest paths, probed on a held-out level.

A small IMPALA-style CNN learns to pick the move that starts a shortest path to the cheese
(labels from a BFS on the grid), from the mouse on every free cell of many procgen maze levels
(easy mode). ``TrajectoryCallback`` records a ``MazeProbe`` on a held-out level every few steps.
Afterwards the script reads the store back, prints how often the strongest recorded direction
lies on a shortest path, and writes the vector-field animation (GIF + MP4) and two figures.

    python examples/maze_lightning.py            # about 3 minutes on 2 CPU cores
    python examples/maze_lightning.py --small    # a smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler
from tqdm.auto import tqdm

from trajhook import load
from trajhook.analysis.maze import path_agreement, shortest_path_moves
from trajhook.integrations.lightning import TrajectoryCallback
from trajhook.plots.maze import animate_vector_field, vector_field_from_log
from trajhook.probes.maze import MazeProbe, float_nchw, load_maze_level

# The action that makes each move: 1 LEFT, 7 RIGHT, 5 UP, 3 DOWN (see trajhook.probes.maze).
MOVE_ACTIONS = torch.tensor([1, 7, 5, 3])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps")
    p.add_argument("--train-levels", type=int, default=300, help="number of training level seeds")
    p.add_argument("--first-train-level", type=int, default=1000, help="training seeds start here")
    p.add_argument("--probe-level", type=int, default=1, help="held-out level seed recorded by the probe")
    p.add_argument("--every", type=int, default=50, help="record the probe every N optimizer steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--channels", type=int, nargs=3, default=(8, 16, 16), help="IMPALA stack widths")
    p.add_argument("--seed", type=int, default=0, help="torch seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--out-dir", type=Path, default=Path("runs"))
    p.add_argument("--figures-dir", type=Path, default=None, help="where the PNG figures go (default: --out-dir)")
    p.add_argument("--small", action="store_true", help="tiny smoke run (few levels and steps, figures in out-dir)")
    args = p.parse_args(argv)
    if args.small:
        args.steps, args.train_levels, args.every, args.channels = 30, 8, 10, (4, 8, 8)
    args.figures_dir = args.figures_dir or args.out_dir
    if args.first_train_level <= args.probe_level < args.first_train_level + args.train_levels:
        p.error(f"--probe-level {args.probe_level} is one of the training levels; pick a held-out seed")
    return args


# -- data: every free cell of every training level, labelled with a shortest-path move -----------
def build_dataset(seeds: range) -> tuple[TensorDataset, torch.Tensor]:
    """Observations (uint8 NHWC) and move labels, plus sampling weights that give every level the
    same total weight: small mazes, where the way to the cheese is easy to see, are then sampled as
    often as big ones. This is what gets the policy off the chance plateau quickly."""
    observations, labels, weights = [], [], []
    for seed in tqdm(seeds, desc="rendering training levels", unit="level"):
        level = load_maze_level(seed, "easy")
        if len(level.cells) == 0:
            continue
        moves = shortest_path_moves(level.state.grid, level.state.cheese, level.cells)
        observations.append(level.observations)
        labels.append(MOVE_ACTIONS[torch.from_numpy(moves.argmax(axis=1))])  # perfect maze: one move
        weights.append(torch.full((len(level.cells),), 1.0 / len(level.cells)))
    obs = torch.from_numpy(np.concatenate(observations))  # converted to float per batch
    return TensorDataset(obs, torch.cat(labels)), torch.cat(weights)


# -- model: IMPALA CNN (Espeholt et al. 2018) with small widths ---------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ConvSequence(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.res0 = ResidualBlock(out_channels)
        self.res1 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)
        return self.res1(self.res0(x))


class ImpalaPolicy(nn.Module):
    """float32 ``(n, 3, 64, 64)`` in [0, 1] -> logits over procgen's 15 actions."""

    def __init__(self, channels: tuple[int, int, int] = (8, 16, 16), hidden: int = 256, keypoints: bool = True) -> None:
        super().__init__()
        size = 8  # 64 px halved by each of the three stacks
        stacks, c = [], 3
        for out in channels:
            stacks.append(ConvSequence(c, out))
            c = out
        self.stacks = nn.Sequential(*stacks)
        self.keypoints = keypoints
        self.fc = nn.Linear(c * size * size + (2 * c if keypoints else 0), hidden)
        self.logits = nn.Linear(hidden, 15)
        grid = torch.linspace(-1, 1, size)
        self.register_buffer("pos_y", grid.repeat_interleave(size), persistent=False)
        self.register_buffer("pos_x", grid.repeat(size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stacks(x)).flatten(2)  # (n, c, 64 positions)
        features = [x.flatten(1)]
        if self.keypoints:  # spatial soft-argmax (Levine et al. 2016): where each channel fires
            attention = torch.softmax(x, dim=-1)
            features += [attention @ self.pos_x, attention @ self.pos_y]
        return self.logits(F.relu(self.fc(torch.cat(features, dim=1))))


class MazeImitation(pl.LightningModule):
    def __init__(self, channels: tuple[int, int, int], lr: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.policy = ImpalaPolicy(tuple(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.policy(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        obs, action = batch
        loss = F.cross_entropy(self.policy(float_nchw(obs)), action)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


# -- reading the store back ------------------------------------------------------------------------
def agreement_curve(store: Path, probe: str = "maze") -> tuple[np.ndarray, np.ndarray]:
    """Steps and the fraction of probed cells whose strongest recorded direction is a shortest-path move."""
    log = load(store)
    meta = log[probe].metadata
    on_path = shortest_path_moves(np.asarray(meta["grid"]), tuple(meta["cheese"]), np.asarray(meta["cells"]))
    return np.asarray(log.steps), np.atleast_1d(path_agreement(log[probe]["direction_probs"], on_path))


def save_agreement_figure(steps: np.ndarray, agreement: np.ndarray, chance: float, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, agreement, marker=".", label="held-out level")
    ax.axhline(chance, color="gray", ls="--", lw=1, label="random move (chance)")
    ax.set(xlabel="optimizer step", ylabel="on a shortest path", ylim=(0, 1.02))
    ax.set_title("Strongest direction lies on a shortest path to the cheese")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    args.figures_dir.mkdir(parents=True, exist_ok=True)
    store = args.out_dir / "maze.h5"

    t0 = time.perf_counter()
    train_seeds = range(args.first_train_level, args.first_train_level + args.train_levels)
    dataset, weights = build_dataset(train_seeds)
    print(f"rendered {len(dataset):,} observations from {len(train_seeds)} levels in {time.perf_counter() - t0:.1f}s")

    model = MazeImitation(args.channels, args.lr)
    probe = MazeProbe(seed=args.probe_level, distribution_mode="easy", name="maze")
    callback = TrajectoryCallback(
        store,
        [probe],
        every_n_steps=args.every,
        overwrite=True,
        wandb=False,
        metadata={"example": "maze_lightning", "train_levels": list(train_seeds[:: max(1, len(train_seeds) // 10)])},
    )
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        callbacks=[callback],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=not args.small,
        num_sanity_val_steps=0,
    )
    sampler = WeightedRandomSampler(weights, num_samples=args.steps * args.batch_size, replacement=True)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, drop_last=True)
    t1 = time.perf_counter()
    trainer.fit(model, loader)
    print(f"trained {args.steps} steps in {time.perf_counter() - t1:.1f}s")

    # Read everything back from the store: the curve is computed from the recorded probabilities.
    steps, agreement = agreement_curve(store)
    on_path = shortest_path_moves(probe.grid, probe.cheese, probe.cells)
    chance = float(on_path.sum(axis=1).mean() / 4)  # a uniformly random move out of 4
    print(f"held-out level {args.probe_level}: {len(probe.cells)} cells, chance {chance:.2f}")
    print("step  agreement")
    for step, value in zip(steps, agreement, strict=True):
        print(f"{int(step):5d}  {value:.2f}")

    log = load(store)
    fig = vector_field_from_log(log, probe="maze")
    fig.savefig(args.figures_dir / "maze_vector_field.png")
    save_agreement_figure(steps, agreement, chance, args.figures_dir / "maze_agreement.png")
    written = animate_vector_field(log, [args.out_dir / "maze.gif", args.out_dir / "maze.mp4"], fps=8)
    print("wrote", store, *written, args.figures_dir / "maze_vector_field.png", args.figures_dir / "maze_agreement.png")
    print(
        f"agreement {agreement[0]:.2f} (step {int(steps[0])}) -> {agreement[-1]:.2f} (step {int(steps[-1])}); "
        f"total {time.perf_counter() - t0:.0f}s"
    )
    return {"first": float(agreement[0]), "last": float(agreement[-1]), "best": float(agreement.max())}


if __name__ == "__main__":
    main()
