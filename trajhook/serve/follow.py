"""Follow one store while it is written: one SWMR reader thread per file, never blocking the writer.

The thread owns the file's :class:`~trajhook.store.reader.StoreFollower`, which reads the file (its
new committed rows under the store's seqlock, its metadata and probe kinds) and holds its h5py
handle between polls: every read of that file (a refresh, a frame) runs on this thread,
because h5py serialises calls behind one global lock and multi-threaded reads of one file crashed
(NOTES.md, "A live view"). It keeps only what is small per record: the step index, the wall time,
the scalars, each prompt probe's target log-probs, each maze probe's shortest-path agreement
(:func:`~trajhook.analysis.maze.path_agreement`, computed here from the probe's grid as rows arrive),
and an evenly thinned sample (at most :data:`MAX_SAMPLES` rows, :mod:`~trajhook.analysis.thinned`, plus the
newest) of each output a PCA panel draws. Maze frames are read from the file when asked for, through a small LRU cache.

What it handles:

- a store that appears after the server starts (``status`` ``"waiting"`` until it does);
- a store rebuilt by ``overwrite=True`` or by a resume's compaction: a new inode, read afresh;
- a resume that drops rows: the ``committed`` generation changes, read afresh;
- a writer killed mid-run: the last committed state stays (``writer`` becomes ``False``);
- which of three states the run is in (``run_status``): ``"writing"`` (a live writer holds the store's
  lock), ``"finished"`` (no writer, and the file was closed cleanly) or ``"writer-gone"`` (no writer,
  and the file is still flagged open for writing: the writer died without closing it). HDF5 sets that
  flag in the superblock when a writer opens the file and clears it at a clean close
  (:func:`~trajhook.store.h5.open_for_writing_flag`); the store needs no mark of its own;
- a store deleted under it: ``status`` ``"deleted"``, the last state stays.

Every reset bumps ``epoch``: the page then fetches the step index from the start.
"""

from __future__ import annotations

import collections
import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trajhook.analysis.thinned import Thinned, thinned_indices
from trajhook.store.reader import StoreFollower

