"""Live W&B panels, read back from a real offline run."""

import os
import subprocess
import sys
import textwrap
import time
import warnings

import imageio.v3 as iio
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from fake_maze import GridProbe
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from wandb_offline import read_run

from trajhook import MazeProbe, PromptProbe, Recorder, TensorProbe, load
from trajhook.integrations.lightning import TrajectoryCallback
from trajhook.sinks.wandb import STEP_KEY, WandbSink

VOCAB = 32


def tokenize(text):
    return [ord(c) % VOCAB for c in text]


class TwoHeads(pl.LightningModule):
    """A maze policy and a bigram language model, trained together, so both probes see change."""

    def __init__(self):
        super().__init__()
        self.policy = nn.Sequential(nn.Conv2d(3, 8, 8, stride=8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 15))
        self.lm = nn.Sequential(nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB))

    def training_step(self, batch, batch_idx):
        obs, action, tokens = batch
        policy_loss = nn.functional.cross_entropy(self.policy(obs), action)
        lm_logits = self.lm(tokens[:, :-1])
        lm_loss = nn.functional.cross_entropy(lm_logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        loss = policy_loss + lm_loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=3e-2)


def data():
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(48, 3, 64, 64, generator=g)
    action = torch.full((48,), 7)  # "go right": the maze arrows should turn right
    tokens = torch.tensor([tokenize("abcabcab")] * 48)
    return DataLoader(TensorDataset(obs, action, tokens), batch_size=4)


def probes():
    maze = MazeProbe(seed=3, distribution_mode="easy", policy_fn=lambda model, obs: model.policy(obs))
    prompts = PromptProbe(
        {"abc": "abcab", "xyz": "xyzxy"},
        tokenize,
        targets={"abc": ["c", "zz"], "xyz": ["z"]},
        logits_fn=lambda model, ids, mask: model.lm(ids),
    )
    return [maze, prompts]


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_lightning_run_with_wandb_logger_logs_every_panel(tmp_path):
    from pytorch_lightning.loggers import WandbLogger

    logger = WandbLogger(save_dir=tmp_path, offline=True, project="trajhook-test")
    sink = WandbSink(image_every_s=0, pca_every_n_records=2)
    callback = TrajectoryCallback(tmp_path / "run.h5", probes(), every_n_steps=4, wandb=sink)
    trainer = pl.Trainer(
        max_steps=12,
        logger=logger,
        callbacks=[callback],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(TwoHeads(), data())
    logger.experiment.finish()

    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 4, 8, 12]
    history, metrics, files = read_run(logger.experiment.dir.removesuffix("/files"))
    by_step = {}
    for row in history:
        if STEP_KEY in row:
            by_step.setdefault(row[STEP_KEY], {}).update(row)

    # every trajhook key is declared by name against trajhook/step
    trajhook_keys = {k.split("/path")[0] for row in history for k in row if k.startswith("trajhook/")}
    for key in trajhook_keys - {STEP_KEY}:
        if not key.endswith(("/_type", "/sha256", "/size", "/format", "/width", "/height")):
            assert metrics.get(key) == STEP_KEY, key

    # logit curves: one scalar per prompt and target, equal to the HDF5 record at that step
    lp, first = log["prompts"]["target_logprob"], log["prompts"]["target_first_logit"]
    for i, step in enumerate(log.steps.tolist()):
        row = by_step[step]
        np.testing.assert_allclose(row["trajhook/prompts/abc/target0_c"], lp[i, 0, 0], rtol=1e-6)
        np.testing.assert_allclose(row["trajhook/prompts/abc/target1_zz"], lp[i, 0, 1], rtol=1e-6)
        np.testing.assert_allclose(row["trajhook/prompts/xyz/target0_z"], lp[i, 1, 0], rtol=1e-6)
        np.testing.assert_allclose(row["trajhook/prompts/xyz/target0_z/first_logit"], first[i, 1, 0], rtol=1e-6)
        # the vector field, one image per record, which decodes to a real picture
        image = files / row["trajhook/maze/vector_field/path"]
        pixels = iio.imread(image)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100 and pixels.std() > 10
    learned = "trajhook/prompts/abc/target0_c"  # "abcab" -> "c"
    assert by_step[12][learned] > by_step[0][learned]

    # the PCA trajectory image, redrawn every 2 records and once at the end
    pca = [
        row["trajhook/prompts/pca_trajectory/path"] for row in history if "trajhook/prompts/pca_trajectory/path" in row
    ]
    assert len(pca) >= 2 and all((files / p).exists() for p in pca)

    # the training loss passed by the callback, once per optimizer step
    loss_steps = sorted(s for s, row in by_step.items() if "trajhook/loss" in row)
    assert loss_steps == list(range(12))

    # Lightning's own logger keeps its metrics: train_loss at each of its steps
    own = [row for row in history if "train_loss" in row]
    assert [row["trainer/global_step"] for row in own] == list(range(12))
    np.testing.assert_allclose(  # the same loss at the same step in both
        [row["train_loss"] for row in own], [by_step[s]["trajhook/loss"] for s in range(12)], rtol=1e-5
    )


