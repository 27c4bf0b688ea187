"""Replay equals live recording under real trainers: HF ``Trainer`` with ``save_steps`` beside the HF callback,
Lightning's ``ModelCheckpoint(every_n_train_steps=k, save_top_k=-1)`` beside the Lightning callback.

Each run records live every k steps AND saves a checkpoint every k steps; the replay of the checkpoints must
equal the live rows at those steps exactly (``np.array_equal``, CPU).
"""

import numpy as np
import pytest
import torch
from torch import nn

import trajhook
from trajhook import TensorProbe, TokenLossProbe, load

pl = pytest.importorskip("pytorch_lightning")

PROBE_X = torch.linspace(-1, 1, 12).reshape(3, 4)


def assert_equal_at(live_path, replay_path, steps):
    live, rep = load(live_path), load(replay_path)
    assert rep.steps.tolist() == steps
    rows = [live.steps.tolist().index(s) for s in steps]
    for probe in live:
        for key in live[probe]:
            assert np.array_equal(rep[probe][key], live[probe][key][rows]), (probe, key)
    values = next(iter(rep[next(iter(rep))].values()))
    assert not np.array_equal(values[0], values[-1])  # training moved the weights: equality is not trivial


# -- Hugging Face ---------------------------------------------------------------------------------------------


class Regressor(nn.Module):
    """HF's contract for a custom model (no config.json: replay needs model=)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x)
        return out if labels is None else {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def new_regressor():
    torch.manual_seed(0)
    return Regressor()


def hf_train(tmp_path, model, dataset, callback, steps=9, every=3):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        save_strategy="steps",
        save_steps=every,
        logging_steps=1,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[callback]).train()


@pytest.mark.timeout(180)
def test_hf_trainer_checkpoints_replay_bit_identical(tmp_path):
    pytest.importorskip("transformers")
    from trajhook.integrations.hf import TrajectoryCallback

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    data = [{"x": row, "labels": row.sum(0, keepdim=True)} for row in x]
    live = tmp_path / "live.h5"
    hf_train(tmp_path, new_regressor(), data, TrajectoryCallback(live, [TensorProbe("fixed", PROBE_X)], 3))
    out = tmp_path / "replay.h5"
    result = trajhook.replay(
        str(tmp_path / "out" / "checkpoint-*"), [TensorProbe("fixed", PROBE_X)], out, model=Regressor, wandb=False
    )
    assert result.recorded == [3, 6, 9]  # trainer_state.json's global_step
    assert_equal_at(live, out, [3, 6, 9])
    # HF's logged losses travel in trainer_state.json: logged at the step whose weights computed them, as live
    a, b = load(live).scalars["loss"], load(out).scalars["loss"]
    assert b.steps.tolist() == a.steps.tolist() == list(range(9))
    assert np.array_equal(a.values, b.values)
    # resumed after checkpoint-3: the same records and losses, none dropped or doubled
    resumed = tmp_path / "resumed.h5"
    probes = [TensorProbe("fixed", PROBE_X)]
    trajhook.replay(tmp_path / "out" / "checkpoint-3", probes, resumed, model=Regressor, wandb=False)
    assert load(resumed).scalars["loss"].steps.tolist() == [0, 1, 2]
    again = trajhook.replay(str(tmp_path / "out" / "checkpoint-*"), probes, resumed, model=Regressor, wandb=False)
    assert again.already == [3] and again.resumed_after == 3 and again.recorded == [6, 9]
    assert_equal_at(live, resumed, [3, 6, 9])
    c = load(resumed).scalars["loss"]
    assert c.steps.tolist() == list(range(9)) and np.array_equal(c.values, a.values)


@pytest.mark.timeout(240)
def test_hf_folder_with_config_builds_its_own_model(tmp_path):
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    from trajhook.integrations.hf import TrajectoryCallback

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=48, n_positions=32, n_embd=16, n_layer=1, n_head=2)
    ids = torch.randint(0, 48, (32, 16), generator=torch.Generator().manual_seed(1))
    data = [{"input_ids": row, "labels": row} for row in ids]
    probe_ids = torch.arange(24) % 48

    def probes():
        return [TokenLossProbe(probe_ids, context=12)]

    live = tmp_path / "live.h5"
    hf_train(tmp_path, GPT2LMHeadModel(config), data, TrajectoryCallback(live, probes(), 2), steps=4, every=2)
    assert (tmp_path / "out" / "checkpoint-2" / "config.json").is_file()
    out = tmp_path / "replay.h5"
    result = trajhook.replay(tmp_path / "out", probes(), out, wandb=False)  # no model=: from_pretrained(folder)
    assert result.recorded == [2, 4]
    assert_equal_at(live, out, [2, 4])


# -- Lightning ------------------------------------------------------------------------------------------------


class LightningRegressor(pl.LightningModule):
    def __init__(self, hidden=8):
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(4, hidden), nn.Dropout(0.2), nn.Linear(hidden, 1))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.timeout(180)
def test_lightning_model_checkpoint_every_n_train_steps_replays_bit_identical(tmp_path):
    from torch.utils.data import DataLoader, TensorDataset

    from trajhook.integrations.lightning import TrajectoryCallback

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    live = tmp_path / "live.h5"
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    cb = TrajectoryCallback(live, [TensorProbe("fixed", PROBE_X)], every_n_steps=3)
    trainer = pl.Trainer(
        max_steps=9,
        callbacks=[cb, ckpt],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    torch.manual_seed(0)
    trainer.fit(LightningRegressor(hidden=8), loader)
    assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == 3
    for i, model in enumerate([LightningRegressor, LightningRegressor(hidden=8)]):  # the class, or an instance
        out = tmp_path / f"replay{i}.h5"
        result = trajhook.replay(tmp_path / "ckpt", [TensorProbe("fixed", PROBE_X)], out, model=model, wandb=False)
        assert result.recorded == [3, 6, 9]  # the .ckpt's global_step
        assert_equal_at(live, out, [3, 6, 9])
    with pytest.raises(trajhook.TrajhookError, match=r"do not fit the model: other shapes"):
        trajhook.replay(tmp_path / "ckpt", [TensorProbe("f", PROBE_X)], tmp_path / "x.h5", model=LightningRegressor(4))
