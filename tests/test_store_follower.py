"""The incremental reader, ``store.StoreFollower``: each read returns the rows committed since the last.

Values are checked against h5py reading the same file directly (opened as the store opens it) and
against ``trajhook.load``, while a real Recorder appends; a rebuilt file (a new inode) and a resume
that dropped rows (a new generation) start it over; a resume in another process while it reads
makes it read again, or fail visibly.
"""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from trajhook import Recorder, TensorProbe, TrajhookError, load
from trajhook.store import StoreFollower, open_for_reading, open_for_writing_flag

X = torch.arange(12.0).reshape(3, 4)


class Scaled(nn.Module):
    """Outputs x * step: every record's value is known."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros(()))

    def forward(self, x):
        return x * self.step


def recorder(path, **kwargs):
    return Recorder(path, [TensorProbe("p", X)], every_n_steps=2, wandb=False, **kwargs)


def append(rec, model, steps):
    for step in steps:
        model.step.fill_(step)
        rec.maybe_record(model, step, loss=step / 10)
        if step % 5 == 0:
            rec.mark(step, f"at {step}")
    rec.flush()


class Collected:
    """Everything a follower returned, put together again as a whole store."""

    def __init__(self):
        self.steps, self.wall, self.outputs = [], [], []
        self.scalar_steps, self.scalar_values, self.names, self.events = [], [], [], []

    def take(self, follower, new):
        if new.reset:
            self.__init__()
        assert new.start == sum(len(s) for s in self.steps)
        assert new.stop - new.start == len(new.steps) == len(new.probes)
        self.steps.append(new.steps)
        self.wall.append(new.wall_time)
        self.outputs.append(new.probes)
        self.names = new.scalar_names
        self.scalar_steps.append(new.scalar_steps)
        self.scalar_values.append(new.scalar_values)
        self.events = new.events


@pytest.mark.timeout(120)
def test_a_follower_returns_each_committed_row_once_with_the_files_values(tmp_path):
    path = tmp_path / "run.h5"
    model = Scaled()
    got = Collected()
    follower = StoreFollower(path)
    assert follower.identity() is None
    with recorder(path) as rec:
        for reads, first in enumerate(range(0, 40, 7), 1):  # uneven batches: 7 steps, 3 or 4 records each
            append(rec, model, range(first, first + 7))
            assert follower.identity() is not None and open_for_writing_flag(path) is True
            new = follower.read_new(lambda a, b: follower.rows("p", "output", a, b))
            got.take(follower, new)
            assert new.reset == (reads == 1)
            with open_for_reading(path) as file:  # the same rows, read by h5py directly
                n = int(file["committed"][0])
                assert new.stop == n
                np.testing.assert_array_equal(np.concatenate(got.steps), file["steps"][:n])
                np.testing.assert_array_equal(np.concatenate(got.outputs), file["probes/p/output"][:n])
        assert follower.read_new() is None  # nothing new: nothing read
        assert follower.writer() == (True, True)
        stored_format = follower.attrs["trajhook_format"]
        layout = follower.probes["p"]
        follower.close()
    log = load(path)
    assert follower.writer() == (False, False)
    assert stored_format == log.attrs["trajhook_format"]
    assert (layout.kind, layout.outputs) == (log["p"].kind, {"output": ((3, 4), "float32")})
    # the rows written after the last read (the close flushes nothing new here), then all of them against load
    new = follower.read_new(lambda a, b: follower.rows("p", "output", a, b))
    if new is not None:
        got.take(follower, new)
    steps = np.concatenate(got.steps)
    np.testing.assert_array_equal(steps, log.steps)
    np.testing.assert_array_equal(steps, np.arange(0, 42, 2))
    np.testing.assert_array_equal(np.concatenate(got.wall), log.wall_time)
    np.testing.assert_array_equal(np.concatenate(got.outputs), np.asarray(log["p"]["output"]))
    np.testing.assert_array_equal(np.concatenate(got.outputs), np.stack([X.numpy() * s for s in steps]))
    assert got.names == ["loss"]
    np.testing.assert_array_equal(np.concatenate(got.scalar_steps), log.scalars["loss"].steps)
    np.testing.assert_array_equal(np.concatenate(got.scalar_values), log.scalars["loss"].values)
    assert got.events == [(e.step, e.label) for e in log.events] and len(got.events) == 9
    follower.close()


@pytest.mark.timeout(120)
def test_a_rebuilt_file_and_a_resume_that_drops_rows_start_the_follower_over(tmp_path):
    path = tmp_path / "run.h5"
    model = Scaled()
    follower = StoreFollower(path)
    with recorder(path) as rec:
        append(rec, model, range(12))
    assert follower.read_new().steps.tolist() == [0, 2, 4, 6, 8, 10]
    inode = follower.identity()
    follower.close()  # a handle held in this process would make the resume below rebuild the file
    # a resume from step 6 drops steps 6..10 in place (same inode, a new generation)
    with pytest.warns(UserWarning, match="dropped 3 record"), recorder(path) as rec:
        append(rec, model, range(6, 9))
    assert follower.identity() == inode
    new = follower.read_new()
    assert new.reset and new.start == 0 and new.steps.tolist() == load(path).steps.tolist() == [0, 2, 4, 6, 8]
    # overwrite=True builds a new file under the path: a new inode, read from its first row once reopened
    with recorder(path, overwrite=True) as rec:
        append(rec, model, range(100, 104))
    assert follower.identity() != inode
    assert follower.read_new() is None  # the handle still reads the file it opened, which has nothing new
    follower.close()
    new = follower.read_new(lambda a, b: follower.rows("p", "output", a, b))
    assert new.reset and new.start == 0 and new.steps.tolist() == [100, 102]
    np.testing.assert_array_equal(new.probes, np.asarray(load(path)["p"]["output"]))
    assert new.events == [(100, "at 100")]
    follower.close()


RESUME = textwrap.dedent(
    """
    import sys, torch, warnings
    from trajhook import Recorder, TensorProbe
    model = torch.nn.Identity()
    warnings.simplefilter("ignore")
    with Recorder(sys.argv[1], [TensorProbe("p", torch.full((3, 4), -1.0))], every_n_steps=2, wandb=False) as rec:
        rec.maybe_record(model, int(sys.argv[2]))
    """
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("attempts", [1, 3])
def test_a_resume_while_the_follower_reads_is_read_again_or_fails_visibly(tmp_path, attempts):
    """A Recorder in another process resumes the store from step 4 while the follower reads its rows:
    with more than one attempt the follower reads again and returns the new rows, from row 0; with one
    it raises, saying so, and the next read starts over."""
    path = tmp_path / "run.h5"
    with recorder(path) as rec:
        append(rec, Scaled(), range(10))
    follower = StoreFollower(path, attempts=attempts)
    resumed = []

    def read_probes(start, stop):
        if not resumed:
            subprocess.run([sys.executable, "-c", RESUME, str(path), "4"], check=True, timeout=120)
            resumed.append(True)
        return follower.rows("p", "output", start, stop)

    if attempts == 1:
        with pytest.raises(RuntimeError, match="rewritten 1 times while its new rows were read"):
            follower.read_new(read_probes)
        new = follower.read_new(read_probes)
    else:
        new = follower.read_new(read_probes)
    assert new.reset and new.steps.tolist() == load(path).steps.tolist() == [0, 2, 4]
    np.testing.assert_array_equal(new.probes[-1], -np.ones((3, 4)))  # the resumed session's record
    np.testing.assert_array_equal(new.probes[:2], np.stack([X.numpy() * s for s in (0, 2)]))
    follower.close()


def test_attempts_must_be_positive(tmp_path):
    with pytest.raises(TrajhookError, match="attempts=0"):
        StoreFollower(tmp_path / "run.h5", attempts=0)
