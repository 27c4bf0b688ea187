"""Stable-Baselines3 PPO on procgen's maze, with a MazeProbe on a held-out level: one added callback.

The maze comes from trajhook's Gymnasium environment (``trajhook.envs.maze.ProcgenMazeEnv``: a range
of levels, easy or hard). The MazeProbe needs no ``policy_fn`` or ``preprocess`` for an SB3
policy: the callback hands it SB3's own observation preprocessing and action distribution. ``every_n_steps``
counts environment timesteps (SB3's ``num_timesteps``), and the policy learning starts from is
recorded too.

    python examples/sb3_maze.py           # about 2 minutes on 2 CPU cores
    python examples/sb3_maze.py --small   # the smoke-test settings
"""

from __future__ import annotations

import argparse
import time

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env

import trajhook
from trajhook.analysis.maze import path_agreement, shortest_path_moves
from trajhook.envs.maze import ProcgenMazeEnv
from trajhook.integrations.sb3 import TrajectoryCallback

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--timesteps", type=int, default=8192, help="environment timesteps (the maze needs millions)")
parser.add_argument("--record-every", type=int, default=1024, help="probe cadence, in environment timesteps")
parser.add_argument("--n-envs", type=int, default=8)
parser.add_argument("--num-levels", type=int, default=200, help="training levels 0 .. num-levels - 1")
parser.add_argument("--distribution-mode", default="easy", help="the probe uses the same")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/sb3_maze.h5", help="the trajhook store")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
parser.add_argument("--checkpoints", default=None, help="also save the model at every record, into this folder")
args = parser.parse_args()
if args.small:
    args.timesteps, args.record_every, args.n_envs = 256, 64, 2  # two rollouts of 128, one update between

env_kwargs = {"start_level": 0, "num_levels": args.num_levels, "distribution_mode": args.distribution_mode}
envs = make_vec_env(ProcgenMazeEnv, n_envs=args.n_envs, seed=args.seed, env_kwargs=env_kwargs)
model = PPO(
    "CnnPolicy",
    envs,
    n_steps=64,
    batch_size=128,
    n_epochs=3,
    learning_rate=5e-4,
    ent_coef=0.01,
    seed=args.seed,
    device="cpu",
)

held_out = args.num_levels  # the first level after the training range
probe = trajhook.MazeProbe(seed=held_out, distribution_mode=args.distribution_mode)
start = time.time()
callbacks = [TrajectoryCallback(args.out, [probe], args.record_every, overwrite=True)]
if args.checkpoints:  # SB3's own checkpoints at the same timesteps (save_freq counts vec-env steps)
    callbacks.append(CheckpointCallback(args.record_every // args.n_envs, args.checkpoints))
model.learn(args.timesteps, callback=callbacks, progress_bar=True)
print(f"{model.num_timesteps} timesteps in {time.time() - start:.0f} s; log at {args.out}")

log = trajhook.load(args.out)
meta = log["maze"].metadata
agreement = path_agreement(
    log["maze"]["direction_probs"], shortest_path_moves(meta["grid"], tuple(meta["cheese"]), meta["cells"])
)
print(f"held-out level {held_out}: recorded at timesteps {log.steps.tolist()}")
print(f"shortest-path agreement: {agreement[0]:.2f} at step 0 -> {agreement[-1]:.2f} at step {log.steps[-1]}")
