"""CleanRL-style single-file PPO on procgen's maze (after cleanrl's ``ppo_procgen.py``), plus one trajhook line.

A real RL run, sized for a 2-core CPU and resumable, in the seed's setting: procgen's own reward alone
(10 at the cheese, times ``--reward-scale``; nothing that depends on the distance to the cheese) and the
whole maze in view. trajhook's part is the ``Recorder``
below and one line after each update, ``rec.maybe_record(agent, global_step, loss=...)`` (and one
before training, for the initial weights): it logs the scalars, and at log-spaced env steps runs a
MazeProbe (the mouse on every free cell of a fixed held-out level) and appends the action
probabilities to an HDF5 store, the x-axis being cleanrl's ``global_step``. It comes after the
update, before the checkpoint's snapshot, so that a resumed run writes nothing at or before the
checkpoint's step.

    python examples/ppo_procgen_maze.py --small    # the smoke test: seconds
    nice -n 19 python examples/ppo_procgen_maze.py --checkpoint run/ckpt.pt --out run/ppo.h5   # hours

**Resuming.** With ``--checkpoint PATH`` the run saves the agent, the optimizer, ``global_step``,
every RNG state and the procgen environments' own states (``get_state``: the levels, the mice,
the level generator) every ``--checkpoint-every-s`` seconds and at exit, SIGTERM and SIGINT too.
Rerun the same command and it resumes from there, bit for bit the run it would have been; the
trajhook store resumes with it (the Recorder's ``state_dict`` is in the checkpoint, and a new
Recorder on the same path drops any row written after the checkpoint, so no ghost rows). A
signal during a rollout drops the half-done rollout and saves the state at its start. Other
arguments must match the checkpoint's, except ``--ent-coef`` and ``--learning-rate``, which a resume
may lower once the policy finds the cheese (each session's values are in the store's ``/sessions``).

**The defaults** (2026-12-07), each a choice the issue of record asked for or a lever NOTES.md lists:

- *Procgen's reward alone* (``--shaping 0 --bump-penalty 0``). The earlier dense reward below was
  +0.1 for exactly the shortest-path move and -0.1 for every other (procgen's mazes are trees): the
  label the probe's agreement measures, so an agreement learned from it is no evidence.
- *The whole maze in view* (``--canvas 128 --fovea``): the frame is centred on the mouse on a 128x128
  black canvas, padding and not cropping, so every cell, the cheese included, stays in view; the net
  sees it as 6 channels at 32x32, the canvas's middle 64x64 (about 15 cells) pooled 2x and the whole
  canvas pooled 4x (``Fovea``). The whole canvas alone at 32x32 (``--no-fovea``) is about one pixel per
  cell: the first run with these defaults used it, and after 1M env steps its field was nearly the same
  on every cell (level 234: 0.37, the directions 0.2/0.32/0.31/0.17 everywhere). Fitted to shortest-path
  moves as a check of the view (``docs/maze_views.py``, 150 levels, 2,000 steps), the net reads the
  way from the fovea as well as from the local crop (held-out 0.88 and 0.88; procgen's own frame
  pooled, uncentred, 0.84) and not from the whole canvas alone (0.55), at 1.1x its cost per step.
  ``--canvas 64`` crops to about 7.5 cells around the mouse (the cheese out of view on 78 of level
  234's 126 cells).
- *A reverse curriculum* (``--reverse-curriculum``): the mouse starts at most D steps from the cheese
  (BFS), and D grows by one once 80% of the last 64 episodes at that distance found the cheese.
  It changes where an episode starts, never which move is right; ``start_distance`` and
  ``cheese_found`` are logged as scalars.
- *gamma 0.99, GAE lambda 0.95* (cleanrl's): with a reward only at the cheese, 0.95 forgets it within
  about 20 steps.
- *Probes that tell the cheese from the corner*: ``maze``, held-out level 234 (126 cells, the cheese in
  the top-right 5x5 region as in training; its way to the cheese and to the corner agree on 98% of
  the cells) and ``maze_far``, held-out level 207 with the cheese moved to the maze's top-left cell
  (``--far-probe 207 13 1``; the two ways differ on 54% of its cells). Each record logs both
  agreements for each probe (``maze_cheese_agreement``, ``maze_corner_agreement``, ...).
- *10 records per decade* of env steps to 1M, then every 100k: 12 records in the first 100k, so the
  early phases (walls, then the way) fall between records, not inside one gap.

The run with these defaults (9.1M env steps) is the README's headline; README.md, "PPO on the maze", tells it.
It was resumed at 4.4M env steps with ``--ent-coef 0.01`` and at 5.0M with ``--ent-coef 0.005
--learning-rate 2.5e-4``: at 4.4M the held-out level's farthest cells were near uniform (entropy 1.29
of ln 4) and its agreement at the one-step greedy baseline's 0.754 (mean 0.74 over 1M env steps); at
0.01 it averaged 0.754 over the next 0.6M, and with both lowered 0.83 over the last 4.1M.

**The earlier run's choices, and why** (measured on this project's 2-core CPU sandbox, 2026-12-02;
its flags: ``--shaping 0.1 --bump-penalty 0.1 --gamma 0.95 --gae-lambda 0.9 --canvas 64
--no-reverse-curriculum --probe-levels 234 5010 --far-probe``). Each was tried because the run before
it had not learned; ``README.md`` tells the whole story.

- *Easy mode* (15x15 world). Probe and training use the same ``distribution_mode``.
- *The corner curriculum* (``--corner 5``). After every reset the cheese is moved to a random
  free cell in the top-right 5x5 cells of the maze by patching procgen's state
  (``MazeState.with_cheese``, ``corner_cells``): Langosco et al.'s ``rand_region``, which
  upstream procgen lacks. With the cheese in a known corner, "go up and right, around the walls"
  is a field the agent can learn before it can find an arbitrary cheese.
- *Random starts* (``--random-start``). The mouse also starts on a random free cell, with the
  same patch, so that every cell of a maze is visited early and the field is trained where it is
  probed, not only along the path from the bottom-left start.
- *Procgen's plain drawing* (``--plain``: ``use_monochrome_assets``, ``restrict_themes``, no
  background). The default drawing gives every level its own wall texture and draws the mouse as a
  grey sprite about 2 pixels wide at 64x64; plain, the walls are black, the floor one colour and the
  mouse a 4x4 green square. The maze is the same level; the probes draw their frames the same way
  (``MazeProbe(render_options=...)``). No run on textured frames left chance here: 3.5M env steps
  with procgen's reward alone, 0.7M with an earlier dense reward.
- *Frames centred on the mouse* (``--centred``, the fixed first layer ``CentreOnMouse``). Most
  procgen games centre the agent (``center_agent``); the maze does not. Shifting the frame so the
  mouse sits in the middle makes "which walls are next to me" the same pixels on every cell.
  Imitating shortest paths with this net (batch 64, Adam 1e-3, 150 levels) reached 0.76 agreement
  on the held-out level in 400 steps centred and 0.35 uncentred (0.73 by 1,000).
- *Spatial soft-argmax* (``--keypoints``, Levine et al. 2016): where each channel fires, as two
  more features per channel, as in ``maze_lightning.py``.
- *A dense reward* (``--shaping 0.1``, ``--bump-penalty 0.1``, procgen's reward x ``--reward-scale
  0.1``): +0.1 for each move one cell closer to the cheese (BFS steps through the maze), -0.1 for a
  move away or into a wall, +1 for the cheese (``progress_bonus``). Procgen's reward alone says
  nothing until a random walk finds the cheese; this says at each step whether the move helped,
  and a shortest path is still the best policy.
- *Four actions.* The policy picks left, right, up or down (procgen actions 1, 7, 5, 3). Of
  procgen's 15 actions, 7 do nothing in the maze and 3 only move left or right, so a uniform
  15-way policy moves up or down once in 15 steps; four actions explore the maze far faster.
  The probe sees the four probabilities in procgen's 15 slots (the rest zero).
- *A narrow IMPALA CNN* (8, 16, 16 channels, after cleanrl's 16, 32, 32) *on 32x32 frames*
  (``AvgPool2d(2)`` after centring): cleanrl's net on 64x64 frames costs about 8x as much per
  sample (``benchmarks/bench_ppo_maze.py``, measured before the centring and soft-argmax).
- *Environments in groups of 8.* Stepping is cheap (13k env steps/s for 64 easy mazes on one
  thread), but ``set_state`` re-renders every environment of a procgen vector env: 17 ms for 64,
  so the curriculum's patch goes to the group of 8 whose episode ended.
- *PPO:* 64 envs x 64 steps, 16 minibatches of 256 (more, smaller steps), 2 epochs, lr 5e-4,
  gamma 0.95 and GAE lambda 0.9 (with the dense reward a short horizon is enough, and it keeps the
  noise of the moves that follow out of each move's advantage: with 0.99 and 0.95 the agreement
  was 0.39 at 90k env steps against 0.52), entropy 0.03 (with 0.01 the policy's entropy fell to
  0.18 by 0.2M env steps and the agent stopped finding the cheese in most episodes: the mean
  return fell from 6, a random walk's, to 2); one torch thread by default (``--threads``).
- *The probes.* ``maze``: held-out easy level 234, 126 free cells, the cheese 3 cells below the
  maze's top-right corner (inside the curriculum's corner), with ``track_stages=True``: the field's
  PCA trajectory is followed live and a sharp turn becomes a stage event. ``maze_small``: level
  5010, 70 cells. Training levels are ``--start-level 10000`` on, so neither is ever trained on.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from procgen import ProcgenGym3Env
from torch.distributions.categorical import Categorical

import trajhook
from trajhook.analysis.maze import bfs_distances, goal_agreements, moved
from trajhook.procgen_state import corner_cells, parse_maze_state

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--total-timesteps", type=int, default=25_000_000, help="cleanrl's; stop and resume any time")
parser.add_argument("--learning-rate", type=float, default=5e-4)
parser.add_argument("--num-envs", type=int, default=64)
parser.add_argument("--env-group", type=int, default=8, help="environments per procgen vector env")
parser.add_argument("--num-steps", type=int, default=64, help="steps per env per rollout (cleanrl: 256)")
parser.add_argument("--gamma", type=float, default=0.99)
parser.add_argument("--gae-lambda", type=float, default=0.95)
parser.add_argument("--num-minibatches", type=int, default=16)
parser.add_argument("--update-epochs", type=int, default=2)
parser.add_argument("--clip-coef", type=float, default=0.2)
parser.add_argument("--ent-coef", type=float, default=0.03)
parser.add_argument("--vf-coef", type=float, default=0.5)
parser.add_argument("--max-grad-norm", type=float, default=0.5)
parser.add_argument("--channels", type=int, nargs=3, default=(8, 16, 16), help="IMPALA widths (cleanrl: 16 32 32)")
parser.add_argument(
    "--centred", action=argparse.BooleanOptionalAction, default=True, help="frames centred on the mouse"
)
parser.add_argument(
    "--canvas", type=int, default=128, choices=(64, 128), help="the centred view: 128 keeps the whole maze, 64 crops"
)
parser.add_argument(
    "--fovea",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="with --canvas 128: the middle 64 at twice the resolution of the whole canvas, as 3 more channels",
)
parser.add_argument("--keypoints", action=argparse.BooleanOptionalAction, default=True, help="spatial soft-argmax")
parser.add_argument("--frame-size", type=int, default=32, choices=(32, 64), help="frames average-pooled to this")
parser.add_argument("--corner", type=int, default=5, help="cheese in the maze's top-right NxN cells; 0: procgen's")
parser.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=True)
parser.add_argument(
    "--reverse-curriculum",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="random starts within a distance of the cheese that grows as the agent succeeds",
)
parser.add_argument("--shaping", type=float, default=0.0, help="reward per cell of progress toward the cheese; 0: off")
parser.add_argument("--bump-penalty", type=float, default=0.0, help="reward lost by a move into a wall")
parser.add_argument("--reward-scale", type=float, default=0.1, help="procgen's reward (10 for the cheese) times this")
parser.add_argument("--num-levels", type=int, default=1_000_000, help="training levels start-level .. +num-levels")
parser.add_argument("--start-level", type=int, default=10_000)
parser.add_argument("--distribution-mode", default="easy")
parser.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True, help="procgen's plain drawing")
parser.add_argument(
    "--probe-levels", type=int, nargs="+", default=[234], help="held-out levels, cheese where procgen put it"
)
parser.add_argument(
    "--far-probe",
    type=int,
    nargs="*",
    default=[207, 13, 1],
    metavar="LEVEL ROW COL",
    help="a held-out level with its cheese moved to (ROW, COL), far from the top-right corner; none if empty",
)
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
parser.add_argument("--out", default="runs/ppo_procgen_maze.h5", help="the trajhook store")
parser.add_argument("--checkpoint", default=None, help="save here periodically and at exit; resume from it")
parser.add_argument("--checkpoint-every-s", type=float, default=300.0)
parser.add_argument("--log-every", type=int, default=10, help="print a progress line every N iterations")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
args.channels, args.far_probe = list(args.channels), list(args.far_probe)  # as a checkpoint stores them
# what a checkpoint saved before an argument existed ran with: a resume compares these too
LEGACY_ARGS = {"canvas": 64, "reverse_curriculum": False, "far_probe": [], "fovea": False}
if len(args.far_probe) not in (0, 3):
    parser.error(f"--far-probe takes LEVEL ROW COL (or nothing), not {args.far_probe}")
SMALL = {
    "total_timesteps": 64,
    "num_envs": 2,
    "num_steps": 16,
    "num_minibatches": 2,
    "update_epochs": 1,
    "log_every": 1,
}
if args.small:  # the smoke-test settings, for the arguments not given
    for name, value in SMALL.items():
        if getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)
# procgen's drawing switches: one wall colour, no background, the mouse and cheese as plain squares
RENDER_OPTIONS = (
    {"use_monochrome_assets": True, "restrict_themes": True, "use_backgrounds": False} if args.plain else {}
)
args.batch_size = args.num_envs * args.num_steps
args.minibatch_size = args.batch_size // args.num_minibatches
args.num_iterations = args.total_timesteps // args.batch_size
train_levels = range(args.start_level, args.start_level + args.num_levels)
if any(level in train_levels for level in [*args.probe_levels, *args.far_probe[:1]]):
    parser.error(f"the probe levels overlap the training levels {train_levels}; hold them out")
REWARD = "procgen" if not (args.shaping or args.bump_penalty) else "procgen+progress"  # declared in the store
VIEW = "full" if not args.centred or args.canvas == 128 else "local"
MOVE_ACTIONS = np.array([1, 7, 5, 3])  # procgen's LEFT, RIGHT, UP, DOWN (trajhook.probes.maze)
stop = []  # the signal that asked this run to stop: it saves a checkpoint and exits at the next safe point
signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(signum))
signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))

random.seed(args.seed)
np.random.seed(args.seed)
torch.manual_seed(args.seed)
torch.set_num_threads(args.threads)
curriculum_rng = np.random.default_rng(args.seed)  # where the cheese and the mouse go after a reset
curriculum = {"distance": 2, "recent": []}  # the reverse curriculum's start distance, its last episodes' outcomes


# ---- the agent: cleanrl's IMPALA CNN, narrower, on 32x32 frames, four moves -------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        return x + self.conv1(nn.functional.relu(self.conv0(nn.functional.relu(x))))


class ConvSequence(nn.Module):
    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.res_block0 = ResidualBlock(out_channels)
        self.res_block1 = ResidualBlock(out_channels)

    def forward(self, x):
        x = nn.functional.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)
        return self.res_block1(self.res_block0(x))


class Fovea(nn.Module):
    """A fixed first layer: the mouse-centred 128x128 canvas (:class:`CentreOnMouse`) seen twice, as 6 channels
    of ``frame_size`` x ``frame_size`` float frames: its middle 64x64 (about 15 cells around the mouse) pooled 2x,
    and the whole canvas pooled 4x. The whole maze stays in view (every cell, the cheese included); the cells
    near the mouse, where the walls decide the next move, are drawn twice as finely.
    """

    def __init__(self, frame_size=32):
        super().__init__()
        self.centre, self.frame_size = CentreOnMouse(128), frame_size

    def forward(self, x):  # uint8 (b, 64, 64, 3) -> float (b, frame_size, frame_size, 6), 0..255
        canvas = self.centre(x).permute((0, 3, 1, 2)).float()
        near = nn.functional.adaptive_avg_pool2d(canvas[:, :, 32:96, 32:96], self.frame_size)
        whole = nn.functional.adaptive_avg_pool2d(canvas, self.frame_size)
        return torch.cat([near, whole], dim=1).permute((0, 2, 3, 1))


class CentreOnMouse(nn.Module):
    """A fixed first layer: the 64x64 frame placed on a ``canvas`` x ``canvas`` black (wall) canvas with the
    mouse at its centre.

    With ``canvas=128`` every pixel of the frame stays in view wherever the mouse is (padding, not
    cropping): the agent sees the whole maze, the cheese included. ``canvas=64`` crops to about 7.5
    cells around the mouse (the earlier, shaped run). The mouse is procgen's plain green square
    (``--plain``), the only pixels with green 255 and red 127. Most procgen games centre the agent this
    way (``center_agent``); the maze does not.
    """

    def __init__(self, canvas=128):
        super().__init__()
        self.canvas = canvas

    def forward(self, x):  # uint8 (b, 64, 64, 3) -> uint8 (b, canvas, canvas, 3)
        mouse = ((x[..., 1] > 200) & (x[..., 0] < 160)).float()
        count, pixels = mouse.sum((1, 2)).clamp(min=1), torch.arange(64, device=x.device)
        row = ((mouse.sum(2) * pixels).sum(1) / count).round().long()  # the centroid, (b,)
        col = ((mouse.sum(1) * pixels).sum(1) / count).round().long()
        half, window = self.canvas // 2, torch.arange(self.canvas, device=x.device)
        padded = nn.functional.pad(x, (0, 0, half, half, half, half))  # frame pixel y sits at y + half
        rows, cols = (row[:, None] + window)[:, :, None], (col[:, None] + window)[:, None, :]
        return padded[torch.arange(len(x), device=x.device)[:, None, None], rows, cols]


def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, channels, frame_size, keypoints=True, centred=True, canvas=128, fovea=True):
        super().__init__()
        fovea = fovea and centred and canvas == 128
        self.centre = Fovea(frame_size) if fovea else CentreOnMouse(canvas) if centred else nn.Identity()
        side = canvas if centred else 64
        layers, c = [nn.Identity() if fovea else nn.AvgPool2d(side // frame_size)], 6 if fovea else 3
        for out in channels:
            layers.append(ConvSequence(c, out))
            c = out
        self.convs = nn.Sequential(*layers)
        side = frame_size // 8  # halved by each of the three stacks
        self.keypoints = keypoints
        self.fc = nn.Linear(c * side * side + (2 * c if keypoints else 0), 256)
        grid = torch.linspace(-1, 1, side)
        self.register_buffer("pos_y", grid.repeat_interleave(side), persistent=False)
        self.register_buffer("pos_x", grid.repeat(side), persistent=False)
        self.actor = layer_init(nn.Linear(256, len(MOVE_ACTIONS)), std=0.01)
        self.critic = layer_init(nn.Linear(256, 1), std=1)

    def hidden(self, x):
        x = self.centre(x).permute((0, 3, 1, 2)) / 255.0  # "bhwc" 0..255 -> float "bchw"
        x = nn.functional.relu(self.convs(x)).flatten(2)  # (b, c, hw)
        features = [x.flatten(1)]
        if self.keypoints:  # spatial soft-argmax (Levine et al. 2016): where each channel fires
            attention = torch.softmax(x, dim=-1)
            features += [attention @ self.pos_x, attention @ self.pos_y]
        return nn.functional.relu(self.fc(torch.cat(features, dim=1)))

    def get_value(self, x):
        return self.critic(self.hidden(x))

    def get_action_and_value(self, x, action=None):
        hidden = self.hidden(x)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


def probe_policy(agent, obs):
    """The MazeProbe's view: the four move probabilities in procgen's 15 action slots."""
    moves = torch.softmax(agent.actor(agent.hidden(obs)), dim=-1)
    probs = torch.zeros(len(obs), 15, dtype=moves.dtype, device=moves.device)
    probs[:, torch.from_numpy(MOVE_ACTIONS)] = moves
    return Categorical(probs=probs)


# ---- env setup: procgen's gym3 vector envs in groups, and the corner curriculum ------------------------------
def make_group(index, num):
    return ProcgenGym3Env(
        num=num,
        env_name="maze",
        start_level=args.start_level,
        num_levels=args.num_levels,
        distribution_mode=args.distribution_mode,
        rand_seed=args.seed * 1000 + index,
        num_threads=1,
        **RENDER_OPTIONS,
    )


def patch_new_episodes(states, first):
    """Move the cheese into the corner (and the mouse to a random cell) of each new episode, in ``states``.

    With the reverse curriculum the mouse starts at most ``curriculum["distance"]`` steps from the
    cheese (BFS through the maze): where an episode starts, never which move is right.
    """
    for i in np.flatnonzero(first):
        state = parse_maze_state(states[i])
        if args.corner:
            corner = corner_cells(state, args.corner)
            state = parse_maze_state(state.with_cheese(*corner[curriculum_rng.integers(len(corner))]))
        if args.random_start:
            free = state.free_cells()  # empty cells: never the cheese's
            if args.reverse_curriculum:
                distance = bfs_distances(state.grid, state.cheese)[free[:, 0], free[:, 1]]
                free = free[distance <= max(curriculum["distance"], distance.min())]
            states[i] = state.with_mouse(*free[curriculum_rng.integers(len(free))])
        else:
            states[i] = state.data


def grow_start_distance(successes):
    """The reverse curriculum: one step farther once 80% of the last 64 episodes at this distance found the cheese
    (procgen's reward). A window, not a tally since the last change: a slow start at a new distance must not hold
    the curriculum back once the agent succeeds there."""
    recent = (curriculum["recent"] + [bool(s) for s in successes])[-64:]
    if len(recent) == 64 and np.mean(recent) >= 0.8:
        curriculum.update(distance=curriculum["distance"] + 1, recent=[])
    else:
        curriculum["recent"] = recent


def progress_bonus(envs, first, moves, states, reward):
    """The dense reward: ``shaping`` per cell of progress toward the cheese (BFS steps), ``-bump_penalty`` per bump.

    A move one cell closer earns ``+shaping``, one cell away ``-shaping``, a move into a wall
    ``-bump_penalty``; the move that reaches the cheese earns ``+shaping`` and ends the episode, a
    timeout earns nothing. Over an episode the progress sums to ``shaping`` times the start's
    distance, so following a shortest path is still the best policy, but every step says at once
    whether it helped. (Ng et al.'s potential ``gamma * Phi(s') - Phi(s)`` with ``Phi = -d`` pays
    ``(1 - gamma) * d`` a step for being far away: with gamma 0.95 a move away from a cheese more
    than 19 cells off earned a reward, and a run with it found the cheese less and less, its mean
    return falling from 5 to 2-4 within 0.16M env steps. This one pays nothing for being far.)

    The mouse is followed with ``moved`` (a move goes one cell unless a wall is there, as in procgen:
    ``tests/test_maze_curriculum.py`` checks it against procgen's state), since reading every state
    back costs more than the step; only a new episode's state (``states[i]`` where ``first[i]``) is
    parsed, for its grid and mouse.
    """
    bonus = np.zeros(len(envs))
    for i, e in enumerate(envs):
        if first[i]:  # the last episode ended (cheese or timeout); the new one gets its own distances
            state = parse_maze_state(states[i])
            bonus[i] = args.shaping * (reward is not None and reward[i] > 0)
            grids[e], mouse[e] = state.grid, state.mouse
            distance_maps[e] = bfs_distances(state.grid, state.cheese)
        else:
            before, mouse[e] = mouse[e], moved(grids[e], mouse[e], moves[i])
            closer = distance_maps[e][before] - distance_maps[e][mouse[e]]  # +1, -1, or 0 after a bump
            bonus[i] = args.shaping * closer - args.bump_penalty * (mouse[e] == before)
    return bonus


def observe(env, envs, moves=None, first=None):
    """Procgen's reward, the frames, the new-episode flags and the shaping bonus, after the curriculum's patch.

    ``moves`` are the agent's moves (0-3: left, right, up, down) that led here; ``first`` forces new episodes.
    """
    reward, obs, new_episode = env.observe()
    first = new_episode if first is None else first
    obs, bonus, states = obs["rgb"] if isinstance(obs, dict) else obs, np.zeros(len(first)), None
    if first.any() and (args.corner or args.random_start or args.shaping or args.bump_penalty):
        states = env.callmethod("get_state")
        if args.corner or args.random_start:
            patch_new_episodes(states, first)
            env.callmethod("set_state", states)
            obs = env.observe()[1]["rgb"]
    if args.shaping or args.bump_penalty:
        bonus = progress_bonus(envs, first, moves, states, None if moves is None else reward)
    return reward, obs, first, bonus


sizes = [min(args.env_group, args.num_envs - start) for start in range(0, args.num_envs, args.env_group)]
groups = [make_group(g, num) for g, num in enumerate(sizes)]
group_envs = [range(start, start + num) for start, num in zip(np.cumsum([0, *sizes[:-1]]), sizes, strict=True)]
distance_maps = [None] * args.num_envs  # BFS steps to the cheese, per environment's current episode
grids, mouse = [None] * args.num_envs, [None] * args.num_envs  # each episode's maze, and the mouse's (row, col)
agent = Agent(args.channels, args.frame_size, args.keypoints, args.centred, args.canvas, args.fovea)
optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)


# ---- trajhook: one added statement here, one line in the loop -----------------------------------------------
def machine():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    return {"node": platform.node(), "cpu": cpu or platform.processor(), "cores": os.cpu_count()}


checkpoint = Path(args.checkpoint) if args.checkpoint else None
resuming = checkpoint is not None and checkpoint.exists()
probes = [
    trajhook.MazeProbe(
        seed=level,
        distribution_mode=args.distribution_mode,
        name="maze" if i == 0 else "maze_small" if i == 1 else f"maze_{level}",
        preprocess="uint8_nhwc",
        policy_fn=probe_policy,
        render_options=RENDER_OPTIONS,  # the frames the agent is trained on
        track_stages=i == 0,  # live: a stage event where the field's PCA trajectory turns sharply
    )
    for i, level in enumerate(args.probe_levels)
]
if args.far_probe:  # where the way to the cheese and the way to the top-right corner part (on 54% of its cells)
    probes.append(
        trajhook.MazeProbe(
            seed=args.far_probe[0],
            distribution_mode=args.distribution_mode,
            name="maze_far",
            preprocess="uint8_nhwc",
            policy_fn=probe_policy,
            render_options=RENDER_OPTIONS,
            cheese=tuple(args.far_probe[1:]),
        )
    )
rec = trajhook.Recorder(
    args.out,
    probes,
    every_n_steps=trajhook.log_spaced(first=args.batch_size, per_decade=10, until=1_000_000, then_every=100_000),
    metadata={
        "example": "examples/ppo_procgen_maze.py",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": dict(vars(args)),
        "trajhook_version": trajhook.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": machine(),
        "probe_levels": list(args.probe_levels),
        "reward": REWARD,  # "procgen": procgen's own (10 at the cheese, scaled by --reward-scale), nothing else
        "view": VIEW,  # "full": every cell of the maze in every frame
    },
    overwrite=not resuming,  # a fresh run replaces the store; a resumed one continues it
    wandb=False,
)

# ---- storage, resuming, and the training loop ------------------------------------------------------------------
obs = torch.zeros((args.num_steps, args.num_envs, 64, 64, 3), dtype=torch.uint8)
actions = torch.zeros((args.num_steps, args.num_envs))
logprobs = torch.zeros((args.num_steps, args.num_envs))
rewards = torch.zeros((args.num_steps, args.num_envs))
dones = torch.zeros((args.num_steps, args.num_envs))
values = torch.zeros((args.num_steps, args.num_envs))

UNCHECKED_ARGS = {
    "total_timesteps",
    "num_iterations",
    "out",
    "checkpoint",
    "checkpoint_every_s",
    "log_every",
    "threads",
}
RETUNED_ARGS = {"ent_coef", "learning_rate"}  # a resume may change these; /sessions records each session's values
if resuming:
    ckpt = torch.load(checkpoint, weights_only=False)
    saved = {**LEGACY_ARGS, **ckpt["args"]}
    changed = {k: (v, getattr(args, k)) for k, v in saved.items() if k not in UNCHECKED_ARGS and getattr(args, k) != v}
    retuned = {k: changed.pop(k) for k in RETUNED_ARGS & changed.keys()}
    if changed:
        sys.exit(f"{checkpoint} was saved with other arguments {changed} (saved, given); rerun with the saved ones")
    for k, (was, now) in retuned.items():
        print(f"--{k.replace('_', '-')} {was} -> {now} from here on (saved, given)", flush=True)
    agent.load_state_dict(ckpt["agent"])
    optimizer.load_state_dict(ckpt["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = args.learning_rate  # the saved one unless retuned
    rec.load_state_dict(ckpt["recorder"])
    for env, envs, states in zip(groups, group_envs, ckpt["env_states"], strict=True):
        env.callmethod("set_state", states)
        every = np.ones(len(envs), dtype=bool)
        progress_bonus(envs, every, None, states, None)  # each env's distances and mouse, from its state
    random.setstate(ckpt["rng"]["python"])
    np.random.set_state(ckpt["rng"]["numpy"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    curriculum_rng.bit_generator.state = ckpt["rng"]["curriculum"]
    curriculum.update(ckpt.get("curriculum", {}))
    global_step, iteration = ckpt["global_step"], ckpt["iteration"]
    next_obs, next_done, episode_return = ckpt["next_obs"], ckpt["next_done"], ckpt["episode_return"]
    print(f"resumed from {checkpoint} at global_step {global_step} (iteration {iteration})", flush=True)
else:
    global_step, iteration = 0, 0
    frames = [
        observe(env, envs, None, np.ones(len(envs), dtype=bool))[1]
        for env, envs in zip(groups, group_envs, strict=True)
    ]
    next_obs = torch.from_numpy(np.concatenate(frames))  # each environment starts an episode
    next_done = torch.zeros(args.num_envs)
    episode_return = np.zeros(args.num_envs)


def snapshot():
    """Everything a resume needs but the weights, taken at an iteration's start (the weights change only later)."""
    return {
        "args": dict(vars(args)),
        "global_step": global_step,
        "iteration": iteration,
        "env_states": [env.callmethod("get_state") for env in groups],
        "next_obs": next_obs.clone(),
        "next_done": next_done.clone(),
        "episode_return": episode_return.copy(),
        "curriculum": dict(curriculum),
        "recorder": rec.state_dict(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
            "curriculum": curriculum_rng.bit_generator.state,
        },
    }


def save_checkpoint(state):
    tmp = checkpoint.with_name(checkpoint.name + ".tmp")
    torch.save({**state, "agent": agent.state_dict(), "optimizer": optimizer.state_dict()}, tmp)
    os.replace(tmp, checkpoint)  # atomic: a kill while saving leaves the previous checkpoint


def log_agreements():
    """Each probe's share of cells whose strongest move starts a shortest path to the cheese, and to the corner,
    logged as scalars at the record's step and printed."""
    agreements = {}
    for probe in probes:
        with torch.no_grad():
            goals = probe.agreements(probe.run(agent)["direction_probs"])
        agreements.update({f"{probe.name}_{goal}_agreement": value for goal, value in goals.items()})
    rec.log_scalars(global_step, **agreements)
    shown = ", ".join(f"{name.removesuffix('_agreement')} {value:.2f}" for name, value in agreements.items())
    print(f"global_step {global_step}: recorded; shortest-path agreement {shown}", flush=True)


if checkpoint:
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
start_time, last_save, finished, interrupted_rollout = time.time(), time.time(), [], False
timing = {"env": 0.0, "forward": 0.0, "update": 0.0}
steps_this_session = 0
if rec.maybe_record(agent, global_step):  # trajhook: the initial weights (a resumed run recorded them already)
    log_agreements()
while iteration < args.num_iterations and not stop:
    state = snapshot() if checkpoint else None
    if checkpoint and time.time() - last_save > args.checkpoint_every_s:
        save_checkpoint(state)
        last_save = time.time()
    ended, successes = [], []  # returns of the episodes that end in this rollout, and whether each found the cheese
    for step in range(args.num_steps):
        if stop:
            interrupted_rollout = True
            break
        global_step += args.num_envs
        obs[step] = next_obs
        dones[step] = next_done
        t0 = time.perf_counter()
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step] = value.flatten()
        actions[step] = action
        logprobs[step] = logprob
        t1 = time.perf_counter()
        procgen_actions, reward, frames, done, bonus = MOVE_ACTIONS[action.numpy()], [], [], [], []
        for env, envs in zip(groups, group_envs, strict=True):
            env.act(procgen_actions[envs.start : envs.stop])
            r, o, f, b = observe(env, envs, action.numpy()[envs.start : envs.stop])
            reward.append(r), frames.append(o), done.append(f), bonus.append(b)
        reward, done, bonus = np.concatenate(reward), np.concatenate(done), np.concatenate(bonus)
        timing["forward"] += t1 - t0
        timing["env"] += time.perf_counter() - t1
        episode_return += reward
        ended += episode_return[done].tolist()
        successes += (reward[done] > 0).tolist()  # procgen pays only at the cheese; a timeout pays nothing
        episode_return[done] = 0.0
        rewards[step] = torch.as_tensor(args.reward_scale * reward + bonus, dtype=torch.float32)
        next_obs, next_done = torch.from_numpy(np.concatenate(frames)), torch.as_tensor(done, dtype=torch.float32)
    if interrupted_rollout:  # forget the half-done rollout: resume from this iteration's start
        break
    finished += ended
    if args.reverse_curriculum:
        grow_start_distance(successes)
    iteration += 1
    steps_this_session += args.batch_size
    t0 = time.perf_counter()

    # bootstrap value if not done
    with torch.no_grad():
        next_value = agent.get_value(next_obs).reshape(1, -1)
        advantages = torch.zeros_like(rewards)
        lastgaelam = 0
        for t in reversed(range(args.num_steps)):
            if t == args.num_steps - 1:
                nextnonterminal, nextvalues = 1.0 - next_done, next_value
            else:
                nextnonterminal, nextvalues = 1.0 - dones[t + 1], values[t + 1]
            delta = rewards[t] + args.gamma * nextvalues * nextnonterminal - values[t]
            advantages[t] = lastgaelam = delta + args.gamma * args.gae_lambda * nextnonterminal * lastgaelam
        returns = advantages + values

    # flatten the batch
    b_obs = obs.reshape((-1, 64, 64, 3))
    b_logprobs, b_actions = logprobs.reshape(-1), actions.reshape(-1)
    b_advantages, b_returns = advantages.reshape(-1), returns.reshape(-1)

    # optimize the policy and value network
    b_inds = np.arange(args.batch_size)
    for _epoch in range(args.update_epochs):
        np.random.shuffle(b_inds)
        for start in range(0, args.batch_size, args.minibatch_size):
            mb_inds = b_inds[start : start + args.minibatch_size]
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(b_obs[mb_inds], b_actions.long()[mb_inds])
            ratio = (newlogprob - b_logprobs[mb_inds]).exp()
            mb_advantages = b_advantages[mb_inds]
            mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
            pg_loss = torch.max(
                -mb_advantages * ratio, -mb_advantages * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
            ).mean()
            v_loss = 0.5 * ((newvalue.view(-1) - b_returns[mb_inds]) ** 2).mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + v_loss * args.vf_coef
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
    timing["update"] += time.perf_counter() - t0
    scalars = {"loss": loss.item(), "entropy": entropy.mean().item()}
    if ended:
        scalars["episodic_return"] = float(np.mean(ended))
        scalars["cheese_found"] = float(np.mean(successes))
    if args.reverse_curriculum:
        scalars["start_distance"] = float(curriculum["distance"])
    if rec.maybe_record(agent, global_step, **scalars):  # trajhook: cleanrl's charts use global_step too
        log_agreements()
    if iteration % args.log_every == 0:
        elapsed = time.time() - start_time
        split = ", ".join(f"{k} {v / steps_this_session * 1e3:.2f}" for k, v in timing.items())
        ret = f"{np.mean(finished):.2f} over {len(finished)} episodes" if finished else "no episode ended"
        print(
            f"global_step {global_step}: {steps_this_session / elapsed:.0f} env steps/s (ms per env step: {split}); "
            f"return {ret}; entropy {scalars['entropy']:.3f}"
            + (f"; start distance {curriculum['distance']}" if args.reverse_curriculum else ""),
            flush=True,
        )
        finished = []

