"""The HDF5 trajectory store: the writer used by the Recorder, and ``load`` for reading.

The format is documented in ``docs/FORMAT.md``. In short: every dataset is created before SWMR
mode is switched on, rows are appended to chunked, compressed, resizable datasets, and the
``committed`` dataset, written after the rows, says how many rows of each table are whole.
Readers trust only ``committed``. This module knows nothing of torch.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import errno
import json
import os
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajhook.errors import TrajhookError
from trajhook.lock import WriterLock, writer_alive
from trajhook.probes.base import OutputSpec

FORMAT_VERSION = 2  # 2: each probe group says which kind of probe wrote it (static/<probe> attr 'kind')
SCALAR_NAME_BYTES = 128
EVENT_LABEL_BYTES = 256
# Large chunks: `load` reads uncompressed chunks straight into its arrays, near raw .npy speed at
# 4 MiB (1.8x slower at 1 MiB). The cost: a new store reserves one chunk per dataset.
_CHUNK_BYTES = 4 * 1024 * 1024
_STRING_CHUNK_ROWS = 64
_MAX_CHUNK_BYTES = 4 * 1024 * 1024
_MAX_CHUNK_ROWS = 4096
_COMPACT_MIN_BYTES = 256 * 1024
# No compression, chosen by benchmarks/bench_store.py (docs/FORMAT.md, "Compression"): `load` then
# reads at the speed of raw .npy, an uncompressed partial chunk is rewritten in place at each flush
# (no growth while the run is open), and every HDF5 reader opens the file without plugins.
# Benchmarks swap in other h5py filter arguments here to compare.
COMPRESSION: Mapping[str, Any] = {}
# How often an SWMR reader re-reads metadata whose checksum fails, with a doubling wait between
# tries. HDF5's default of 100 waits for hours on a corrupt file; 28 tries wait about 0.3 s,
# ample for a writer that is mid-flush.
_METADATA_READ_ATTEMPTS = 28
# A reader that opens a store while its writer reopens it can see a half-updated superblock;
# while a live writer holds the lock, opening is retried for this long.
_REOPEN_WINDOW_S = 5.0
# Indices into the `committed` dataset: four row counts, then the generation, bumped by every
# resume drop, so that a reader can tell that rows it read may have been rewritten meanwhile.
RECORDS, SCALARS, EVENTS, SCALAR_NAMES, GENERATION = range(5)

Schema = dict[str, dict[str, OutputSpec]]
"""probe name -> output name -> spec."""


def chunk_shape(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape for a dataset of records of ``shape``: about 4 MiB, whole records if possible.

    >>> chunk_shape((337, 15), 4)   # 20 KB a record: 207 records a chunk
    (207, 337, 15)
    >>> chunk_shape((), 8)
    (4096,)
    >>> chunk_shape((4, 1000, 1000), 2)  # 8 MB a record: split the record itself
    (1, 2, 1000, 1000)
    """
    inner = [max(1, s) for s in shape]
    row_bytes = int(np.prod(inner, dtype=np.int64)) * itemsize
    rows = int(np.clip(_CHUNK_BYTES // max(row_bytes, 1), 1, _MAX_CHUNK_ROWS))
    axis = 0
    while row_bytes > _MAX_CHUNK_BYTES and axis < len(inner):
        if inner[axis] > 1:
            inner[axis] = (inner[axis] + 1) // 2
            row_bytes = int(np.prod(inner, dtype=np.int64)) * itemsize
        else:
            axis += 1
    return (rows, *inner)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _dump_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TrajhookError(
            f"{what} cannot be stored: {err}. HINT: use numpy arrays, numbers, strings, lists and dicts."
        ) from None


def _hdf5_library() -> ctypes.CDLL | None:
    """The HDF5 library that h5py loaded, for the one setting h5py does not expose; None if not found."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libhdf5" in line and "libhdf5_hl" not in line}
        for path in sorted(paths):
            lib = ctypes.CDLL(path)
            lib.H5Pset_metadata_read_attempts.argtypes = [ctypes.c_int64, ctypes.c_uint]
            lib.H5Pset_metadata_read_attempts.restype = ctypes.c_int
            return lib
    except (OSError, AttributeError):
        pass
    return None


_HDF5 = _hdf5_library()


def _open_swmr(path: str | os.PathLike, swmr: bool = True) -> h5py.File:
    """``h5py.File(path, "r", libver="latest", swmr=swmr, locking=False)``, with bounded metadata retries.

    Retrying a metadata read whose checksum fails only helps while a writer may be mid-flush: with
    no live writer holding the store's lock, a bad checksum is damage and fails at once.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    if swmr:
        fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, True)
    fapl.set_cache(0, 0, 0, 0.0)  # no chunk cache: each chunk is read once, straight into the array
    if _HDF5 is not None and swmr:
        _HDF5.H5Pset_metadata_read_attempts(fapl.id, _METADATA_READ_ATTEMPTS if writer_alive(path) else 1)
    flags = h5py.h5f.ACC_RDONLY | (h5py.h5f.ACC_SWMR_READ if swmr else 0)
    return h5py.File(h5py.h5f.open(os.fsencode(path), flags, fapl=fapl))


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
        is_store = "trajhook_format" in file.attrs and "committed" in file
        version = int(file.attrs["trajhook_format"]) if is_store else 0
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        file.close()
        raise corrupt_error(path, err) from None
    if not is_store:
        file.close()
        raise TrajhookError(
            f"{str(path)!r} is an HDF5 file but not a trajhook store (no 'trajhook_format' attribute). "
            "HINT: pass a trajhook store, or choose another path so trajhook does not touch this file."
        )
    if version > FORMAT_VERSION:
        file.close()
        raise TrajhookError(
            f"{str(path)!r} has trajhook format {version}; this trajhook reads up to {FORMAT_VERSION}. "
            "HINT: upgrade trajhook."
        )
    return file


# Errors h5py raises on damaged files: OSError and RuntimeError from HDF5, KeyError for objects it
# cannot open, ValueError and TypeError for garbled attributes and shapes.
CORRUPT_ERRORS = (OSError, RuntimeError, KeyError, IndexError, ValueError, TypeError)


def rows_inside_file(ds: h5py.Dataset, count: int, file_size: int) -> int:
    """How many of the first ``count`` rows lie in chunks that end inside the file.

    A truncated file reads back zeros past its end when opened for SWMR reading, which skips
    HDF5's end-of-file check: rows there must not pass for data.
    """
    if ds.chunks is None or count == 0:
        return count
    past_end = []

    def check(info: Any) -> None:
        if info.byte_offset is not None and info.byte_offset + info.size > file_size:
            past_end.append(info.chunk_offset[0])

    # By coordinate, chunk by chunk: get_chunk_info(i) walks the index from the start each time, and
    # h5py's chunk_iter left the writer thread of a later store hanging in h5py (seen with h5py 3.16).
    rows = ds.chunks[0]
    for start in range(0, count, rows):
        check(ds.id.get_chunk_info_by_coord((start,) + (0,) * (ds.ndim - 1)))
    return min([count, *past_end])


def corrupt_error(path: str | os.PathLike, err: BaseException, *, resuming: bool = False) -> TrajhookError:
    """The error for a damaged store: names the file, what failed, and what ``trajhook repair`` can save."""
    from trajhook.repair import salvage  # repair reads through this module

    try:
        found = salvage(path).summary()
    except Exception as inner:  # the message must come out whatever else is broken
        found = f"nothing could be read back ({type(inner).__name__}: {inner})"
    what = "cannot be resumed: it is corrupt" if resuming else "is corrupt"
    return TrajhookError(
        f"{str(path)!r} {what} ({type(err).__name__}: {err}). Recoverable: {found}. "
        f"HINT: run `trajhook repair {path}` to save the readable committed rows into a new store"
        + ("; then resume from that file, or pass overwrite=True or a new path." if resuming else ".")
    ).with_traceback(None)


def members(group: h5py.Group | h5py.AttributeManager) -> list[tuple[str, Any]]:
    """``list(group.items())``: a group's (name, member) pairs, or an attribute manager's (name, value).

    Never loop over h5py's ``.items()`` or ``.values()`` directly: those generators hold h5py's
    global lock (``phil``) while suspended between items. An exception raised in such a loop leaves
    the generator suspended in the failed frame, and while a traceback keeps that frame alive (an
    exception caught and kept, or a reference cycle that only the cyclic GC frees) the lock stays
    held: every other thread that touches h5py, such as a Recorder's writer thread, then waits for it
    forever. A list holds no lock.
    """
    return list(group.items())


def read_schema(file: h5py.File) -> Schema:
    """The probe schema stored in an open file."""
    schema: Schema = {}
    for name, group in members(file["probes"]):
        schema[name] = {
            key: OutputSpec(key, tuple(ds.shape[1:]), ds.dtype)
            for key, ds in members(group)
            if isinstance(ds, h5py.Dataset)
        }
    return schema


def schema_difference(stored: Schema, current: Schema) -> str | None:
    """Describe how two schemas differ, or None if they are the same.

    >>> f32 = np.dtype("float32")
    >>> a = {"maze": {"vectors": OutputSpec("vectors", (96, 2), f32)}}
    >>> b = {"maze": {"vectors": OutputSpec("vectors", (80, 2), f32)}}
    >>> schema_difference(a, b)
    "probe 'maze' output 'vectors': stored vectors(96, 2) float32, now vectors(80, 2) float32"
    """
    problems = []
    for name in sorted(stored.keys() - current.keys()):
        problems.append(f"probe {name!r} is in the store but not among the probes")
    for name in sorted(current.keys() - stored.keys()):
        problems.append(f"probe {name!r} is new (not in the store)")
    for name in sorted(stored.keys() & current.keys()):
        old, new = stored[name], current[name]
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                problems.append(f"probe {name!r} no longer records {key!r}")
            elif key not in old:
                problems.append(f"probe {name!r} now records {key!r}, the store has no such dataset")
            elif (old[key].shape, old[key].dtype) != (new[key].shape, new[key].dtype):
                problems.append(
                    f"probe {name!r} output {key!r}: stored {old[key].describe()}, now {new[key].describe()}"
                )
    return "; ".join(problems) or None


def _open_swmr_writer(path: Path) -> h5py.File:
    """Open an existing store for writing, in SWMR mode from the first moment.

    Opening with ``"r+"`` and switching SWMR on afterwards leaves a window in which a crash marks
    the file "open for write" without SWMR, which no reader (and no resume) can open again.
    Raises OSError if a writer that crashed left the file marked open.
    """
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_file_locking(False, True)
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR | h5py.h5f.ACC_SWMR_WRITE, fapl=fapl)
    return h5py.File(fid)