MAX_SAMPLES = 2048
FRAME_CACHE = 512
POLL_S = 1.0  # the page polls every 0.5 s, and each poll reads first: this tick is for pages that do not
# The PCA panels: (dataset, probe kinds, title). Each entry draws one panel per probe that records the dataset, every
# run in one basis; the follower keeps a thinned sample of each such dataset in memory for them.
PCA_SOURCES: list[tuple[str, tuple[str, ...], str]] = [
    ("token_loss", ("prompts", "token_loss"), "per-token-loss PCA trajectory (one basis for all runs)"),
    ("vectors", ("maze",), "vector-field PCA trajectory (one basis for all runs)"),
]


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
    """One probe output's records for the PCA panels: an evenly thinned sample of at most :data:`MAX_SAMPLES`
    (:class:`~trajhook.analysis.thinned.Thinned`, the record indices as its steps), plus the newest record."""

    kept: Thinned = field(default_factory=lambda: Thinned(MAX_SAMPLES))
    newest: tuple[int, np.ndarray] | None = None

    def read(self, ds: Any, start: int, stop: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """``(index, rows)``: the records ``start..stop-1`` this sample keeps after ``stop`` records, and the
        newest, read in blocks, so that catching up with a long run never holds all of its rows at once."""
        wanted = thinned_indices(stop, self.kept.capacity, start)
        wanted = np.union1d(wanted, [stop - 1]) if stop > start else wanted
        parts = []
        for first in range(start, stop, block):
            rows = ds[first : min(first + block, stop)]
            pick = wanted[(wanted >= first) & (wanted < first + block)] - first
            parts.append(rows[pick])
        if not parts:
            return wanted, np.zeros((0, *ds.shape[1:]), ds.dtype)
        return wanted, np.concatenate(parts)

    def add(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Take what :meth:`read` returned for the records after those taken so far."""
        if not len(index):
            return
        stop = int(index[-1]) + 1
        keep = np.isin(index, thinned_indices(stop, self.kept.capacity, self.kept.seen))
        self.kept.extend(stop, index[keep], rows[keep])
        self.newest = (stop - 1, np.asarray(rows[-1], dtype=np.float32))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(record indices, rows)``, the newest record included (new arrays)."""
        if self.newest is None:
            return np.zeros(0, np.int64), np.zeros((0,), np.float32)
        newest, row = self.newest
        index = self.kept.kept_steps().copy()
        rows = self.kept.kept_rows().reshape(len(index), *row.shape)
        if len(index) and index[-1] == newest:
            return index, rows.copy()
        return np.append(index, newest), np.concatenate([rows, row[None]])


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
        self._reader = StoreFollower(self.path)
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
        if info is None or info["kind"] != "maze" or i >= len(steps) or steps[i] != step or not self._reader.is_open:
            return None
        vectors = self._reader.rows(probe, "vectors", i, i + 1)[0]
        has_probs = "direction_probs" in info["outputs"]
        probs = self._reader.rows(probe, "direction_probs", i, i + 1)[0] if has_probs else None
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
        self._reader.close()

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

        inode = self._reader.identity()
        if inode is None:
            self._reader.close()
            with self._lock:
                if self._inode is not None or self._status == "deleted":
                    self._status, self._message = "deleted", "the store was deleted; showing the last state read"
                else:
                    self._status, self._message = "waiting", "waiting for the file to appear"
                self._writer = False
            return
        if self._reader.is_open and inode != self._inode:
            self._reader.close()  # rebuilt (overwrite=True, a resume's compaction): a new file
        try:
            if not self._reader.is_open:
                self._open(inode)
            self._read_new()
        except TrajhookError as err:
            self._reader.close()
            with self._lock:
                self._status, self._message = "error", str(err).split(" HINT:")[0]
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
            self._reader.close()  # a writer mid-reopen, a resume mid-read: keep the last state, try again next tick
            with self._lock:
                self._message = f"reading paused: {type(err).__name__}: {err}"

    def _open(self, inode: tuple[int, int]) -> None:
        from trajhook.store import guess_kind

        self._reader.open()
        self._inode = inode
        probes: dict[str, dict[str, Any]] = {}
        for name, layout in self._reader.probes.items():
            kind = layout.kind
            if kind == "custom":  # a custom probe with a maze's or prompts' outputs is drawn as one
                kind = guess_kind(list(layout.outputs), layout.metadata)
            probes[name] = {"kind": kind, "metadata": layout.metadata, "outputs": layout.outputs}
        on_path = {}
        for name, info in probes.items():  # the maze probes' shortest-path moves, for their agreement
            meta = info["metadata"]
            if info["kind"] == "maze" and "direction_probs" in info["outputs"] and meta.get("cheese") is not None:
                from trajhook.analysis.maze import chance_agreement, cheese_and_corner_ways

                grid, cells = np.asarray(meta["grid"]), np.asarray(meta["cells"])
                moves, corner_moves = cheese_and_corner_ways(grid, cells, tuple(meta["cheese"]))
                on_path[name] = (moves, chance_agreement(moves), corner_moves)
        with self._lock:
            self._on_path = on_path
            self._attrs = dict(self._reader.attrs)
            self._probes = probes

    def _reset(self) -> None:
        """Forget every row read: the next read starts from row 0 under a new epoch."""
        with self._lock:
            self._epoch += 1
            self._steps = Growing(np.int64)
            self._wall = Growing(np.float64)
            self._agreement: dict[str, Growing] = {}
            self._scalars: dict[str, tuple[Growing, Growing]] = {}
            self._events: list[tuple[int, str]] = []
            self._targets: dict[str, Growing] = {}
            self._samples: dict[str, Sample] = {}
            self._frames.clear()
            if not hasattr(self, "_probes"):
                self._probes, self._attrs = {}, {}

    def _read_probes(self, n0: int, n1: int) -> tuple[dict, dict, dict]:
        """What this follower keeps of records ``n0..n1-1``: each maze probe's agreement, each prompt
        probe's target log-probs, and the thinned samples of the PCA panels' outputs."""
        from trajhook.analysis.maze import path_agreement

        new_agreement = {}
        for name, (moves, _, corner_moves) in self._on_path.items():
            probs = self._reader.output(name, "direction_probs")
            # blocks of 256 records (1.7 MB for 337 cells): larger blocks left ~16 MB in the heap after a catch-up
            blocks = [probs[a : min(a + 256, n1)] for a in range(n0, n1, 256)]
            parts = [np.stack([np.atleast_1d(path_agreement(b, m)) for m in (moves, corner_moves)], 1) for b in blocks]
            new_agreement[name] = np.concatenate(parts) if parts else np.zeros((0, 2))
        new_targets = {}
        new_samples = {}
        sampled = {dataset for dataset, _, _ in PCA_SOURCES}
        for name, info in self._probes.items():
            if "target_logprob" in info["outputs"]:
                new_targets[name] = self._reader.rows(name, "target_logprob", n0, n1)
            for dataset in sampled:  # what the PCA panels draw: thinned, kept in memory
                if dataset in info["outputs"]:
                    key = f"{name}/{dataset}"
                    sample = self._samples.get(key) or Sample()
                    new_samples[key] = sample.read(self._reader.output(name, dataset), n0, n1)
        return new_agreement, new_targets, new_samples

    def _read_new(self) -> None:
        new = self._reader.read_new(self._read_probes)
        writer, flagged = self._reader.writer()
        if new is None:
            with self._lock:
                self._status, self._writer, self._flagged_open = "live", writer, flagged
                self._message = ""
            return
        if new.reset:
            self._reset()  # a new file, or a resume dropped rows that may have been rewritten
        new_agreement, new_targets, new_samples = new.probes
        with self._lock:
            self._steps.extend(new.steps)
            self._wall.extend(new.wall_time)
            for name, shares in new_agreement.items():
                self._agreement.setdefault(name, Growing(np.float32, (2,))).extend(shares)  # to the cheese, corner
            for name, lp in new_targets.items():
                self._targets.setdefault(name, Growing(np.float32, lp.shape[1:])).extend(lp)
            for name, (index, sample_rows) in new_samples.items():
                self._samples.setdefault(name, Sample()).add(index, sample_rows)
            for i, name in enumerate(new.scalar_names):
                mask = new.scalar_keys == i
                if name not in self._scalars:
                    self._scalars[name] = (Growing(np.int64), Growing(np.float32))
                self._scalars[name][0].extend(new.scalar_steps[mask])
                self._scalars[name][1].extend(new.scalar_values[mask])
            self._events = new.events
            self._status, self._writer, self._flagged_open = "live", writer, flagged
            self._message = ""
