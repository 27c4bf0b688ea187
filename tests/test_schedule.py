"""Cadence: int, log-spaced, list and callable schedules, in the Recorder, in Lightning, and across a resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import trajhook
from trajhook import Recorder, TensorProbe, TrajhookError, load
from trajhook.schedule import as_schedule, log_spaced


def probe() -> TensorProbe:
    return TensorProbe("p", torch.ones(1, 4))


def recorded(every, calls, state=None, path=None) -> list[int]:
    """Steps a Recorder records when maybe_record is called at ``calls``; checks the store agrees."""
    model = nn.Linear(4, 1)
    with Recorder(path, [probe()], every_n_steps=every, wandb=False, overwrite=state is None) as rec:
        if state is not None:
            rec.load_state_dict(state)
        rec.setup(model)
        due = [int(step) for step in calls if rec.maybe_record(model, step)]
        assert rec.recorded_steps[-len(due) :] == due if due else True
        final_state = rec.state_dict()
    recorded.state = final_state
    return due


def test_int_cadence_records_the_first_call_then_each_multiple_crossed(store_path):
    # "due at the first call, then when step // N > last // N": the grid of multiples of N, whatever the first step
    assert recorded(5, range(1, 31), path=store_path) == [1, 5, 10, 15, 20, 25, 30]  # a loop counting from 1
    assert recorded(5, range(3, 20), path=store_path) == [3, 5, 10, 15]
    # a loop whose step jumps by 3 (frames, say) records once per multiple of 4 crossed, at the first call past it
    assert recorded(np.int64(4), range(0, 30, 3), path=store_path) == [0, 6, 9, 12, 18, 21, 24]  # numpy ints
    assert load(store_path).steps.tolist() == [0, 6, 9, 12, 18, 21, 24]
    # a jump over several multiples records once, and the grid stays: 100 crosses 10..100, then 110 and 120
    assert recorded(10, [0, 5, 100, 105, 110, 125], path=store_path) == [0, 100, 110, 125]
    assert recorded(np.int32(1), [0, 0, 1, 1, 2], path=store_path) == [0, 1, 2]  # never twice at one step


def test_two_runs_with_the_same_n_record_the_same_grid(store_path):
    # SB3 with 3 envs counts 0, 3, 6, ...; with 4 envs 0, 4, 8, ...: each records once per 12 crossed
    three = recorded(12, range(0, 61, 3), path=store_path)
    four = recorded(12, range(0, 61, 4), path=store_path)
    assert three == [0, 12, 24, 36, 48, 60]
    assert four == [0, 12, 24, 36, 48, 60]


def test_log_spaced_steps_match_the_formula():
    schedule = log_spaced(first=1, per_decade=10, until=1000, then_every=500)
    expected = sorted({round(10 ** (k / 10)) for k in range(40) if round(10 ** (k / 10)) < 1000})
    assert schedule.steps(3000) == [0, *expected, 1000, 1500, 2000, 2500, 3000]
    # dense early: every step at the start, about 10 per factor of ten later
    assert schedule.steps(10)[:8] == [0, 1, 2, 3, 4, 5, 6, 8]
    assert sum(100 <= s < 1000 for s in schedule.steps(1000)) == 10
    forever = log_spaced(first=2, per_decade=3, zero=False)
    expected = sorted({round(2 * 10 ** (k / 3)) for k in range(30)})
    assert forever.steps(10**6) == [s for s in expected if s <= 10**6]
    assert trajhook.log_spaced is log_spaced


def test_scheduled_steps_are_recorded_once_even_when_the_loop_skips_them(store_path):
    # a loop counting in steps of 3 (frames, say): each scheduled step is caught by the first call past it
    assert recorded([0, 4, 5, 7, 20], range(0, 30, 3), path=store_path) == [0, 6, 9, 21]
    expected = [0, 1, 2, 3, 4, 5, 6, 8, 10, 13, 16, 20, 25, 32]  # round(10 ** (k / 10)) up to 39, and 0
    assert recorded(log_spaced(first=1, per_decade=10), range(40), path=store_path) == expected
    assert recorded(range(10, 100, 10), range(95), path=store_path) == list(range(10, 100, 10))
    assert recorded(np.array([2, 3]), range(5), path=store_path) == [2, 3]


def test_callable_schedule(store_path):
    asked = []

    def due(step):
        asked.append(type(step))
        return math.log2(step + 1).is_integer()

    assert recorded(due, np.arange(20), path=store_path) == [0, 1, 3, 7, 15]
    assert set(asked) == {int}  # the function gets plain ints, also from numpy steps


@pytest.mark.parametrize(
    ("every", "message"),
    [
        (0, "every_n_steps=0 is not a positive integer"),
        (-3, "every_n_steps=-3 is not a positive integer"),
        (2.5, "every_n_steps=2.5 is not a positive integer or a schedule"),
        ("10", "every_n_steps='10' is not a positive integer or a schedule"),
        ([], r"every_n_steps=\[\] is empty"),
        ([0, 5, -1], r"holds -1, not a step"),
        ([0, 2.5], r"holds 2.5, not a step"),
        ((s for s in [1, 2]), "is not a positive integer or a schedule"),
    ],
)
def test_bad_cadence_is_refused_before_training(store_path, every, message):
    with pytest.raises(TrajhookError, match=rf"Recorder: .*{message}.*HINT: pass a positive int"):
        Recorder(store_path, [probe()], every_n_steps=every, wandb=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first": 0}, "first=0 is not a positive number"),
        ({"per_decade": -1}, "per_decade=-1 is not a positive number"),
        ({"until": 0}, "until=0 is not a positive int"),
        ({"then_every": 100}, "then_every=100 needs until="),
        ({"until": 100, "then_every": 0}, "then_every=0 is not a positive int"),
    ],
)
def test_bad_log_spaced_arguments(kwargs, message):
    with pytest.raises(TrajhookError, match=rf"log_spaced: {message}.*HINT"):
        log_spaced(**kwargs)


def test_a_failing_schedule_function_names_itself(store_path):
    def broken(step):
        raise ValueError("boom")

    rec = Recorder(store_path, [probe()], every_n_steps=broken, wandb=False)
    with pytest.raises(TrajhookError, match=r"the schedule function .*broken.* failed at step 3: ValueError: boom"):
        rec.maybe_record(nn.Linear(4, 1), 3)
    rec.close()


@pytest.mark.parametrize(
    ("every", "first_calls", "later_calls", "expected_later"),
    [
        (5, range(0, 12), range(12, 25), [15, 20]),  # last recorded 10: 12..14 are not due
        (5, range(1, 13), range(13, 25), [15, 20]),  # counting from 1: 1, 5, 10, then the same grid after a resume
        (10, range(0, 30, 7), range(28, 50, 7), [35, 42]),  # jumps: 0, 7, 14, 21, 28; resumed 28 is not due
        ([0, 3, 11, 13, 30], range(0, 12), range(12, 25), [13]),  # 11 was recorded; 13 is the next
        (log_spaced(first=1, per_decade=10), range(0, 21), range(21, 33), [25, 32]),
    ],
)
def test_resume_keeps_the_cadence(tmp_path, every, first_calls, later_calls, expected_later):
    path = tmp_path / "run.h5"
    first = recorded(every, first_calls, path=path)
    state = recorded.state
    assert state["recorded_steps"] == first
    assert recorded(every, later_calls, state=state, path=path) == expected_later
    assert load(path).steps.tolist() == first + expected_later


def test_lightning_callback_follows_a_schedule_and_resumes(tmp_path):
    pl = pytest.importorskip("pytorch_lightning")
    from torch.utils.data import DataLoader, TensorDataset

    from trajhook.integrations.lightning import TrajectoryCallback

    class Regressor(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.mse_loss(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4)
    path = tmp_path / "run.h5"
    schedule = log_spaced(first=1, per_decade=10)

    def fit(max_steps, ckpt_path=None, callbacks=()):
        cb = TrajectoryCallback(path, [probe()], every_n_steps=schedule)
        pl.Trainer(
            max_steps=max_steps,
            callbacks=[cb, *callbacks],
            logger=False,
            enable_checkpointing=bool(callbacks),
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
            accelerator="cpu",
        ).fit(Regressor(), loader, ckpt_path=ckpt_path)
        return cb

    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=9, save_top_k=-1)
    fit(14, callbacks=[ckpt])
    assert load(path).steps.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 10, 13]
    with pytest.warns(UserWarning, match="dropped"):
        resumed = fit(26, ckpt_path=sorted((tmp_path / "ckpt").glob("*step=9*.ckpt"))[0])
    # the resumed fit records its start (step 9) and then the schedule's steps after it: 10, 13, 16, 20, 25
    assert load(path).steps.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 13, 16, 20, 25]
    assert resumed.state_dict()["recorded_steps"][-6:] == [9, 10, 13, 16, 20, 25]


def test_schedules_print_what_they_are():
    assert repr(as_schedule(7)) == "every 7 steps"
    assert repr(as_schedule([3, 1])) == "steps [1, 3]"
    assert repr(log_spaced(until=100)) == "log_spaced(first=1.0, per_decade=10.0, until=100, then_every=100)"