def _create_appendable(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any) -> h5py.Dataset:
    dtype = np.dtype(dtype)
    maxshape = (None, *(None if s == 0 else s for s in shape))
    # names and labels: few rows, so small chunks
    chunks = (_STRING_CHUNK_ROWS, *shape) if dtype.kind == "S" else chunk_shape(shape, dtype.itemsize)
    return group.create_dataset(
        name, shape=(0, *shape), maxshape=maxshape, dtype=dtype, chunks=chunks, **dict(COMPRESSION)
    )


def _append(ds: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """Write rows at ``start``: over rows dropped by a resume, else growing the dataset."""
    end = start + len(rows)
    if ds.shape[0] < end:
        ds.resize(end, axis=0)
    ds[start:end] = rows
    ds.flush()


def create_store(
    path: Path,
    schema: Schema,
    probe_metadata: Mapping[str, Mapping[str, Any]],
    metadata: Mapping[str, Any],
    kinds: Mapping[str, str] | None = None,
) -> h5py.File:
    """Create an empty store with every dataset the schema needs; SWMR is not on yet."""
    file = h5py.File(path, "w", libver="latest", locking=False)
    try:
        file.attrs["trajhook_format"] = FORMAT_VERSION
        from trajhook import __version__

        file.attrs["trajhook_version"] = __version__
        file.attrs["created"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        file.attrs["metadata"] = _dump_json(dict(metadata), "Recorder metadata")
        _create_appendable(file, "steps", (), np.int64)
        _create_appendable(file, "wall_time", (), np.float64)
        probes = file.create_group("probes")
        for name, outputs in schema.items():
            group = probes.create_group(name)
            for spec in outputs.values():
                _create_appendable(group, spec.name, spec.shape, spec.dtype)
            _write_probe_metadata(file, name, probe_metadata.get(name, {}), (kinds or {}).get(name, "custom"))
        scalars = file.create_group("scalars")
        _create_appendable(scalars, "step", (), np.int64)
        _create_appendable(scalars, "key", (), np.int32)
        _create_appendable(scalars, "value", (), np.float64)
        _create_appendable(scalars, "names", (), f"S{SCALAR_NAME_BYTES}")
        events = file.create_group("events")
        _create_appendable(events, "step", (), np.int64)
        _create_appendable(events, "label", (), f"S{EVENT_LABEL_BYTES}")
        # Allocated now, before SWMR: a lazily allocated counter breaks SWMR readers after a crash.
        file.create_dataset("committed", data=np.zeros(5, np.int64))
        file.flush()
    except BaseException:
        abandon(file)
        raise
    return file


def _write_probe_metadata(file: h5py.File, name: str, meta: Mapping[str, Any], kind: str) -> None:
    static = file.require_group("static").create_group(name)
    static.attrs["kind"] = kind
    plain = {}
    for key, value in meta.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            static.create_dataset(key, data=value)
        else:
            plain[key] = value
    static.attrs["metadata"] = _dump_json(plain, f"probe {name!r} metadata")


def tables(file: h5py.File, counts: Sequence[int]) -> Iterator[tuple[h5py.Dataset, int]]:
    """Every appendable dataset of a store with the number of its committed rows."""
    yield file["steps"], counts[RECORDS]
    yield file["wall_time"], counts[RECORDS]
    for _, group in members(file["probes"]):
        for _, ds in members(group):
            yield ds, counts[RECORDS]
    for key in ("step", "key", "value"):
        yield file["scalars"][key], counts[SCALARS]
    yield file["scalars/names"], counts[SCALAR_NAMES]
    for key in ("step", "label"):
        yield file["events"][key], counts[EVENTS]


class StoreWriter:
    """Appends records, scalars and events to one store. Used by the Recorder's writer thread.

    Rows are buffered in memory and written in whole chunks, at ``flush()`` or when a buffer
    holds a chunk's worth; ``committed`` is bumped after the rows, so a crash never exposes a
    half-written record.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        schema: Schema,
        probe_metadata: Mapping[str, Mapping[str, Any]],
        *,
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        kinds: Mapping[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.kinds = dict(kinds or {})
        self.failed = False  # set by abandon(): the file handle is never touched again
        self.lock = WriterLock.acquire(self.path)  # before anything reads or writes the file
        resuming = self.path.exists() and self.path.stat().st_size > 0 and not overwrite
        self.file: h5py.File | None = None
        try:
            if resuming:
                self.file = self._resume(probe_metadata)
            else:  # built aside and renamed into place: a crash while creating leaves no half-made store
                self._create_aside(probe_metadata, metadata or {})
                self.file = _open_swmr_writer(self.path)
            committed = [int(c) for c in self.file["committed"][:]]
            self.counts, self.generation = committed[:GENERATION], committed[GENERATION]
            self._scalar_names = [n.decode() for n in self.file["scalars/names"][: self.counts[SCALAR_NAMES]]]
        except BaseException as err:
            if self.file is not None:
                abandon(self.file)
            self.lock.release()
            if isinstance(err, Exception) and not isinstance(err, TrajhookError):
                raise self._open_error(err, resuming) from None
            raise
        self._scalar_index = {n: i for i, n in enumerate(self._scalar_names)}
        self._pending_records: list[tuple[int, float, dict[str, dict[str, np.ndarray]]]] = []
        self._pending_scalars: list[tuple[int, str, float]] = []
        self._pending_events: list[tuple[int, str]] = []
        self._chunk_rows = min(
            (ds.chunks[0] for _, g in members(self.file["probes"]) for _, ds in members(g) if hasattr(ds, "chunks")),
            default=_MAX_CHUNK_ROWS,
        )

    # -- creating and resuming ------------------------------------------------------------------

    def _open_error(self, err: Exception, resuming: bool) -> TrajhookError:
        if is_disk_full(err):
            return TrajhookError(
                f"Recorder: no space left on the device of {str(self.path)!r} to "
                f"{'resume' if resuming else 'create'} the store. "
                + ("The store is unchanged: everything committed is still in it. " if resuming else "")
                + "HINT: free disk space, or pass a path on another disk."
            )
        if resuming:
            return corrupt_error(self.path, err, resuming=True)
        return TrajhookError(
            f"Recorder: cannot create the store {str(self.path)!r} ({type(err).__name__}: {_first_line(err)}). "
            "HINT: check the path's folder, its permissions and free space."
        )

    def _create(
        self, path: Path, probe_metadata: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, Any]
    ) -> h5py.File:
        return create_store(path, self.schema, probe_metadata, metadata, self.kinds)

    def _create_aside(self, probe_metadata: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, Any]) -> None:
        """Create the store as ``<name>.new`` and rename it over ``path``; a failure leaves no new file."""
        tmp = self.path.with_name(self.path.name + ".new")
        try:
            self._create(tmp, probe_metadata, metadata).close()
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _resume(self, probe_metadata: Mapping[str, Mapping[str, Any]]) -> h5py.File:
        with open_for_reading(self.path) as old:
            difference = schema_difference(read_schema(old), self.schema)
            if not difference:  # touch everything a resume relies on: fail now on a damaged store
                counts = old["committed"][:]
                json.loads(old.attrs["metadata"])
                file_size = self.path.stat().st_size
                for ds, n in self._tables(old, counts):
                    if ds.shape[0] < n:
                        raise ValueError(f"{ds.name} has {ds.shape[0]} rows, {n} were committed")
                    if rows_inside_file(ds, n, file_size) < n:
                        raise ValueError(f"{ds.name} has committed rows past the end of the file: it was truncated")
                    if n:
                        ds[n - 1]
            if difference:
                raise TrajhookError(
                    f"Recorder: the store {str(self.path)!r} was written with other probes: {difference}. "
                    "HINT: use a new path, or pass overwrite=True to replace the store."
                )
        try:  # a store that was closed cleanly reopens in place
            file = _open_swmr_writer(self.path)
        except OSError:  # a writer that crashed leaves the file flagged open: rebuild it from its rows
            file = None
        if file is None or len(file["committed"]) <= GENERATION:  # also: a store from before generations
            if file is not None:
                file.close()
            self._rebuild(probe_metadata)
            file = _open_swmr_writer(self.path)
        counts = file["committed"][:]
        for ds, n in self._tables(file, counts):
            if ds.shape[0] > n:  # drop rows a crash left beyond the commit mark
                ds.resize(n, axis=0)
        file.flush()
        return file

    def _rebuild(self, probe_metadata: Mapping[str, Mapping[str, Any]]) -> None:
        tmp = self.path.with_name(self.path.name + ".rebuild")
        new = None
        try:
            with open_for_reading(self.path) as old:
                counts = old["committed"][:]
                new = self._create(tmp, probe_metadata, json.loads(old.attrs["metadata"]))
                for key in ("created", "trajhook_version"):
                    new.attrs[key] = old.attrs[key]
                for ds, n in self._tables(old, counts):
                    _append(new[ds.name], 0, ds[:n])
                del new["static"]
                old.copy(old["static"], new, "static")
                new["committed"][: len(counts)] = counts
                new.close()
            os.replace(tmp, self.path)
        except BaseException:  # a full disk or a damaged store: the original stays as it was
            if new is not None:
                abandon(new)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    _tables = staticmethod(tables)

    # -- writing --------------------------------------------------------------------------------

    def drop_from(self, step: int) -> int:
        """Forget committed rows with ``step`` or later in every table; returns records dropped."""
        if self.failed:
            return 0
        self.flush()
        dropped = 0
        for index, key in ((RECORDS, "steps"), (SCALARS, "scalars/step")):  # in step order (the Recorder checks)
            steps = self.file[key][: self.counts[index]]
            later = np.flatnonzero(steps >= step)
            if len(later):
                if index == RECORDS:
                    dropped = self.counts[index] - int(later[0])
                self.counts[index] = int(later[0])
        self._drop_events_from(step)
        self.generation += 1  # rows past the new counts will be overwritten: readers must notice
        self._commit()
        return dropped

    def _drop_events_from(self, step: int) -> None:
        """Forget events at ``step`` or later, keeping earlier ones that come after them in the table.

        Events are not in step order: a live stage event is added at the (earlier) step where a turn
        happened, after the marks of later steps. The kept rows move down over the dropped ones
        (rows past the count are free); the generation bump makes a concurrent reader read again.
        """
        steps = self.file["events/step"][: self.counts[EVENTS]]
        kept = np.flatnonzero(steps < step)
        if len(kept) < len(steps) and len(kept) and kept[-1] >= len(kept):  # the kept rows are not a prefix
            labels = self.file["events/label"][: self.counts[EVENTS]]
            self.file["events/step"][: len(kept)] = steps[kept]
            self.file["events/label"][: len(kept)] = labels[kept]
        self.counts[EVENTS] = len(kept)

    def add_record(self, step: int, wall_time: float, outputs: dict[str, dict[str, np.ndarray]]) -> None:
        if self.failed:
            return
        self._pending_records.append((step, wall_time, outputs))
        if len(self._pending_records) >= self._chunk_rows:
            self.flush()

    def add_scalar(self, step: int, name: str, value: float) -> None:
        if self.failed:
            return
        self._pending_scalars.append((step, name, value))
        if len(self._pending_scalars) >= _MAX_CHUNK_ROWS:
            self.flush()

    def add_event(self, step: int, label: str) -> None:
        if self.failed:
            return
        self._pending_events.append((step, label))

    def flush(self) -> None:
        """Write buffered rows, then bump ``committed``. Readers see all of it or none."""
        if self.failed or not (self._pending_records or self._pending_scalars or self._pending_events):
            return
        if self._pending_records:
            self._write_records()
        if self._pending_scalars:
            self._write_scalars()
        if self._pending_events:
            steps, labels = zip(*self._pending_events, strict=True)
            start = self.counts[EVENTS]
            _append(self.file["events/step"], start, np.asarray(steps, np.int64))
            _append(self.file["events/label"], start, np.array([s.encode() for s in labels]))
            self.counts[EVENTS] += len(steps)
            self._pending_events.clear()
        self._commit()

    def _write_records(self) -> None:
        start = self.counts[RECORDS]
        pending = self._pending_records
        _append(self.file["steps"], start, np.array([r[0] for r in pending], np.int64))
        _append(self.file["wall_time"], start, np.array([r[1] for r in pending], np.float64))
        for probe, outputs in self.schema.items():
            group = self.file["probes"][probe]
            for key, spec in outputs.items():
                rows = np.stack([r[2][probe][key] for r in pending]).astype(spec.dtype, copy=False)
                _append(group[key], start, rows)
        self.counts[RECORDS] += len(pending)
        pending.clear()

    def _write_scalars(self) -> None:
        new_names = []
        for _, name, _ in self._pending_scalars:
            if name not in self._scalar_index:
                self._scalar_index[name] = len(self._scalar_names)
                self._scalar_names.append(name)
                new_names.append(name.encode())
        if new_names:
            _append(self.file["scalars/names"], self.counts[SCALAR_NAMES], np.array(new_names))
            self.counts[SCALAR_NAMES] += len(new_names)
        start = self.counts[SCALARS]
        steps, names, values = zip(*self._pending_scalars, strict=True)
        _append(self.file["scalars/step"], start, np.asarray(steps, np.int64))
        _append(self.file["scalars/key"], start, np.array([self._scalar_index[n] for n in names], np.int32))
        _append(self.file["scalars/value"], start, np.asarray(values, np.float64))
        self.counts[SCALARS] += len(steps)
        self._pending_scalars.clear()

    def _commit(self) -> None:
        self.file["committed"][:] = [*self.counts, self.generation]
        self.file["committed"].flush()

    def close(self) -> None:
        """Flush and close; compact the file if partial-chunk rewrites left much dead space.

        A flush before a chunk is full rewrites a compressed chunk, and an SWMR writer never
        reuses the space it freed. Rebuilding from the committed rows gives that space back.
        Compaction is an optimization: if it fails (a full disk), the store stays as it was.
        """
        if self.failed or self.file is None or not self.file.id.valid:
            self.lock.release()
            return
        try:
            self.flush()
            live = sum(ds.id.get_storage_size() for ds, _ in self._tables(self.file, self.counts))
            self.file.close()
        except BaseException:
            self.abandon()
            raise
        try:
            dead = self.path.stat().st_size - live
            if dead > max(_COMPACT_MIN_BYTES, live // 4):
                try:
                    self._rebuild({})
                except Exception as err:  # the uncompacted store is whole
                    warnings.warn(
                        f"Recorder: could not compact {str(self.path)!r} ({_first_line(err)}); it is complete "
                        "but larger than needed.",
                        stacklevel=2,
                    )
        finally:
            self.lock.release()

    def abandon(self) -> None:
        """After a write error: detach the HDF5 handle from the file, close it, release the lock.

        HDF5 can crash the process later (at exit, or when the file is opened again) if a handle
        that failed a write is flushed. The committed rows are already on disk; from here on
        every call is a no-op, and the file is left as a crashed writer leaves it.
        """
        self.failed = True
        if self.file is not None:
            abandon(self.file)
        self.lock.release()


def abandon(file: h5py.File) -> None:
    """Close an h5py file without writing another byte to it: its descriptor now points at /dev/null.

    Plain h5py segfaults at exit after ENOSPC, flushing the failed file's metadata cache; with
    the writes going nowhere, closing is harmless and the file on disk keeps its committed state.
    """
    with contextlib.suppress(Exception):
        if file.id.valid:
            fd = file.id.get_vfd_handle()
            null = os.open(os.devnull, os.O_RDWR)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
    with contextlib.suppress(Exception):
        file.close()


def is_disk_full(err: BaseException) -> bool:
    """Whether an error (OSError, or h5py's wrapped RuntimeError) comes from a full disk or quota."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    text = str(err)
    return (
        getattr(err, "errno", None) in codes
        or any(f"errno = {c}," in text for c in codes)
        or ("No space left on device" in text)
    )


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


# -- reading --------------------------------------------------------------------------------------


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


def guess_kind(outputs: Sequence[str], metadata: Mapping[str, Any]) -> str:
    """The probe kind of a group in a format-1 store, which did not record it (format 2 does).

    >>> guess_kind(["action_probs", "direction_probs", "vectors"], {"grid": 0, "cells": 0})
    'maze'
    >>> guess_kind(["token_loss"], {}), guess_kind(["token_loss", "target_logprob"], {}), guess_kind(["x"], {})
    ('token_loss', 'prompts', 'custom')
    """
    if "vectors" in outputs and {"grid", "cells"} <= metadata.keys():
        return "maze"
    if "target_logprob" in outputs or "topk_ids" in outputs:
        return "prompts"
    if "token_loss" in outputs:
        return "token_loss"
    return "custom"


class ProbeLog(Mapping[str, np.ndarray]):
    """The recorded datasets of one probe: ``probe_log["vectors"]`` is an (N, ...) numpy array.

    ``probe_log.kind`` says which probe wrote it (``"maze"``, ``"prompts"``, ``"token_loss"``,
    ``"tensor"`` or ``"custom"``): readers dispatch on it, never on output names.
    """

    def __init__(self, name: str, data: dict[str, np.ndarray], metadata: dict[str, Any], kind: str = "custom") -> None:
        self.name = name
        self._data = data
        self.metadata = metadata
        self.kind = kind

    def __getitem__(self, key: str) -> np.ndarray:
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


class TrajectoryLog(Mapping[str, ProbeLog]):
    """A read-only snapshot of a store: the committed rows at the time of :func:`load`.

    ``log.steps`` and ``log.wall_time`` are (N,) arrays; ``log["maze"]["vectors"]`` is
    (N, ...) with ``log["maze"].metadata``; ``log.scalars["loss"]`` is a :class:`Series`;
    ``log.events`` a list of :class:`Event`; ``log.metadata`` the Recorder's metadata.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        deadline = time.monotonic() + _REOPEN_WINDOW_S
        while True:
            with open_for_reading(self.path) as file:
                try:
                    for _ in range(10):  # a seqlock: read again if a resume rewrote rows meanwhile
                        generation = self._read(file)
                        file["committed"].refresh()
                        if _generation(file["committed"][:]) == generation:
                            return
                    return
                except TrajhookError:
                    raise
                except CORRUPT_ERRORS as err:
                    # Without its traceback: kept in this frame, the traceback (which leads back to this
                    # frame) would make a reference cycle holding every frame of the failed read, and
                    # the arrays and h5py objects in them, until the cyclic GC happens to run.
                    error = err.with_traceback(None)
            # A writer that reopens the store rewrites its metadata without SWMR ordering for a moment:
            # while it is alive, open again and read again, for up to a few seconds.
            if not (time.monotonic() < deadline and writer_alive(self.path)):
                raise corrupt_error(self.path, error) from None
            time.sleep(0.02)

    def _read(self, file: h5py.File) -> int:
        """Read the committed rows; returns the generation they belong to."""
        committed = file["committed"]
        committed.refresh()  # the counter first: every row it counts is already on disk
        counts = [int(c) for c in committed[:]]
        n = counts[RECORDS]
        file_size = os.path.getsize(self.path)

        def rows(ds: h5py.Dataset, count: int) -> np.ndarray:
            ds.refresh()
            if ds.shape[0] < count:
                raise ValueError(f"{ds.name} has {ds.shape[0]} rows, {count} were committed")
            inside = rows_inside_file(ds, count, file_size)
            if inside < count:
                raise ValueError(f"{ds.name} rows from {inside} on lie past the end of the file: it was truncated")
            out = np.empty((count, *ds.shape[1:]), ds.dtype)
            if count:  # straight into the array: twice as fast as ds[:count] on large stores
                ds.read_direct(out, np.s_[:count])
            return out

        self.attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in members(file.attrs)}
        self.metadata: dict[str, Any] = json.loads(file.attrs["metadata"])
        self.steps = rows(file["steps"], n)
        self.wall_time = rows(file["wall_time"], n)
        self._probes = {}
        for name, group in members(file["probes"]):
            static = file["static"][name]
            meta = json.loads(static.attrs["metadata"])
            meta.update({k: ds[()] for k, ds in members(static)})
            data = {key: rows(ds, n) for key, ds in members(group)}
            kind = static.attrs.get("kind")
            kind = kind.decode() if isinstance(kind, bytes) else kind or guess_kind(list(data), meta)
            self._probes[name] = ProbeLog(name, data, meta, str(kind))
        names = [b.decode() for b in rows(file["scalars/names"], counts[SCALAR_NAMES])]
        steps = rows(file["scalars/step"], counts[SCALARS])
        keys = rows(file["scalars/key"], counts[SCALARS])
        values = rows(file["scalars/value"], counts[SCALARS])
        self.scalars = {name: Series(steps[keys == i], values[keys == i]) for i, name in enumerate(names)}
        self.events = [
            Event(int(s), label.decode())
            for s, label in zip(
                rows(file["events/step"], counts[EVENTS]),
                rows(file["events/label"], counts[EVENTS]),
                strict=True,
            )
        ]
        return _generation(counts)

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


def _generation(committed: Sequence[int]) -> int:
    """The generation in a ``committed`` row; 0 for stores written before it existed."""
    return int(committed[GENERATION]) if len(committed) > GENERATION else 0


def load(path: str | os.PathLike) -> TrajectoryLog:
    """Read a trajhook store, also one that is still being written or whose writer crashed.

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
    """
    return TrajectoryLog(path)


def warn_dropped(path: Path, step: int, dropped: int) -> None:
    if dropped:
        warnings.warn(
            f"Recorder: resuming {str(path)!r} at step {step}: dropped {dropped} record(s) at step >= {step} "
            "left by an earlier run. HINT: pass overwrite=True, or a new path, to keep earlier runs apart.",
            stacklevel=3,
        )
