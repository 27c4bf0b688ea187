"""Replay equals live recording under Stable-Baselines3: ``CheckpointCallback`` beside trajhook's SB3 callback.

The replayed MazeProbe gets what the live callback gives it (SB3's preprocessing and action distribution), so
the values are bit-identical. The policy is built from the zip itself (no ``PPO.load``), from ``model=PPO``,
or from the live model.
"""

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.maze
pytest.importorskip("procgen")
pytest.importorskip("stable_baselines3")

from test_maze_sb3 import ppo  # noqa: E402  (the same small PPO as the live SB3 tests)

import trajhook  # noqa: E402
from trajhook import MazeProbe, load  # noqa: E402


def probes():
    return [MazeProbe(seed=100, distribution_mode="easy")]


@pytest.mark.timeout(300)
def test_sb3_checkpoint_callback_replays_bit_identical(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    from trajhook.integrations.sb3 import TrajectoryCallback

    model = ppo()
    live = tmp_path / "live.h5"
    saver = CheckpointCallback(save_freq=16, save_path=str(tmp_path / "ckpts"))  # vec-env steps: x2 envs = 32
    model.learn(96, callback=[TrajectoryCallback(live, probes(), every_n_steps=32), saver])
    zips = sorted((tmp_path / "ckpts").glob("rl_model_*_steps.zip"))
    assert [p.name for p in zips] == ["rl_model_32_steps.zip", "rl_model_64_steps.zip", "rl_model_96_steps.zip"]
    a = load(live)
    assert a.steps.tolist() == [0, 32, 64, 96]
    for i, given in enumerate([None, PPO, model]):  # from the zip alone, the algorithm class, the live model
        out = tmp_path / f"replay{i}.h5"
        result = trajhook.replay(tmp_path / "ckpts", probes(), out, model=given, wandb=False)
        assert result.recorded == [32, 64, 96]  # the zip's num_timesteps
        b = load(out)
        for key in a["maze"]:
            assert np.array_equal(b["maze"][key], a["maze"][key][1:]), (i, key)
        assert b["maze"].metadata["seed"] == 100
    assert not np.array_equal(a["maze"]["vectors"][1], a["maze"]["vectors"][-1])  # PPO moved the policy
    # workers=2 (spawned: the probes travel unset, each worker hands them SB3's calls again) gives the same
    out = tmp_path / "two.h5"
    trajhook.replay(str(tmp_path / "ckpts" / "*.zip"), probes(), out, workers=2, wandb=False)
    assert all(np.array_equal(load(out)["maze"][k], a["maze"][k][1:]) for k in a["maze"])
    assert torch.equal(torch.from_numpy(load(out).steps), torch.tensor([32, 64, 96]))
