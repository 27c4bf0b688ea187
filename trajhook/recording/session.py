"""What a Recorder session notes about itself in the store (``/sessions``, see docs/FORMAT.md).

Each Recorder that opens a store, new or resumed, appends one row: when and where it ran, the
command line, the versions, the torch thread count, its metadata, and the git commit of the
script's repository with a dirty flag. The store adds the session's first step at its first write.
"""

from __future__ import annotations

import datetime
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 2.0


def git_state(path: str | os.PathLike, timeout_s: float = GIT_TIMEOUT_S) -> dict[str, Any] | None:
    """``{"commit", "dirty", "root"}`` of the git repository holding ``path`` (a file or a folder).

    None when ``path`` is in no repository, git is missing, or git takes longer than ``timeout_s``.
    ``dirty`` is whether ``git status --porcelain`` lists anything (untracked files too); None if
    that alone timed out.

    >>> import tempfile
    >>> git_state(tempfile.mkdtemp()) is None
    True
    """
    folder = Path(path)
    folder = folder if folder.is_dir() else folder.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},  # status must not take the index lock
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    head = git("rev-parse", "HEAD", "--show-toplevel")
    if head is None or len(head.split()) != 2:
        return None
    commit, root = head.split()
    status = git("status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip()), "root": root}


def script_path(argv: list[str] | None = None) -> Path | None:
    """The file of the running script (``sys.argv[0]``), or None (``python -c``, an interactive session)."""
    argv = sys.argv if argv is None else argv
    if not argv or not argv[0] or argv[0] in ("-c", "-m", "-"):
        return None
    path = Path(argv[0])
    return path.resolve() if path.exists() else None


def versions() -> dict[str, str]:
    """The versions that decide what a run computes: trajhook, torch, numpy, python, h5py."""
    import h5py
    import numpy
    import torch

    from trajhook._version import __version__

    return {
        "trajhook": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "h5py": h5py.__version__,
    }


def session_info(metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """This session's row of ``/sessions``: everything but its first step, which the store adds.

    >>> info = session_info({"lr": 0.1})
    >>> sorted(info)  # doctest: +NORMALIZE_WHITESPACE
    ['argv', 'cwd', 'git', 'host', 'metadata', 'pid', 'started', 'torch_threads', 'versions']
    """
    import torch

    script = script_path()
    return {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "torch_threads": torch.get_num_threads(),
        "versions": versions(),
        "git": None if script is None else git_state(script),
        "metadata": dict(metadata or {}),
    }
