"""A real full disk (tmpfs mounts of 2, 9 and 16 MB): training goes on or stops cleanly, the process
exits normally, every record whose ``flush()`` returned stays loadable with its exact values, a disk
too small for the store's first chunks fails at setup with no stray file, and a resume on the
still-full disk is a clear error with no stray files.

Before: a clear TrajhookError, then SIGSEGV at exit in 4 runs of 4 (HDF5 flushing the failed file);
``load`` in the same process crashed; a resume raised a raw OSError and left a multi-MB ``.rebuild``.
Then: the record whose ``flush()`` returned last was not loadable (2,620 committed, 2,619 loadable at
16 MB; 1,747/1,746 at 9 MB; 1/0 at 2 MB, measured with 4.8 KB records), because ``flush()`` returned
before the writer thread had reported its error.
Mounting needs root: where it is not available the tests skip and say so.
"""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from test_store import Step  # tests/ is on sys.path under pytest

from trajhook import Recorder, TensorProbe, load

ROWS = 64 * 1024  # 256 KiB a record: a 16 MB disk fills after about 50 records


def probe():
    return TensorProbe("p", torch.arange(ROWS, dtype=torch.float32) / ROWS)


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs of ``request.param`` MB (default 16) mounted on a fresh folder; unmounted afterwards."""
    size = getattr(request, "param", 16)
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("a real full disk needs root to mount a small tmpfs (run the suite as root, as CI here does)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); needs root outside a container")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


TRAINING = textwrap.dedent(
    """
    import os, sys, torch
    sys.path.insert(0, {tests!r})
    from test_faults_disk import probe
    from test_store import Step
    from trajhook import Recorder, TrajhookError, load
    path, on_error = sys.argv[1], sys.argv[2]
    model, total = Step(), 0.0
    rec = Recorder(path, [probe()], every_n_steps=1, wandb=False, on_error=on_error, flush_every_s=3600)
    try:
        rec.setup(model)
    except TrajhookError as err:
        print("setup:", err, flush=True)
        sys.exit(0)
    try:
        for step in range(150):
            total += step  # the training itself
            model.step.fill_(step)
            rec.maybe_record(model, step, loss=float(step))
            if step % 4 == 3:
                rec.flush()
                if not rec._writer.store.failed:  # on_error="warn" returns from a failed flush, with a warning
                    print("flushed", step + 1, flush=True)
    except TrajhookError as err:
        print("stopped at step", step, "by:", err, flush=True)
    try:
        rec.close()
    except TrajhookError as err:
        print("close:", err, flush=True)
    print("trained", step + 1, "steps, total", total, flush=True)
    log = load(path)  # in the same process, after HDF5 failed a write
    print("same-process load", len(log.steps), flush=True)
    try:
        Recorder(path, [probe()], every_n_steps=1, wandb=False).setup(model)
        print("resumed", flush=True)
    except TrajhookError as err:
        print("resume:", err, flush=True)
    """
)


def run_training(path, on_error):
    code = TRAINING.format(tests=os.path.dirname(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", code, str(path), on_error], capture_output=True, text=True, timeout=100
    )
    out, err = proc.stdout, proc.stderr
    assert proc.returncode == 0, f"exit {proc.returncode} (a negative code is a signal)\n{out}\n{err}"
    return out, err


def assert_every_flushed_record_loads(path, out):
    """Every record whose flush() returned loads, with its exact values, in another process."""
    flushed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("flushed ")]
    log = load(path)
    n = len(log.steps)
    assert flushed and n >= flushed[-1], (n, flushed[-1:], out)
    assert log.steps.tolist() == list(range(n))
    base = np.arange(ROWS, dtype=np.float32) / ROWS
    np.testing.assert_array_equal(log["p"]["output"], np.stack([base * s for s in range(n)]))
    return n


@pytest.mark.timeout(120)
@pytest.mark.parametrize("small_disk", [2], indirect=True)
def test_a_disk_too_small_for_the_first_chunks_fails_at_setup_and_leaves_no_file(small_disk):
    out, err = run_training(small_disk / "run.h5", "raise")
    assert "setup: Recorder: no space left on the device of" in out, out + err
    assert "to create the store" in out and "no file was left" in out and "HINT: free disk space" in out
    assert os.listdir(small_disk) == []  # no store, no .new, no lock file


@pytest.mark.timeout(120)
@pytest.mark.parametrize("small_disk", [9], indirect=True)
def test_on_a_9_mb_disk_every_flushed_record_loads(small_disk):
    out, err = run_training(small_disk / "run.h5", "raise")
    assert "stopped at step" in out and "No space left on device" in out, out + err
    assert "Everything committed before is intact" in out
    assert assert_every_flushed_record_loads(small_disk / "run.h5", out) > 10
    assert sorted(os.listdir(small_disk)) == ["run.h5"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("on_error", ["warn", "raise"])
def test_a_full_disk_never_crashes_and_keeps_every_committed_record(small_disk, on_error):
    path = small_disk / "run.h5"
    out, err = run_training(path, on_error)
    if on_error == "warn":  # training ran to its end, with one warning
        assert "trained 150 steps, total 11175.0" in out, out + err
        assert err.count("Recording to the store stopped; training goes on") == 1, err
        assert "No space left on device" in err
    else:  # training was stopped by a clear error at the next call
        assert "stopped at step" in out and "No space left on device" in out, out + err
        assert "Everything committed before is intact" in out
    n = assert_every_flushed_record_loads(path, out)  # another process reads them, with their exact values
    assert 10 < n < 150
    base = np.arange(ROWS, dtype=np.float32) / ROWS
    assert f"same-process load {n}" in out
    assert "resume: Recorder: no space left on the device of" in out, out + err
    assert "The store is unchanged: everything committed is still in it" in out
    assert sorted(os.listdir(small_disk)) == ["run.h5"]  # no .rebuild, no lock file left behind
    assert len(load(path).steps) == n

    subprocess.run(["mount", "-o", "remount,size=48m", str(small_disk)], check=True)  # space freed
    model = Step()
    with Recorder(path, [probe()], every_n_steps=1, wandb=False) as rec:
        for step in range(n, n + 3):
            model.step.fill_(step)
            rec.maybe_record(model, step)
    log = load(path)
    assert log.steps.tolist() == list(range(n + 3))
    np.testing.assert_array_equal(log["p"]["output"], np.stack([base * s for s in range(n + 3)]))
