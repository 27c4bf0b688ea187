"""Lazy reading: ``load`` opens at once, each probe output is read when indexed, with numpy's meaning.

Values are checked against h5py reading the same file directly and against the arrays that were
recorded; memory against a store larger than what is read, in a fresh process; the committed rows
and the file's lifetime against a real Recorder writing the same path.
"""

import contextlib
import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from trajhook import Recorder, TensorProbe, TrajhookError, load
from trajhook.probes.base import OutputSpec
from trajhook.store import LazyArray, StoreWriter
from trajhook.store import reader as reader_module

sys.path.insert(0, str(Path(__file__).parent))
from test_faults_corrupt import flip_value_byte

X = torch.arange(12.0).reshape(3, 4)


class Scaled(nn.Module):
    """Outputs x * step * factor for a settable step: every record's value is known."""

    def __init__(self, factor: float = 1.0):
        super().__init__()
        self.factor = factor
        self.register_buffer("step", torch.zeros(()))

    def forward(self, x):
        return x * self.step * self.factor


def expected(steps, factor=1.0):
    return np.stack([X.numpy() * s * factor for s in steps]).astype(np.float32)


def record(path, steps, factor=1.0, **kwargs):
    model = Scaled(factor)
    with Recorder(path, [TensorProbe("p", X)], every_n_steps=1, wandb=False, **kwargs) as rec:
        for step in steps:
            model.step.fill_(step)
            rec.maybe_record(model, step)


@pytest.fixture(scope="module")
def ten(tmp_path_factory):
    path = tmp_path_factory.mktemp("lazy") / "run.h5"
    record(path, range(10))
    with h5py.File(path, "r") as f:
        direct = f["probes/p/output"][:]
    np.testing.assert_array_equal(direct, expected(range(10)))  # h5py reads what was recorded
    return path, direct


MASK = np.array([True, False, False, True, True, False, False, False, False, True])
KEYS = [
    3,
    -1,
    np.int64(4),
    slice(2, 7),
    slice(None, None, 3),
    slice(8, 1, -2),
    slice(None, None, -1),
    slice(5, 5),
    slice(-3, None),
    [4, 1, 1, -1],
    [7, 5, 3, 5],  # evenly spaced once sorted: one strided read
    np.array([2]),
    np.array([[0, 9], [3, 3]]),
    [],
    MASK,
    (2, 1),
    (2, 1, 3),
    (slice(1, 4), 2),
    (-1, slice(None), [0, 3]),  # an int and an array apart: numpy puts the advanced axis first
    ([1, 3], 0),
    ([1, 3], [0, 2]),  # two arrays: paired, not crossed
    (MASK, 1, slice(None, 2)),
    (Ellipsis, 0),
    (None, 2),
    (slice(None), None, 0),
    (),
]


@pytest.mark.parametrize("key", KEYS, ids=repr)
def test_an_index_reads_what_numpy_reads_from_the_whole_array(ten, key):
    path, direct = ten
    got = load(path)["p"]["output"][key]
    want = direct[key]
    assert np.shape(got) == want.shape and np.asarray(got).dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("key", [10, -11, [0, 10], [-11], MASK[:5], (0, 3), (slice(None), 0, 4), 1.5], ids=repr)
def test_a_bad_index_raises_index_error_as_numpy_does(ten, key):
    path, direct = ten
    with pytest.raises(IndexError):
        direct[key]
    with pytest.raises(IndexError):
        load(path)["p"]["output"][key]


def test_asarray_iteration_and_the_array_protocol(ten, monkeypatch):
    path, direct = ten
    out = load(path)["p"]["output"]
    assert isinstance(out, LazyArray) and not isinstance(out, np.ndarray)
    assert (out.shape, out.dtype, out.ndim, len(out), out.size, out.nbytes) == (
        direct.shape, direct.dtype, 3, 10, direct.size, direct.nbytes,
    )  # fmt: skip
    np.testing.assert_array_equal(np.asarray(out), direct)
    assert np.asarray(out, dtype=np.float64).dtype == np.float64
    np.testing.assert_allclose(np.mean(out, axis=0), direct.mean(axis=0))  # numpy functions take it whole
    monkeypatch.setattr(reader_module, "_BLOCK_BYTES", 3 * direct[0].nbytes)  # iterate over 4 blocks
    rows = list(out)
    assert len(rows) == 10
    np.testing.assert_array_equal(np.stack(rows), direct)
    with pytest.raises(TypeError):
        out + 1  # arithmetic works on what an index or np.asarray returned
    np.testing.assert_array_equal(out[:] + 1, direct + 1)


