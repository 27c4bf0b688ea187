"""SIGKILL at random moments, and readers during resumes, with real processes.

One fork server (``kill_worker.py``) imports torch once; each training session is a forked child
that a test kills with a real ``SIGKILL``: at a random time, or at a random HDF5 operation inside
setup (which rebuilds the store after a crash), inside ``close()`` or inside training. After every
kill the store must load, hold exactly the rows committed before (values checked against an
independent computation) plus a prefix of what the killed session recorded, with no ghost rows,
and the next session must resume it. Random choices come from a seeded RNG.
"""

from __future__ import annotations

import functools
import json
import random
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from trajhook import TrajhookError, load

sys.path.insert(0, str(Path(__file__).parent))
from kill_worker import wide_inputs, wide_output

WIDE_X = wide_inputs()


@functools.cache
def expected_wide(step: int) -> np.ndarray:
    return wide_output(WIDE_X, step).numpy()


class Server:
    """The fork server: ``start(job)`` forks a session and returns its pid; ``wait()`` its end."""

    def __init__(self) -> None:
        worker = Path(__file__).with_name("kill_worker.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(worker)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        assert self._read(60) == {"ready": True}

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the fork server did not answer"
        line = self.proc.stdout.readline()
        assert line, "the fork server died"
        return json.loads(line)

    def start(self, job: dict) -> int:
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read(30)["pid"]

    def wait(self, timeout: float = 30) -> dict:
        return self._read(timeout)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.close()


@dataclass
class Snapshot:
    """A loaded store as plain lists: records (step, session), scalars (step, session), events (step, label)."""

    records: list = field(default_factory=list)
    scalars: list = field(default_factory=list)
    events: list = field(default_factory=list)


def read(path: Path) -> Snapshot:
    """Load the store and check every row against an independent computation of its value.

    ``load`` reads records lazily: one that a resume rewrote between the load and the read is refused
    with a TrajhookError that says so (never returned with other values). Then this loads again.
    """
    for _ in range(50):
        try:
            return read_once(path)
        except TrajhookError as err:
            if "was rewritten since it was loaded" not in str(err):
                raise
    raise AssertionError(f"{path}: rewritten under 50 loads in a row")


def read_once(path: Path) -> Snapshot:
    if not path.exists():
        return Snapshot()
    log = load(path)
    steps = log.steps
    out = log["p"]["output"][:, 0, :]  # [step, session] per record
    np.testing.assert_array_equal(out[:, 0], steps)  # each row's value belongs to its step: no torn row
    for i, step in enumerate(steps.tolist()):
        np.testing.assert_allclose(log["wide"]["output"][i], expected_wide(step), rtol=1e-6, atol=1e-7)
    assert np.all(np.diff(steps) > 0), f"steps not increasing: {steps.tolist()}"  # no ghost or repeated row
    loss = log.scalars.get("loss")
    scalars = []
    if loss is not None:
        sessions = (loss.values - loss.steps) / 1000.0
        assert np.array_equal(sessions, np.round(sessions)), "a scalar value does not belong to its step"
        scalars = list(zip(loss.steps.tolist(), sessions.astype(int).tolist(), strict=True))
    events = [(e.step, e.label) for e in log.events]
    return Snapshot(list(zip(steps.tolist(), out[:, 1].astype(int).tolist(), strict=True)), scalars, events)


def session_rows(start: int, stop: int, sid: int) -> Snapshot:
    """Everything a whole session records, in order."""
    return Snapshot(
        [(s, sid) for s in range(start, stop)],
        [(s, sid) for s in range(start, stop)],
        [(s, f"s{sid}-{s}") for s in range(start, stop) if s % 5 == 0],
    )


def check_prefix(now: list, prior: list, new: list, start: int, at_least: int, what: str) -> int:
    """``now`` is ``prior`` untouched (nothing committed yet), or the rows of ``prior`` before
    ``start`` followed by a prefix of ``new`` of at least ``at_least`` rows. Returns that prefix's length."""
    if now == prior and at_least == 0:
        return 0
    kept = [r for r in prior if r[0] < start]
    assert now[: len(kept)] == kept, f"{what}: committed rows before step {start} were lost or changed"
    tail = now[len(kept) :]
    assert tail == new[: len(tail)], f"{what}: {tail[:5]}... is not a prefix of what was recorded {new[:5]}..."
    assert len(tail) >= at_least, f"{what}: {len(tail)} rows, but {at_least} were committed before the kill"
    return len(tail)


def check_after(path: Path, prior: Snapshot, start: int, stop: int, sid: int, committed: int) -> Snapshot:
    now = read(path)
    new = session_rows(start, stop, sid)
    at_least = 0 if committed < start else committed - start + 1
    check_prefix(now.records, prior.records, new.records, start, at_least, "records")
    check_prefix(now.scalars, prior.scalars, new.scalars, start, at_least, "scalars")
    check_prefix(now.events, prior.events, new.events, start, 0, "events")
    return now


def progress(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def segments(lines: list[str]) -> list[tuple[str, list[str]]]:
    """The progress lines split by phase: [(phase, its lines), ...]."""
    out: list[tuple[str, list[str]]] = [("start", [])]
    for line in lines:
        if line.startswith("phase "):
            out.append((line.split()[1], []))
        else:
            out[-1][1].append(line)
    return out


def killed_in(lines: list[str]) -> str:
    """Where a killed session was: 'setup', 'rebuild' (inside setup), 'train', 'close' or 'closed'."""
    phase, body = segments(lines)[-1]
    if phase == "setup" and "rebuild start" in body and "rebuild end" not in body:
        return "rebuild"
    return phase


def op_counts(lines: list[str]) -> dict[str, int]:
    """How many HDF5 operations each finished phase took. 'create': a setup that created the store;
    'rebuild': one that rebuilt a crashed store; 'setup': one that reopened a cleanly closed store."""
    counts = {}
    for phase, body in segments(lines):
        for line in body:
            if line.startswith(f"ops {phase} "):
                key = phase
                if phase == "setup":
                    key = "rebuild" if "rebuild start" in body else "create" if "store new" in lines else "setup"
                counts[key] = int(line.split()[2])
    return counts


# Kills aimed at a random HDF5 operation inside: setup reopening a cleanly closed store, the rebuild of
# a crashed store, training, and close(); and kills at random times. An aimed kill that the session
# outlives (it drew an operation past the phase's end) is tried again.
PLAN = ["op:setup", "op:rebuild", "op:train", "op:close", "timed"] * 4 + ["timed"] * 2
MINIMUM_KILLS = {"setup": 3, "rebuild": 3, "train": 3, "close": 3}


@pytest.mark.timeout(150)
def test_sigkill_at_random_moments_never_loses_committed_rows(server, tmp_path):
    rng = random.Random(20261125)
    path = tmp_path / "run.h5"
    prior = Snapshot()
    kills: dict[str, int] = {}
    ops = {"setup": 3, "rebuild": 40, "train": 100, "close": 20}  # refined by every session that ends a phase
    duration, prior_killed, sid = 0.3, False, 0
    pending = list(PLAN)
    while pending and sid < 70:
        mode = pending.pop(0)
        if mode == "op:setup" and prior_killed:  # a clean close first, so that setup reopens in place
            pending[:0] = [mode]
            mode = "none"
        elif mode == "op:rebuild" and not prior_killed:  # a crash first, so that setup must rebuild
            pending[:0] = [mode]
            mode = "op:train"
        sid += 1
        last = prior.records[-1][0] if prior.records else 0
        start = rng.randint(max(0, last - 40), last + 1)  # resume from a checkpoint at or before the last row
        stop = start + rng.randint(12, 30)
        job = {
            "path": str(path),
            "session": sid,
            "start": start,
            "stop": stop,
            "flush_every_s": rng.choice([0.005, 0.02, 0.1]),
            "sleep": 0.002,
            "progress": str(tmp_path / f"progress{sid}.txt"),
            "stderr": str(tmp_path / f"stderr{sid}.txt"),
        }
        if mode.startswith("op:"):
            target = mode[3:]
            job["kill_phase"] = "setup" if target == "rebuild" else target
            job["kill_op"] = rng.randint(1, ops[target])
        elif mode == "timed":
            job["kill_after_s"] = rng.uniform(0, duration)
        began = time.monotonic()
        server.start(job)
        end = server.wait()
        ran = time.monotonic() - began
        lines = progress(Path(job["progress"]))
        if end["signal"] == 0:
            stderr = Path(job["stderr"]).read_text() if Path(job["stderr"]).exists() else ""
            assert end["code"] == 0, f"session {sid} ({mode}) failed:\n{stderr[-3000:]}"
            duration = 0.5 * duration + 0.5 * ran
        ops.update(op_counts(lines))
        committed = max((int(line.split()[1]) for line in lines if line.startswith("committed ")), default=-1)
        prior = check_after(path, prior, start, stop, sid, committed)
        prior_killed = end["signal"] == signal.SIGKILL
        where = killed_in(lines) if prior_killed else None
        if prior_killed:
            kills[where] = kills.get(where, 0) + 1
        if mode.startswith("op:") and where != mode[3:]:
            pending[:0] = [mode]  # missed its phase: aim again
        print(f"session {sid} {mode}: killed in {where}, ran {ran:.2f}s, checked {time.monotonic() - began - ran:.2f}s")
    print(f"{sid} sessions, {sum(kills.values())} SIGKILLs by phase: {kills}; {len(prior.records)} rows")
    assert sum(kills.values()) >= 20, kills
    for phase, n in MINIMUM_KILLS.items():
        assert kills.get(phase, 0) >= n, f"only {kills.get(phase, 0)} kills in {phase}: {kills}"
    # the next run resumes the store and completes
    last = prior.records[-1][0]
    job.update(session=sid + 1, start=last + 1, stop=last + 11, progress=str(tmp_path / "final.txt"))
    job.pop("kill_phase", None)
    job.pop("kill_after_s", None)
    server.start(job)
    end = server.wait()
    assert end["signal"] == 0 and end["code"] == 0, Path(job["stderr"]).read_text()[-3000:]
    final = check_after(path, prior, last + 1, last + 11, sid + 1, last + 10)
    assert final.records[-10:] == [(s, sid + 1) for s in range(last + 1, last + 11)]


@pytest.mark.timeout(90)
def test_a_reader_during_resumes_never_sees_a_torn_or_wrong_record(server, tmp_path):
    """This process loads the store in a loop while forked writers resume it from earlier steps
    (dropping and rewriting rows), some cleanly closed and some killed (so the next one rebuilds)."""
    rng = random.Random(7)
    path = tmp_path / "run.h5"
    prior, loads, errors = Snapshot(), 0, []
    for sid in range(1, 7):
        last = prior.records[-1][0] if prior.records else 0
        start = rng.randint(max(0, last - 30), last + 1)
        stop = start + rng.randint(15, 25)
        job = {
            "path": str(path),
            "session": sid,
            "start": start,
            "stop": stop,
            "flush_every_s": 0.005,
            "sleep": 0.003,
            "progress": str(tmp_path / f"progress{sid}.txt"),
            "stderr": str(tmp_path / f"stderr{sid}.txt"),
        }
        if sid % 2 == 0:  # killed mid-training: the next session rebuilds the store, then drops rows
            job.update(kill_phase="train", kill_op=rng.randint(20, 120))
        server.start(job)
        end = None
        while end is None:
            try:
                check_after(path, prior, start, stop, sid, committed=-1)
                loads += 1
            except TrajhookError as err:  # never a wrong record; an open error is counted and shown
                errors.append(str(err))
            ready, _, _ = select.select([server.proc.stdout], [], [], 0.002)
            end = server.wait() if ready else None
        assert end["signal"] in (0, signal.SIGKILL) and end["code"] in (0, None), Path(job["stderr"]).read_text()
        prior = check_after(path, prior, start, stop, sid, committed=-1)
    print(f"{loads} loads during 6 resumes, {len(errors)} failed to open: {errors[:3]}")
    assert loads >= 20
    assert not errors
