"""The maze side's framework hooks: the Gymnasium maze env, the SB3 callback, and MazeProbe's policy_fn errors."""

import numpy as np
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.maze
pytest.importorskip("procgen")
pytest.importorskip("gymnasium")

from trajhook import MazeProbe, Recorder, TrajhookError, load  # noqa: E402
from trajhook.analysis.maze import shortest_path  # noqa: E402

ACTION_OF_MOVE = [1, 7, 5, 3]  # left, right, up, down -> procgen actions


@pytest.mark.timeout(120)
def test_env_levels_modes_and_an_episode_that_reaches_the_cheese():
    from trajhook.envs.maze import ProcgenMazeEnv

    env = ProcgenMazeEnv(start_level=3, num_levels=1, distribution_mode="easy")
    obs, info = env.reset(seed=0)
    assert info["level_seed"] == 3 and env.state.world_dim == 15
    # the same level and frames as the MazeProbe: the start frame is the probe's frame at the start cell
    probe = MazeProbe(seed=3, distribution_mode="easy")
    probe.setup(nn.Linear(1, 1), torch.device("cpu"))
    start = np.flatnonzero((probe.cells == probe.start).all(1))[0]
    np.testing.assert_array_equal(obs, probe.observations[start])
    # follow a shortest path: the last step terminates with procgen's reward 10
    state = env.state
    moves = shortest_path(state.grid, state.mouse, state.cheese)
    for i, move in enumerate(moves):
        obs, reward, terminated, truncated, info = env.step(ACTION_OF_MOVE[move])
        assert terminated == (i == len(moves) - 1) and not truncated
    assert reward == 10.0
    again, info = env.reset()
    assert info["level_seed"] == 3
    np.testing.assert_array_equal(again, probe.observations[start])  # a fresh episode of the same level
    env.close()
    plain_options = {"use_monochrome_assets": True, "restrict_themes": True, "use_backgrounds": False}
    plain = ProcgenMazeEnv(start_level=3, num_levels=1, distribution_mode="easy", render_options=plain_options)
    plain_probe = MazeProbe(seed=3, distribution_mode="easy", render_options=plain_options)
    plain_probe.setup(nn.Linear(1, 1), torch.device("cpu"))
    plain_obs = plain.reset(seed=0)[0]
    np.testing.assert_array_equal(plain_obs, plain_probe.observations[start])  # drawn the same way as its probe
    assert not np.array_equal(plain_obs, obs)
    plain.close()

    hard = ProcgenMazeEnv(start_level=10, num_levels=3, distribution_mode="hard")
    seen = set()
    for seed in range(6):
        _, info = hard.reset(seed=seed)
        seen.add(info["level_seed"])
        assert hard.state.world_dim == 25
    assert seen <= {10, 11, 12} and len(seen) > 1
    with pytest.raises(TrajhookError, match="num_levels"):
        ProcgenMazeEnv(num_levels=0)
    with pytest.raises(TrajhookError, match="distribution_mode"):
        ProcgenMazeEnv(distribution_mode="memory")
    with pytest.raises(TrajhookError, match=r"ProcgenMazeEnv: render_options key 'plain'.*HINT"):
        ProcgenMazeEnv(render_options={"plain": True})


def ppo(seed=0):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from trajhook.envs.maze import ProcgenMazeEnv

    envs = make_vec_env(
        ProcgenMazeEnv, n_envs=2, seed=seed, env_kwargs={"start_level": 0, "num_levels": 5, "distribution_mode": "easy"}
    )
    return PPO(
        "CnnPolicy",
        envs,
        n_steps=16,
        batch_size=16,
        n_epochs=1,
        seed=seed,
        device="cpu",
        policy_kwargs={"features_extractor_kwargs": {"features_dim": 32}},
    )


def direct_probs(policy, frames):
    """Independently of the probe: SB3's evaluate_actions on frames transposed here, for all 15 actions."""
    obs = torch.from_numpy(frames).permute(0, 3, 1, 2)
    with torch.no_grad():
        policy.set_training_mode(False)
        logps = [policy.evaluate_actions(obs, torch.full((len(obs),), a))[1] for a in range(15)]
    return torch.stack(logps, 1).exp().numpy()


