"""The TensorBoard sink, read back with TensorBoard's own reader (EventAccumulator)."""

from __future__ import annotations

import io
import re
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from fake_maze import GridProbe, policy
from torch import nn

from trajhook import PromptProbe, Recorder, TrajhookError, load
from trajhook.sinks.tensorboard import TensorBoardSink

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

VOCAB = 32


def tokenize(text):
    return [ord(c) % VOCAB for c in text]


class Both(nn.Module):
    """A maze policy and a bigram language model, trained together."""

    def __init__(self):
        super().__init__()
        self.policy = policy()
        self.lm = nn.Sequential(nn.Embedding(VOCAB, 16), nn.Linear(16, VOCAB))


def probes():
    grid = GridProbe(policy_fn=lambda model, x: model.policy(x))
    prompts = PromptProbe(
        {"abc": "abcab", "punct": "a,b,"},
        tokenize,
        targets={"abc": ["c", "zz"], "punct": [",", ";"]},  # "," and ";" have no readable key part
        logits_fn=lambda model, ids, mask: model.lm(ids),
    )
    return [grid, prompts]


def train(path, steps=12, **recorder_kwargs):
    torch.manual_seed(0)
    model = Both()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    tokens = torch.tensor([tokenize("abcabcab")] * 8)
    with Recorder(path, probes(), every_n_steps=3, wandb=False, **recorder_kwargs) as rec:
        rec.setup(model)
        for step in range(steps):
            logits = model.lm(tokens[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
            loss = loss + nn.functional.cross_entropy(model.policy(torch.rand(8, 2)), torch.full((8,), 7))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 5:
                rec.mark(step, "fine-tuning starts")
            rec.maybe_record(model, step, loss=loss.detach())


def read(logdir):
    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.timeout(120)
def test_images_scalars_and_events_read_back_equal_the_store(tmp_path):
    train(tmp_path / "run.h5", tensorboard=TensorBoardSink(tmp_path / "tb", image_every_s=0))
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 3, 6, 9]
    acc = read(tmp_path / "tb")
    tags = acc.Tags()

    # the vector field: one image per record on TensorBoard's step slider, each a real picture
    images = acc.Images("trajhook/maze/vector_field")
    assert [im.step for im in images] == log.steps.tolist()
    pixels = [iio.imread(io.BytesIO(im.encoded_image_string)) for im in images]
    assert all(p.ndim == 3 and min(p.shape[:2]) > 300 and p.std() > 10 for p in pixels)
    assert not np.array_equal(pixels[0], pixels[-1])  # the field changed while training

    # target curves: one scalar per key, unique and readable for any text, equal to the HDF5 record
    lp, first = log["prompts"]["target_logprob"], log["prompts"]["target_first_logit"]
    expected = {
        "trajhook/prompts/abc/target0_c": lp[:, 0, 0],
        "trajhook/prompts/abc/target1_zz": lp[:, 0, 1],
        "trajhook/prompts/punct/target0": lp[:, 1, 0],
        "trajhook/prompts/punct/target1": lp[:, 1, 1],
        "trajhook/prompts/punct/target1/first_logit": first[:, 1, 1],
    }
    for tag, values in expected.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == log.steps.tolist(), tag
        np.testing.assert_allclose([e.value for e in events], values, rtol=1e-6, err_msg=tag)
    # the training loss as passed, at every step
    loss = acc.Scalars("trajhook/loss")
    assert [e.step for e in loss] == log.scalars["loss"].steps.tolist()
    np.testing.assert_allclose([e.value for e in loss], log.scalars["loss"].values, rtol=1e-6)

    # events as text at their step; the targets' full texts in the config text
    (event,) = acc.Tensors("trajhook/event/text_summary")
    assert event.step == 5 and event.tensor_proto.string_val[0].decode() == "fine-tuning starts"
    (config,) = acc.Tensors("trajhook/config/text_summary")
    text = config.tensor_proto.string_val[0].decode()
    assert "`trajhook/prompts/punct/target0 text` | ','" in text and "| ';' |" in text
    assert "trajhook/prompts/pca_trajectory" in tags["images"]  # drawn at close over every record


def test_bad_tensorboard_arguments_fail_at_construction(tmp_path):
    model_probe = [GridProbe()]
    with pytest.raises(TrajhookError, match=r"tensorboard=42 is not a TensorBoard setting\. HINT"):
        Recorder(tmp_path / "a.h5", model_probe, tensorboard=42)
    with pytest.raises(TrajhookError, match=r"exactly one of logdir= and writer="):
        TensorBoardSink()
    with pytest.raises(TrajhookError, match=r"close_timeout_s=-1 is not a non-negative number"):
        TensorBoardSink(tmp_path, close_timeout_s=-1)


@pytest.mark.timeout(180)
def test_the_lightning_callback_uses_the_trainers_tensorboard_logger(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from pytorch_lightning.loggers import TensorBoardLogger

    from trajhook.integrations.lightning import TrajectoryCallback

    class GoRight(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.policy = policy()

        def training_step(self, batch, batch_idx):
            (x,) = batch
            loss = nn.functional.cross_entropy(self.policy(x), torch.full((len(x),), 7))
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    logger = TensorBoardLogger(tmp_path / "lightning_logs")
    callback = TrajectoryCallback(
        tmp_path / "run.h5", [GridProbe(policy_fn=lambda m, x: m.policy(x))], every_n_steps=4, wandb=False
    )
    trainer = pl.Trainer(
        max_steps=8,
        logger=logger,
        callbacks=[callback],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(32, 2)), batch_size=4)
    trainer.fit(GoRight(), loader)
    log = load(tmp_path / "run.h5")
    acc = read(logger.log_dir)  # trajhook's panels in Lightning's own event files, beside train_loss
    assert log.steps.tolist() == [0, 4, 8]
    # the default image rate (one per 5 s) keeps step 0's field; the last record's is written at close
    assert [im.step for im in acc.Images("trajhook/maze/vector_field")] == [0, 8]
    loss = acc.Scalars("trajhook/loss")
    np.testing.assert_allclose([e.value for e in loss], log.scalars["loss"].values, rtol=1e-6)
    assert "train_loss" in acc.Tags()["scalars"]


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_a_real_maze_probe_gets_its_vector_field_panel_by_its_kind(tmp_path):
    """The real MazeProbe (GridProbe stands in above): panels_for reads its kind, TensorBoard gets its field."""
    from trajhook import MazeProbe
    from trajhook.sinks.panels import MazePanels, panels_for

    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 64, 15))
    probe = MazeProbe(seed=1, distribution_mode="easy")
    assert probe.kind == "maze" and type(panels_for(probe)) is MazePanels
    sink = TensorBoardSink(tmp_path / "tb", image_every_s=0)
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=1, wandb=False, tensorboard=sink) as rec:
        for step in range(3):
            rec.record(cnn, step * 10)
            nn.init.normal_(cnn[-1].weight)  # a visibly different field at each step
    log = load(tmp_path / "run.h5")
    assert log[probe.name].kind == "maze"
    images = read(tmp_path / "tb").Images(f"trajhook/{probe.name}/vector_field")
    assert [im.step for im in images] == log.steps.tolist() == [0, 10, 20]
    pixels = [iio.imread(io.BytesIO(im.encoded_image_string)) for im in images]
    assert all(p.ndim == 3 and min(p.shape[:2]) > 200 and p.std() > 10 for p in pixels)
    assert not np.array_equal(pixels[0], pixels[1])