MEASURE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import trajhook

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    try:  # reset the peak, so that it measures what follows and not the imports
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status("VmRSS")
    start = time.perf_counter()
    log = trajhook.load(sys.argv[1])
    row = log["big"]["out"][int(sys.argv[2])]
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_growth": status("VmHWM") - before, "s": seconds, "row": row[:3].tolist(),
                      "n": len(log.steps)}))
    """
)


@pytest.mark.timeout(300)
def test_opening_and_reading_one_record_of_a_large_store_stays_small_in_memory(tmp_path):
    """A 200 MB store: the fresh process that opens it and reads one record grows by a few MB at most."""
    path, n, width = tmp_path / "big.h5", 2000, 25_000  # 100 KB records
    writer = StoreWriter(path, {"big": {"out": OutputSpec("out", (width,), np.dtype("float32"))}}, {"big": {}})
    base = np.arange(width, dtype=np.float32)
    for i in range(n):
        writer.add_record(i, float(i), {"big": {"out": base + i}})
    writer.close()
    size = path.stat().st_size
    assert size > 200e6
    measure = subprocess.run([sys.executable, "-c", MEASURE, path, "1234"], capture_output=True, text=True, timeout=120)
    assert measure.returncode == 0, measure.stderr
    result = json.loads(measure.stdout)
    assert result["n"] == n and result["row"] == [1234.0, 1235.0, 1236.0]
    growth_mb = result["peak_growth"] / 1e6
    print(f"open + one record of {size / 1e6:.0f} MB: {result['s']:.3f} s, peak RSS +{growth_mb:.1f} MB")
    assert result["peak_growth"] < 0.05 * size, result  # reading it all would grow by 200 MB


def test_a_log_sees_the_rows_committed_when_it_was_loaded_while_a_recorder_appends(store_path):
    model = Scaled()
    rec = Recorder(store_path, [TensorProbe("p", X)], every_n_steps=1, wandb=False)
    try:
        for step in range(5):
            model.step.fill_(step)
            rec.maybe_record(model, step)
        rec.flush()
        log = load(store_path)
        for step in range(5, 12):
            model.step.fill_(step)
            rec.maybe_record(model, step)
        rec.flush()  # committed on disk now, after the load
        with h5py.File(store_path, "r", swmr=True, locking=False) as f:
            assert f["probes/p/output"].shape[0] == 12 and f["committed"][0] == 12
        out = log["p"]["output"]
        assert log.steps.tolist() == list(range(5)) and len(out) == 5
        np.testing.assert_array_equal(np.asarray(out), expected(range(5)))
        np.testing.assert_array_equal(out[-1], expected([4])[0])  # -1 is the last row at load, not on disk
        with pytest.raises(IndexError):
            out[5]
        np.testing.assert_array_equal(load(store_path)["p"]["output"], expected(range(12)))
    finally:
        rec.close()
    np.testing.assert_array_equal(np.asarray(out), expected(range(5)))  # and after the writer closed


def descriptors_of(path):
    """How many of this process's file descriptors are open on ``path``."""
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the descriptor listdir itself used
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
    return sum(t.removesuffix(" (deleted)") == str(path) for t in targets)


def test_an_open_log_lets_a_recorder_resume_in_place_and_close_releases_it(store_path):
    record(store_path, range(5))
    log = load(store_path)
    assert descriptors_of(store_path) == 1
    inode = store_path.stat().st_ino
    record(store_path, range(5, 9))  # resumes, while the log is open in this very process
    assert store_path.stat().st_ino == inode  # in place: an HDF5 handle held open would force a rebuild
    np.testing.assert_array_equal(np.asarray(log["p"]["output"]), expected(range(5)))
    assert not log.closed
    log.close()
    assert log.closed and descriptors_of(store_path) == 0
    with pytest.raises(TrajhookError, match="this log was closed"):
        log["p"]["output"][0]
    with load(store_path) as again:
        np.testing.assert_array_equal(again["p"]["output"][[0, -1]], expected([0, 8]))
    assert again.closed and descriptors_of(store_path) == 0
    forgotten = load(store_path)
    assert descriptors_of(store_path) == 1
    del forgotten
    gc.collect()
    assert descriptors_of(store_path) == 0  # a log never closed is released with it


def test_a_log_keeps_reading_its_own_file_after_the_path_is_replaced_or_deleted(store_path):
    record(store_path, range(6))
    log = load(store_path)
    record(store_path, range(3), factor=-1.0, overwrite=True)  # another store at the same path
    np.testing.assert_array_equal(load(store_path)["p"]["output"], expected(range(3), factor=-1.0))
    np.testing.assert_array_equal(np.asarray(log["p"]["output"]), expected(range(6)))  # never mixed
    os.remove(store_path)
    np.testing.assert_array_equal(log["p"]["output"][::-1], expected(range(6))[::-1])
    log.close()


def test_records_a_resume_rewrote_after_the_load_are_refused_the_kept_ones_still_read(store_path):
    record(store_path, range(10))
    log = load(store_path)
    with pytest.warns(UserWarning, match=r"dropped 5 record\(s\) at step >= 5"):
        record(store_path, range(5, 8), factor=100.0)  # from a step-5 checkpoint: rows 5.. rewritten
    out = log["p"]["output"]
    np.testing.assert_array_equal(out[:5], expected(range(5)))  # their checksums still match
    np.testing.assert_array_equal(out[[0, 4]], expected([0, 4]))
    with pytest.raises(TrajhookError, match=r"rewritten since it was loaded.* steps \[6\]"):
        out[6]
    with pytest.raises(TrajhookError, match=r"steps \[5, 6, 7\]"):
        np.asarray(out)
    np.testing.assert_array_equal(out[8:], expected([8, 9]))  # dropped, but not yet overwritten: still its own
    np.testing.assert_array_equal(
        load(store_path)["p"]["output"], np.r_[expected(range(5)), expected(range(5, 8), 100.0)]
    )


def test_verify_checks_every_block_of_rows(store_path, monkeypatch):
    record(store_path, range(10))
    flip_value_byte(store_path, "probes/p/output", 7, 5)
    monkeypatch.setattr(reader_module, "_BLOCK_BYTES", 2 * X.numel() * 4)  # blocks of a few rows
    with pytest.raises(TrajhookError, match=r"damaged records at steps \[7\]"):
        load(store_path, verify=True)
    assert load(store_path)["p"]["output"][6].tolist() == expected([6])[0].tolist()  # plain load: no check
