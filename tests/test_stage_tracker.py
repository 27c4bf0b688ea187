"""The live stage tracker: finds the turn and the ICL drop the offline analysis finds, later, on the writer thread."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import torch

from trajhook import Recorder, TokenLossProbe, TrajhookError, load
from trajhook.analysis.online import StageTracker
from trajhook.analysis.trajectory import icl_score, smooth, trajectory_pca, turning_points
from trajhook.sinks.base import Sink


def corner_records(n_each: int = 40, dim: int = 300, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """A trajectory in ``dim`` dimensions that goes one way, then turns 90 degrees, with noise."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n_each)
    path = np.concatenate([np.stack([t, 0 * t], 1), np.stack([1 + 0 * t[1:], t[1:]], 1)])
    return path @ rng.normal(size=(2, dim)) + noise * rng.normal(size=(len(path), dim))


def feed(tracker: StageTracker, records: np.ndarray, steps: np.ndarray) -> list[tuple[int, int, str]]:
    """(step of the event, step that confirmed it, label) for every event."""
    return [
        (at, int(step), label) for step, r in zip(steps, records, strict=True) for at, label in tracker.update(step, r)
    ]


def test_a_turn_is_found_where_the_offline_analysis_finds_it_and_confirmed_later():
    records = corner_records()
    steps = np.arange(len(records)) * 10
    events = feed(StageTracker(), records, steps)
    offline = steps[turning_points(trajectory_pca(records).coords, n=1, smoothing=1.0)[0]]
    assert len(events) == 1
    at, confirmed, label = events[0]
    assert abs(at - offline) <= 10 and abs(at - 390) <= 10  # the corner is record 39 (step 390)
    assert label == f"candidate stage boundary (PCA turn; confirmed at step {confirmed})"
    assert 6 <= (confirmed - at) // 10 <= 12  # `confirm` records at least; here 8 (the after-leg, then 6)


@pytest.mark.parametrize("kind", ["straight", "noise"])
def test_no_event_without_a_turn(kind):
    rng = np.random.default_rng(1)
    n, dim = 120, 300
    if kind == "straight":  # a steady drift with noise
        records = np.linspace(0, 1, n)[:, None] * rng.normal(size=dim) + 0.01 * rng.normal(size=(n, dim))
    else:  # a settled model: noise around one point
        records = rng.normal(size=dim) + 0.05 * rng.normal(size=(n, dim))
    assert feed(StageTracker(icl=(5, 1), reshape=lambda r: r.reshape(30, 10)), records, np.arange(n)) == []


def test_an_icl_drop_is_reported_at_the_offline_halfway_step():
    rng = np.random.default_rng(2)
    n, windows, width = 100, 20, 60
    steps = np.arange(n) * 5
    drop = 3.0 / (1 + np.exp(-(steps - 250) / 15))  # in-context learning appears around step 250
    records = 4.0 + 0.05 * rng.normal(size=(n, windows, width))
    records[:, :, 30:] -= drop[:, None, None]  # later tokens get easier
    icl = icl_score(records, late=50, early=10)
    smoothed = smooth(icl, 1.0)
    offline = steps[np.argmax(smoothed < (smoothed[0] + smoothed.min()) / 2)]
    tracker = StageTracker(icl=(50, 10), reshape=lambda flat: flat.reshape(windows, width))
    events = [e for e in feed(tracker, records.reshape(n, -1), steps) if "ICL drop" in e[2]]
    assert len(events) == 1
    at, confirmed, _ = events[0]
    assert at == offline and abs(at - 250) <= 10
    assert confirmed > 250 + 3 * 15  # once the fall has levelled off


def test_nan_columns_are_left_out_like_offline():
    records = corner_records()
    records[:, :5] = np.nan  # e.g. positions past a prompt's end
    records[50:, 7] = np.nan  # a column that turns NaN later is dropped from then on
    events = feed(StageTracker(), records, np.arange(len(records)))
    assert [abs(at - 39) <= 1 for at, _, _ in events] == [True]


class ThreadSink(Sink):
    """A real sink that notes each event and the thread that delivered it."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str, str]] = []

    def event(self, step: int, label: str) -> None:
        self.events.append((step, label, threading.current_thread().name))


class TwoDirections(torch.nn.Module):
    """A plain LM whose weights the test moves along a path with one corner."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.out = torch.nn.Linear(dim, vocab)
        self.base = [p.detach().clone() for p in self.parameters()]
        self.directions = [[torch.randn_like(p) * 0.5 for p in self.parameters()] for _ in range(2)]

    def place(self, a: float, b: float) -> None:
        with torch.no_grad():
            for p, p0, d1, d2 in zip(self.parameters(), self.base, *self.directions, strict=True):
                p.copy_(p0 + a * d1 + b * d2)

    def forward(self, input_ids):
        return self.out(self.embed(input_ids))