@pytest.mark.timeout(240)
def test_sb3_callback_records_from_the_start_at_env_timesteps_with_sb3_preprocessing(tmp_path):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.callbacks import BaseCallback

    from trajhook.integrations.sb3 import TrajectoryCallback

    probe = MazeProbe(seed=100, distribution_mode="easy")  # a held-out level, no policy_fn, no preprocess
    expected = {}

    class Direct(BaseCallback):
        def _on_training_start(self):
            expected[self.model.num_timesteps] = direct_probs(self.model.policy, probe.observations)

        def _on_step(self):
            if self.model.num_timesteps % 32 == 0:  # the due steps only: 15 forwards each
                expected[self.model.num_timesteps] = direct_probs(self.model.policy, probe.observations)
            if self.model.num_timesteps == 40:
                cb.mark("at 40")  # the current step
                cb.mark("given", step=50)
            return True

    model = ppo()
    cb = TrajectoryCallback(tmp_path / "run.h5", [probe], every_n_steps=32)
    cb.mark("before learn")  # no learn() runs yet: step 0, written when it starts
    model.learn(96, callback=[cb, Direct()])
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 32, 64, 96]  # num_timesteps: 2 envs, so +2 per vec-env step
    assert [(e.step, e.label) for e in log.events] == [(0, "before learn"), (40, "at 40"), (50, "given")]
    want = np.stack([expected[s] for s in (0, 32, 64, 96)])
    np.testing.assert_allclose(log["maze"]["action_probs"], want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(want[0], want[-1])  # PPO updated the policy after each 32-step rollout

    # attaching the callback never changes training: bit-identical weights without it
    plain = ppo()
    plain.learn(96)
    for (name, a), b in zip(model.policy.state_dict().items(), plain.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.timeout(120)
def test_sb3_callback_warns_when_the_probe_mode_differs_from_training(tmp_path):
    pytest.importorskip("stable_baselines3")
    from trajhook.integrations.sb3 import TrajectoryCallback

    model = ppo()  # trains on easy
    cb = TrajectoryCallback(tmp_path / "run.h5", [MazeProbe(seed=100)], every_n_steps=32)  # hard, the default
    with pytest.warns(UserWarning, match="distribution_mode='hard', but the policy trains on \\['easy'\\]"):
        model.learn(32, callback=cb)
    assert load(tmp_path / "run.h5")["maze"].metadata["world_dim"] == 25


class CleanRLAgent(nn.Module):
    """cleanrl's ppo_procgen agent shape: no forward; get_action_and_value takes uint8 NHWC frames."""

    def __init__(self):
        super().__init__()
        self.network = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 16))
        self.actor = nn.Linear(16, 15)

    def get_action_and_value(self, x):
        logits = self.actor(self.network(x.permute(0, 3, 1, 2) / 255.0))
        return torch.distributions.Categorical(logits=logits)


class RecurrentPolicy(nn.Module):
    """train-procgen-pytorch's CategoricalPolicy shape: forward(x, hx, masks)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 15))

    def forward(self, x, hx, masks):
        return torch.distributions.Categorical(logits=self.net(x)), None, hx


@pytest.mark.timeout(60)
def test_a_model_that_cannot_take_the_batch_alone_gets_a_policy_fn_hint(tmp_path):
    for model, shown in [(CleanRLAgent(), "CleanRLAgent has no forward()"), (RecurrentPolicy(), "x, hx, masks")]:
        rec = Recorder(tmp_path / "run.h5", [MazeProbe(seed=0, distribution_mode="easy")], wandb=False)
        with pytest.raises(TrajhookError, match="policy_fn") as err:
            rec.setup(model)
        assert shown in str(err.value)
        rec.close()
    # and the fix the hint names works: the probe equals the agent's own distribution
    agent = CleanRLAgent()
    probe = MazeProbe(
        seed=0,
        distribution_mode="easy",
        preprocess="uint8_nhwc",
        policy_fn=lambda agent, obs: agent.actor(agent.network(obs.permute(0, 3, 1, 2) / 255.0)),
    )
    with Recorder(tmp_path / "ok.h5", [probe], wandb=False) as rec:
        rec.record(agent, 0)
    with torch.no_grad():
        want = agent.get_action_and_value(torch.from_numpy(probe.observations)).probs.numpy()
    np.testing.assert_allclose(load(tmp_path / "ok.h5")["maze"]["action_probs"][0], want, rtol=1e-5)
