"""TrajectoryCallback in a real Lightning Trainer."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trajhook import TensorProbe, TrajhookError, load
from trajhook.integrations.lightning import TrajectoryCallback

PROBE_X = torch.linspace(-1, 1, 12).reshape(3, 4)


class Regressor(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.losses = {}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.losses.setdefault(self.trainer.global_step, []).append(loss.item())
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)


def trainer(tmp_path, callbacks, max_steps, **kwargs):
    return pl.Trainer(
        max_steps=max_steps,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        **kwargs,
    )


class DirectForward(pl.Callback):
    """The probe's output computed here, by hand, on the weights of each optimizer step (eval mode)."""

    def __init__(self):
        self.outputs = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step not in self.outputs:  # the first micro-batch after the update to ``step``
            pl_module.eval()
            with torch.no_grad():
                self.outputs[step] = pl_module(PROBE_X).numpy()
            pl_module.train()


def test_records_once_per_due_optimizer_step_under_accumulation(tmp_path):
    path = tmp_path / "run.h5"
    model = Regressor()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=5)
    direct = DirectForward()
    trainer(tmp_path, [cb, direct], max_steps=12, accumulate_grad_batches=2, num_sanity_val_steps=2).fit(
        model, data(), data(8)
    )
    log = load(path)
    assert log.steps.tolist() == [0, 5, 10]
    loss = log.scalars["loss"]
    assert loss.steps.tolist() == list(range(12))  # once per optimizer step, not per micro-batch
    # the loss at step s is that of the last micro-batch run on the weights of step s, (accumulation-normalized)
    for s, v in zip(loss.steps, loss.values, strict=True):
        np.testing.assert_allclose(v, model.losses[s][-1] / 2, rtol=1e-6)
    # each record holds the weights after exactly s updates, not those of a later micro-batch or step
    for i, s in enumerate([5, 10]):
        np.testing.assert_allclose(log["fixed"]["output"][i + 1], direct.outputs[s], rtol=1e-6)
    assert not np.allclose(direct.outputs[10], direct.outputs[11], rtol=1e-6)  # so a later step would differ


def test_mark_at_the_current_step_or_a_given_one(tmp_path):
    path = tmp_path / "run.h5"
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=4)
    cb.mark("before fit")  # no training runs yet: step 0, written when fit starts

    class Marker(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 7:
                cb.mark("LR drop")  # the current step
            if trainer.global_step == 8:
                cb.mark("given", step=9)

    trainer(tmp_path, [cb, Marker()], max_steps=10).fit(Regressor(), data())
    log = load(path)
    assert [(e.step, e.label) for e in log.events] == [(0, "before fit"), (7, "LR drop"), (9, "given")]
    with pytest.raises(TrajhookError, match=r"TrajectoryCallback.mark: label '' is not a non-empty string"):
        cb.mark("")


def test_last_record_equals_the_trained_model_and_sanity_check_is_skipped(tmp_path):
    path = tmp_path / "run.h5"
    model = Regressor()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=4)
    trainer(tmp_path, [cb], max_steps=8, num_sanity_val_steps=2, val_check_interval=4).fit(model, data(), data(8))
    model.eval()
    with torch.no_grad():
        final = model(PROBE_X).numpy()
    log = load(path)
    assert log.steps.tolist() == [0, 4, 8]
    np.testing.assert_array_equal(log["fixed"]["output"][-1], final)


def test_resume_from_a_lightning_checkpoint_leaves_no_ghost_rows(tmp_path):
    path = tmp_path / "run.h5"
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=3)
    t = trainer(tmp_path, [cb, ckpt_cb], max_steps=12)
    t.fit(Regressor(), data())
    assert load(path).steps.tolist() == [0, 3, 6, 9, 12]
    ckpt = sorted((tmp_path / "ckpt").glob("*step=6*.ckpt"))[0]
    assert cb.state_key in torch.load(ckpt, weights_only=False)["callbacks"]

    # The resumed run records the weights it starts from, at step 6, which drops the first run's
    # rows from step 6 on: the records at 6, 9 and 12, and the losses of steps 6 to 11.
    resumed_model = Regressor()
    cb2 = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=3)
    with pytest.warns(UserWarning, match=r"dropped 3 record\(s\) at step >= 6"):
        trainer(tmp_path, [cb2], max_steps=9).fit(resumed_model, data(), ckpt_path=ckpt)
    log = load(path)
    assert log.steps.tolist() == [0, 3, 6, 9]
    assert log.scalars["loss"].steps.tolist() == list(range(9))
    assert cb2.state_dict()["recorded_steps"] == [0, 3, 6, 9]  # step 6 once, though recorded twice
    resumed_model.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(log["fixed"]["output"][-1], resumed_model(PROBE_X).numpy())


