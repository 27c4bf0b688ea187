"""Every Recorder session is in the store: ``log.sessions`` and ``trajhook info`` (issue 22, point 4)."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

import trajhook
from trajhook import Recorder, TensorProbe, load
from trajhook.store.format import SESSION_BYTES, session_row


def probe() -> TensorProbe:
    return TensorProbe("lin", torch.ones(1, 2))


def info(path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "trajhook.cli", "info", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.timeout(120)
def test_two_sessions_each_with_its_first_step_threads_and_metadata(tmp_path):
    path = tmp_path / "run.h5"
    model = torch.nn.Linear(2, 1)
    threads = torch.get_num_threads()
    with Recorder(path, [probe()], every_n_steps=5, wandb=False, metadata={"lr": 0.1}) as rec:
        for step in range(12):
            rec.maybe_record(model, step, loss=1.0)
    other = 1 if threads != 1 else 2
    torch.set_num_threads(other)
    try:  # the second session: another thread count, other metadata, resumed at step 12
        with Recorder(path, [probe()], every_n_steps=5, wandb=False, metadata={"lr": 0.05}) as rec:
            for step in range(12, 30):
                rec.maybe_record(model, step, loss=1.0)
    finally:
        torch.set_num_threads(threads)
    log = load(path)
    first, second = log.sessions
    assert (first["first_step"], second["first_step"]) == (12 - 12, 12)
    assert (first["torch_threads"], second["torch_threads"]) == (threads, other)
    assert (first["metadata"], second["metadata"]) == ({"lr": 0.1}, {"lr": 0.05})
    assert log.metadata == {"lr": 0.1}  # the root attribute stays the first session's
    for session in log.sessions:
        assert session["argv"] == sys.argv and session["host"] == socket.gethostname()
        assert session["versions"] == {
            "trajhook": trajhook.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "h5py": h5py.__version__,
        }
    lines = [line for line in info(path).splitlines() if line.startswith("session")]
    assert len(lines) == 2
    assert lines[0].startswith("session 1 from step 0: ") and lines[1].startswith("session 2 from step 12: ")
    assert f"torch threads {threads}," in lines[0] and f"torch threads {other}," in lines[1]
    assert f"torch {torch.__version__}" in lines[1] and socket.gethostname() in lines[1]


@pytest.mark.timeout(120)
def test_a_session_that_wrote_nothing_and_a_rewind_keep_their_rows(tmp_path):
    path = tmp_path / "run.h5"
    model = torch.nn.Linear(2, 1)
    with Recorder(path, [probe()], every_n_steps=5, wandb=False) as rec:
        for step in range(30):
            rec.maybe_record(model, step)
    with Recorder(path, [probe()], every_n_steps=5, wandb=False) as rec:
        rec.setup(model)  # opened and closed, no write
    dropped = pytest.warns(UserWarning, match=r"dropped 4 record\(s\) at step >= 10")
    with dropped, Recorder(path, [probe()], every_n_steps=5, wandb=False) as rec:  # from an earlier checkpoint
        rec.maybe_record(model, 10)
    log = load(path)
    assert [s["first_step"] for s in log.sessions] == [0, None, 10]  # the history stays whole
    assert log.steps.tolist() == [0, 5, 10]
    assert "session 2 wrote nothing: " in info(path)


def git(repo, *args) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


SCRIPT = """
    import sys, torch, trajhook
    with trajhook.Recorder(sys.argv[1], [trajhook.TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
        rec.record(torch.nn.Linear(2, 1), int(sys.argv[2]))
"""


@pytest.mark.timeout(180)
def test_the_git_commit_and_dirty_flag_of_the_scripts_repository(tmp_path):
    repo, store = tmp_path / "repo", tmp_path / "run.h5"
    (repo / "src").mkdir(parents=True)
    script = repo / "src" / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    git(repo, "init", "-q")
    git(repo, "add", "src/train.py")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")

    def run(step: int, cwd) -> None:  # run from another folder: the script's repository counts, not the cwd's
        subprocess.run([sys.executable, str(script), str(store), str(step)], cwd=cwd, check=True, timeout=120)

    run(0, tmp_path)
    (repo / "notes.txt").write_text("an untracked file makes the tree dirty")
    run(1, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "train.py").write_text(textwrap.dedent(SCRIPT))
    subprocess.run([sys.executable, str(outside / "train.py"), str(store), "2"], cwd=repo, check=True, timeout=120)
    clean, dirty, none = load(store).sessions
    assert clean["git"] == {"commit": head, "dirty": False, "root": str(repo.resolve())}
    assert dirty["git"] == {"commit": head, "dirty": True, "root": str(repo.resolve())}
    assert none["git"] is None  # a script in no repository (though run from inside one)
    assert clean["argv"] == [str(script), str(store), "0"]
    lines = [line for line in info(store).splitlines() if line.startswith("session")]
    assert f"git {head}," not in lines[0] and f"git {head}: " in lines[0]
    assert f"git {head} (dirty): " in lines[1] and "git " not in lines[2]


def test_a_long_command_line_is_shortened_to_fit_its_row():
    argv = ["train.py"] + [f"--option{i}={'x' * 500}" for i in range(100)]
    row = session_row({"argv": argv, "host": "vm", "torch_threads": 2})
    session = json.loads(row)
    assert len(row) <= SESSION_BYTES and session["host"] == "vm" and session["torch_threads"] == 2
    assert session["argv"][0] == "train.py" and len(session["argv"]) == 101
    assert session["argv"][1].endswith("...") and argv[1].startswith(session["argv"][1][:-3])