if not stop and rec.recorded_steps[-1:] != [global_step]:
    rec.record(agent, global_step)  # the trained agent, wherever the schedule is
    log_agreements()
if not interrupted_rollout:  # the weights may have changed since the last snapshot
    state = snapshot() if checkpoint else None
if stop:
    print(f"stopping on signal {stop[0]} at global_step {state['global_step'] if state else global_step}", flush=True)
if checkpoint:
    save_checkpoint(state)
rec.close()
for env in groups:
    env.close()  # procgen envs left to the garbage collector can deadlock a later env's creation
done_steps = state["global_step"] if state else global_step  # a half-done rollout does not count
print(f"{done_steps} env steps; log at {args.out}" + (f"; checkpoint at {checkpoint}" if checkpoint else ""))
if stop:
    sys.exit(0)

# ---- what the log shows: agreement with the way to the cheese and to the corner, from the stored fields ---------
log = trajhook.load(args.out)
print(f"recorded at steps {log.steps.tolist()}")
for probe in probes:
    meta = log[probe.name].metadata
    goals = goal_agreements(log[probe.name]["direction_probs"], meta["grid"], meta["cells"], tuple(meta["cheese"]))
    shown = "; ".join(
        f"to the {goal}: {np.atleast_1d(a)[0]:.2f} at step 0 -> {np.atleast_1d(a)[-1]:.2f}" for goal, a in goals.items()
    )
    print(f"probe {probe.name}, level {meta['seed']} ({len(meta['cells'])} cells) at step {log.steps[-1]}: {shown}")
