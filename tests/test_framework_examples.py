"""Smoke tests: the framework examples run in --small mode and write the log they describe."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trajhook import load
from trajhook.analysis.maze import goal_agreements

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
    # the store declares how the run was trained: procgen's reward alone, every cell in view
    assert log.metadata["reward"] == "procgen" and log.metadata["view"] == "full"
    far = log["maze_far"].metadata
    assert far["seed"] == 207 and far["cheese"] == [13, 1] and far["cheese_moved"] is True
    # both agreements are logged at each record, as computed from the stored field
    for probe in ("maze", "maze_far"):
        meta = log[probe].metadata
        goals = goal_agreements(log[probe]["direction_probs"], meta["grid"], meta["cells"], tuple(meta["cheese"]))
        for goal in ("cheese", "corner"):
            logged = log.scalars[f"{probe}_{goal}_agreement"]
            assert logged.steps.tolist() == log.steps.tolist()
            np.testing.assert_allclose(logged.values, goals[goal], atol=1e-6)

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
    for name in ("ppo_maze_agreement.png", "ppo_maze_fields.png", "ppo_maze_dynamics.png", "ppo_maze_training.gif"):
        assert (figures / name).stat().st_size > 5_000, name
    captions = (figures / "ppo_maze_captions.md").read_text()
    assert captions.count(log.metadata["command"]) == 4 and log.metadata["machine"]["cpu"] in captions
    # every caption opens with how the run was trained
    assert (
        captions.count(
            "PPO trained with procgen's own reward alone (10 at the cheese), the whole maze in view through a fovea "
            "(the cells near the mouse twice as fine)."
        )
        == 4
    )
    assert log["maze"].metadata["render_options"] == {
        "use_monochrome_assets": True,
        "restrict_themes": True,
        "use_backgrounds": False,
    }  # the probe draws its frames as the agent is trained to see them
    copy = load(export)
    assert export.stat().st_size < out.stat().st_size / 10  # fitted chunks, not 4 MiB reserved per dataset
    assert copy.steps.tolist() == log.steps.tolist() and copy.metadata == log.metadata
    for probe in ("maze", "maze_far"):
        for key in ("action_probs", "direction_probs", "vectors"):
            np.testing.assert_array_equal(copy[probe][key], log[probe][key])
        assert copy[probe].kind == "maze"
    assert copy.scalars["loss"].steps.tolist() == [32, 64]


DENSE_REWARD_CHECK = """
import json, runpy, sys
import numpy as np
sys.argv = ["ppo", "--total-timesteps", "0", "--num-envs", "8", "--out", sys.argv[1], *sys.argv[2:]]
g = runpy.run_path({script!r})
from procgen import ProcgenGym3Env
from trajhook.analysis.maze import bfs_distances
from trajhook.procgen_state import parse_maze_state
env = ProcgenGym3Env(num=8, env_name="maze", start_level=10_000, num_levels=0, distribution_mode="easy",
                     num_threads=1, rand_seed=7, **g["RENDER_OPTIONS"])
envs = range(8)
g["observe"](env, envs, None, np.ones(8, dtype=bool))
def truth():
    states = [parse_maze_state(s) for s in env.callmethod("get_state")]
    return [(bfs_distances(s.grid, s.cheese)[s.mouse], s.mouse) for s in states]
before, rng, rows = truth(), np.random.default_rng(0), []
for _ in range(400):
    moves = rng.integers(4, size=8)
    env.act(g["MOVE_ACTIONS"][moves])
    reward, _, first, bonus = g["observe"](env, envs, moves)
    after = truth()
    for i in range(8):
        rows.append([bool(first[i]), float(reward[i]), float(bonus[i]), float(before[i][0] - after[i][0]),
                     before[i][1] == after[i][1]])
    before = after
env.close()
print(json.dumps(rows))
"""


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_ppo_example_dense_reward_is_progress_along_procgens_maze(tmp_path):
    """The example's dense reward, move by move, against BFS distances on procgen's own state read back."""
    pytest.importorskip("procgen")
    code = DENSE_REWARD_CHECK.format(script=str(EXAMPLES / "ppo_procgen_maze.py"))
    shaped = ["--shaping", "0.1", "--bump-penalty", "0.1"]  # the earlier run's reward, now off by default
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run.h5"), *shaped], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    moves = [r for r in rows if not r[0]]
    for _, _, bonus, closer, bumped in moves:  # +0.1 a cell closer, -0.1 a cell away or into a wall
        assert bonus == pytest.approx(0.1 * closer - 0.1 * bumped)
    assert {round(r[2], 3) for r in moves} == {0.1, -0.1}
    ends = [r for r in rows if r[0]]
    assert ends and all(r[2] == pytest.approx(0.1 if r[1] > 0 else 0.0) for r in ends)  # cheese: +0.1; timeout: 0


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_ppo_example_default_reward_is_procgens_alone(tmp_path):
    """By default the example adds nothing to procgen's reward: no bonus on any move, 10 only at the cheese."""
    pytest.importorskip("procgen")
    code = DENSE_REWARD_CHECK.format(script=str(EXAMPLES / "ppo_procgen_maze.py"))
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run.h5")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(r[2] == 0.0 for r in rows)  # no shaping bonus at all
    assert {r[1] for r in rows} <= {0.0, 10.0} and all((r[1] == 10.0) <= r[0] for r in rows)  # only at an end


