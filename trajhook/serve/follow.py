"""Follow one store while it is written: one SWMR reader thread per file, never blocking the writer.

The thread owns the file's h5py handle: every read of that file (a refresh, a frame) runs on it,
because h5py serialises calls behind one global lock and multi-threaded reads of one file crashed
(NOTES.md, "A live view"). It keeps only what is small per record: the step index, the wall time,
the scalars, each prompt probe's target log-probs, each maze probe's shortest-path agreement
(:func:`~trajhook.analysis.maze.path_agreement`, computed here from the probe's grid as rows arrive),
and a thinned sample (at most :data:`MAX_SAMPLES` rows, by stride doubling, plus the newest) of each
output a PCA panel draws. Maze frames are read from the file when asked for, through a small LRU cache.

What it handles:

- a store that appears after the server starts (``status`` ``"waiting"`` until it does);
- a store rebuilt by ``overwrite=True`` or by a resume's compaction: a new inode, read afresh;
- a resume that drops rows: the ``committed`` generation changes, read afresh;
- a writer killed mid-run: the last committed state stays (``writer`` becomes ``False``);
- which of three states the run is in (``run_status``): ``"writing"`` (a live writer holds the store's
  lock), ``"finished"`` (no writer, and the file was closed cleanly) or ``"writer-gone"`` (no writer,
  and the file is still flagged open for writing: the writer died without closing it). HDF5 sets that
  flag in the superblock when a writer opens the file and clears it at a clean close
  (:func:`open_for_writing_flag`); the store needs no mark of its own;
- a store deleted under it: ``status`` ``"deleted"``, the last state stays.

Every reset bumps ``epoch``: the page then fetches the step index from the start.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MAX_SAMPLES = 2048
FRAME_CACHE = 512
POLL_S = 1.0  # the page polls every 0.5 s, and each poll reads first: this tick is for pages that do not
# The PCA panels: (dataset, probe kinds, title). Each entry draws one panel per probe that records the dataset, every
# run in one basis; the follower keeps a thinned sample of each such dataset in memory for them.
PCA_SOURCES: list[tuple[str, tuple[str, ...], str]] = [
    ("token_loss", ("prompts", "token_loss"), "per-token-loss PCA trajectory (one basis for all runs)"),
    ("vectors", ("maze",), "vector-field PCA trajectory (one basis for all runs)"),
]


def open_for_writing_flag(path: str | os.PathLike) -> bool | None:
    """Whether the HDF5 file at ``path`` is flagged open by a writer (superblock v2/v3 file-consistency
    flags: bit 0 write access, bit 2 SWMR write); None if the superblock is not at offset 0 or is older.

    HDF5 sets the flags when a writer opens the file and clears them when it closes it: a writer that
    was killed leaves them set, which is how a finished run is told from one whose writer is gone.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return None
    if len(head) < 12 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3):
        return None
    return bool(head[11] & 0b101)


class Growing:
    """An append-only array with amortised doubling.

    >>> g = Growing(np.int64)
    >>> g.extend(np.arange(3)); g.extend(np.arange(2)); g.array.tolist()
    [0, 1, 2, 0, 1]
    """

    def __init__(self, dtype: Any, shape: tuple[int, ...] = ()) -> None:
        self._data = np.zeros((16, *shape), dtype)
        self.n = 0

    def extend(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self._data):
            bigger = np.zeros((max(need, 2 * len(self._data)), *self._data.shape[1:]), self._data.dtype)
            bigger[: self.n] = self._data[: self.n]
            self._data = bigger
        self._data[self.n : need] = rows
        self.n = need

    @property
    def array(self) -> np.ndarray:
        return self._data[: self.n]


