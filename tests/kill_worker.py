"""A fork server for the fault tests in ``test_kill.py``: one Python start (torch + trajhook
imported once), then one forked child per training session, so that the tests can SIGKILL many
real processes cheaply.

Protocol (JSON lines): the test writes a job to stdin; the server forks a child, answers
``{"pid": ...}`` at once and ``{"pid": ..., "signal": ..., "code": ...}`` when the child ends. A job
with ``kill_after_s`` is SIGKILLed by the server after that many seconds (its parent, so that the
pid cannot have been reused by another process).

A session records ``TensorProbe`` outputs of a tiny model whose weights encode the step and the
session id, so that every stored row can be checked against an independent computation:
``p/output[0, 0] == [step, session]``, ``wide/output == sin(X * step)``, scalar
``loss == 1000 * session + step`` and an event ``s{session}-{step}`` every 5 steps. The child writes
progress lines to a file with unbuffered writes (they survive SIGKILL): ``phase NAME`` at each
phase, ``committed STEP`` after a ``flush()``, ``rebuild start/end``, ``ops PHASE N`` at the end of
a phase, and ``kill PHASE N`` just before it kills itself at the N-th HDF5 operation of a phase.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

WIDE = 64  # the wide probe's output is WIDE x WIDE float32: 16 KiB a record, poorly compressible


def wide_inputs():
    import torch

    return torch.randn(WIDE, WIDE, generator=torch.Generator().manual_seed(0))


def wide_output(x, step: int):
    """What the wide probe records at ``step``; the test computes the same."""
    import torch

    return torch.sin(x * (step + 1) * 1e-3)


def session(job: dict) -> None:
    import h5py
    import torch
    from torch import nn

    import trajhook.store
    from trajhook import Recorder, TensorProbe

    torch.set_num_threads(1)
    fd = os.open(job["progress"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)

    def note(text: str) -> None:
        os.write(fd, (text + "\n").encode())

    state = {"phase": "start", "ops": 0}
    kill_phase, kill_op = job.get("kill_phase"), job.get("kill_op")

    def counted(fn):
        def wrapper(*args, **kwargs):
            state["ops"] += 1
            if state["phase"] == kill_phase and state["ops"] == kill_op:
                note(f"kill {kill_phase} {kill_op}")
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)

        return wrapper

    for cls, name in (
        (h5py.Dataset, "__setitem__"),
        (h5py.Dataset, "resize"),
        (h5py.Dataset, "flush"),
        (h5py.Group, "create_dataset"),
        (h5py.File, "flush"),
        (h5py.File, "close"),
    ):
        setattr(cls, name, counted(getattr(cls, name)))
    os.replace = counted(os.replace)
    rebuild = trajhook.store.StoreWriter._rebuild

    def noted_rebuild(self, *args, **kwargs):
        note("rebuild start")
        rebuild(self, *args, **kwargs)
        note("rebuild end")

    trajhook.store.StoreWriter._rebuild = noted_rebuild

    def phase(name: str) -> None:
        note(f"ops {state['phase']} {state['ops']}")
        state["phase"], state["ops"] = name, 0
        note(f"phase {name}")

    note("store exists" if os.path.exists(job["path"]) else "store new")
    sid, start, stop = job["session"], job["start"], job["stop"]
    model = nn.Linear(3, 2, bias=False)
    x = wide_inputs()
    probes = [
        TensorProbe("p", torch.tensor([[1.0, 0.0, 0.0]])),  # output = weight[:, 0] = [step, session]
        TensorProbe("wide", x, fn=lambda m, inputs: wide_output(inputs, int(m.weight[0, 0]))),
    ]
    phase("setup")
    rec = Recorder(job["path"], probes, every_n_steps=1, flush_every_s=job["flush_every_s"], wandb=False)
    rec.setup(model)
    phase("train")
    for step in range(start, stop):
        with torch.no_grad():
            model.weight[:, 0] = torch.tensor([float(step), float(sid)])
        rec.maybe_record(model, step, loss=1000.0 * sid + step)
        if step % 5 == 0:
            rec.mark(step, f"s{sid}-{step}")
        if step % 8 == 0:
            rec.flush()
            note(f"committed {step}")
        time.sleep(job["sleep"])
    phase("close")
    rec.close()
    phase("closed")


def serve() -> None:
    import torch  # imported once here; every forked session reuses it

    from trajhook.recording.recorder import probing

    with probing(torch.nn.Linear(1, 1)):  # imports what a probe run needs lazily (numpy.random), once
        pass
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                devnull = os.open(os.devnull, os.O_RDWR)
                os.dup2(devnull, 0)
                os.dup2(devnull, 1)
                err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
                os.dup2(err, 2)
                session(job)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        status = None
        if job.get("kill_after_s") is not None:  # killed here, by its parent: the pid cannot be another process
            deadline = time.monotonic() + job["kill_after_s"]
            while status is None and time.monotonic() < deadline:
                done, code = os.waitpid(pid, os.WNOHANG)
                status = code if done else None
                time.sleep(0.001)
            if status is None:  # not reaped yet, so still this child (a zombie at worst)
                os.kill(pid, signal.SIGKILL)
        if status is None:
            _, status = os.waitpid(pid, 0)
        print(
            json.dumps(
                {
                    "pid": pid,
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
                    "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    serve()
