"""Smoke tests: the framework examples run in --small mode and write the log they describe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trajhook import load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path, *extra: str) -> tuple[str, Path]:
    out = tmp_path / "run.h5"
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--small", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=580,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout, out


@pytest.mark.maze
@pytest.mark.timeout(600)
def test_ppo_procgen_maze_small_records_at_cleanrl_global_step(tmp_path):
    pytest.importorskip("procgen")
    stdout, out = run_example("ppo_procgen_maze.py", tmp_path)
    log = load(out)
    assert log.steps.tolist() == [0, 32, 64]  # step 0, then global_step (2 envs x 16 steps per iteration)
    assert log["maze"].metadata["distribution_mode"] == "easy" and log["maze"].metadata["seed"] == 200
    assert log.scalars["loss"].steps.tolist() == [32, 64]
    assert "shortest-path agreement" in stdout


@pytest.mark.maze
@pytest.mark.timeout(600)
def test_sb3_maze_small_records_at_env_timesteps(tmp_path):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3 import PPO
    from test_maze_sb3 import direct_probs

    from trajhook.probes.maze import load_maze_level

    stdout, out = run_example("sb3_maze.py", tmp_path, "--checkpoints", str(tmp_path / "ckpt"))
    log = load(out)
    assert log.steps.tolist() == [0, 64, 128, 192, 256]  # 2 envs; PPO updates after the rollout ending at 128
    # each record is the policy SB3 saved at that timestep: its evaluate_actions on the level's frames, here
    frames = load_maze_level(200, "easy").observations
    for i, step in enumerate(log.steps[1:], start=1):
        policy = PPO.load(tmp_path / "ckpt" / f"rl_model_{step}_steps.zip", device="cpu").policy
        np.testing.assert_allclose(log["maze"]["action_probs"][i], direct_probs(policy, frames), rtol=1e-5, atol=1e-7)
    assert not np.allclose(log["maze"]["action_probs"][3], log["maze"]["action_probs"][2])  # the update between
    assert "held-out level 200" in stdout


@pytest.mark.timeout(600)
def test_hf_trainer_prompts_small(tmp_path):
    pytest.importorskip("transformers")
    stdout, out = run_example("hf_trainer_prompts.py", tmp_path, "--figure", str(tmp_path / "fig.png"))
    log = load(out)
    assert log.steps.tolist() == [0, 4, 8, 12]
    assert np.isfinite(log["prompts"]["target_logprob"][:, :, 0]).all()
    assert (tmp_path / "fig.png").stat().st_size > 10_000
    assert "log p(' ugly.'" in stdout


@pytest.mark.timeout(600)
def test_rlhf_sft_dpo_small(tmp_path):
    pytest.importorskip("trl")
    stdout, out = run_example("rlhf_sft_dpo.py", tmp_path, "--figure", str(tmp_path / "fig.png"))
    log = load(out)
    assert [(e.step, e.label) for e in log.events] == [(8, "DPO starts")]
    assert log.steps.tolist() == [0, 4, 8, 12]
    assert "mean log p(chosen) - log p(rejected)" in stdout
