"""One writer per store: a lock file beside it, ``<store>.lock``, naming the writer's host and pid.

The writer holds an exclusive ``flock`` on the lock file while it writes. The kernel drops
that lock when the process dies, even by SIGKILL, so a stale lock file never blocks the next
run: the next writer takes the lock and overwrites the file's contents. Where the filesystem
has no locks at all (some NFS mounts without a lock daemon), the pid and host in the file
decide instead: a writer on this host that is no longer alive is stale; a writer on another
host cannot be checked, so it blocks until its lock file is deleted.

>>> import tempfile
>>> store = tempfile.mkdtemp() + "/run.h5"
>>> first = WriterLock.acquire(store)
>>> WriterLock.acquire(store)
Traceback (most recent call last):
...
trajhook.errors.TrajhookError: Recorder: ...run.h5' is already being written by this process (...
>>> first.release()
>>> WriterLock.acquire(store).release()
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

from trajhook.errors import TrajhookError

_held: dict[str, WriterLock] = {}  # real path of the store -> the lock this process holds on it
_held_guard = threading.Lock()
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def lock_path(store: str | os.PathLike) -> Path:
    """The lock file of a store: ``run.h5`` -> ``run.h5.lock``."""
    store = Path(store)
    return store.with_name(store.name + ".lock")


def _read(fd: int) -> dict[str, Any]:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        return {}


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the writer named in a lock file may still be running (always True on another host)."""
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True  # no way to check a process on another machine
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    since = f", since {holder['since']}" if "since" in holder else ""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}{since}"


def writer_alive(store: str | os.PathLike) -> bool:
    """Whether a live writer holds ``store`` now, judged from its lock file; takes no lock.

    Readers use it to tell a store that a writer is reopening (wait a moment) from a corrupt one.
    """
    key = os.path.realpath(store)
    if key in _held:
        return True
    try:
        fd = os.open(lock_path(store), os.O_RDONLY)
    except OSError:
        return False
    try:
        return _alive(_read(fd))
    finally:
        os.close(fd)


class WriterLock:
    """The lock one writer holds on one store; ``release()`` it when the store is closed."""

    def __init__(self, store: Path, fd: int) -> None:
        self.store = store
        self.path = lock_path(store)
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, store: str | os.PathLike) -> WriterLock:
        """Take the store's lock, or raise a TrajhookError naming the writer that holds it."""
        store = Path(store)
        key = os.path.realpath(store)
        with _held_guard:
            if key in _held:
                raise TrajhookError(
                    f"Recorder: {str(store)!r} is already being written by this process (host "
                    f"{socket.gethostname()}, pid {os.getpid()}), by another Recorder that is still open. "
                    "Two writers would lose data. HINT: close() the other Recorder first, or use another path."
                )
            for _ in range(10):  # retried only if the holder released (unlinked) the file meanwhile
                lock = cls._try_acquire(store)
                if lock is not None:
                    _held[key] = lock
                    return lock
        raise TrajhookError(
            f"Recorder: could not lock {str(store)!r}: its lock file {str(lock_path(store))!r} keeps changing. "
            "HINT: another process is opening this store again and again; use another path."
        )

    @classmethod
    def _try_acquire(cls, store: Path) -> WriterLock | None:
        path = lock_path(store)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise TrajhookError(
                f"Recorder: cannot create the lock file {str(path)!r} ({err.strerror}). "
                "HINT: the store's folder must be writable."
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    cls._refuse(store, _read(fd))
                if err.errno not in _NO_LOCKS:
                    raise
                holder = _read(fd)  # no locks on this filesystem: judge by the pid and host
                if _alive(holder) and not (
                    holder.get("host") == socket.gethostname() and holder.get("pid") == os.getpid()
                ):
                    cls._refuse(store, holder)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if not same:  # the holder released and unlinked it between our open and flock
                os.close(fd)
                return None
            now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            info = {"host": socket.gethostname(), "pid": os.getpid(), "since": now}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(info).encode(), 0)
            except OSError:  # e.g. a full disk: the flock alone still keeps a second writer out
                pass
            return cls(store, fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise

    @staticmethod
    def _refuse(store: Path, holder: dict[str, Any]) -> None:
        raise TrajhookError(
            f"Recorder: {str(store)!r} is being written by another process ({_describe(holder)}). "
            "Two writers on one store would lose data. HINT: stop that run first, or pass another path; "
            f"if that process is gone (e.g. on another machine over NFS), delete {str(lock_path(store))!r}."
        )

    def release(self) -> None:
        """Give the lock up and delete the lock file. Safe to call twice."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                os.unlink(self.path)  # while still locked: the next writer retries on the new file
        except OSError:
            pass
        finally:
            os.close(fd)
            with _held_guard:
                _held.pop(os.path.realpath(self.store), None)