@pytest.mark.parametrize("dies_at", [None, 2])
def test_a_wandb_failure_never_stops_training_or_loses_the_store(tmp_path, dies_at):
    import wandb

    run = wandb.init(dir=tmp_path, mode="offline", project="trajhook-test")
    if dies_at is None:
        run.finish()  # dead from the start; a finished run raises on every call: a real W&B failure
    model = nn.Linear(4, 2)
    sink = WandbSink(run, retry_backoff_s=0.01, give_up_after=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run.h5", [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=sink) as rec:
            for step in range(5):
                rec.maybe_record(model, step, loss=float(step))
                if step == dies_at:
                    rec.flush()
                    while not sink._queue.empty() or sink._busy_since is not None:
                        time.sleep(0.01)  # W&B has taken records 0..2 before it dies
                    run.finish()  # W&B goes away in the middle of training
    failures = [str(w.message) for w in caught if "W&B missed" in str(w.message)]
    assert len(failures) == 1, [str(w.message) for w in caught]
    assert "the HDF5 store has every record" in failures[0]
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 1, 2, 3, 4] and len(log.scalars["loss"].steps) == 5


SCRIPT = textwrap.dedent(
    """
    import sys, warnings, torch
    from trajhook import Recorder, TensorProbe
    mode = sys.argv[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wandb = True if mode == "true" else "auto"
        with Recorder("run.h5", [TensorProbe("p", torch.ones(1, 2))], 1, wandb=wandb) as rec:
            rec.maybe_record(torch.nn.Linear(2, 1), 0, loss=1.0)
    print("imported" if "wandb" in sys.modules else "not-imported", file=sys.stderr)
    print(sum("logs offline" in str(w.message) for w in caught), file=sys.stderr)
    """
)


@pytest.mark.parametrize("mode", ["auto", "true"])
def test_wandb_modes_without_credentials(tmp_path, mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HOME=str(tmp_path), WANDB_SILENT="true")
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()[-2:]
    if mode == "auto":  # no active run: nothing is logged and wandb is never imported
        assert lines == ["not-imported", "0"]
        assert not (tmp_path / "wandb").exists()
    else:  # a new run, offline, said once
        assert lines == ["imported", "1"]
        (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
        history, _, _ = read_run(run_dir)
        assert [row["trajhook/loss"] for row in history if "trajhook/loss" in row] == [1.0]


def test_events_scalars_and_the_image_rate_limit_in_a_plain_loop(tmp_path):
    import wandb

    run = wandb.init(dir=tmp_path, mode="offline", project="trajhook-test")
    model = nn.Linear(2, 15)
    sink = WandbSink(run, image_every_s=3600)  # at most one image an hour: the first record's, and the last at close
    with Recorder(tmp_path / "run.h5", [GridProbe(), TensorProbe("bias", torch.ones(1, 2))], 2, wandb=sink) as rec:
        for step in range(7):
            rec.maybe_record(model, step, loss=1.0 / (step + 1))
            if step == 3:
                rec.mark(step, "fine-tuning starts")
    run.finish()
    history, metrics, _ = read_run(run.dir.removesuffix("/files"))
    images = [row[STEP_KEY] for row in history if "trajhook/maze/vector_field/path" in row]
    assert images == [0, 6], (len(history), history[:3])  # the last record's field is never lost to the rate limit
    events = [(row[STEP_KEY], row["trajhook/event"]) for row in history if "trajhook/event" in row]
    assert events == [(3, "fine-tuning starts")] and metrics["trajhook/event"] == STEP_KEY
    losses = {row[STEP_KEY]: row["trajhook/loss"] for row in history if "trajhook/loss" in row}
    assert losses == {s: 1.0 / (s + 1) for s in range(7)}
    assert not any(k.startswith("trajhook/bias") for row in history for k in row)  # (1, 15) is not a scalar panel


class _WedgedRun:
    """A run whose log() never returns. Not the real wandb: a real run cannot be made to hang on demand."""

    def __init__(self):
        import threading

        self.release = threading.Event()

    def define_metric(self, *args, **kwargs):
        pass

    def log(self, items):
        self.release.wait()


def test_a_wedged_wandb_does_not_hang_close(tmp_path):
    run = _WedgedRun()
    sink = WandbSink(run, close_timeout_s=1)
    try:
        with (
            pytest.warns(UserWarning, match="W&B missed 3 of 3 records .*close_timeout_s=1 s and was left behind"),
            Recorder(tmp_path / "run.h5", [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=sink) as rec,
        ):
            for step in range(3):
                rec.maybe_record(nn.Linear(4, 1), step, loss=1.0)
        assert load(tmp_path / "run.h5").steps.tolist() == [0, 1, 2]
    finally:
        run.release.set()
