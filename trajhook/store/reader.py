"""The reader: :func:`load` returns a :class:`TrajectoryLog`, a snapshot of the committed rows,
read under a seqlock so that a concurrent resume never mixes two generations. The small tables
(steps, scalars, events, metadata) are read at load; each probe output is a :class:`LazyArray`,
read from the file when it is indexed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import os
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import h5py
import numpy as np

from trajhook.errors import TrajhookError
from trajhook.store.format import (
    CHECKSUMS_GROUP,
    COLUMNS_ATTR,
    COMMITTED,
    EVENT_LABEL,
    EVENT_STEP,
    EVENTS,
    FORMAT_ATTR,
    FORMAT_VERSION,
    GENERATION,
    KIND_ATTR,
    METADATA_ATTR,
    PROBES_GROUP,
    RECORDS,
    SCALAR_KEY,
    SCALAR_NAME_LIST,
    SCALAR_NAMES,
    SCALAR_STEP,
    SCALAR_VALUE,
    SCALARS,
    STEPS,
    TABLE_NAMES,
    TABLE_WORDS,
    WALL_TIME,
    checksum_name,
    damaged_rows,
    guess_kind,
    output_name,
    row_checksums,
    static_group,
)
from trajhook.store.h5 import (
    CORRUPT_ERRORS,
    _open_swmr,
    members,
    open_for_writing_flag,
    read_sessions,
    rows_inside_file,
)
from trajhook.store.lock import lock_path, writer_alive
from trajhook.store.salvage import corrupt_error

T = TypeVar("T")
# Rows read at a time by iteration and by verify=True: memory stays bounded whatever the store's size.
_BLOCK_BYTES = 64 * 2**20
# How often `load` reads again when a resume rewrites rows while it reads, before it gives up visibly.
_SNAPSHOT_ATTEMPTS = 10

# A reader that opens a store while its writer reopens it can see a half-updated superblock;
# while a live writer holds the lock, opening is retried for this long.
_REOPEN_WINDOW_S = 5.0


def _open_any(path: str | os.PathLike) -> h5py.File:
    try:
        return _open_swmr(path)
    except FileNotFoundError:
        raise
    except OSError:  # files written without libver="latest" refuse SWMR reading: still say what they are
        return _open_swmr(path, swmr=False)


def open_for_reading(path: str | os.PathLike) -> h5py.File:
    """Open a trajhook store read-only; works while a writer appends and after a writer crashed.

    A store that its writer is reopening at this moment can look corrupt for a few milliseconds:
    while a live writer holds the store's lock, opening is retried for up to a few seconds.
    """
    deadline = time.monotonic() + _REOPEN_WINDOW_S
    while True:
        try:
            file = _open_any(path)
            break
        except FileNotFoundError:
            raise TrajhookError(f"load: no file at {str(path)!r}.") from None
        except OSError as err:
            if time.monotonic() < deadline and writer_alive(path):
                time.sleep(0.02)
                continue
            raise TrajhookError(
                f"{str(path)!r} is not an HDF5 file, or it is corrupt ({err}). Recoverable: nothing, as HDF5 "
                "cannot open it (trajhook repair needs at least the file's superblock). "
                "HINT: pass the .h5 file written by trajhook.Recorder, or restore the store from a backup."
            ) from None
    try:
        is_store = FORMAT_ATTR in file.attrs and COMMITTED in file
        version = int(file.attrs[FORMAT_ATTR]) if is_store else 0
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        file.close()
        raise corrupt_error(path, err) from None
    if not is_store:
        file.close()
        raise TrajhookError(
            f"{str(path)!r} is an HDF5 file but not a trajhook store (no {FORMAT_ATTR!r} attribute). "
            "HINT: pass a trajhook store, or choose another path so trajhook does not touch this file."
        )
    if version > FORMAT_VERSION:
        file.close()
        raise TrajhookError(
            f"{str(path)!r} has trajhook format {version}; this trajhook reads up to {FORMAT_VERSION}. "
            "HINT: upgrade trajhook."
        )
    return file


def check_store(path: str | os.PathLike) -> None:
    """Raise a TrajhookError naming ``path`` if it is no readable trajhook store; open nothing after.

    >>> import tempfile
    >>> check_store(tempfile.mkdtemp() + "/none.h5")
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: load: no file at '...none.h5'.
    """
    open_for_reading(path).close()


@dataclass(frozen=True)
class Series:
    """One scalar's history: ``steps`` and ``values``, both (M,) numpy arrays."""

    steps: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class Event:
    """A mark such as ``Event(step=3000, label="fine-tuning starts")``."""

    step: int
    label: str