FOVEA_CHECK = """
import json, runpy, sys
import numpy as np, torch
sys.argv = ["ppo", "--total-timesteps", "0", "--num-envs", "8", "--out", sys.argv[1]]
g = runpy.run_path({script!r})
from trajhook.probes.maze import load_maze_level
level = load_maze_level(234, "easy", render_options=g["RENDER_OPTIONS"])
frames = level.observations[::9]  # (14, 64, 64, 3) uint8, the mouse on 14 of the probe's cells
view = g["Fovea"](32)(torch.from_numpy(frames)).numpy()
channels = g["agent"].convs[1].conv.in_channels
print(json.dumps({{"frames": frames.tolist(), "view": view.tolist(), "channels": channels}}))
"""


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_ppo_example_fovea_keeps_every_pixel_and_the_mouse_in_the_middle(tmp_path):
    """The default view, checked on the probe level's frames with numpy: the whole channels hold every pixel of
    the frame (padding, not cropping: the cheese is always in view) and the near channels are the 64x64
    window centred on the mouse, each pooled to 32x32."""
    pytest.importorskip("procgen")
    code = FOVEA_CHECK.format(script=str(EXAMPLES / "ppo_procgen_maze.py"))
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run.h5")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    frames, view = np.array(got["frames"], np.float64), np.array(got["view"], np.float64)
    assert got["channels"] == 6 and view.shape == (len(frames), 32, 32, 6)
    np.testing.assert_allclose(view[..., 3:].sum((1, 2)) * 16, frames.sum((1, 2)), rtol=1e-5)  # no pixel lost
    for frame, near in zip(frames, view[..., :3], strict=True):
        mouse = (frame[..., 1] > 200) & (frame[..., 0] < 160)  # procgen's plain green square
        row, col = (round(float(np.mean(axis))) for axis in np.nonzero(mouse))
        padded = np.pad(frame, ((64, 64), (64, 64), (0, 0)))
        window = padded[row + 32 : row + 96, col + 32 : col + 96]  # frame pixel (row, col) at the window's (32, 32)
        np.testing.assert_allclose(near, window.reshape(32, 2, 32, 2, 3).mean((1, 3)), atol=1e-3)


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
    for probe in ("maze", "maze_far"):
        np.testing.assert_array_equal(log[probe]["action_probs"], ref[probe]["action_probs"])
    np.testing.assert_array_equal(log.scalars["start_distance"].values, ref.scalars["start_distance"].values)
    np.testing.assert_array_equal(log.scalars["loss"].values, ref.scalars["loss"].values)
    assert [(e.step, e.label) for e in log.events] == [(e.step, e.label) for e in ref.events]  # stage events too
    assert len(ref.sessions) == 1 and len(log.sessions) == 2  # each session noted, the resumed one from its step
    assert log.sessions[0]["first_step"] == 0 and log.sessions[1]["first_step"] >= stopped_at

    # a later resume may lower the entropy coefficient and the learning rate, and nothing else
    refused = start("resumed.h5", *checkpoint, "--total-timesteps", "1408", "--gamma", "0.9")
    out3 = refused.communicate(timeout=240)[0]
    assert refused.returncode != 0 and "'gamma': (0.99, 0.9)" in out3, out3[-3000:]
    retuned = ["--total-timesteps", "1408", "--ent-coef", "0.001", "--learning-rate", "0.0001"]
    resumed = start("resumed.h5", *checkpoint, *retuned)
    out4 = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0 and "--learning-rate 0.0005 -> 0.0001 from here on" in out4, out4[-3000:]
    saved = torch.load(tmp_path / "ckpt" / "run.pt", weights_only=False)
    assert saved["global_step"] == 1408 and saved["args"]["ent_coef"] == 0.001
    assert {group["lr"] for group in saved["optimizer"]["param_groups"]} == {0.0001}
    sessions = load(tmp_path / "resumed.h5").sessions
    assert [s["metadata"]["args"]["ent_coef"] for s in sessions] == [0.03, 0.03, 0.001]


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


@pytest.mark.maze
@pytest.mark.timeout(600)
def test_replay_checkpoints_small_records_each_saved_policy(tmp_path):
    pytest.importorskip("procgen")
    import importlib.util

    import torch

    from trajhook.probes.maze import float_nchw, load_maze_level

    stdout, out = run_example("replay_checkpoints.py", tmp_path, "--checkpoints", str(tmp_path / "ckpts"))
    log = load(out, verify=True)
    assert log.steps.tolist() == [0, 5, 10, 15, 20] and log.metadata["source"] == "replay"
    # each record is its checkpoint's policy on the held-out level's frames, computed here without trajhook
    spec = importlib.util.spec_from_file_location("replay_example", EXAMPLES / "replay_checkpoints.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)  # defines the classes; main() runs only as a script
    frames = float_nchw(torch.from_numpy(load_maze_level(1, "easy").observations))
    for i, step in enumerate(log.steps):
        policy = example.Policy().eval()
        policy.load_state_dict(torch.load(tmp_path / "ckpts" / f"model_{step}.pth")["model_state_dict"])
        with torch.no_grad():
            want = torch.softmax(policy(frames), dim=1).numpy()
        np.testing.assert_allclose(log["maze"]["action_probs"][i], want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(log["maze"]["action_probs"][0], log["maze"]["action_probs"][-1])
    assert f"trajhook serve {out}" in stdout and "replayed 5 checkpoint(s)" in stdout


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