def test_probes_run_under_the_trainer_precision_context(tmp_path):
    path = tmp_path / "run.h5"
    seen = []

    def fn(model, x):
        out = model(x)
        seen.append(out.dtype)
        return out

    model = Regressor()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X, fn=fn)], every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=2, precision="bf16-mixed").fit(model, data())
    assert set(seen) == {torch.bfloat16}
    model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        final = model(PROBE_X).float().numpy()
    np.testing.assert_array_equal(load(path)["fixed"]["output"][-1], final)


def test_bad_probe_fails_before_the_first_training_step(tmp_path):
    model = Regressor()
    cb = TrajectoryCallback(tmp_path / "run.h5", [TensorProbe("bad", torch.ones(2, 5))], every_n_steps=2)
    with pytest.raises(TrajhookError, match="TensorProbe 'bad' failed on its first run at setup"):
        trainer(tmp_path, [cb], max_steps=2).fit(model, data())
    assert model.losses == {}


class PlacingStrategy(pl.strategies.SingleDeviceStrategy):
    """Lightning's one-device strategy on the CPU, noting when it placed the model (as a GPU one moves it there)."""

    def __init__(self, events):
        super().__init__(device=torch.device("cpu"))
        self.events = events

    def model_to_device(self):
        super().model_to_device()
        self.events.append("model placed")


def test_probes_are_set_up_after_the_strategy_placed_the_model_and_before_the_first_step(tmp_path):
    events = []

    class Noting(TensorProbe):
        def setup(self, model, device):
            events.append(f"probe set up on {device}")
            super().setup(model, device)

        def run(self, model):
            events.append("probe run")
            return super().run(model)

    class Steps(Regressor):
        def training_step(self, batch, batch_idx):
            events.append("training step")
            return super().training_step(batch, batch_idx)

    cb = TrajectoryCallback(tmp_path / "run.h5", [Noting("fixed", PROBE_X)], every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=4, strategy=PlacingStrategy(events)).fit(Steps(), data())
    assert events[:2] == ["model placed", "probe set up on cpu"]  # before: set up, run twice, then placed
    assert events.count("model placed") == events.count("probe set up on cpu") == 1
    first_step = events.index("training step")
    assert events[1:first_step] == ["probe set up on cpu"] + ["probe run"] * 3  # setup's, its first run, step 0
    assert load(tmp_path / "run.h5").steps.tolist() == [0, 2, 4]


def test_constructor_checks_arguments(tmp_path):
    with pytest.raises(TrajhookError, match="every_n_steps=0"):
        TrajectoryCallback(tmp_path / "run.h5", [TensorProbe("p", PROBE_X)], every_n_steps=0)


def test_under_ddp_only_global_rank_zero_writes(tmp_path):
    path = tmp_path / "run.h5"
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=2)
    trainer(tmp_path, [cb], max_steps=4, devices=2, strategy="ddp_spawn", use_distributed_sampler=True).fit(
        Regressor(), data()
    )
    log = load(path)  # one writer: two would have collided on the file or doubled the rows
    assert log.steps.tolist() == [0, 2, 4]
    assert log.scalars["loss"].steps.tolist() == [0, 1, 2, 3]


def test_a_second_fit_continues_the_same_store(tmp_path):
    path = tmp_path / "run.h5"
    model = Regressor()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=3)
    trainer(tmp_path, [cb], max_steps=6).fit(model, data())
    trainer(tmp_path, [cb], max_steps=6).fit(model, data())  # a new Trainer: global_step starts at 0 again
    log = load(path)
    assert log.steps.tolist() == [0, 3, 6]  # the second fit replaced the first's rows from step 0 on
    model.eval()
    with torch.no_grad():
        np.testing.assert_array_equal(log["fixed"]["output"][-1], model(PROBE_X).numpy())


def test_overwrite_applies_to_the_first_fit_of_a_callback_only(tmp_path):
    path = tmp_path / "run.h5"
    ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=6, save_top_k=-1)
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=3, overwrite=True)
    trainer(tmp_path, [cb, ckpt_cb], max_steps=12).fit(Regressor(), data())
    ckpt = sorted((tmp_path / "ckpt").glob("*step=6*.ckpt"))[0]
    with pytest.warns(UserWarning, match=r"dropped 3 record\(s\) at step >= 6"):
        trainer(tmp_path, [cb], max_steps=9).fit(Regressor(), data(), ckpt_path=ckpt)
    assert load(path).steps.tolist() == [0, 3, 6, 9]  # the resumed fit kept the first fit's rows before 6