class SlowWriter:
    """A real ``SummaryWriter`` that takes 2 ms a scalar, as a slow or busy disk would: the sink's queue fills."""

    def __new__(cls, logdir):
        from torch.utils.tensorboard import SummaryWriter

        class Slow(SummaryWriter):
            def add_scalar(self, *args, **kwargs):
                time.sleep(0.002)
                super().add_scalar(*args, **kwargs)

        return Slow(str(logdir))


@pytest.mark.timeout(300)
def test_what_the_sink_drops_is_counted_and_said_once_at_close(tmp_path):
    """A full queue drops records, scalars and events; the one warning's counts are what TensorBoard never got."""
    writer = SlowWriter(tmp_path / "tb")
    sink = TensorBoardSink(writer=writer, max_queue=2, image_every_s=3600)
    torch.manual_seed(0)
    model = Both()
    steps = 300
    recorder = Recorder(tmp_path / "run.h5", probes(), every_n_steps=1, wandb=False, tensorboard=sink)
    with pytest.warns(UserWarning) as caught, recorder as rec:
        for step in range(steps):
            if step % 50 == 0:
                rec.mark(step, f"mark {step}")
            rec.maybe_record(model, step, loss=1.0 / (step + 1))
    writer.close()
    messages = [str(w.message) for w in caught if "TensorBoard missed" in str(w.message)]
    assert len(messages) == 1, [str(w.message) for w in caught]
    acc = read(tmp_path / "tb")
    got = {
        "records": len(acc.Scalars("trajhook/prompts/abc/target0_c")),  # one point per record it received
        "scalar logs": len(acc.Scalars("trajhook/loss")),
        "events": len(acc.Tensors("trajhook/event/text_summary")),
    }
    sent = {"records": steps, "scalar logs": steps, "events": steps // 50}
    said = {kind: 0 for kind in sent}
    for missed, of, kind in re.findall(r"(\d+) of (\d+) (records|scalar logs|events)", messages[0]):
        assert int(of) == sent[kind], messages[0]
        said[kind] = int(missed)
    assert said == {kind: sent[kind] - got[kind] for kind in sent}, (messages[0], got)
    assert said["records"] > 0 and said["scalar logs"] > 0  # the slow writer did make the queue drop
    assert "(its queue was full)" in messages[0] and "the HDF5 store has every record, scalar and event" in messages[0]
    log = load(tmp_path / "run.h5")
    assert len(log.steps) == steps and len(log.scalars["loss"].steps) == steps and len(log.events) == steps // 50
