"""Smoke tests: the framework examples run in --small mode and write the log they describe."""

from __future__ import annotations

import os
import re
import signal
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
    assert log["maze"].metadata["distribution_mode"] == "easy" and log["maze"].metadata["seed"] == 234
    assert len(log["maze"].metadata["cells"]) == 126  # the held-out probe level has >= 50 free cells
    assert log.scalars["loss"].steps.tolist() == [32, 64]
    assert log.metadata["example"] == "examples/ppo_procgen_maze.py" and log.metadata["args"]["small"] is True
    assert {"node", "cpu"} <= set(log.metadata["machine"]) and log.metadata["torch_version"]
    assert "shortest-path agreement" in stdout

    # docs/make_figures.py draws the README's figures from that store and exports a compact copy
    figures, export = tmp_path / "figures", tmp_path / "docs_runs" / "ppo.h5"
    script = EXAMPLES.parent / "docs" / "make_figures.py"
    result = subprocess.run(
        [sys.executable, str(script), str(out), "--out-dir", str(figures), "--export", str(export), "--fps", "2"],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for name in ("ppo_maze_agreement.png", "ppo_maze_fields.png", "ppo_maze_training.gif"):
        assert (figures / name).stat().st_size > 5_000, name
    captions = (figures / "ppo_maze_captions.md").read_text()
    assert captions.count(log.metadata["command"]) == 3 and log.metadata["machine"]["cpu"] in captions
    copy = load(export)
    assert export.stat().st_size < out.stat().st_size / 10  # fitted chunks, not 4 MiB reserved per dataset
    assert copy.steps.tolist() == log.steps.tolist() and copy.metadata == log.metadata
    for probe in ("maze", "maze_small"):
        for key in ("action_probs", "direction_probs", "vectors"):
            np.testing.assert_array_equal(copy[probe][key], log[probe][key])
        assert copy[probe].kind == "maze"
    assert copy.scalars["loss"].steps.tolist() == [32, 64]


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_ppo_procgen_maze_resumes_after_sigterm_bit_for_bit(tmp_path):
    """A real SIGTERM mid-run saves a checkpoint; the same command resumes it, and run and store match an
    uninterrupted run of the same arguments exactly (same steps, no duplicate rows, same probabilities)."""
    pytest.importorskip("procgen")
    env = {**os.environ, "MPLBACKEND": "Agg", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    args = ["--small", "--total-timesteps", "1280", "--num-envs", "4", "--log-every", "1"]

    def start(name: str, *extra: str) -> subprocess.Popen:
        command = [sys.executable, str(EXAMPLES / "ppo_procgen_maze.py"), *args, "--out", str(tmp_path / name), *extra]
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)

    checkpoint = ["--checkpoint", str(tmp_path / "ckpt" / "run.pt")]
    reference = start("reference.h5")
    run = start("resumed.h5", *checkpoint)
    lines = []
    for line in run.stdout:  # wait until it is well into training, then stop it as a scheduler would
        lines.append(line)
        if line.startswith("global_step 320:"):
            run.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + run.stdout.read()
    assert run.wait(timeout=120) == 0, out[-3000:]
    stopped = re.search(r"stopping on signal 15 at global_step (\d+)", out)
    assert stopped, out[-3000:]
    stopped_at = int(stopped.group(1))
    assert 320 <= stopped_at < 1280  # mid-run, at an iteration boundary (64 env steps an iteration)
    assert stopped_at % 64 == 0 and "shortest-path agreement: " not in out.split("stopping on signal")[-1]

    resumed = start("resumed.h5", *checkpoint)
    out2 = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out2[-3000:]
    assert f"resumed from {checkpoint[1]} at global_step {stopped_at}" in out2
    assert reference.wait(timeout=240) == 0, reference.stdout.read()[-3000:]

    ref, log = load(tmp_path / "reference.h5"), load(tmp_path / "resumed.h5")
    steps = log.steps.tolist()
    assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == 1280  # no duplicate, no ghost row
    assert log.scalars["loss"].steps.tolist() == list(range(64, 1281, 64))  # each iteration once
    assert steps == ref.steps.tolist()
    for probe in ("maze", "maze_small"):
        np.testing.assert_array_equal(log[probe]["action_probs"], ref[probe]["action_probs"])
    np.testing.assert_array_equal(log.scalars["loss"].values, ref.scalars["loss"].values)


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
