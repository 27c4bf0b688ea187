"""Two writers on one store, with real processes: the second is refused, naming the first's host and pid;
a writer killed by SIGKILL leaves a stale lock that never blocks the next run.

Before the lock, a second process rebuilt and replaced the store under a live writer, and 40 of the
first writer's committed records were lost while both exited 0.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_store import Step, expected_rows, probe  # tests/ is on sys.path under pytest

from trajhook import Recorder, TrajhookError, load
from trajhook.store import lock as lock_module
from trajhook.store.lock import WriterLock, lock_path

WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_store import Step, probe
    from trajhook import Recorder
    model = Step()
    rec = Recorder({path!r}, [probe()], every_n_steps=1, wandb=False, flush_every_s=3600)
    for step in range(0, 20):
        model.step.fill_(step)
        rec.maybe_record(model, step, loss=float(step))
    rec.flush()
    print("ready", flush=True)
    if sys.stdin.readline().strip() == "go on":
        for step in range(20, 40):
            model.step.fill_(step)
            rec.maybe_record(model, step, loss=float(step))
        rec.close()
        print("done", flush=True)
    """
)


def start_writer(path):
    code = WRITER.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    return proc


def write(path, steps):
    model = Step()
    with Recorder(path, [probe()], every_n_steps=1, wandb=False) as rec:
        for step in steps:
            model.step.fill_(step)
            rec.maybe_record(model, step, loss=float(step))


@pytest.mark.timeout(90)
def test_a_second_writer_process_is_refused_and_the_first_loses_nothing(store_path):
    first = start_writer(store_path)
    try:
        second = Recorder(store_path, [probe()], every_n_steps=1, wandb=False)
        pattern = (
            rf"{store_path.name}' is being written by another process \(host {socket.gethostname()}, "
            rf"pid {first.pid}, since .*\)\. Two writers .* HINT: stop that run first"
        )
        with pytest.raises(TrajhookError, match=pattern):
            second.setup(Step())
        second.close()
        out, err = first.communicate("go on\n", timeout=60)
    finally:
        first.kill()
    assert first.returncode == 0 and out.strip() == "done", err
    log = load(store_path)
    assert log.steps.tolist() == list(range(40))  # none of the first writer's records is lost
    np.testing.assert_array_equal(log["p"]["output"], expected_rows(range(40)))
    assert log.scalars["loss"].steps.tolist() == list(range(40))
    assert not lock_path(store_path).exists()  # released at close


@pytest.mark.timeout(60)
def test_a_second_writer_in_the_same_process_is_refused(store_path):
    model = Step()
    first = Recorder(store_path, [probe()], every_n_steps=1, wandb=False)
    first.record(model, 0)
    first.flush()
    second = Recorder(store_path, [probe()], every_n_steps=1, wandb=False)
    pattern = rf"already being written by this process \(host {socket.gethostname()}, pid {os.getpid()}\)"
    with pytest.raises(TrajhookError, match=pattern):  # was a raw "RuntimeError: Unable to start swmr writing"
        second.setup(model)
    second.close()
    model.step.fill_(1)
    first.record(model, 1)
    first.close()
    assert load(store_path).steps.tolist() == [0, 1]
    write(store_path, [2])  # once the first is closed, the store is free
    assert load(store_path).steps.tolist() == [0, 1, 2]


@pytest.mark.timeout(90)
def test_a_sigkilled_writer_leaves_a_stale_lock_that_does_not_block_the_next_run(store_path):
    first = start_writer(store_path)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL
    holder = json.loads(lock_path(store_path).read_text())  # the lock file is still there...
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
    write(store_path, range(20, 25))  # ...but the kernel dropped the flock: the next run resumes at once
    log = load(store_path)
    assert log.steps.tolist() == list(range(25))
    np.testing.assert_array_equal(log["p"]["output"], expected_rows(range(25)))


@pytest.mark.timeout(60)
def test_without_file_locks_the_pid_and_host_decide(store_path, monkeypatch):
    """Some NFS mounts have no locks at all (flock fails with ENOLCK). Simulated: this machine has locks."""

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(lock_module.fcntl, "flock", no_locks)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path = lock_path(store_path)
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))
        WriterLock.acquire(store_path).release()  # a dead writer on this host: stale
        path.write_text(json.dumps({"host": socket.gethostname(), "pid": alive.pid}))
        with pytest.raises(TrajhookError, match=rf"another process \(host {socket.gethostname()}, pid {alive.pid}\)"):
            WriterLock.acquire(store_path)
        path.write_text(json.dumps({"host": "node-17", "pid": 4242}))
        with pytest.raises(TrajhookError, match=r"host node-17, pid 4242\).*delete '.*run\.h5\.lock'"):
            WriterLock.acquire(store_path)  # another machine's writer cannot be checked: it blocks
    finally:
        alive.kill()
        alive.wait()
