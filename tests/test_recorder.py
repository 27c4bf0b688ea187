"""The Recorder against direct computation: values, modes, RNG, bit-identical training."""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import trajhook
from trajhook import Probe, Recorder, TensorProbe, TrajhookError, load


class Net(nn.Module):
    """Dropout and BatchNorm: both would change training if a probe ran them in train mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


class NoisyProbe(Probe):
    """Draws from every RNG while it runs: the Recorder must hide that from training."""

    def setup(self, model, device):
        self.x = torch.linspace(-1, 1, 8, device=device).reshape(2, 4)
        self.add_output("out", (2, 3))

    def run(self, model):
        torch.rand(5), np.random.rand(5), random.random()
        assert not model.training and not torch.is_grad_enabled()
        return {"out": model(self.x)}


def train(steps, recorder=None, seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x = torch.randn(16, 4) + float(np.random.rand()) + random.random()
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if recorder is not None:
            recorder.maybe_record(model, step, loss=loss.detach())
    return model


def test_training_is_bit_identical_with_and_without_the_recorder(store_path):
    plain = train(30)
    with Recorder(store_path, [NoisyProbe("noisy")], every_n_steps=3, wandb=False) as rec:
        probed = train(30, rec)
    assert rec.recorded_steps == list(range(0, 30, 3))
    for (name, a), (_, b) in zip(plain.state_dict().items(), probed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name  # weights and BatchNorm running stats, bit for bit


def test_recorded_outputs_equal_a_direct_forward(store_path):
    torch.manual_seed(0)
    model = Net()
    x = torch.randn(5, 4)
    expected = {}
    with Recorder(store_path, [TensorProbe("fixed", x)], every_n_steps=2, wandb=False) as rec:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for step in range(7):
            if rec.maybe_record(model, step):
                model.eval()
                with torch.no_grad():
                    expected[step] = model(x).numpy().copy()
                model.train()
            loss = model(torch.randn(8, 4)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    log = load(store_path)
    assert log.steps.tolist() == [0, 2, 4, 6]
    recorded = log["fixed"]["output"]
    for i, step in enumerate(log.steps):
        np.testing.assert_array_equal(recorded[i], expected[int(step)])
    assert not np.array_equal(recorded[0], recorded[-1])  # the model did change
    assert np.all(np.diff(log.wall_time) >= 0)


def test_module_modes_are_restored_exactly_not_set_to_train(store_path):
    model = Net().train()
    model.body[1].eval()  # a frozen BatchNorm inside a training model
    with Recorder(store_path, [NoisyProbe("noisy")], every_n_steps=1, wandb=False) as rec:
        rec.record(model, 0)
    assert [m.training for m in model.modules()] == [True, True, True, False, True, True, True]


def test_scalars_and_events_round_trip(store_path):
    with Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=5, wandb=False) as rec:
        for step in range(12):
            rec.maybe_record(nn.Linear(4, 1), step, loss=1.0 / (step + 1), lr=torch.tensor(0.1 * step))
            if step in (6, 10):
                rec.mark(step, "LR drop" if step == 6 else "fine-tuning starts")
    log = load(store_path)
    assert log.scalars["loss"].steps.tolist() == list(range(12))
    np.testing.assert_allclose(log.scalars["loss"].values, 1.0 / (np.arange(12) + 1))
    np.testing.assert_allclose(log.scalars["lr"].values, 0.1 * np.arange(12), rtol=1e-6)
    assert [(e.step, e.label) for e in log.events] == [(6, "LR drop"), (10, "fine-tuning starts")]


def test_user_metadata_and_probe_metadata_are_stored(store_path):
    class Meta(TensorProbe):
        def setup(self, model, device):
            super().setup(model, device)
            self.metadata.update(grid=np.arange(6).reshape(2, 3), seed=3, labels=["a", "b"])

    with Recorder(store_path, [Meta("m", torch.ones(1, 4))], 1, metadata={"lr": 0.1}, wandb=False) as rec:
        rec.record(nn.Linear(4, 2), 0)
    log = load(store_path)
    assert log.metadata == {"lr": 0.1}
    assert log.attrs["trajhook_version"] == trajhook.__version__
    np.testing.assert_array_equal(log["m"].metadata["grid"], np.arange(6).reshape(2, 3))
    assert log["m"].metadata["seed"] == 3 and log["m"].metadata["labels"] == ["a", "b"]


def test_nan_outputs_are_stored_as_they_are_with_one_warning(store_path):
    model = nn.Linear(2, 2)
    with (
        pytest.warns(UserWarning, match=r"'lin' produced NaN or inf in \['output'\] at step 2") as caught,
        Recorder(store_path, [TensorProbe("lin", torch.ones(1, 2))], every_n_steps=1, wandb=False) as rec,
    ):
        for step in range(4):
            if step == 2:
                model.weight.data.fill_(float("nan"))  # the run diverges
            rec.record(model, step)
    assert sum("produced NaN" in str(w.message) for w in caught) == 1
    output = load(store_path)["lin"]["output"]
    assert np.isfinite(output[:2]).all() and np.isnan(output[2:]).all()


def test_nan_that_a_probe_declares_as_missing_is_not_warned_about(store_path, recwarn):
    def pad(model, x):
        return torch.cat([model(x), x * float("nan")], 1)  # NaN marks padding, by design

    padded = TensorProbe("padded", torch.ones(1, 2), fn=pad, nan_marks_missing=True)
    with Recorder(store_path, [padded], every_n_steps=1, wandb=False) as rec:
        for step in range(3):
            rec.record(nn.Linear(2, 2), step)
    assert not [w for w in recwarn if "produced NaN" in str(w.message)]
    assert np.isnan(load(store_path)["padded"]["output"][:, 0, 2:]).all()


def test_nan_at_setup_is_warned_about_once_and_stored(store_path):
    model = nn.Linear(2, 2)
    model.weight.data[0, 0] = float("nan")  # e.g. a checkpoint that diverged before this run
    probe = TensorProbe("lin", torch.ones(1, 2))
    with (
        pytest.warns(UserWarning, match=r"'lin' produced NaN or inf in \['output'\] at setup, before training") as w,
        Recorder(store_path, [probe], every_n_steps=1, wandb=False) as rec,
    ):
        rec.setup(model)
        for step in range(3):
            rec.record(model, step)
    assert sum("produced NaN" in str(m.message) for m in w) == 1
    output = load(store_path)["lin"]["output"]
    assert np.isnan(output[:, 0, 0]).all() and np.isfinite(output[:, 0, 1]).all()


def test_a_probe_that_breaks_its_declared_shape_later_raises(store_path):
    class Shrinking(TensorProbe):
        def run(self, model):
            out = super().run(model)
            return out if not getattr(self, "ran", False) else {"output": out["output"][:, :1]}

    probe = Shrinking("s", torch.ones(1, 4))
    with Recorder(store_path, [probe], every_n_steps=1, wandb=False) as rec:
        rec.record(nn.Linear(4, 2), 0)
        probe.ran = True
        with pytest.raises(TrajhookError, match=r"output 'output' is \(1, 1\) at step 1, declared output\(1, 2\)"):
            rec.record(nn.Linear(4, 2), 1)
    assert load(store_path).steps.tolist() == [0]  # what was recorded is kept


def test_import_trajhook_imports_no_framework():
    code = (
        "import sys, trajhook, trajhook.store, trajhook.recording.recorder;"
        "bad = [m for m in ('pytorch_lightning', 'lightning', 'wandb', 'procgen', 'transformers',"
        " 'stable_baselines3', 'matplotlib') if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_closed_recorder_refuses_to_record_instead_of_dropping_data(store_path):
    rec = Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=False)
    rec.record(nn.Linear(4, 1), 0)
    rec.close()
    rec.close()  # twice is fine
    with pytest.raises(TrajhookError, match=r"Recorder.record after close\(\).*HINT: create a new Recorder"):
        rec.maybe_record(nn.Linear(4, 1), 1)
    assert load(store_path).steps.tolist() == [0]


def test_flush_after_close_raises_instead_of_hanging(store_path):
    rec = Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=False)
    rec.record(nn.Linear(4, 1), 0)
    rec.close()
    with pytest.raises(TrajhookError, match=r"Recorder.flush after close\(\)"):
        rec.flush()


def test_scalars_logged_with_no_record_ever_are_warned_about(store_path):
    rec = Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=100, wandb=False)
    for step in range(1, 50):  # a loop that stops before its first due step, never calling setup
        rec.log_scalars(step, loss=1.0)
    with pytest.warns(UserWarning, match=r"49 scalar/event call\(s\) were not written.*HINT: call rec.setup"):
        rec.close()


def test_a_tensor_updated_in_place_is_logged_with_its_value_at_the_call(store_path):
    running = torch.zeros(())
    with Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=100, wandb=False) as rec:
        rec.setup(nn.Linear(4, 1))
        for step in range(5):
            running += 1
            rec.log_scalars(step, running=running)
    assert load(store_path).scalars["running"].values.tolist() == [1, 2, 3, 4, 5]


def test_an_empty_existing_file_is_a_new_store(store_path):
    store_path.touch()  # e.g. from tempfile.mkstemp
    with Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=False) as rec:
        rec.record(nn.Linear(4, 1), 0)
    assert load(store_path).steps.tolist() == [0]


def test_a_bad_output_name_names_the_probe():
    class Bad(Probe):
        def setup(self, model, device):
            self.add_output("a/b", (1,))

    with pytest.raises(TrajhookError, match=r"Bad 'bad': output name 'a/b' is not valid"):
        Bad("bad").setup(nn.Linear(1, 1), torch.device("cpu"))


def test_a_new_session_may_restart_lower_and_drops_exactly_the_later_rows(store_path):
    model = nn.Linear(4, 2)
    x = torch.linspace(-1, 1, 8).reshape(2, 4)

    def run(steps):
        outputs = {}
        with Recorder(store_path, [TensorProbe("p", x)], every_n_steps=10, wandb=False) as rec:
            for step in steps:
                with torch.no_grad():
                    model.weight.fill_(step / 100)
                    outputs[step] = model(x).numpy().copy()
                rec.maybe_record(model, step, loss=float(step))
        return outputs

    first = run(range(0, 101))  # records 0, 10, ..., 100
    with pytest.warns(UserWarning, match=r"resuming .* at step 50: dropped 6 record\(s\) at step >= 50"):
        second = run(range(50, 71))  # a resume from the checkpoint of step 50
    log = load(store_path)
    assert log.steps.tolist() == [0, 10, 20, 30, 40, 50, 60, 70]
    for i, step in enumerate(log.steps.tolist()):
        np.testing.assert_array_equal(log["p"]["output"][i], (first if step < 50 else second)[step])
    assert log.scalars["loss"].steps.tolist() == list(range(71))
    np.testing.assert_array_equal(log.scalars["loss"].values, np.arange(71.0))


def test_a_step_going_backwards_is_refused_and_a_later_resume_counts_right(store_path):
    model = nn.Linear(4, 2)
    with Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=False) as rec:
        rec.record(model, 100)
        rec.log_scalars(100, loss=1.0)
        with pytest.raises(TrajhookError, match=r"step 50 is below step 100, .* to its records"):
            rec.record(model, 50)
        with pytest.raises(TrajhookError, match=r"step 50 is below step 100, .* to its scalars"):
            rec.log_scalars(50, loss=1.0)
        rec.record(model, 101)
        rec.log_scalars(100, loss=2.0)  # each table has its own order: HF logs step 100's loss after record 101
    assert load(store_path).steps.tolist() == [100, 101]
    with (
        pytest.warns(UserWarning, match=r"dropped 1 record\(s\) at step >= 101"),
        Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=False) as rec,
    ):
        rec.record(model, 101)
    assert load(store_path).steps.tolist() == [100, 101]


def test_numpy_and_tensor_steps_are_stored_as_ints(store_path):
    with Recorder(store_path, [TensorProbe("p", torch.ones(1, 4))], every_n_steps=1, wandb=False) as rec:
        rec.record(nn.Linear(4, 1), np.int64(3))
        assert rec.maybe_record(nn.Linear(4, 1), torch.tensor(4), loss=np.float32(0.5))
        rec.mark(np.uint8(5), "five")
    log = load(store_path)
    assert log.steps.tolist() == [3, 4] and rec.recorded_steps == [3, 4]
    assert log.scalars["loss"].steps.tolist() == [4] and log.events[0].step == 5


def test_a_same_kind_dtype_is_stored_converted_to_the_declared_one(store_path):
    class Half(Probe):
        def setup(self, model, device):
            self.add_output("out", (1, 2), "float32")

        def run(self, model):
            return {"out": model(torch.ones(1, 4)).half()}  # e.g. a float16 autocast region

    model = nn.Linear(4, 2)
    with Recorder(store_path, [Half("half")], every_n_steps=1, wandb=False) as rec:
        rec.record(model, 0)
    stored = load(store_path)["half"]["out"]
    assert stored.dtype == np.float32
    with torch.no_grad():
        np.testing.assert_array_equal(stored[0], model(torch.ones(1, 4)).half().float().numpy())