@pytest.mark.timeout(120)
def test_the_recorder_adds_the_event_on_the_writer_thread(tmp_path):
    model = TwoDirections()
    ids = np.random.default_rng(0).integers(50, size=1_000).tolist()
    probe = TokenLossProbe(ids, context=20, track_stages=True)
    sink = ThreadSink()
    steps = list(range(0, 800, 10))
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=10, wandb=False, sinks=[sink]) as rec:
        rec.mark(0, "start")
        for step in steps:
            t = step / 400
            model.place(min(t, 1.0), max(t - 1.0, 0.0))  # along one direction, then the other from step 400
            rec.maybe_record(model, step)
    log = load(tmp_path / "run.h5")
    stage = [e for e in log.events if e.label.startswith("candidate stage boundary (PCA turn")]
    offline = log.steps[turning_points(trajectory_pca(log["token_loss"]["token_loss"]).coords, n=1)[0]]
    assert len(stage) == 1 and abs(stage[0].step - 400) <= 20 and abs(stage[0].step - offline) <= 20
    assert [(s, label) for s, label, _ in sink.events if label != "start"] == [(stage[0].step, stage[0].label)]
    assert {thread for _, _, thread in sink.events} == {"trajhook-writer"}
    assert probe.stage_tracker.steps == steps and probe.stage_tracker.n_records == len(steps)  # it kept every record


def test_a_failing_tracker_is_switched_off_and_the_store_stays_complete(tmp_path):
    class Broken(StageTracker):
        def update(self, step, record):
            raise ValueError("boom")

    model = TwoDirections()
    probe = TokenLossProbe(list(range(50)) * 4, context=20, track_stages=Broken())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Recorder(tmp_path / "run.h5", [probe], every_n_steps=1, wandb=False) as rec:
            for step in range(5):
                rec.maybe_record(model, step)
    assert load(tmp_path / "run.h5").steps.tolist() == [0, 1, 2, 3, 4]
    messages = [str(w.message) for w in caught if "stage tracker" in str(w.message)]
    assert len(messages) == 1 and "'token_loss' failed and is off: ValueError('boom')" in messages[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lag": 0}, "lag=0 is not a positive number"),
        ({"smoothing": -1.0}, "smoothing=-1.0 is not a positive number"),
        ({"min_turn": "big"}, "min_turn='big' is not a positive number"),
        ({"icl": (50,)}, r"icl=\(50,\) is not \(late, early\)"),
        ({"confirm": 1.5}, "confirm=1.5 is not a positive number"),
    ],
)
def test_bad_tracker_parameters(kwargs, message):
    with pytest.raises(TrajhookError, match=rf"StageTracker: {message}.*HINT"):
        StageTracker(**kwargs)


def test_probes_check_what_they_track():
    with pytest.raises(TrajhookError, match=r"track_stages='yes' is not True, False or a StageTracker.*HINT"):
        TokenLossProbe([1, 2, 3], context=2, track_stages="yes")
    probe = TokenLossProbe(list(range(10)), context=5, track_stages=StageTracker("logits"))
    with pytest.raises(TrajhookError, match=r"its StageTracker follows 'logits'.*HINT"):
        probe.setup(TwoDirections(), torch.device("cpu"))


def array_bytes(obj, seen=None) -> int:
    """The bytes of every numpy array reachable from ``obj``'s attributes, lists and dicts (counted once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(array_bytes(v, seen) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(array_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and not callable(obj):
        return array_bytes(vars(obj), seen)
    return 0


def test_the_state_stays_bounded_over_a_long_run():
    """5,000 records of 300 values: the arrays stop growing once allocated; no N x N matrix, no list of records."""
    dim, capacity = 300, 512
    records = corner_records(n_each=2_500, dim=dim, noise=0.001, seed=3)
    tracker = StageTracker()
    sizes = {}
    for step, record in enumerate(records):
        tracker.update(step, record)
        if step + 1 in (1_000, len(records)):
            sizes[step + 1] = array_bytes(tracker)
    # what a bounded tracker holds: the kept records, their steps, Gram matrix, ICL scores, column mask, basis
    bound = capacity * dim * 4 + capacity * 8 + capacity**2 * 8 + capacity * 8 + dim + capacity * 4 * 8
    # 5,000 records: an N x N matrix alone would be 200 MB. Only the PCA basis (kept records x 4) varies.
    assert max(sizes.values()) <= bound and abs(sizes[1_000] - sizes[len(records)]) <= capacity * 4 * 8
    assert tracker.n_records == len(records) and len(tracker.steps) <= capacity
    assert tracker.steps == list(range(0, len(records), 16))  # every 16th record: the stride that fits 512
    assert len(tracker.events) < 10


def test_the_pca_is_the_exact_offline_pca_of_the_records_it_keeps():
    """Within its window every record, exactly; past it, the evenly thinned records, exactly."""
    rng = np.random.default_rng(4)
    t = np.linspace(0, 1, 1_500)[:, None]
    records = np.hstack([t, t**2, np.sin(6 * t)]) @ rng.normal(size=(3, 80)) + 0.01 * rng.normal(size=(1_500, 80))
    tracker = StageTracker(max_records=256, n_components=2)

    def agrees(kept: np.ndarray) -> None:
        live, offline = tracker.coords(), trajectory_pca(records[kept], n_components=2).coords
        signs = np.sign((live * offline).sum(axis=0))  # a principal component is defined up to its sign
        np.testing.assert_allclose(live * signs, offline, rtol=0, atol=1e-6 * np.abs(offline).max())

    for step, record in enumerate(records):
        tracker.update(step, record)
        if step + 1 == 200:
            agrees(np.arange(200))  # a run short enough for its window: every record
    assert tracker.steps == list(range(0, 1_500, 8))  # 1,500 records in 256 slots: every 8th
    agrees(np.arange(0, 1_500, 8))
