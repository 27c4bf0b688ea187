"""The HDF5 store: resume, truncation, crash safety, a reader in another process, bad files."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from trajhook import Recorder, TensorProbe, TrajhookError, load
from trajhook.store import FORMAT_VERSION, chunk_shape


class Step(nn.Module):
    """Outputs a known function of a settable step: x * step."""

    def __init__(self):
        super().__init__()
        self.register_buffer("step", torch.zeros(()))

    def forward(self, x):
        return x * self.step


def probe():
    return TensorProbe("p", torch.arange(6.0).reshape(2, 3))


def run(path, steps, every=10, mark=None, **kwargs):
    model = Step()
    with Recorder(path, [probe()], every_n_steps=every, wandb=False, **kwargs) as rec:
        for step in steps:
            model.step.fill_(step)
            rec.maybe_record(model, step, loss=float(step))
            if mark is not None and step == mark[0]:
                rec.mark(step, mark[1])


def expected_rows(steps):
    return np.stack([np.arange(6.0).reshape(2, 3) * s for s in steps]).astype(np.float32)


def test_resuming_drops_ghost_rows_beyond_the_resume_step(store_path):
    run(store_path, range(0, 101), mark=(70, "late event"))  # a run that got to step 100
    with pytest.warns(UserWarning, match=r"dropped 6 record\(s\) at step >= 50"):
        run(store_path, range(50, 81))  # restored from a step-50 checkpoint, ran to 80
    log = load(store_path)
    assert log.steps.tolist() == [0, 10, 20, 30, 40, 50, 60, 70, 80]
    np.testing.assert_array_equal(log["p"]["output"], expected_rows(log.steps))
    assert log.scalars["loss"].steps.tolist() == list(range(81))  # each step once, no ghosts
    assert log.events == []  # the event at 70 came from the dropped future


def test_overwrite_starts_fresh(store_path):
    run(store_path, range(0, 31))
    run(store_path, range(0, 11), overwrite=True)
    assert load(store_path).steps.tolist() == [0, 10]


def test_a_store_with_other_probes_is_refused_naming_the_difference(store_path):
    run(store_path, range(0, 11))
    other = TensorProbe("p", torch.ones(4, 3))
    rec = Recorder(store_path, [other], every_n_steps=10, wandb=False)
    with pytest.raises(
        TrajhookError, match=r"probe 'p' output 'output': stored output\(2, 3\) float32, now output\(4, 3\)"
    ):
        rec.setup(Step())
    rec2 = Recorder(store_path, [TensorProbe("q", torch.ones(2, 3))], every_n_steps=10, wandb=False)
    with pytest.raises(TrajhookError, match="probe 'p' is in the store but not among the probes; probe 'q' is new"):
        rec2.setup(Step())


WRITER = textwrap.dedent(
    """
    import os, signal, sys, torch
    sys.path.insert(0, {tests!r})
    from test_store import Step, probe
    from trajhook import Recorder
    model = Step()
    rec = Recorder({path!r}, [probe()], every_n_steps=10, wandb=False, flush_every_s=3600)
    for step in range(0, 41):
        model.step.fill_(step)
        rec.maybe_record(model, step, loss=float(step))
        if step == 20:
            rec.flush()  # steps 0..20 are committed; 30 and 40 are only buffered
    print("killing", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_a_killed_writer_loses_nothing_committed_and_the_store_resumes(store_path):
    code = WRITER.format(tests=os.path.dirname(__file__), path=str(store_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(OSError):  # HDF5 itself refuses the crashed file for writing...
        h5py.File(store_path, "r+", libver="latest", locking=False)
    log = load(store_path)  # ...but it reads, with exactly the committed rows
    assert log.steps.tolist() == [0, 10, 20]
    np.testing.assert_array_equal(log["p"]["output"], expected_rows([0, 10, 20]))
    assert log.scalars["loss"].steps.tolist() == list(range(21))
    run(store_path, range(21, 51))  # and resumes: the file is rebuilt from its committed rows
    log = load(store_path)
    # a new session without the Recorder's state records at its first step, then at each multiple of 10
    assert log.steps.tolist() == [0, 10, 20, 21, 30, 40, 50]
    np.testing.assert_array_equal(log["p"]["output"], expected_rows(log.steps))
    assert log.scalars["loss"].steps.tolist() == list(range(51))


READER = textwrap.dedent(
    """
    import sys, numpy as np
    from trajhook import load
    log = load(sys.argv[1])
    rows = log["p"]["output"]
    ok = all(np.array_equal(r, np.arange(6.0).reshape(2, 3) * s) for r, s in zip(rows, log.steps))
    print(len(log.steps), ok, len(log.scalars["loss"].steps))
    """
)


def test_another_process_reads_the_file_while_the_writer_appends(store_path):
    model = Step()
    seen = []
    with Recorder(store_path, [probe()], every_n_steps=1, wandb=False, flush_every_s=3600) as rec:
        for step in range(4):
            model.step.fill_(step)
            rec.maybe_record(model, step, loss=float(step))
            rec.flush()
            out = subprocess.run(
                [sys.executable, "-c", READER, str(store_path)], capture_output=True, text=True, check=True
            )
            seen.append(out.stdout.split())
        model.step.fill_(4)
        rec.record(model, 4)  # buffered, not flushed: a reader must not see it yet
        out = subprocess.run([sys.executable, "-c", READER, str(store_path)], capture_output=True, text=True)
        seen.append(out.stdout.split())
    assert seen == [
        ["1", "True", "1"],
        ["2", "True", "2"],
        ["3", "True", "3"],
        ["4", "True", "4"],
        ["4", "True", "4"],
    ]
    assert load(store_path).steps.tolist() == [0, 1, 2, 3, 4]


def test_whole_chunks_are_written_uncompressed_and_the_file_holds_little_else(store_path):
    run(store_path, range(0, 5000), every=1)
    with h5py.File(store_path, "r") as f:
        ds = f["probes/p/output"]
        assert ds.chunks == chunk_shape((2, 3), 4) == (4096, 2, 3) and ds.compression is None
        assert ds.maxshape == (None, 2, 3) and ds.shape[0] == 5000
        allocated = sum(d.id.get_storage_size() for d in _datasets(f))
        chunks = -(-5000 // 4096)  # two chunks of each record table, allocated whole
        assert ds.id.get_storage_size() == chunks * 4096 * 24
    assert os.path.getsize(store_path) < allocated + 64 * 1024  # no dead space from rewritten chunks


def _datasets(group):
    for item in group.values():
        yield from _datasets(item) if isinstance(item, h5py.Group) else [item]


@pytest.mark.timeout(120)
def test_the_open_store_stays_within_twice_its_compacted_size_at_every_moment(store_path, tmp_path):
    """Issue 10 item 6: with a flush after every record, an open store once grew 6-30x its data."""
    from trajhook.store.repair import repair

    big = TensorProbe("big", torch.rand(70, 15))  # 4 KiB a record, like a maze probe's action probs
    ratios = []
    with Recorder(store_path, [big], every_n_steps=1, wandb=False) as rec:
        for step in range(1, 1201):
            rec.record(nn.Linear(15, 15), step)
            rec.log_scalars(step, loss=1.0)
            if step in (1, 10, 100, 400, 999, 1000, 1001, 1200) or step % 50 == 0:
                rec.flush()  # as a timer flush between slow records: the partial chunk is written again
            if step in (1, 10, 100, 999, 1001, 1200):
                compacted, _ = repair(store_path, tmp_path / f"compacted_{step}.h5")  # the same rows, written once
                ratios.append(os.path.getsize(store_path) / os.path.getsize(compacted))
    assert max(ratios) <= 2.0, ratios
    with h5py.File(store_path, "r") as f:
        live = sum(d.id.get_storage_size() for d in _datasets(f))
    assert os.path.getsize(store_path) < live + 64 * 1024
    assert load(store_path).steps.tolist() == list(range(1, 1201))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an HDF5 file"),
        (b"hello, this is a text file", "not an HDF5 file, or it is corrupt"),
        ("plain-hdf5", "an HDF5 file but not a trajhook store"),
    ],
)
def test_load_refuses_files_that_are_not_trajhook_stores(tmp_path, content, message):
    path = tmp_path / "x.h5"
    if content == "plain-hdf5":
        with h5py.File(path, "w") as f:
            f["data"] = np.ones(3)
    else:
        path.write_bytes(content)
    with pytest.raises(TrajhookError, match=message):
        load(path)


def test_load_reports_a_truncated_file_as_corrupt(store_path):
    run(store_path, range(0, 2000), every=1)
    data = store_path.read_bytes()
    store_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TrajhookError, match="corrupt"):
        load(store_path)


AFTER_A_FAILED_LOAD = textwrap.dedent(
    """
    import gc, sys
    sys.path.insert(0, {tests!r})
    from test_store import run
    from trajhook import TrajhookError, load
    gc.disable()  # the failed read's frames must be freed by reference counting, not by luck
    try:
        load({truncated!r})
    except TrajhookError as err:
        print("load failed:", "corrupt" in str(err), flush=True)
    run({fresh!r}, range(0, 31))  # its writer thread opens datasets while the main thread waits in close()
    print("second run finished", flush=True)
    """
)


@pytest.mark.timeout(120)
def test_a_failed_load_leaves_no_h5py_lock_held_for_the_next_recorder(tmp_path):
    """A failed load once left h5py's global lock held in the main thread, by a ``.items()`` generator
    suspended in a frame that the error's traceback kept alive: the next Recorder's writer thread hung."""
    truncated, fresh = tmp_path / "truncated.h5", tmp_path / "fresh.h5"
    run(truncated, range(0, 2000), every=1)
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    code = AFTER_A_FAILED_LOAD.format(tests=os.path.dirname(__file__), truncated=str(truncated), fresh=str(fresh))
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the Recorder after a failed load hung: {err.stdout!r}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[:2] == ["load failed: True", "second run finished"], proc.stdout
    assert load(fresh).steps.tolist() == [0, 10, 20, 30]


def test_a_store_from_before_the_generation_counter_loads_and_resumes(store_path):
    run(store_path, range(0, 31))
    with h5py.File(store_path, "r+", libver="latest") as f:  # the layout of the first stores: 4 counts
        counts = f["committed"][:4]
        del f["committed"]
        f.create_dataset("committed", data=counts)
    assert load(store_path).steps.tolist() == [0, 10, 20, 30]
    run(store_path, range(20, 41))
    log = load(store_path)
    assert log.steps.tolist() == [0, 10, 20, 30, 40]
    np.testing.assert_array_equal(log["p"]["output"], expected_rows(log.steps))


def test_after_a_write_error_the_file_is_released_and_what_was_committed_stays(store_path):
    rec = Recorder(store_path, [probe()], every_n_steps=1, wandb=False)
    model = Step()
    rec.record(model, 0)
    rec.flush()

    def disk_full(*args):  # any writer error; a real full disk is in test_faults_disk.py
        raise OSError(28, "No space left on device")

    rec._writer.store.add_record = disk_full
    rec.record(model, 1)
    with pytest.raises(TrajhookError, match=r"No space left on device.*Everything committed before is intact"):
        rec.close()
    run(store_path, range(2, 4), every=1)  # the path can be opened again at once, as the hint says
    assert load(store_path).steps.tolist() == [0, 2, 3]


def test_a_resume_keeps_earlier_events_that_were_added_after_later_ones(store_path):
    """A live stage event lands at the step of its turn, after the marks of later steps."""
    with Recorder(store_path, [probe()], every_n_steps=10, wandb=False) as rec:
        for step in range(0, 31):
            rec.maybe_record(Step(), step)
        rec.mark(25, "LR drop")
        rec._writer.put_small("event", (12, "candidate stage boundary (PCA turn; confirmed at step 19)"))
        rec._writer.put_small("event", (14, "candidate stage boundary (PCA turn; confirmed at step 30)"))
    assert [(e.step, e.label[:6]) for e in load(store_path).events] == [(25, "LR dro"), (12, "candid"), (14, "candid")]
    with pytest.warns(UserWarning, match=r"dropped 2 record\(s\) at step >= 20"):
        run(store_path, range(20, 31))  # resume at 20: the mark at 25 goes, the event at 12 stays
    events = load(store_path).events
    # the event at 14 goes too: the record that confirmed it (step 30) was dropped
    assert [(e.step, e.label) for e in events] == [(12, "candidate stage boundary (PCA turn; confirmed at step 19)")]


@pytest.mark.parametrize("version", [1, 2])
def test_older_formats_load_and_a_resume_rebuilds_them_with_checksums(tmp_path, version):
    from fake_maze import GridProbe, maze_store, policy

    path = tmp_path / "maze.h5"
    maze_store(path, steps=10, every=5)
    written = load(path)
    with h5py.File(path, "r+") as f:  # what trajhook wrote before checksums (2) and before kinds (1)
        del f["checksums"]
        f.attrs["trajhook_format"] = version
        if version == 1:
            del f["static/maze"].attrs["kind"]
    log = load(path)
    assert log.attrs["trajhook_format"] == version
    assert log["maze"].kind == "maze"  # stored (2) or guessed from the outputs and the grid (1)
    assert log.steps.tolist() == written.steps.tolist() == [0, 5, 10]
    np.testing.assert_array_equal(log["maze"]["vectors"], written["maze"]["vectors"])
    with pytest.raises(TrajhookError, match=rf"has no checksums \(trajhook format {version}; they came with format 3"):
        load(path, verify=True)
    with Recorder(path, [GridProbe()], every_n_steps=5, wandb=False) as rec:  # a resume rebuilds it as the current
        rec.record(policy(), 20)
    log = load(path, verify=True)
    assert log.attrs["trajhook_format"] == FORMAT_VERSION and log["maze"].kind == "maze"
    assert [s["first_step"] for s in log.sessions] == [0, 20]  # the rebuild kept the sessions
    assert log.steps.tolist() == [0, 5, 10, 20]
    np.testing.assert_array_equal(log["maze"]["vectors"][:3], written["maze"]["vectors"])
    with h5py.File(path, "r") as f:  # the checksums are those of the stored bytes (docs/FORMAT.md)
        import zlib

        assert zlib.crc32(f["probes/maze/vectors"][1].tobytes()) == f["checksums/records"][1, 2 + 2]
        assert json.loads(f["checksums/records"].attrs["columns"])[2 + 2] == "probes/maze/vectors"


def test_repair_keeps_each_probe_groups_kind_and_the_sessions(tmp_path):
    from fake_maze import GridProbe, policy

    from trajhook.store.repair import repair

    path = tmp_path / "run.h5"
    with Recorder(path, [GridProbe(), TensorProbe("p", torch.ones(1, 2))], every_n_steps=1, wandb=False) as rec:
        rec.record(policy(), 0)
    with Recorder(path, [GridProbe(), TensorProbe("p", torch.ones(1, 2))], every_n_steps=1, wandb=False) as rec:
        rec.record(policy(), 1)  # a second session, resumed
    out, _ = repair(path)
    log = load(out, verify=True)
    assert {name: log[name].kind for name in log} == {"maze": "maze", "p": "tensor"}
    assert log.sessions == load(path).sessions and [s["first_step"] for s in log.sessions] == [0, 1]
