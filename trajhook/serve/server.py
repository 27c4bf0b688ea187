"""``trajhook serve``: check the stores, bind, run uvicorn, print the URL once it accepts connections."""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from trajhook.errors import TrajhookError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def check_stores(paths: Sequence[str | os.PathLike], wait: bool = False, folders: bool = True) -> None:
    """Fail with a one-line TrajhookError on a missing file (unless ``wait``) or a file that is no store.

    With ``folders``, a directory is a folder of runs (:mod:`trajhook.serve.folder`), checked as it is scanned.
    """
    from trajhook.store import check_store

    if not paths:
        raise TrajhookError("serve: no stores given. HINT: trajhook serve RUN.h5 [MORE.h5 ...], or a FOLDER of runs.")
    for path in paths:
        path = Path(path)
        if not path.exists():
            if wait and path.parent.is_dir():
                continue
            raise TrajhookError(
                f"serve: no file at {str(path)!r}. HINT: check the path, or pass --wait to follow a store "
                "that the run has not created yet."
            )
        if path.is_dir():
            if folders:
                continue
            raise TrajhookError(f"serve: {str(path)!r} is a directory. HINT: pass the .h5 store inside it.")
        check_store(path)  # a TrajhookError naming the file if it is not a store


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, or a TrajhookError saying the port is taken."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise TrajhookError(f"serve: cannot resolve --host {host!r} ({err}). HINT: e.g. --host 127.0.0.1.") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, as getaddrinfo says: asyncio sets TCP_NODELAY on accepted sockets only then, and
    # without it every keep-alive response waits ~40 ms for a delayed ACK (Nagle)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise TrajhookError(
                f"serve: port {port} on {host} is in use. HINT: pass another --port, or --port 0 for a free one."
            ) from None
        raise TrajhookError(f"serve: cannot listen on {host}:{port} ({err}). HINT: check --host and --port.") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def one_blas_thread() -> bool:
    """Limit numpy's OpenBLAS to one thread in this process; True if it could.

    The server's numpy work is small (a PCA of a few thousand records), and a multithreaded BLAS on a
    busy machine spins: an SVD of 2,500 x 256 took 3-4 s with 2 threads beside a training job on 2
    cores, 0.2 s with one. The environment variable is read only when numpy loads, before this runs.
    """
    import ctypes

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line})
    except OSError:
        return False
    for path in paths:
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(lib, name):
                getattr(lib, name)(1)
                return True
    return False


def serve(paths: Sequence[str | os.PathLike], host: str = "127.0.0.1", port: int = 8765, wait: bool = False) -> None:
    """Serve the live page until Ctrl-C (or SIGTERM)."""
    from trajhook.extras import require

    require("starlette", "serve", "trajhook serve")
    uvicorn = require("uvicorn", "serve", "trajhook serve")
    from trajhook.serve.app import create_app

    check_stores(paths, wait)
    sock = bind(host, port)
    one_blas_thread()
    token = None if host in LOOPBACK else secrets.token_urlsafe(18)
    shown = socket.gethostname() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{sock.getsockname()[1]}/" + (f"?token={token}" if token else "")
    app = create_app(paths, token=token)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1, access_log=False, lifespan="on")
    server = uvicorn.Server(config)

    async def announce() -> None:
        while not server.started and not server.should_exit:
            await asyncio.sleep(0.02)
        if server.started:
            print(f"trajhook serve: {url}", flush=True)
            print("(Ctrl-C stops it)", file=sys.stderr, flush=True)

    async def main() -> None:
        task = asyncio.create_task(announce())
        await server.serve(sockets=[sock])
        task.cancel()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
