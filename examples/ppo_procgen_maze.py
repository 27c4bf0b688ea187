"""CleanRL-style single-file PPO on procgen's maze (after cleanrl's ``ppo_procgen.py``), plus one trajhook line.

The agent is cleanrl's: an IMPALA-style CNN with ``actor`` and ``critic`` heads and no
``forward`` (it is called through ``get_action_and_value`` on raw uint8 NHWC frames). So the
MazeProbe gets ``preprocess="uint8_nhwc"`` (hand it the raw frames) and a ``policy_fn`` that
repeats the agent's own preprocessing and returns its action logits. The probe records at step 0
and then at cleanrl's ``global_step`` (environment steps over all envs), the x-axis of the run's
own charts. Train and probe with the same ``distribution_mode``: cleanrl trains on ``easy``,
while MazeProbe's default is ``hard``.

    python examples/ppo_procgen_maze.py           # a few minutes on 2 idle CPU cores (4k env steps: the
                                                  # hook, not a trained agent; the maze needs millions)
    python examples/ppo_procgen_maze.py --small   # the smoke-test settings
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.optim as optim
from procgen import ProcgenEnv
from torch.distributions.categorical import Categorical
from tqdm.auto import tqdm

import trajhook
from trajhook.analysis.maze import path_agreement, shortest_path_moves

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--seed", type=int, default=1)
parser.add_argument("--total-timesteps", type=int, default=4096, help="cleanrl: 25M; the maze needs millions")
parser.add_argument("--learning-rate", type=float, default=5e-4)
parser.add_argument("--num-envs", type=int, default=8, help="cleanrl: 64")
parser.add_argument("--num-steps", type=int, default=32, help="steps per env per rollout (cleanrl: 256)")
parser.add_argument("--gamma", type=float, default=0.999)
parser.add_argument("--gae-lambda", type=float, default=0.95)
parser.add_argument("--num-minibatches", type=int, default=4, help="cleanrl: 8")
parser.add_argument("--update-epochs", type=int, default=2, help="cleanrl: 3")
parser.add_argument("--clip-coef", type=float, default=0.2)
parser.add_argument("--ent-coef", type=float, default=0.01)
parser.add_argument("--vf-coef", type=float, default=0.5)
parser.add_argument("--max-grad-norm", type=float, default=0.5)
parser.add_argument("--num-levels", type=int, default=200, help="training levels start-level .. +num-levels")
parser.add_argument("--start-level", type=int, default=0)
parser.add_argument("--distribution-mode", default="easy", help="cleanrl's default; the probe must match it")
parser.add_argument("--probe-level", type=int, default=None, help="default: the first level after the training range")
parser.add_argument("--out", default="runs/ppo_procgen_maze.h5", help="the trajhook store")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
if args.small:
    args.total_timesteps, args.num_envs, args.num_steps, args.num_minibatches, args.update_epochs = 64, 2, 16, 2, 1
args.batch_size = args.num_envs * args.num_steps
args.minibatch_size = args.batch_size // args.num_minibatches
args.num_iterations = args.total_timesteps // args.batch_size
probe_level = args.start_level + args.num_levels if args.probe_level is None else args.probe_level

random.seed(args.seed)
np.random.seed(args.seed)
torch.manual_seed(args.seed)
torch.backends.cudnn.deterministic = True
device = torch.device("cpu")


# ---- the agent: cleanrl's IMPALA CNN ------------------------------------------------------------------------
class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        inputs = x
        x = self.conv0(nn.functional.relu(x))
        x = self.conv1(nn.functional.relu(x))
        return x + inputs


class ConvSequence(nn.Module):
    def __init__(self, input_shape, out_channels):
        super().__init__()
        self._input_shape = input_shape
        self._out_channels = out_channels
        self.conv = nn.Conv2d(input_shape[0], out_channels, kernel_size=3, padding=1)
        self.res_block0 = ResidualBlock(out_channels)
        self.res_block1 = ResidualBlock(out_channels)

    def forward(self, x):
        x = self.conv(x)
        x = nn.functional.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        x = self.res_block0(x)
        return self.res_block1(x)

    def get_output_shape(self):
        _c, h, w = self._input_shape
        return (self._out_channels, (h + 1) // 2, (w + 1) // 2)


def layer_init(layer, std=2**0.5, bias_const=0.0):
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, bias_const)
    return layer


class Agent(nn.Module):
    def __init__(self, n_actions):
        super().__init__()
        shape = (3, 64, 64)
        conv_seqs = []
        for out_channels in [16, 32, 32]:
            conv_seq = ConvSequence(shape, out_channels)
            shape = conv_seq.get_output_shape()
            conv_seqs.append(conv_seq)
        conv_seqs += [nn.Flatten(), nn.ReLU(), nn.Linear(shape[0] * shape[1] * shape[2], 256), nn.ReLU()]
        self.network = nn.Sequential(*conv_seqs)
        self.actor = layer_init(nn.Linear(256, n_actions), std=0.01)
        self.critic = layer_init(nn.Linear(256, 1), std=1)

    def get_value(self, x):
        return self.critic(self.network(x.permute((0, 3, 1, 2)) / 255.0))  # "bhwc" -> "bchw"

    def get_action_and_value(self, x, action=None):
        hidden = self.network(x.permute((0, 3, 1, 2)) / 255.0)
        probs = Categorical(logits=self.actor(hidden))
        if action is None:
            action = probs.sample()
        return action, probs.log_prob(action), probs.entropy(), self.critic(hidden)


# ---- env setup (procgen's own vectorized env; observations are uint8 NHWC frames) ---------------------------
envs = ProcgenEnv(
    num_envs=args.num_envs,
    env_name="maze",
    num_levels=args.num_levels,
    start_level=args.start_level,
    distribution_mode=args.distribution_mode,
    rand_seed=args.seed,
)
agent = Agent(envs.action_space.n).to(device)
optimizer = optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5)

# ---- trajhook: one added statement here, one line in the loop -------------------------------------------------------
rec = trajhook.Recorder(
    args.out,
    [
        trajhook.MazeProbe(
            seed=probe_level,
            distribution_mode=args.distribution_mode,
            preprocess="uint8_nhwc",
            policy_fn=lambda agent, obs: agent.actor(agent.network(obs.permute(0, 3, 1, 2) / 255.0)),
        )
    ],
    every_n_steps=args.batch_size,
    metadata={"probe_level": probe_level},
    overwrite=True,
)

# ---- storage and the training loop --------------------------------------------------------------------------
obs = torch.zeros((args.num_steps, args.num_envs, 64, 64, 3), dtype=torch.uint8)
actions = torch.zeros((args.num_steps, args.num_envs))
logprobs = torch.zeros((args.num_steps, args.num_envs))
rewards = torch.zeros((args.num_steps, args.num_envs))
dones = torch.zeros((args.num_steps, args.num_envs))
values = torch.zeros((args.num_steps, args.num_envs))

global_step = 0
start_time = time.time()
next_obs = torch.from_numpy(envs.reset()["rgb"])
next_done = torch.zeros(args.num_envs)
episode_return = np.zeros(args.num_envs)
for _iteration in tqdm(range(1, args.num_iterations + 1), desc="PPO iterations"):
    rec.maybe_record(agent, global_step)  # trajhook: step 0 at iteration 1, then cleanrl's global_step
    finished = []
    for step in range(args.num_steps):
        global_step += args.num_envs
        obs[step] = next_obs
        dones[step] = next_done
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(next_obs)
            values[step] = value.flatten()
        actions[step] = action
        logprobs[step] = logprob
        next_obs_np, reward, done, _info = envs.step(action.numpy())
        episode_return += reward
        finished += episode_return[done].tolist()
        episode_return[done] = 0.0
        rewards[step] = torch.as_tensor(reward, dtype=torch.float32)
        next_obs, next_done = torch.from_numpy(next_obs_np["rgb"]), torch.as_tensor(done, dtype=torch.float32)
    if finished:
        rec.log_scalars(global_step, episodic_return=float(np.mean(finished)))

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
    b_advantages, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), values.reshape(-1)

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
    rec.log_scalars(global_step, loss=loss.item())  # cleanrl's charts use global_step too

rec.maybe_record(agent, global_step)  # the trained agent
rec.close()
print(f"{global_step} env steps in {time.time() - start_time:.0f} s; log at {args.out}")

# ---- what the log shows: agreement with the shortest path on the held-out probe level -----------------------
log = trajhook.load(args.out)
meta = log["maze"].metadata
on_path = shortest_path_moves(meta["grid"], tuple(meta["cheese"]), meta["cells"])
agreement = path_agreement(log["maze"]["direction_probs"], on_path)
print(f"probe level {probe_level} ({args.distribution_mode}): recorded at steps {log.steps.tolist()}")
print(f"shortest-path agreement: {agreement[0]:.2f} at step 0 -> {agreement[-1]:.2f} at step {log.steps[-1]}")
