"""``trajhook.show("runs/log.h5")``: the live page inline in a notebook, as ``%tensorboard`` does.

The server runs in a subprocess (``trajhook serve --port 0 --wait``), so its h5py reader never
contends with a training loop in the kernel for h5py's global lock (NOTES.md, "A live view").
One server per set of stores is started and reused; all of them stop when the kernel exits.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajhook.errors import TrajhookError

_SERVERS: dict[tuple[str, ...], tuple[subprocess.Popen, str]] = {}


def start_server(paths: Sequence[str | os.PathLike], timeout: float = 60.0) -> str:
    """Start (or reuse) a background ``trajhook serve`` on 127.0.0.1 for ``paths``; returns its URL."""
    key = tuple(str(Path(p).resolve()) for p in paths)
    if key in _SERVERS and _SERVERS[key][0].poll() is None:
        return _SERVERS[key][1]
    command = [sys.executable, "-m", "trajhook.cli", "serve", *key, "--port", "0", "--wait"]
    errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 (kept open by the server) a full pipe would stall it
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0].startswith("trajhook serve: "):
        process.kill()
        process.wait(5)
        errors.seek(0)
        error = errors.read().strip().splitlines()
        raise TrajhookError(
            f"show: the server did not start ({error[-1] if error else 'no answer in time'}). "
            "HINT: run `trajhook serve` on the same files in a terminal to see why."
        )
    url = lines[0].split(": ", 1)[1].strip()
    _SERVERS[key] = (process, url)
    return url


def show(paths: str | os.PathLike | Sequence[str | os.PathLike], height: int = 900) -> Any:
    """Display the live page of one or more stores (or a folder of runs) in the notebook; returns the IFrame shown.

    The stores may not exist yet: the page waits for them. A folder serves every store under it, and
    each new one within two seconds.
    """
    from trajhook.extras import require

    display = require("IPython.display", "serve", "trajhook.show")
    paths = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    frame = display.IFrame(start_server(paths), width="100%", height=height)
    display.display(frame)
    return frame


def stop_all() -> None:
    """Stop every server :func:`show` started."""
    for process, _ in _SERVERS.values():
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
    _SERVERS.clear()


atexit.register(stop_all)