@dataclass
class Sample:
    """A thinned copy of one probe output: every ``stride``-th record, plus the newest one."""

    stride: int = 1
    index: list[int] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    last: tuple[int, np.ndarray] | None = None

    def add(self, index: np.ndarray, rows: np.ndarray, stride: int = 1) -> None:
        """Take records ``index`` (ascending, the newest last) with their ``rows``, at ``stride`` or coarser."""
        if stride > self.stride:
            self.stride = stride
            keep = [k for k, i in enumerate(self.index) if i % self.stride == 0]
            self.index = [self.index[k] for k in keep]
            self.rows = [self.rows[k] for k in keep]
        for i, row in zip(index.tolist(), rows, strict=True):
            if i % self.stride == 0:
                self.index.append(i)
                self.rows.append(np.asarray(row, dtype=np.float32))
        if len(index):
            self.last = (int(index[-1]), np.asarray(rows[-1], dtype=np.float32))
        while len(self.index) > MAX_SAMPLES:
            self.stride *= 2
            keep = [k for k, i in enumerate(self.index) if i % self.stride == 0]
            self.index = [self.index[k] for k in keep]
            self.rows = [self.rows[k] for k in keep]

    def read(self, ds: Any, start: int, stop: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray, int]:
        """``(index, rows, stride)``: the records ``start..stop-1`` this sample will keep (and the newest),
        read in blocks, so that catching up with a long run never holds all of its rows at once."""
        stride = self.stride
        while -(-stop // stride) > MAX_SAMPLES:
            stride *= 2
        wanted = np.unique(np.r_[np.arange(-(-start // stride) * stride, stop, stride), stop - 1])
        wanted = wanted[(wanted >= start) & (wanted < stop)]
        parts = []
        for first in range(start, stop, block):
            rows = ds[first : min(first + block, stop)]
            pick = wanted[(wanted >= first) & (wanted < first + block)] - first
            parts.append(rows[pick])
        if not parts:
            return wanted, np.zeros((0, *ds.shape[1:]), ds.dtype), stride
        return wanted, np.concatenate(parts), stride

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(record indices, rows)``, the newest record included."""
        index, rows = list(self.index), list(self.rows)
        if self.last is not None and (not index or index[-1] != self.last[0]):
            index.append(self.last[0])
            rows.append(self.last[1])
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0,), np.float32)
        return np.asarray(index, np.int64), np.stack(rows)


@dataclass
class Snapshot:
    """What a follower knows about its store at one moment (arrays are not copied: treat as read-only)."""

    status: str  # "waiting" | "live" | "deleted" | "error"
    message: str
    run_status: str  # "waiting" | "writing" | "finished" | "writer-gone" | "deleted" | "error"
    epoch: int
    writer: bool
    steps: np.ndarray
    wall: np.ndarray  # each record's wall time (unix seconds)
    probes: dict[str, dict[str, Any]]
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]
    events: list[tuple[int, str]]
    targets: dict[str, np.ndarray]
    samples: dict[str, tuple[np.ndarray, np.ndarray]]  # "probe/dataset" -> (record indices, rows)
    attrs: dict[str, Any]
    # maze probe -> (agreement with the way to the cheese per record, chance, the same towards the top-right corner)
    agreement: dict[str, tuple[np.ndarray, float, np.ndarray]] = field(default_factory=dict)


class Follower:
    """Follows the store at ``path`` on its own daemon thread; see the module docstring.

    ``snapshot()`` is cheap and safe from any thread; ``frame(probe, step)`` runs on the reader thread.
    ``start=False`` (the static report) reads once, on the calling thread, with :meth:`refresh`.
    """

    def __init__(self, path: str | os.PathLike, poll_s: float = POLL_S, start: bool = True) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._file: Any = None
        self._inode: tuple[int, int] | None = None
        self._epoch = 0
        self._status, self._message, self._writer = "waiting", "waiting for the file to appear", False
        self._flagged_open = False
        self._on_path: dict[str, tuple[np.ndarray, float]] = {}
        self._frames: collections.OrderedDict = collections.OrderedDict()
        self._reset()
        self._thread: threading.Thread | None = None
        if start:
            self._thread = threading.Thread(target=self._run, name=f"trajhook-follow-{self.path.name}", daemon=True)
            self._thread.start()

    # -- the public side --------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(
                self._status,
                self._message,
                self._run_status(),
                self._epoch,
                self._writer,
                self._steps.array,
                self._wall.array,
                self._probes,
                {k: (s.array, v.array) for k, (s, v) in self._scalars.items()},
                list(self._events),
                {k: g.array for k, g in self._targets.items()},
                {k: s.arrays() for k, s in self._samples.items()},
                dict(self._attrs),
                {k: (g.array[:, 0], self._on_path[k][1], g.array[:, 1]) for k, g in self._agreement.items()},
            )

    def _run_status(self) -> str:
        if self._status != "live":
            return self._status
        if self._writer:
            return "writing"
        return "writer-gone" if self._flagged_open else "finished"

    def call(self, job: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Run ``job()`` on the reader thread (or here, without one) and return its result."""
        if self._thread is None:
            return job()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future.result(timeout)

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._thread is None:
            future.set_result(job())
        else:
            self._jobs.put((job, future))
        return future

    def frame(self, probe: str, step: int) -> bytes | None:
        """The binary frame (:func:`~trajhook.serve.frames.encode_frame`) of ``probe`` at recorded ``step``;
        None if that step is not recorded or the probe is not a maze probe. Call on the reader thread."""
        from trajhook.serve.frames import encode_frame

        key = (self._epoch, probe, int(step))
        if key in self._frames:
            self._frames.move_to_end(key)
            return self._frames[key]
        steps = self._steps.array
        if not len(steps) or step > steps[-1]:
            self.refresh()  # asked for a record newer than the last read: catch up first
            steps = self._steps.array
        info = self._probes.get(probe)
        i = int(np.searchsorted(steps, step, side="left"))
        if info is None or info["kind"] != "maze" or i >= len(steps) or steps[i] != step or self._file is None:
            return None
        group = self._file["probes"][probe]
        vectors = group["vectors"][i]
        probs = group["direction_probs"][i] if "direction_probs" in group else None
        blob = encode_frame(int(step), vectors, probs)
        self._frames[key] = blob
        while len(self._frames) > FRAME_CACHE:
            self._frames.popitem(last=False)
        return blob

    def stop(self) -> None:
        self._stop.set()
        self._jobs.put(None)
        if self._thread is not None:
            self._thread.join(5)
        self._close()

    # -- the reader thread -----------------------------------------------------------------------

    def _run(self) -> None:
        self.refresh()  # read the store at once, not a tick later: the server's PCA warm-up waits for it
        while not self._stop.is_set():
            try:
                item = self._jobs.get(timeout=self.poll_s)
            except queue.Empty:
                item = "tick"
            if item is None:
                break
            if item != "tick":
                job, future = item
                try:
                    future.set_result(job())
                except BaseException as err:  # handed to the caller
                    future.set_exception(err)
                continue
            self.refresh()

    def refresh(self) -> None:
        """Catch up with the file: open, reopen or reset as needed, then read the new rows."""
        from trajhook.errors import TrajhookError

        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            self._close()
            with self._lock:
                if self._inode is not None or self._status == "deleted":
                    self._status, self._message = "deleted", "the store was deleted; showing the last state read"
                else:
                    self._status, self._message = "waiting", "waiting for the file to appear"
                self._writer = False
            return
        inode = (stat.st_dev, stat.st_ino)
        if self._file is not None and inode != self._inode:
            self._close()  # rebuilt (overwrite=True, a resume's compaction): a new file
        try:
            if self._file is None:
                self._open(inode)
            self._read_new()
        except TrajhookError as err:
            self._close()
            with self._lock:
                self._status, self._message = "error", str(err).split(" HINT:")[0]
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            self._close()  # a writer mid-reopen: keep the last state, try again next tick
            with self._lock:
                self._message = f"reading paused: {type(err).__name__}: {err}"

    def _open(self, inode: tuple[int, int]) -> None:
        from trajhook.store import guess_kind, members, open_for_reading

        file = open_for_reading(self.path)
        self._file = file
        if inode != self._inode:
            self._inode = inode
            self._reset()
        attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in members(file.attrs)}
        probes: dict[str, dict[str, Any]] = {}
        for name, group in members(file["probes"]):
            static = file["static"][name]
            meta = json.loads(static.attrs["metadata"])
            meta.update({k: ds[()] for k, ds in members(static)})
            outputs = {key: (tuple(ds.shape[1:]), str(ds.dtype)) for key, ds in members(group)}
            kind = static.attrs.get("kind")
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if not kind or kind == "custom":  # format 1, or a custom probe with a maze's or prompts' outputs
                kind = guess_kind(list(outputs), meta)
            probes[name] = {"kind": str(kind), "metadata": meta, "outputs": outputs}
        on_path = {}
        for name, info in probes.items():  # the maze probes' shortest-path moves, for their agreement
            meta = info["metadata"]
            if info["kind"] == "maze" and "direction_probs" in info["outputs"] and meta.get("cheese") is not None:
                from trajhook.analysis.maze import chance_agreement, corner_cell, shortest_path_moves

                grid, cells = np.asarray(meta["grid"]), np.asarray(meta["cells"])
                moves = shortest_path_moves(grid, tuple(meta["cheese"]), cells)
                on_path[name] = (moves, chance_agreement(moves), shortest_path_moves(grid, corner_cell(grid), cells))
        with self._lock:
            self._on_path = on_path
            self._attrs = attrs
            self._probes = probes

    def _reset(self) -> None:
        """Forget every row read: the next read starts from row 0 under a new epoch."""
        with self._lock:
            self._epoch += 1
            self._generation: int | None = None
            self._counts = [0, 0, 0, 0]
            self._steps = Growing(np.int64)
            self._wall = Growing(np.float64)
            self._agreement: dict[str, Growing] = {}
            self._scalar_names: list[str] = []
            self._scalars: dict[str, tuple[Growing, Growing]] = {}
            self._events: list[tuple[int, str]] = []
            self._targets: dict[str, Growing] = {}
            self._samples: dict[str, Sample] = {}
            self._frames.clear()
            if not hasattr(self, "_probes"):
                self._probes, self._attrs = {}, {}

    def _read_new(self) -> None:
        from trajhook.store import EVENTS, GENERATION, RECORDS, SCALAR_NAMES, SCALARS
        from trajhook.store.lock import writer_alive

        file = self._file
        committed = file["committed"]
        committed.refresh()
        counts = [int(c) for c in committed[:]]
        generation = counts[GENERATION] if len(counts) > GENERATION else 0
        if self._generation is not None and (generation != self._generation or counts[RECORDS] < self._counts[RECORDS]):
            self._reset()  # a resume dropped rows: they may have been rewritten
        writer = writer_alive(self.path)
        flagged = open_for_writing_flag(self.path)
        if flagged is None:  # no superblock flags to read: a lock file left behind says a writer died
            from trajhook.store.lock import lock_path

            flagged = lock_path(self.path).exists()
        old = self._counts
        if counts[:4] == old and self._generation is not None:
            with self._lock:
                self._status, self._writer, self._flagged_open = "live", writer, flagged
                self._message = ""
            return

        def rows(name: str, start: int, stop: int) -> np.ndarray:
            ds = file[name]
            ds.refresh()
            return ds[start:stop]

        n0, n1 = old[RECORDS], counts[RECORDS]
        new_steps = rows("steps", n0, n1)
        new_wall = rows("wall_time", n0, n1)
        new_agreement = {}
        for name, (moves, _, corner_moves) in self._on_path.items():
            from trajhook.analysis.maze import path_agreement

            ds = file[f"probes/{name}/direction_probs"]
            ds.refresh()
            # blocks of 256 records (1.7 MB for 337 cells): larger blocks left ~16 MB in the heap after a catch-up
            blocks = [ds[a : min(a + 256, n1)] for a in range(n0, n1, 256)]
            parts = [np.stack([np.atleast_1d(path_agreement(b, m)) for m in (moves, corner_moves)], 1) for b in blocks]
            new_agreement[name] = np.concatenate(parts) if parts else np.zeros((0, 2))
        new_targets = {}
        new_samples = {}
        sampled = {dataset for dataset, _, _ in PCA_SOURCES}
        for name, info in self._probes.items():
            if "target_logprob" in info["outputs"]:
                new_targets[name] = rows(f"probes/{name}/target_logprob", n0, n1)
            for dataset in sampled:  # what the PCA panels draw: thinned, kept in memory
                if dataset in info["outputs"]:
                    key = f"{name}/{dataset}"
                    ds = file[f"probes/{name}/{dataset}"]
                    ds.refresh()
                    new_samples[key] = self._samples.get(key, Sample()).read(ds, n0, n1)
            for key in info["outputs"]:
                file[f"probes/{name}/{key}"].refresh()  # frames read these later
        names = [b.decode() for b in rows("scalars/names", 0, counts[SCALAR_NAMES])]
        s0, s1 = old[SCALARS], counts[SCALARS]
        scalar_steps, keys, values = (rows(f"scalars/{k}", s0, s1) for k in ("step", "key", "value"))
        events = list(
            zip(
                rows("events/step", 0, counts[EVENTS]).tolist(),
                [b.decode() for b in rows("events/label", 0, counts[EVENTS])],
                strict=True,
            )
        )
        committed.refresh()
        if [int(c) for c in committed[:]][GENERATION:] != counts[GENERATION:]:
            return  # a resume rewrote rows meanwhile: read again next tick
        with self._lock:
            self._steps.extend(new_steps)
            self._wall.extend(new_wall)
            for name, shares in new_agreement.items():
                self._agreement.setdefault(name, Growing(np.float32, (2,))).extend(shares)  # to the cheese, corner
            for name, lp in new_targets.items():
                self._targets.setdefault(name, Growing(np.float32, lp.shape[1:])).extend(lp)
            for name, (index, sample_rows, stride) in new_samples.items():
                self._samples.setdefault(name, Sample()).add(index, sample_rows, stride)
            for i, name in enumerate(names):
                mask = keys == i
                if name not in self._scalars:
                    self._scalars[name] = (Growing(np.int64), Growing(np.float32))
                self._scalars[name][0].extend(scalar_steps[mask])
                self._scalars[name][1].extend(values[mask])
            self._events = events
            self._counts = counts[:4]
            self._generation = generation
            self._status, self._writer, self._flagged_open = "live", writer, flagged
            self._message = ""

    def _close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):  # a handle of a vanished file: nothing to save
                self._file.close()
            self._file = None
