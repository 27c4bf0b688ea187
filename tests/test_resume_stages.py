"""A resumed Recorder tracks stages as if the run had gone straight through (issue 22, point 2).

Real Recorder sessions on a real store: a maze policy (``fake_maze.GridProbe``) whose weights move
along one direction, then turn at step 400 onto another. Each session is a new Recorder with new
probe objects, as after a restart from a checkpoint.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import pytest
import torch
from fake_maze import GridProbe, policy

from trajhook import Recorder, load
from trajhook.analysis.online import StageTracker
from trajhook.store import RECORDS

TURN = 400
EVERY = 10
END = 800


class Turning(torch.nn.Module):
    """A maze policy placed at ``base + a * d1 + b * d2``: along d1 until step 400, then along d2."""

    def __init__(self) -> None:
        super().__init__()
        self.net = policy(0)
        generator = torch.Generator().manual_seed(1)
        self.base = [p.detach().clone() for p in self.net.parameters()]
        self.directions = [[torch.randn(p.shape, generator=generator) for p in self.net.parameters()] for _ in "ab"]

    def at(self, step: int) -> Turning:
        t = step / TURN
        with torch.no_grad():
            for p, p0, d1, d2 in zip(self.net.parameters(), self.base, *self.directions, strict=True):
                p.copy_(p0 + min(t, 1.0) * d1 + max(t - 1.0, 0.0) * d2)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def tracked_probe(**tracker_args) -> GridProbe:
    probe = GridProbe()
    probe.stage_tracker = StageTracker("vectors", **tracker_args)  # what MazeProbe(track_stages=True) sets
    return probe


def session(path, start: int, stop: int, probe: GridProbe | None = None, **tracker_args) -> GridProbe:
    """One Recorder session recording steps ``start, start + 10, ... < stop``; returns its probe."""
    probe = probe or tracked_probe(**tracker_args)
    model = Turning()
    with Recorder(path, [probe], every_n_steps=EVERY, wandb=False) as rec:
        for step in range(start, stop, EVERY):
            rec.maybe_record(model.at(step), step)
    return probe


def stage_events(path) -> list[tuple[int, str]]:
    return [(e.step, e.label) for e in load(path).events if e.label.startswith("candidate stage boundary")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The run straight through: its events and its tracker's kept steps, per tracker setting."""
    runs = {}
    for name, args in (("default", {}), ("thinned", {"max_records": 40})):
        path = tmp_path_factory.mktemp(name) / "run.h5"
        probe = session(path, 0, END, **args)
        runs[name] = (stage_events(path), probe.stage_tracker.steps)
    return runs


@pytest.mark.timeout(300)
@pytest.mark.parametrize("tracker", ["default", "thinned"])
@pytest.mark.parametrize(
    ("name", "sessions"),
    [
        ("closed at record 30", [(0, 300), (300, END)]),
        ("resumed twice, once after the turn was confirmed", [(0, 300), (300, 600), (600, END)]),
        ("resumed from an earlier checkpoint after the turn was confirmed", [(0, 600), (300, END)]),
    ],
)
def test_a_resumed_run_reports_the_events_of_a_run_straight_through(tmp_path, straight, tracker, name, sessions):
    args = {"thinned": {"max_records": 40}}.get(tracker, {})
    expected_events, expected_steps = straight[tracker]
    # the turn at step 400 is found once, at the record where the weights turn (the cadence's precision)
    assert len(expected_events) == 1 and abs(expected_events[0][0] - TURN) <= 2 * EVERY, expected_events
    path = tmp_path / "run.h5"
    rewinds = sessions[1][0] < sessions[0][1]  # resumed from a checkpoint before the last record
    with pytest.warns(UserWarning, match=r"dropped \d+ record") if rewinds else contextlib.nullcontext():
        for start, stop in sessions:
            probe = session(path, start, stop, **args)
    assert stage_events(path) == expected_events  # the same step, the same confirmation step, once
    assert probe.stage_tracker.steps == expected_steps  # the tracker's state is the straight run's
    assert probe.stage_tracker.n_records == END // EVERY


@pytest.mark.timeout(300)
def test_a_probe_object_reused_by_a_new_recorder_is_rebuilt_from_the_store(tmp_path, straight):
    """In one process (a notebook) the tracker of a reused probe starts from the store, not from its memory."""
    probe = tracked_probe()
    session(tmp_path / "run.h5", 0, 600, probe)
    session(tmp_path / "run.h5", 300, END, probe)  # from an earlier checkpoint: rows from 300 on are dropped
    assert stage_events(tmp_path / "run.h5") == straight["default"][0]
    assert probe.stage_tracker.steps == straight["default"][1]


@pytest.mark.timeout(300)
def test_a_tracker_added_on_resume_finds_the_events_of_the_stored_records(tmp_path, straight):
    """The first session did not track; the resumed one rebuilds from its records and writes what they show."""
    model = Turning()
    with Recorder(tmp_path / "run.h5", [GridProbe()], every_n_steps=EVERY, wandb=False) as rec:
        for step in range(0, 600, EVERY):
            rec.maybe_record(model.at(step), step)
    assert stage_events(tmp_path / "run.h5") == []
    session(tmp_path / "run.h5", 600, END)
    assert stage_events(tmp_path / "run.h5") == straight["default"][0]


def test_replay_reads_only_the_records_the_tracker_keeps():
    """``StageTracker.replay``: the state of a tracker fed live, reading only the kept records."""
    rng = np.random.default_rng(0)
    records = np.cumsum(rng.normal(size=(300, 20)), axis=0)
    live, rebuilt = StageTracker(max_records=40), StageTracker(max_records=40)
    events = [e for step, r in enumerate(records) for e in live.update(step * 5, r)]
    read = []
    replayed = rebuilt.replay(np.arange(300) * 5, lambda i: read.append(i) or records[i])
    assert replayed == events and rebuilt.steps == live.steps and rebuilt.n_records == 300
    assert len(read) < 300 and set(live.steps) <= {5 * i for i in read}  # every kept record was read, few others


class SlowTracker(StageTracker):
    """A default tracker that takes 0.1 s a record: its rebuild spans many of the writer's slices."""

    def update(self, step, record):
        time.sleep(0.1)
        return super().update(step, record)


@pytest.mark.timeout(300)
def test_new_records_are_committed_while_the_tracker_is_rebuilt(tmp_path, straight):
    """The writer rebuilds between the records it writes: they do not wait for the rebuild, and the
    records that came meanwhile are fed after it, in order, to the same end."""
    path = tmp_path / "run.h5"
    session(path, 0, 300)
    probe = GridProbe()
    probe.stage_tracker = SlowTracker("vectors")
    model = Turning()
    with Recorder(path, [probe], every_n_steps=EVERY, wandb=False) as rec:
        for step in range(300, 400, EVERY):
            rec.maybe_record(model.at(step), step)
        rec.flush()  # returns once the ten records are committed
        assert rec._writer.store.counts[RECORDS] == 40
        assert rec._writer._rebuilding  # 30 stored records at 0.1 s each: the rebuild is still going
        for step in range(400, END, EVERY):
            rec.maybe_record(model.at(step), step)
    assert stage_events(path) == straight["default"][0]
    assert probe.stage_tracker.steps == straight["default"][1]