class LazyArray:
    """One probe output of a loaded store, ``(N, ...)``: read from the file when indexed.

    ``N`` is the number of records committed when the store was loaded; rows a writer appends
    later are not seen. An index reads only the rows it names, with numpy's meaning: an int
    (negative too), a slice (any step), an int or bool array along the first axis, followed by
    any index of the other axes. ``np.asarray(a)`` reads it whole, and every numpy function that
    takes an array-like (``np.mean(a)``, ``np.array_equal(a, b)``) does the same. It is not an
    ndarray: methods and arithmetic work on what an index or ``np.asarray`` returned. Each index
    opens the file for its read (a millisecond or so): read many records with one slice or index
    array rather than one index at a time.

    >>> import tempfile, torch, trajhook
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> model = torch.nn.Linear(2, 1).requires_grad_(False)
    >>> _ = model.weight.zero_()
    >>> with trajhook.Recorder(path, [trajhook.TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
    ...     for step in range(4):
    ...         _ = model.bias.fill_(step)  # the output is the step
    ...         rec.record(model, step)
    >>> out = trajhook.load(path)["lin"]["output"]
    >>> out
    LazyArray('probes/lin/output', shape=(4, 1, 1), dtype=float32)
    >>> out[-1, 0, 0].item(), out[::2, 0, 0].tolist(), out[[3, 0]].ravel().tolist(), len(out), out.ndim
    (3.0, [0.0, 2.0], [3.0, 0.0], 4, 3)
    >>> np.asarray(out).ravel().tolist(), float(np.mean(out))
    ([0.0, 1.0, 2.0, 3.0], 1.5)
    >>> out + 1
    Traceback (most recent call last):
    ...
    TypeError: unsupported operand type(s) for +: 'LazyArray' and 'int'
    """

    def __init__(self, log: TrajectoryLog, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._log = log
        self.name = name
        self.shape = shape
        self.dtype = dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyArray({self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """The whole dataset, read straight into one new array (``copy`` is moot: it is always new)."""
        whole = self._read(slice(0, len(self), 1))
        return whole if dtype is None else whole.astype(dtype, copy=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Row by row, read a block of rows at a time."""
        rows = max(1, _BLOCK_BYTES // max(1, self.nbytes // max(1, len(self))))
        for start in range(0, len(self), rows):
            yield from self._read(slice(start, min(start + rows, len(self)), 1))

    def __getitem__(self, key: Any) -> Any:
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) and key else (key, ())
        n = len(self)
        if isinstance(first, int | np.integer) and not isinstance(first, bool | np.bool_):
            i = operator.index(first)
            if not -n <= i < n:
                raise IndexError(f"index {i} is out of bounds for axis 0 with size {n}")
            i %= n
            return self._read(slice(i, i + 1, 1))[(0, *rest)]
        if isinstance(first, slice):
            start, stop, step = first.indices(n)
            if step > 0:
                return self._read(slice(start, stop, step))[(slice(None), *rest)]
            picked = range(start, stop, step)  # read in ascending order, then reverse
            if not picked:
                return self._read(slice(0, 0, 1))[(slice(None), *rest)]
            return self._read(slice(picked[-1], picked[0] + 1, -step))[(slice(None, None, -1), *rest)]
        if isinstance(first, list | np.ndarray):
            index = np.asarray(first)
            if index.dtype == bool and index.ndim == 1:
                if len(index) != n:
                    raise IndexError(
                        f"boolean index did not match indexed array along axis 0; size of axis is {n} "
                        f"but size of corresponding boolean axis is {len(index)}"
                    )
                index = np.flatnonzero(index)
            if index.size == 0:
                index = index.astype(np.intp)
            if index.dtype.kind in "iu":
                if index.size and not (-n <= index.min() and index.max() < n):
                    bad = index.min() if index.min() < -n else index.max()
                    raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n}")
                wanted, inverse = np.unique(index.ravel() % max(n, 1), return_inverse=True)
                return self._read(_as_slice(wanted))[(inverse.reshape(index.shape), *rest)]
        return np.asarray(self)[key]  # Ellipsis, None, a mask of more than one axis: numpy decides

    def _read(self, rows: slice | np.ndarray) -> np.ndarray:
        """Rows ``rows`` (a slice with a positive step, or ascending distinct indices) as a new array."""
        index = np.arange(rows.start, rows.stop, rows.step) if isinstance(rows, slice) else rows
        out = np.empty((len(index), *self.shape[1:]), self.dtype)

        def read(file: h5py.File) -> np.ndarray | None:
            ds = file[self.name]
            if len(index) and ds.shape[0] <= index[-1]:
                return None  # trimmed since the load (a resume after a crash drops rows past the commit mark)
            if out.size == 0:
                return out
            if isinstance(rows, slice):  # straight into the array: 4x faster than ds[...] on large reads
                ds.read_direct(out, np.s_[rows.start : rows.stop : rows.step])
                return out
            runs = np.flatnonzero(np.diff(rows) != 1) + 1  # one read per run of consecutive rows
            for first, last in zip(np.r_[0, runs], np.r_[runs, len(rows)], strict=True):
                ds.read_direct(out, np.s_[rows[first] : rows[last - 1] + 1], np.s_[first:last])
            return out

        return self._log._read_rows(read, self.name, index)


class ProbeLog(Mapping[str, LazyArray]):
    """The recorded datasets of one probe: ``probe_log["vectors"]`` is an (N, ...) :class:`LazyArray`.

    ``probe_log.kind`` says which probe wrote it (``"maze"``, ``"prompts"``, ``"token_loss"``,
    ``"tensor"`` or ``"custom"``): readers dispatch on it, never on output names.
    """

    def __init__(self, name: str, data: dict[str, LazyArray], metadata: dict[str, Any], kind: str = "custom") -> None:
        self.name = name
        self._data = data
        self.metadata = metadata
        self.kind = kind

    def __getitem__(self, key: str) -> LazyArray:
        try:
            return self._data[key]
        except KeyError:
            raise KeyError(f"probe {self.name!r} has no dataset {key!r}; it has {sorted(self._data)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{v.shape}" for k, v in self._data.items())
        return f"ProbeLog({self.name!r}: {shapes})"


@dataclass(frozen=True)
class Damage:
    """What :func:`verify` found: the steps of rows whose stored checksum no longer matches their values.

    ``checked`` is False for a store written before checksums (format < 3): nothing could be checked.
    """

    path: Path
    checked: bool
    records: list[int]  # steps of damaged records
    scalars: list[int]  # steps of damaged scalar values
    events: list[int]  # steps of damaged events
    scalar_names: list[int]  # positions of damaged scalar names

    def __bool__(self) -> bool:
        return bool(self.records or self.scalars or self.events or self.scalar_names)

    def summary(self) -> str:
        """E.g. ``"damaged records at steps [30, 31]"``; ``"no damage found"``."""
        by_step = {RECORDS: self.records, SCALARS: self.scalars, EVENTS: self.events}
        parts = [f"damaged {TABLE_WORDS[table]} at steps {steps}" for table, steps in by_step.items() if steps]
        if self.scalar_names:
            parts.append(f"damaged {TABLE_WORDS[SCALAR_NAMES]} at positions {self.scalar_names}")
        return "; ".join(parts) or "no damage found"


class TrajectoryLog(Mapping[str, ProbeLog]):
    """A read-only snapshot of a store: the committed rows at the time of :func:`load`.

    ``log.steps`` and ``log.wall_time`` are (N,) arrays; ``log["maze"]["vectors"]`` is an
    (N, ...) :class:`LazyArray`, read when indexed, with ``log["maze"].metadata``;
    ``log.scalars["loss"]`` is a :class:`Series`; ``log.events`` a list of :class:`Event`;
    ``log.metadata`` the first Recorder's metadata; ``log.sessions`` a dict per Recorder session, oldest
    first (docs/FORMAT.md, "Sessions"). With ``verify=True``, ``log.damage`` is the :class:`Damage` its
    checksums reveal.

    The log holds the store's file descriptor, not an HDF5 handle: each read opens the file for
    just that read (by its path, as an SWMR reader). So a log never stands in the way of a writer
    (a Recorder in this process resumes the store in place, as if no log were open), and it keeps
    reading the file it loaded after the path was replaced (``overwrite=True``, a rebuild, a
    compaction), through the descriptor; that file's disk space is given back when the log is
    closed. After a resume that dropped records and wrote new ones in their place, reading a
    rewritten record raises a TrajhookError (load the store again); the others still read, told
    apart by their checksums. ``log.close()``, or a ``with`` block, releases the descriptor at
    once; garbage collection does it otherwise.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False) -> None:
        self.path = Path(path)
        self.damage: Damage | None = None
        self._hold_file()
        self._generation = -1
        try:
            for _ in range(_SNAPSHOT_ATTEMPTS):  # a seqlock: read again if a resume rewrote rows meanwhile
                generation, after = self._in_file(lambda file: self._read(file, verify))
                if after == generation:
                    self._generation = generation
                    return
            raise TrajhookError(
                f"load: {str(path)!r} was rewritten {_SNAPSHOT_ATTEMPTS} times while it was read (a Recorder "
                "resuming it from earlier steps, again and again), so no consistent snapshot could be read. "
                "HINT: load it again once its writer runs on."
            )
        except BaseException:
            self.close()
            raise

    # -- the file, opened for each read ----------------------------------------------------------

    def _in_file(self, read: Callable[[h5py.File], T]) -> tuple[T, int]:
        """``read(file)`` on this log's file, opened for this read alone; returns its result and the
        generation in ``committed`` after it."""
        if not self._release.alive:
            raise TrajhookError(
                f"{str(self.path)!r}: this log was closed, so its records can no longer be read. "
                "HINT: read them before close() or inside the `with` block, or load the store again."
            )
        deadline = time.monotonic() + _REOPEN_WINDOW_S
        while True:
            try:
                with self._opened() as file:
                    result = read(file)
                    committed = file[COMMITTED]
                    committed.refresh()
                    return result, _generation(committed[:])
            except TrajhookError:
                raise
            except CORRUPT_ERRORS as err:
                # Without its traceback: kept in this frame, the traceback (which leads back to this
                # frame) would make a reference cycle holding every frame of the failed read, and
                # the arrays and h5py objects in them, until the cyclic GC happens to run.
                error = err.with_traceback(None)
            # A writer that reopens the store rewrites its metadata without SWMR ordering for a moment,
            # or renames a rebuilt file into place: while it is alive, open again and read again, for up
            # to a few seconds (while loading, the file the path names by then).
            if not (time.monotonic() < deadline and writer_alive(self.path)):
                raise corrupt_error(self.path, error) from None
            time.sleep(0.02)
            if self._generation < 0:
                self._hold_file()

    def _hold_file(self) -> None:
        """Hold the file that the path names now: at load, and at each retry of the load."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise TrajhookError(f"load: no file at {str(self.path)!r}.") from None
        except OSError as err:
            raise TrajhookError(
                f"load: cannot open {str(self.path)!r} ({err.strerror}). HINT: check the path and its permissions."
            ) from None
        if hasattr(self, "_release"):
            self._release()
        self._fd = fd
        self._release = weakref.finalize(self, os.close, fd)

    @contextlib.contextmanager
    def _opened(self) -> Iterator[h5py.File]:
        """The file this log loaded: by its path while the path names it (an SWMR reader, as a writer may
        be appending), else through the log's descriptor (the file was replaced; no writer writes it)."""
        held = os.fstat(self._fd)
        if _same_file(self.path, held):
            with open_for_reading(self.path) as file:
                if _same_file(file.id.get_vfd_handle(), held):  # not replaced between the check and the open
                    yield file
                    return
        with os.fdopen(os.dup(self._fd), "rb") as handle, h5py.File(handle, "r") as file:
            yield file

    def _read_rows(self, read: Callable[[h5py.File], np.ndarray | None], name: str, index: np.ndarray) -> np.ndarray:
        """Records ``index`` of dataset ``name``, read by ``read`` (None: the dataset no longer has them).
        After a resume that dropped records (a new generation), rows are given only where they still
        match the checksums read at load."""
        rows, generation = self._in_file(read)
        if generation == self._generation:
            if rows is None:
                trimmed = ValueError(f"{name} has fewer rows than the {len(self.steps)} committed")
                raise corrupt_error(self.path, trimmed)
            return rows
        column = self._record_columns.get(name)
        if rows is None or column is None:  # gone, or a store from before checksums (format < 3)
            bad = index
        else:
            bad = index[row_checksums(rows) != self._record_checksums[index, column]]
        if len(bad) == 0:
            return rows
        raise TrajhookError(
            f"{str(self.path)!r} was rewritten since it was loaded: a Recorder resumed it from an earlier step "
            f"(generation {self._generation}, now {generation}) and the records at steps "
            f"{self.steps[bad[:5]].tolist()}{'...' if len(bad) > 5 else ''} that this log read are gone. "
            "HINT: load the store again."
        )

    def close(self) -> None:
        """Release the store's file descriptor; reading a record afterwards raises a TrajhookError."""
        self._release()

    @property
    def closed(self) -> bool:
        return not self._release.alive

    def __enter__(self) -> TrajectoryLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the snapshot ----------------------------------------------------------------------------

    def _read(self, file: h5py.File, verify: bool) -> int:
        """Read the small tables and the layout of the committed rows; returns their generation."""
        committed = file[COMMITTED]
        committed.refresh()  # the counter first: every row it counts is already on disk
        counts = [int(c) for c in committed[:]]
        n = counts[RECORDS]
        file_size = os.fstat(self._fd).st_size

        def checked(ds: h5py.Dataset, count: int) -> h5py.Dataset:
            ds.refresh()
            if ds.shape[0] < count:
                raise ValueError(f"{ds.name} has {ds.shape[0]} rows, {count} were committed")
            inside = rows_inside_file(ds, count, file_size)
            if inside < count:
                raise ValueError(f"{ds.name} rows from {inside} on lie past the end of the file: it was truncated")
            return ds

        def rows(ds: h5py.Dataset, count: int) -> np.ndarray:
            return _rows(checked(ds, count), 0, count)

        self.attrs = _attributes(file)
        self.metadata: dict[str, Any] = json.loads(file.attrs[METADATA_ATTR])
        self.sessions: list[dict[str, Any]] = read_sessions(file)  # each Recorder session, oldest first
        self.steps, self.wall_time = rows(file[STEPS], n), rows(file[WALL_TIME], n)
        # The records' checksums (small: 4 bytes per dataset and record) tell which rows survive a resume.
        self._record_columns: dict[str, int] = {}
        self._record_checksums = np.zeros((n, 0), np.uint32)
        if CHECKSUMS_GROUP in file:
            stored = file[checksum_name(RECORDS)]
            self._record_columns = {c: i for i, c in enumerate(json.loads(stored.attrs[COLUMNS_ATTR]))}
            self._record_checksums = rows(stored, n)
        self._probes = {}
        for name, group in members(file[PROBES_GROUP]):
            data = {
                key: LazyArray(self, checked(ds, n).name.lstrip("/"), (n, *ds.shape[1:]), ds.dtype)
                for key, ds in members(group)
            }
            meta, kind = _probe_static(file, name, list(data))
            self._probes[name] = ProbeLog(name, data, meta, kind)
        names = [b.decode() for b in rows(file[SCALAR_NAME_LIST], counts[SCALAR_NAMES])]
        steps, keys, values = (rows(file[name], counts[SCALARS]) for name in (SCALAR_STEP, SCALAR_KEY, SCALAR_VALUE))
        self.scalars = {name: Series(steps[keys == i], values[keys == i]) for i, name in enumerate(names)}
        event_steps, labels = (rows(file[name], counts[EVENTS]) for name in (EVENT_STEP, EVENT_LABEL))
        self.events = [Event(int(s), label.decode()) for s, label in zip(event_steps, labels, strict=True)]
        if verify:
            self.damage = self._check(file, counts, {SCALARS: steps, EVENTS: event_steps}, checked)
        return _generation(counts)

    def _check(
        self, file: h5py.File, counts: list[int], table_steps: dict[int, np.ndarray], checked: Callable
    ) -> Damage:
        """Compare every committed row with its stored checksum, a block of rows at a time."""
        if CHECKSUMS_GROUP not in file:
            return Damage(self.path, False, [], [], [], [])
        bad = {}
        for index in TABLE_NAMES:
            stored = file[checksum_name(index)]
            columns = [file[name] for name in json.loads(stored.attrs[COLUMNS_ATTR])]
            count = counts[index]
            expected = _rows(checked(stored, count), 0, count)
            row_bytes = sum(int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize for ds in columns)
            block = max(1, _BLOCK_BYTES // max(1, row_bytes))
            found = [np.zeros(0, np.int64)]
            for start in range(0, count, block):
                stop = min(start + block, count)
                found.append(start + damaged_rows([_rows(ds, start, stop) for ds in columns], expected[start:stop]))
            bad[index] = np.concatenate(found)
        return Damage(
            self.path,
            True,
            records=self.steps[bad[RECORDS]].tolist(),
            scalars=table_steps[SCALARS][bad[SCALARS]].tolist(),
            events=table_steps[EVENTS][bad[EVENTS]].tolist(),
            scalar_names=bad[SCALAR_NAMES].tolist(),
        )

    def __getitem__(self, name: str) -> ProbeLog:
        try:
            return self._probes[name]
        except KeyError:
            raise KeyError(f"the store has no probe {name!r}; it has {sorted(self._probes)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._probes)

    def __len__(self) -> int:
        return len(self._probes)

    def __repr__(self) -> str:
        return f"TrajectoryLog({str(self.path)!r}: {len(self.steps)} records, probes {sorted(self._probes)})"


def _attributes(file: h5py.File) -> dict[str, Any]:
    """The store's attributes, numpy scalars as Python ones."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in members(file.attrs)}


def _probe_static(file: h5py.File, probe: str, outputs: list[str]) -> tuple[dict[str, Any], str]:
    """``(metadata, kind)`` of one probe: its JSON metadata with its static arrays, and the kind it
    recorded (format 2), or the kind its outputs suggest (format 1)."""
    static = file[static_group(probe)]
    meta = json.loads(static.attrs[METADATA_ATTR])
    meta.update({k: ds[()] for k, ds in members(static)})
    kind = static.attrs.get(KIND_ATTR)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    return meta, str(kind or guess_kind(outputs, meta))


def _as_slice(index: np.ndarray) -> slice | np.ndarray:
    """Ascending distinct indices as a slice where they are evenly spaced (one read), else as they are.

    >>> _as_slice(np.array([3, 5, 7])), _as_slice(np.array([2])), _as_slice(np.array([1, 2, 4])).tolist()
    (slice(3, 8, 2), slice(2, 3, 1), [1, 2, 4])
    """
    steps = np.diff(index)
    if len(index) and (steps == (steps[0] if len(steps) else 1)).all():
        return slice(int(index[0]), int(index[-1]) + 1, int(steps[0]) if len(steps) else 1)
    return index


def _same_file(path_or_fd: str | os.PathLike | int, held: os.stat_result) -> bool:
    """Whether a path (or an open descriptor) is the file ``held`` describes."""
    try:
        now = os.stat(path_or_fd)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _rows(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Rows ``start..stop-1`` of a dataset, read straight into a new array (twice as fast as ``ds[a:b]``)."""
    out = np.empty((stop - start, *ds.shape[1:]), ds.dtype)
    if out.size:
        ds.read_direct(out, np.s_[start:stop])
    return out


def _generation(committed: Sequence[int]) -> int:
    """The generation in a ``committed`` row; 0 for stores written before it existed."""
    return int(committed[GENERATION]) if len(committed) > GENERATION else 0


def load(path: str | os.PathLike, verify: bool = False) -> TrajectoryLog:
    """Open a trajhook store, also one that is still being written or whose writer crashed.

    It reads the steps, scalars, events and metadata at once; each probe output is a
    :class:`LazyArray`, read when indexed (``log["maze"]["vectors"][-1]`` reads one record), so
    opening costs the same whatever the store's size. ``verify=True`` also checks every committed
    row against its stored crc32 (format 3) and raises a TrajhookError naming the steps of damaged
    rows; it reads everything, a few times the cost of reading it whole (``benchmarks/bench_store.py``),
    so it is not the default.

    >>> import tempfile, torch, trajhook
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> probe = trajhook.TensorProbe("linear", torch.ones(1, 2))
    >>> model = torch.nn.Linear(2, 1)
    >>> with trajhook.Recorder(path, [probe], every_n_steps=10, wandb=False) as rec:
    ...     for step in range(25):
    ...         recorded = rec.maybe_record(model, step, loss=1.0 / (step + 1))
    >>> log = trajhook.load(path)
    >>> log.steps.tolist(), log["linear"]["output"].shape, len(log.scalars["loss"].steps)
    ([0, 10, 20], (3, 1, 1), 25)
    >>> with load(path, verify=True) as checked:
    ...     checked.damage.summary(), checked["linear"]["output"][-1].shape
    ('no damage found', (1, 1))
    """
    log = TrajectoryLog(path, verify=verify)
    if log.damage is not None and (log.damage or not log.damage.checked):
        log.close()  # refused below
    if log.damage is not None:
        if not log.damage.checked:
            raise TrajhookError(
                f"load: {str(path)!r} has no checksums (trajhook format {log.attrs[FORMAT_ATTR]}; they came "
                "with format 3), so verify=True cannot check it. HINT: load it without verify=True; a Recorder "
                "that resumes it rebuilds it with checksums."
            )
        if log.damage:
            raise TrajhookError(
                f"load: {str(path)!r} fails its checksums: {log.damage.summary()}. These values changed on disk "
                f"after they were written. HINT: run `trajhook repair {path}` to save every intact row into a new "
                "store (the damaged rows are left out)."
            )
    return log


def verify(path: str | os.PathLike) -> Damage:
    """Check every committed row of a store against its stored checksum (``trajhook verify``).

    >>> import tempfile, torch, trajhook
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> with trajhook.Recorder(path, [trajhook.TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
    ...     rec.record(torch.nn.Linear(2, 1), 0)
    >>> damage = verify(path)
    >>> damage.checked, bool(damage), damage.summary()
    (True, False, 'no damage found')
    """
    with TrajectoryLog(path, verify=True) as log:
        assert log.damage is not None
        return log.damage


@dataclass(frozen=True)
class ProbeLayout:
    """One probe as a :class:`StoreFollower` sees it: ``kind``, ``metadata`` (with its static arrays),
    and ``outputs``, each output's ``(per-record shape, dtype name)``."""

    kind: str
    metadata: dict[str, Any]
    outputs: dict[str, tuple[tuple[int, ...], str]]


@dataclass(frozen=True)
class NewRows(Generic[T]):
    """What :meth:`StoreFollower.read_new` read: the rows committed since the previous read.

    ``reset`` says the follower started over (a new file at the path, or a resume that dropped rows
    and may have rewritten them): the rows start at 0 and replace everything read before.
    Records ``start..stop-1`` have ``steps`` and ``wall_time``; the new scalar rows are ``scalar_steps``,
    ``scalar_keys`` (indices into ``scalar_names``, all names so far) and ``scalar_values``; ``events``
    are all events so far; ``probes`` is what the caller's ``read_probes(start, stop)`` returned.
    """

    reset: bool
    start: int
    stop: int
    steps: np.ndarray
    wall_time: np.ndarray
    scalar_names: list[str]
    scalar_steps: np.ndarray
    scalar_keys: np.ndarray
    scalar_values: np.ndarray
    events: list[tuple[int, str]]
    probes: T


class _OutputRows:
    """One probe output's dataset, read-only, for slices of rows: ``shape``, ``dtype``, ``rows[a:b]``."""

    def __init__(self, ds: h5py.Dataset) -> None:
        self._ds = ds
        self.shape: tuple[int, ...] = ds.shape
        self.dtype: np.dtype = ds.dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return _rows(self._ds, start, max(start, stop))


class StoreFollower:
    """Follows one store while a writer appends to it: each :meth:`read_new` returns the rows committed
    since the previous one, read under the seqlock that :func:`load` uses.

    It holds one SWMR read handle across reads (a poll then costs a refresh of ``committed``), opened by
    :meth:`open` and released by :meth:`close`. A handle held open in a process in which a Recorder
    resumes the same store makes that Recorder rebuild the store rather than resume it in place (HDF5
    shares one open file per process): follow a store from another process, as ``trajhook serve`` does.

    It starts over, and says so (``NewRows.reset``), when the path names a new file (``overwrite=True``,
    a resume's compaction: :meth:`identity` changes) or when a resume dropped rows (the generation in
    ``committed`` changes, or the record count shrinks). A read during which a resume rewrote rows is
    read again (also when the resume trimmed rows that were being read), up to ``attempts`` times; then it
    raises a :class:`RuntimeError` saying so.

    >>> import tempfile, torch, trajhook
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> model = torch.nn.Linear(2, 1).requires_grad_(False)
    >>> with trajhook.Recorder(path, [trajhook.TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
    ...     follower = StoreFollower(path)
    ...     for step in range(3):
    ...         _ = rec.maybe_record(model, step, loss=float(step))
    ...     rec.flush()
    ...     first = follower.read_new()
    ...     rec.record(model, 3)
    ...     rec.flush()
    ...     later = follower.read_new(lambda start, stop: follower.rows("lin", "output", start, stop).shape)
    ...     follower.close()
    >>> first.reset, first.steps.tolist(), first.scalar_names, first.scalar_values.tolist()
    (True, [0, 1, 2], ['loss'], [0.0, 1.0, 2.0])
    >>> later.reset, later.start, later.stop, later.steps.tolist(), later.probes, follower.read_new() is None
    (False, 3, 4, [3], (1, 1, 1), True)
    """

    def __init__(self, path: str | os.PathLike, attempts: int = _SNAPSHOT_ATTEMPTS) -> None:
        if attempts < 1:
            raise TrajhookError(f"StoreFollower: attempts={attempts!r}. HINT: pass a positive number of attempts.")
        self.path = Path(path)
        self.attempts = attempts
        self.attrs: dict[str, Any] = {}
        self.probes: dict[str, ProbeLayout] = {}
        self._file: h5py.File | None = None
        self._opened: tuple[int, int] | None = None  # the identity of the file last opened
        self._counts = [0] * GENERATION  # rows committed per table
        self._generation: int | None = None
        self._started_over = True

    # -- the file ---------------------------------------------------------------------------------

    def identity(self) -> tuple[int, int] | None:
        """``(device, inode)`` of the file the path names now (a cheap ``stat``), None if there is none."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return None
        return stat.st_dev, stat.st_ino

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> None:
        """Open the store (if it is not open) and read its attributes and probes (:attr:`attrs`,
        :attr:`probes`). A file other than the one opened before starts the rows over."""
        if self._file is not None:
            return
        file = open_for_reading(self.path)
        try:
            stat = os.fstat(file.id.get_vfd_handle())
            attrs = _attributes(file)
            probes = {}
            for name, group in members(file[PROBES_GROUP]):
                outputs = {key: (tuple(ds.shape[1:]), str(ds.dtype)) for key, ds in members(group)}
                meta, kind = _probe_static(file, name, list(outputs))
                probes[name] = ProbeLayout(kind, meta, outputs)
        except BaseException:
            file.close()
            raise
        self._file = file
        self.attrs, self.probes = attrs, probes
        if (stat.st_dev, stat.st_ino) != self._opened:
            self._opened = (stat.st_dev, stat.st_ino)
            self._start_over()

    def close(self) -> None:
        """Release the handle (the rows read so far stay counted: reopening the same file goes on)."""
        if self._file is not None:
            with contextlib.suppress(Exception):  # a handle of a vanished file: nothing to save
                self._file.close()
            self._file = None

    def writer(self) -> tuple[bool, bool]:
        """``(alive, flagged_open)``: whether a live writer holds the store's lock, and whether the file
        is still flagged open for writing (:func:`~trajhook.store.h5.open_for_writing_flag`; where the
        superblock has no such flag, whether a lock file was left behind)."""
        flagged = open_for_writing_flag(self.path)
        if flagged is None:
            flagged = lock_path(self.path).exists()
        return writer_alive(self.path), flagged

    # -- the rows ---------------------------------------------------------------------------------

    def read_new(self, read_probes: Callable[[int, int], T] | None = None) -> NewRows[T | None] | None:
        """The rows committed since the last read (opening the store if needed), or None if there are
        none. ``read_probes(start, stop)`` reads what the caller wants of records ``start..stop-1`` (with
        :meth:`rows` or :meth:`output`) inside the same seqlock."""
        self.open()
        for _ in range(self.attempts):
            counts, generation = self._committed()
            if self._generation is not None and (
                generation != self._generation or counts[RECORDS] < self._counts[RECORDS]
            ):
                self._start_over()  # a resume dropped rows: they may have been rewritten
            if counts[:GENERATION] == self._counts and self._generation is not None:
                return None
            try:
                new = self._read_tables(counts, read_probes)
            except CORRUPT_ERRORS:
                if self._committed()[1] == generation:
                    raise
                continue  # a resume trimmed the rows being read: read again
            if self._committed()[1] == generation:
                reset, self._started_over = self._started_over, False
                self._counts, self._generation = counts[:GENERATION], generation
                return dataclasses.replace(new, reset=reset)
        raise RuntimeError(
            f"{str(self.path)!r} was rewritten {self.attempts} times while its new rows were read (a Recorder "
            "resuming it from earlier steps, again and again); reading again at the next poll"
        )

    def output(self, probe: str, output: str) -> _OutputRows:
        """One probe output's rows, refreshed to what the writer has flushed: ``shape``, ``dtype`` and
        slices (``out[a:b]``). Read only the committed records (those :meth:`read_new` returned)."""
        if self._file is None:
            raise RuntimeError(f"{str(self.path)!r} is not open")
        ds = self._file[output_name(probe, output)]
        ds.refresh()
        return _OutputRows(ds)

    def rows(self, probe: str, output: str, start: int, stop: int) -> np.ndarray:
        """Records ``start..stop-1`` of one probe output, as a new array."""
        return self.output(probe, output)[start:stop]

    def _start_over(self) -> None:
        self._counts, self._generation, self._started_over = [0] * GENERATION, None, True

    def _committed(self) -> tuple[list[int], int]:
        assert self._file is not None
        committed = self._file[COMMITTED]
        committed.refresh()  # the counter first: every row it counts is already on disk
        counts = [int(c) for c in committed[:]]
        return counts, _generation(counts)

    def _read_tables(self, counts: list[int], read_probes: Callable[[int, int], T] | None) -> NewRows[T | None]:
        assert self._file is not None
        file, old = self._file, self._counts

        def rows(name: str, start: int, stop: int) -> np.ndarray:
            ds = file[name]
            ds.refresh()
            return _rows(ds, start, stop)

        n0, n1 = old[RECORDS], counts[RECORDS]
        s0, s1 = old[SCALARS], counts[SCALARS]
        steps, wall_time = rows(STEPS, n0, n1), rows(WALL_TIME, n0, n1)
        probes = read_probes(n0, n1) if read_probes is not None else None
        for name, layout in self.probes.items():
            for key in layout.outputs:
                file[output_name(name, key)].refresh()  # later reads (rows, frames) see the new rows
        names = [b.decode() for b in rows(SCALAR_NAME_LIST, 0, counts[SCALAR_NAMES])]
        scalar_steps, keys, values = (rows(name, s0, s1) for name in (SCALAR_STEP, SCALAR_KEY, SCALAR_VALUE))
        event_steps, labels = rows(EVENT_STEP, 0, counts[EVENTS]), rows(EVENT_LABEL, 0, counts[EVENTS])
        events = [(int(s), label.decode()) for s, label in zip(event_steps, labels, strict=True)]
        return NewRows(False, n0, n1, steps, wall_time, names, scalar_steps, keys, values, events, probes)
