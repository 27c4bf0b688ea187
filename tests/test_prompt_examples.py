"""Smoke tests: both language-model examples run in --small mode and write a sensible log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from trajhook import load

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, tmp_path: Path) -> tuple[str, Path, Path]:
    out, figure = tmp_path / "run.h5", tmp_path / "figure.png"
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), "--small", "--out", str(out), "--figure", str(figure)],
        capture_output=True,
        text=True,
        timeout=120,
        env={"MPLBACKEND": "Agg", "WANDB_MODE": "disabled", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert figure.stat().st_size > 10_000
    return result.stdout, out, figure


def test_induction_heads_small(tmp_path):
    stdout, out, _ = run_example("induction_heads.py", tmp_path)
    assert "offline: ICL score" in stdout and "turns at step" in stdout and "live:" in stdout
    log = load(out)
    assert log.steps.tolist() == list(range(0, 61, 5))
    stream = log["stream"]["token_loss"]  # 512 tokens in 8 windows of 64: 63 losses each
    assert stream.shape == (13, 8 * 63) and np.isfinite(stream).all()
    assert abs(np.mean(stream[0]) - np.log(64)) < 0.5
    token_loss = log["prompts"]["token_loss"]
    assert token_loss.shape == (13, 8, 62)
    assert np.isfinite(token_loss).all()
    # At initialisation every character is about equally likely: loss near log(64).
    assert abs(np.mean(token_loss[0]) - np.log(64)) < 0.5
    assert np.isfinite(log["prompts"]["target_logprob"]).all()
    assert len(log.scalars["loss"].steps) == 61


def test_finetune_phase_small(tmp_path):
    stdout, out, _ = run_example("finetune_phase.py", tmp_path)
    log = load(out)
    assert [(e.step, e.label) for e in log.events] == [(40, "fine-tuning starts")]
    assert log.steps.tolist() == [0, 10, 20, 30, 40, 50, 60]
    logprob = log["prompts"]["target_logprob"]
    assert logprob.shape == (7, 4, 2)
    assert np.isnan(logprob[:, 1:, 1]).all() and np.isfinite(logprob[:, :, 0]).all()
    assert log["prompts"].metadata["target_texts"][0] == ["ugly.", "nice."]
    assert "log p('ugly.'" in stdout
    assert log.scalars["harmful_penalty"].steps.tolist() == list(range(40, 61))
