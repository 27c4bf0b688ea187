"""A folder of runs for ``trajhook serve FOLDER``: every trajhook store under it, new ones as they appear.

As TensorBoard's logdir: the server rescans the folder (at most once a second, when a page asks) and
adds each new store as the next run; a run keeps its index for the server's life, also when its file
is deleted. The safety rules of a single store hold for a folder:

- only files named ``*.h5`` or ``*.hdf5`` are looked at, and only trajhook stores are followed: a file
  that is not one is skipped with one line on stderr (once; again only if it changes);
- a symlink whose target lies outside the folder is not followed, nor is a symlinked directory;
  a store reached twice (through a symlink inside the folder) is one run;
- the page addresses runs by index, never by a path.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

SUFFIXES = (".h5", ".hdf5")


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path``, symlinks resolved, lies inside ``folder`` (symlinks resolved).

    >>> is_inside("/tmp/a/b.h5", "/tmp/a"), is_inside("/tmp/a/../b.h5", "/tmp/a")
    (True, False)
    """
    root = os.path.realpath(folder)
    return os.path.commonpath([root, os.path.realpath(path)]) == root


class Folder:
    """The stores under ``root``; :meth:`scan` returns the ones not seen before, in path order."""

    def __init__(self, root: str | os.PathLike, say: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self._real = os.path.realpath(self.root)
        self._seen: set[str] = set()  # real paths of the stores found
        self._skipped: dict[str, tuple[float, int]] = {}  # real path -> (mtime, size) when it was skipped
        self._say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    def candidates(self) -> list[Path]:
        """Files under the folder that may be stores: by name, inside the folder once symlinks are resolved."""
        found = []
        for top, dirs, files in os.walk(self.root, followlinks=False):  # a symlinked directory is not entered
            dirs.sort()
            for name in sorted(files):
                path = Path(top) / name
                if path.suffix.lower() in SUFFIXES and is_inside(path, self._real):
                    found.append(path)
        return found

    def scan(self) -> list[Path]:
        """The stores that appeared since the last scan."""
        from trajhook.errors import TrajhookError
        from trajhook.store import check_store
        from trajhook.store.lock import writer_alive

        new = []
        for path in self.candidates():
            real = os.path.realpath(path)
            if real in self._seen:
                continue
            try:
                stat = os.stat(real)
            except OSError:
                continue
            if self._skipped.get(real) == (stat.st_mtime, stat.st_size):
                continue
            try:
                check_store(real)
            except (TrajhookError, OSError) as err:
                if writer_alive(real):
                    continue  # a store being created: look again at the next scan
                self._skipped[real] = (stat.st_mtime, stat.st_size)
                reason = str(err).split(" HINT:")[0].strip()
                self._say(f"trajhook serve: skipped {path}: {reason}")
                continue
            self._seen.add(real)
            self._skipped.pop(real, None)
            new.append(path)
        return new

    def name(self, path: Path) -> str:
        """The run's name: its path under the folder, without the suffix."""
        return str(path.relative_to(self.root).with_suffix(""))
