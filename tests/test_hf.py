"""TrajectoryCallback in a real ``transformers.Trainer``: steps, values, loss, resume, phases, W&B."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("transformers")
from transformers import Trainer, TrainerCallback, TrainingArguments

from trajhook import TensorProbe, TrajhookError, load
from trajhook.integrations.hf import TrajectoryCallback

PROBE_X = torch.linspace(-1, 1, 12).reshape(3, 4)


class Regressor(nn.Module):
    """HF's contract for a custom model: a dict with ``loss`` when labels are given."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.2), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x)
        return out if labels is None else {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def dataset(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return [{"x": row, "labels": row.sum(0, keepdim=True)} for row in x]


class DirectForward(TrainerCallback):
    """The independent check: ``model(PROBE_X)`` by hand at train begin and after every optimizer step."""

    def __init__(self):
        self.outputs = {}

    def _take(self, state, model):
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        with torch.no_grad():
            self.outputs[state.global_step] = model(PROBE_X).numpy().copy()
        for m, training in modes:
            m.training = training

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._take(state, model)


def train(tmp_path, model, callbacks, max_steps, resume=None, data_seed=0, **kwargs):
    kwargs = {
        "per_device_train_batch_size": 4,
        "learning_rate": 0.05,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        **kwargs,
    }
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=max_steps, use_cpu=True, disable_tqdm=True, seed=0, **kwargs
    )
    trainer = Trainer(model=model, args=args, train_dataset=dataset(seed=data_seed), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def new_model():
    torch.manual_seed(0)
    return Regressor()


@pytest.mark.timeout(120)
def test_records_optimizer_steps_under_accumulation_with_direct_values_loss_and_identical_training(tmp_path):
    path = tmp_path / "run.h5"
    model, direct = new_model(), DirectForward()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=3)
    trainer = train(tmp_path, model, [cb, direct], max_steps=7, gradient_accumulation_steps=2)
    log = load(path)
    assert log.steps.tolist() == [0, 3, 6]  # once per due optimizer step, not per micro-batch
    expected = np.stack([direct.outputs[s] for s in (0, 3, 6)])
    np.testing.assert_allclose(log["fixed"]["output"], expected, rtol=1e-6)
    assert not np.allclose(expected[0], expected[-1])
    # HF's loss at global_step g was computed on the weights after g - 1 updates: logged at g - 1
    hf_loss = {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}
    assert log.scalars["loss"].steps.tolist() == [s - 1 for s in sorted(hf_loss)] == list(range(7))
    np.testing.assert_allclose(log.scalars["loss"].values, [hf_loss[s + 1] for s in range(7)], rtol=1e-6)

    # attaching the callback never changes training: bit-identical weights without it
    plain = new_model()
    train(tmp_path, plain, [], max_steps=7, gradient_accumulation_steps=2)
    for (name, a), b in zip(model.state_dict().items(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.timeout(120)
def test_resume_from_checkpoint_restores_state_and_leaves_no_ghost_rows(tmp_path):
    path = tmp_path / "run.h5"
    first = DirectForward()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=2)
    train(tmp_path, new_model(), [cb, first], max_steps=8, save_strategy="steps", save_steps=4)
    assert load(path).steps.tolist() == [0, 2, 4, 6, 8]
    saved = json.loads((tmp_path / "out/checkpoint-4/trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["TrajectoryCallback"]["attributes"]["recorder_state"]["recorded_steps"] == [
        0,
        2,
        4,
    ]

    # a new process would build a new callback for the same path; other data make the rerun differ
    second = DirectForward()
    cb2 = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=2)
    trainer = train(
        tmp_path,
        new_model(),
        [cb2, second],
        max_steps=8,
        resume=str(tmp_path / "out/checkpoint-4"),
        data_seed=1,
        restore_callback_states_from_checkpoint=True,
    )
    assert cb2 in trainer.callback_handler.callbacks  # HF's rebuild hands back the user's object
    log = load(path)
    assert log.steps.tolist() == [0, 2, 4, 6, 8]  # 4 again (the resumed start), then no ghost 6 and 8
    np.testing.assert_allclose(log["fixed"]["output"][:2], [first.outputs[0], first.outputs[2]], rtol=1e-6)
    rerun = [second.outputs[s] for s in (4, 6, 8)]
    np.testing.assert_allclose(log["fixed"]["output"][2:], rerun, rtol=1e-6)
    assert not np.allclose(first.outputs[8], second.outputs[8])
    assert log.scalars["loss"].steps.tolist() == list(range(8))  # the rerun's losses from step 4 on


@pytest.mark.timeout(120)
def test_two_trainers_share_one_axis_and_mark_between_them(tmp_path):
    path = tmp_path / "run.h5"
    model = new_model()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=2)
    train(tmp_path, model, [cb], max_steps=4)
    cb.mark("phase two")  # between trainers: the step the next one starts at
    cb.mark("given", step=5)  # any step, as in every framework: mark(label, step=None)

    class MarkAtThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                cb.mark("inside")  # during training: the current step, on the shared axis

    direct = DirectForward()
    train(tmp_path, model, [cb, direct, MarkAtThree()], max_steps=4, learning_rate=0.01)
    log = load(path)
    assert log.steps.tolist() == [0, 2, 4, 6, 8]
    assert [(e.step, e.label) for e in log.events] == [(4, "phase two"), (5, "given"), (7, "inside")]
    np.testing.assert_allclose(log["fixed"]["output"][-1], direct.outputs[4], rtol=1e-6)
    assert log.scalars["loss"].steps.tolist() == list(range(8))


@pytest.mark.timeout(60)
def test_bad_input_fails_before_the_first_update(tmp_path):
    with pytest.raises(TrajhookError, match="every_n_steps"):
        TrajectoryCallback(tmp_path / "run.h5", [TensorProbe("fixed", PROBE_X)], every_n_steps=0)
    with pytest.raises(TrajhookError, match="both are needed"):
        TrajectoryCallback(tmp_path / "run.h5")
    model = new_model()
    before = [p.detach().clone() for p in model.parameters()]
    cb = TrajectoryCallback(tmp_path / "run.h5", [TensorProbe("wrong", torch.ones(3, 5))], every_n_steps=2)
    with pytest.raises(TrajhookError, match="TensorProbe 'wrong' failed on its first run"):
        train(tmp_path, model, [cb], max_steps=4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.timeout(180)
def test_logs_into_hf_wandb_run_without_touching_its_step(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb
    from wandb_offline import read_run, records

    from trajhook.sinks.wandb import STEP_KEY

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_PROJECT", "trajhook-test")
    cb = TrajectoryCallback(tmp_path / "run.h5", [TensorProbe("fixed", PROBE_X)], every_n_steps=2)

    class MarkAtThree(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                cb.mark("three")

    try:
        train(tmp_path, new_model(), [cb, MarkAtThree()], max_steps=6, report_to="wandb")
        run_dir = wandb.run.dir.removesuffix("/files")
    finally:
        wandb.finish()
    deadline = time.monotonic() + 30  # wandb's service process may still be writing the offline file
    while not any(r.WhichOneof("record_type") == "exit" for r in records(next(Path(run_dir).glob("*.wandb")))):
        assert time.monotonic() < deadline, "the offline W&B run was never completed"
        time.sleep(0.2)
    history, metrics, _ = read_run(run_dir)
    hf_rows = [row for row in history if "train/loss" in row]
    assert [row["train/global_step"] for row in hf_rows] == list(range(1, 7))  # HF's own step, untouched
    ours = {row[STEP_KEY]: row for row in history if "trajhook/loss" in row}
    assert sorted(ours) == list(range(6))
    for row in hf_rows:  # the same loss, one step earlier: at the weights that computed it
        np.testing.assert_allclose(ours[row["train/global_step"] - 1]["trajhook/loss"], row["train/loss"], rtol=1e-6)
    assert metrics["trajhook/loss"] == STEP_KEY
    events = [row for row in history if "trajhook/event" in row]
    assert [(row[STEP_KEY], row["trajhook/event"]) for row in events] == [(3, "three")]
    assert load(tmp_path / "run.h5").steps.tolist() == [0, 2, 4, 6]
