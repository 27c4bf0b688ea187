"""The writer: ``StoreWriter`` appends rows and commits them; it creates, resumes and rebuilds stores."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajhook._version import __version__
from trajhook.errors import TrajhookError
from trajhook.store.format import (
    CHECKSUMS_GROUP,
    COLUMNS_ATTR,
    COMMITTED,
    CREATED_ATTR,
    EVENT_LABEL,
    EVENT_LABEL_BYTES,
    EVENT_STEP,
    EVENTS,
    EVENTS_GROUP,
    FORMAT_ATTR,
    FORMAT_VERSION,
    GENERATION,
    KIND_ATTR,
    METADATA_ATTR,
    PROBES_GROUP,
    RECORDS,
    SCALAR_KEY,
    SCALAR_NAME_BYTES,
    SCALAR_NAME_LIST,
    SCALAR_NAMES,
    SCALAR_STEP,
    SCALAR_VALUE,
    SCALARS,
    SCALARS_GROUP,
    SESSION_BYTES,
    SESSION_CHUNK_ROWS,
    SESSION_FIRST_STEP,
    SESSION_INFO,
    SESSIONS_GROUP,
    STATIC_GROUP,
    STEPS,
    TABLE_NAMES,
    VERSION_ATTR,
    WALL_TIME,
    Schema,
    checksum_name,
    dump_json,
    output_name,
    row_checksums,
    schema_difference,
    session_row,
    table_columns,
)
from trajhook.store.h5 import (
    _COMPACT_MIN_BYTES,
    _MAX_CHUNK_ROWS,
    SpaceReserve,
    _append,
    _create_appendable,
    _first_line,
    _open_swmr_writer,
    abandon,
    chunk_layout,
    is_disk_full,
    members,
    new_chunk_bytes,
    read_schema,
    rows_inside_file,
)
from trajhook.store.lock import WriterLock
from trajhook.store.reader import open_for_reading
from trajhook.store.salvage import corrupt_error


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
        file.attrs[FORMAT_ATTR] = FORMAT_VERSION
        file.attrs[VERSION_ATTR] = __version__
        file.attrs[CREATED_ATTR] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        file.attrs[METADATA_ATTR] = dump_json(dict(metadata), "Recorder metadata")
        _create_appendable(file, STEPS, (), np.int64)
        _create_appendable(file, WALL_TIME, (), np.float64)
        probes = file.create_group(PROBES_GROUP)
        for name, outputs in schema.items():
            group = probes.create_group(name)
            for spec in outputs.values():
                _create_appendable(group, spec.name, spec.shape, spec.dtype)
            _write_probe_metadata(file, name, probe_metadata.get(name, {}), (kinds or {}).get(name, "custom"))
        file.create_group(SCALARS_GROUP)
        _create_appendable(file, SCALAR_STEP, (), np.int64)
        _create_appendable(file, SCALAR_KEY, (), np.int32)
        _create_appendable(file, SCALAR_VALUE, (), np.float64)
        _create_appendable(file, SCALAR_NAME_LIST, (), f"S{SCALAR_NAME_BYTES}")
        file.create_group(EVENTS_GROUP)
        _create_appendable(file, EVENT_STEP, (), np.int64)
        _create_appendable(file, EVENT_LABEL, (), f"S{EVENT_LABEL_BYTES}")
        file.create_group(SESSIONS_GROUP)  # one row per Recorder session, appended in SWMR mode
        _create_appendable(file, SESSION_INFO, (), f"S{SESSION_BYTES}", chunk_rows=SESSION_CHUNK_ROWS)
        _create_appendable(file, SESSION_FIRST_STEP, (), np.int64, chunk_rows=SESSION_CHUNK_ROWS)
        file.create_group(CHECKSUMS_GROUP)
        for index, columns in table_columns({p: list(outs) for p, outs in schema.items()}).items():
            ds = _create_appendable(file, checksum_name(index), (len(columns),), np.uint32)
            ds.attrs[COLUMNS_ATTR] = json.dumps(columns)
        # Allocated now, before SWMR: a lazily allocated counter breaks SWMR readers after a crash.
        file.create_dataset(COMMITTED, data=np.zeros(GENERATION + 1, np.int64))
        file.flush()
    except BaseException:
        abandon(file)
        raise
    return file


def _write_probe_metadata(file: h5py.File, name: str, meta: Mapping[str, Any], kind: str) -> None:
    static = file.require_group(STATIC_GROUP).create_group(name)
    static.attrs[KIND_ATTR] = kind
    plain = {}
    for key, value in meta.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            static.create_dataset(key, data=value)
        else:
            plain[key] = value
    static.attrs[METADATA_ATTR] = dump_json(plain, f"probe {name!r} metadata")


def tables(file: h5py.File, counts: Sequence[int]) -> Iterator[tuple[h5py.Dataset, int]]:
    """Every appendable dataset of a store with the number of its committed rows (checksums too, if any)."""
    fixed = table_columns({})  # the datasets of each table, the probes' outputs aside
    for name in fixed[RECORDS]:
        yield file[name], counts[RECORDS]
    for _, group in members(file[PROBES_GROUP]):
        for _, ds in members(group):
            yield ds, counts[RECORDS]
    for index in (SCALARS, SCALAR_NAMES, EVENTS):
        for name in fixed[index]:
            yield file[name], counts[index]
    if CHECKSUMS_GROUP in file:
        for index in TABLE_NAMES:
            yield file[checksum_name(index)], counts[index]


def add_session(file: h5py.File, row: bytes, first_step: int = -1) -> int:
    """Append a session's row to ``/sessions`` (its first step: -1 until it writes); returns its index.

    On a resumed store this runs in SWMR mode: appending to datasets that exist is what SWMR
    allows, so the session is noted in the same crash-safe way as every row (a crash in between
    leaves an empty row, which readers skip).
    """
    info = file[SESSION_INFO]
    index = info.shape[0]
    _append(file[SESSION_FIRST_STEP], index, np.array([first_step], np.int64))
    _append(info, index, np.array([row], f"S{SESSION_BYTES}"))
    return index


def copy_sessions(old: h5py.File, new: h5py.File, counts: Sequence[int]) -> None:
    """Copy ``/sessions`` into a rebuilt store; a store from before sessions (format < 4) gets one row
    standing for the sessions that wrote it, at its first record's step."""
    if SESSIONS_GROUP in old:
        n = min(old[SESSION_INFO].shape[0], old[SESSION_FIRST_STEP].shape[0])
        for name in (SESSION_INFO, SESSION_FIRST_STEP):
            _append(new[name], 0, old[name][:n])
    elif counts[RECORDS] or counts[SCALARS] or counts[EVENTS]:
        first = int(old[STEPS][0]) if counts[RECORDS] else -1
        unrecorded = {"unrecorded": "the sessions before trajhook recorded sessions (format < 4)"}
        add_session(new, session_row(unrecorded), first)


def write_checksums(file: h5py.File, counts: Sequence[int]) -> None:
    """Compute ``/checksums/<table>`` from the committed rows (a rebuild of a store that had none)."""
    for index in TABLE_NAMES:
        ds = file[checksum_name(index)]
        columns = json.loads(ds.attrs[COLUMNS_ATTR])
        n = int(counts[index])
        crcs = np.stack([row_checksums(file[c][:n]) for c in columns], axis=1) if n else np.zeros((0, len(columns)))
        _append(ds, 0, crcs.astype(np.uint32))


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
        session: Mapping[str, Any] | None = None,
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
                self._create_aside(probe_metadata, metadata or {}, session)
                self.file = _open_swmr_writer(self.path)
            committed = [int(c) for c in self.file[COMMITTED][:]]
            self.counts, self.generation = committed[:GENERATION], committed[GENERATION]
            self._scalar_names = [n.decode() for n in self.file[SCALAR_NAME_LIST][: self.counts[SCALAR_NAMES]]]
            if resuming and session is not None:  # a new store has its first session's row already
                self.session_index: int | None = add_session(self.file, session_row(session))
            else:
                self.session_index = None if session is None else 0
        except BaseException as err:
            if self.file is not None:
                abandon(self.file)
            self.lock.release()
            if isinstance(err, Exception) and not isinstance(err, TrajhookError):
                raise self._open_error(err, resuming) from None
            raise
        self._scalar_index = {n: i for i, n in enumerate(self._scalar_names)}
        self._reserve = SpaceReserve(self.path)
        self._datasets = {ds.name.lstrip("/"): ds for ds, _ in self._tables(self.file, self.counts)}
        self._layouts = {name: chunk_layout(ds) for name, ds in self._datasets.items()}
        self._extents = {name: ds.shape[0] for name, ds in self._datasets.items()}
        self._columns = {i: json.loads(self.file[checksum_name(i)].attrs[COLUMNS_ATTR]) for i in TABLE_NAMES}
        self._pending_records: list[tuple[int, float, dict[str, dict[str, np.ndarray]]]] = []
        self._pending_scalars: list[tuple[int, str, float]] = []
        self._pending_events: list[tuple[int, str]] = []
        outputs = [ds for _, group in members(self.file[PROBES_GROUP]) for _, ds in members(group)]
        self._chunk_rows = min((ds.chunks[0] for ds in outputs if hasattr(ds, "chunks")), default=_MAX_CHUNK_ROWS)

    # -- creating and resuming ------------------------------------------------------------------

    def _open_error(self, err: Exception, resuming: bool) -> TrajhookError:
        if is_disk_full(err):
            return TrajhookError(
                f"Recorder: no space left on the device of {str(self.path)!r} to "
                f"{'resume' if resuming else 'create'} the store ({_first_line(err)}). "
                + (
                    "The store is unchanged: everything committed is still in it. "
                    if resuming
                    else "A new store reserves the first chunk of every dataset (about 4 MiB for each probe "
                    "output); no file was left. "
                )
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

    def _create_aside(
        self,
        probe_metadata: Mapping[str, Mapping[str, Any]],
        metadata: Mapping[str, Any],
        session: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the store as ``<name>.new`` (with the first session's row) and rename it over ``path``;
        a failure leaves no new file."""
        tmp = self.path.with_name(self.path.name + ".new")
        try:
            file = self._create(tmp, probe_metadata, metadata)
            try:
                if session is not None:
                    add_session(file, session_row(session))
                # the first flush's chunks: a disk too small for them fails now, not at the first record
                first = sum(chunk_layout(ds)[1] for ds, _ in self._tables(file, [0] * GENERATION))
                SpaceReserve(tmp).ensure(file, first)
            finally:
                file.close()
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def _resume(self, probe_metadata: Mapping[str, Mapping[str, Any]]) -> h5py.File:
        with open_for_reading(self.path) as old:
            difference = schema_difference(read_schema(old), self.schema)
            if not difference:  # touch everything a resume relies on: fail now on a damaged store
                counts = old[COMMITTED][:]
                json.loads(old.attrs[METADATA_ATTR])
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
        # also rebuilt: a store from before generations, checksums or sessions (format < 4), into the current format
        if (
            file is None
            or len(file[COMMITTED]) <= GENERATION
            or CHECKSUMS_GROUP not in file
            or SESSIONS_GROUP not in file
        ):
            if file is not None:
                file.close()
            self._rebuild(probe_metadata)
            file = _open_swmr_writer(self.path)
        counts = file[COMMITTED][:]
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
                counts = old[COMMITTED][:]
                new = self._create(tmp, probe_metadata, json.loads(old.attrs[METADATA_ATTR]))
                for key in (CREATED_ATTR, VERSION_ATTR):
                    new.attrs[key] = old.attrs[key]
                for ds, n in self._tables(old, counts):
                    _append(new[ds.name], 0, ds[:n])
                if CHECKSUMS_GROUP not in old:
                    write_checksums(new, counts)
                copy_sessions(old, new, counts)
                del new[STATIC_GROUP]
                old.copy(old[STATIC_GROUP], new, STATIC_GROUP)
                for name, static in members(new[STATIC_GROUP]):  # a format-1 store did not record kinds
                    if KIND_ATTR not in static.attrs:
                        static.attrs[KIND_ATTR] = self.kinds.get(name, "custom")
                new[COMMITTED][: len(counts)] = counts
                new.close()
            os.replace(tmp, self.path)
        except BaseException:  # a full disk or a damaged store: the original stays as it was
            if new is not None:
                abandon(new)
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    _tables = staticmethod(tables)

    # -- sessions -------------------------------------------------------------------------------

    def start_session(self, step: int) -> None:
        """Note this session's first step (its first write), in its ``/sessions`` row."""
        if self.failed or self.session_index is None:
            return
        ds = self.file[SESSION_FIRST_STEP]
        ds[self.session_index] = int(step)
        ds.flush()

    # -- reading back what is committed (the writer's own handle: a resumed tracker's records) -------

    def committed_steps(self) -> np.ndarray:
        """The steps of the committed records, in order."""
        self.flush()
        return self.file[STEPS][: self.counts[RECORDS]]

    def committed_row(self, probe: str, output: str, index: int) -> np.ndarray:
        """One committed record of one probe output (``index`` among the committed records)."""
        if not 0 <= index < self.counts[RECORDS]:
            raise IndexError(f"record {index} is not committed ({self.counts[RECORDS]} are)")
        return self.file[output_name(probe, output)][index]

    def committed_events(self) -> list[tuple[int, str]]:
        """The committed events ``(step, label)``, in the table's order."""
        self.flush()
        n = self.counts[EVENTS]
        steps, labels = self.file[EVENT_STEP][:n], self.file[EVENT_LABEL][:n]
        return [(int(s), label.decode()) for s, label in zip(steps, labels, strict=True)]

    # -- writing --------------------------------------------------------------------------------

    def drop_from(self, step: int, drop_event: Callable[[int, str], bool] | None = None) -> int:
        """Forget committed rows with ``step`` or later in every table; returns records dropped.

        ``drop_event(step, label)`` also drops earlier events it is true of (a live stage event
        confirmed by a record that is dropped).
        """
        if self.failed:
            return 0
        self.flush()
        dropped = 0
        for index, key in ((RECORDS, STEPS), (SCALARS, SCALAR_STEP)):  # in step order (the Recorder checks)
            steps = self.file[key][: self.counts[index]]
            later = np.flatnonzero(steps >= step)
            if len(later):
                if index == RECORDS:
                    dropped = self.counts[index] - int(later[0])
                self.counts[index] = int(later[0])
        self._drop_events_from(step, drop_event)
        self.generation += 1  # rows past the new counts will be overwritten: readers must notice
        self._commit()
        return dropped

    def _drop_events_from(self, step: int, drop_event: Callable[[int, str], bool] | None = None) -> None:
        """Forget events at ``step`` or later, keeping earlier ones that come after them in the table.

        Events are not in step order: a live stage event is added at the (earlier) step where a turn
        happened, after the marks of later steps. The kept rows move down over the dropped ones
        (rows past the count are free); the generation bump makes a concurrent reader read again.
        """
        steps = self.file[EVENT_STEP][: self.counts[EVENTS]]
        labels = self.file[EVENT_LABEL][: self.counts[EVENTS]]
        keep = steps < step
        if drop_event is not None:
            keep &= np.array([not drop_event(int(s), b.decode()) for s, b in zip(steps, labels, strict=True)], bool)
        kept = np.flatnonzero(keep)
        if len(kept) < len(steps) and len(kept) and kept[-1] >= len(kept):  # the kept rows are not a prefix
            crcs = self.file[checksum_name(EVENTS)][: self.counts[EVENTS]]
            self.file[EVENT_STEP][: len(kept)] = steps[kept]
            self.file[EVENT_LABEL][: len(kept)] = labels[kept]
            self.file[checksum_name(EVENTS)][: len(kept)] = crcs[kept]
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
        """Write buffered rows and their checksums, then bump ``committed``. Readers see all of it or none.

        Before it writes, the flush reserves the disk space its writes need (:class:`SpaceReserve`):
        a full disk fails the flush before the store is touched, so every earlier commit stays whole.
        """
        if self.failed or not (self._pending_records or self._pending_scalars or self._pending_events):
            return
        writes = self._planned_writes()
        new_chunks = sum(
            new_chunk_bytes(self._extents[name], start, start + len(rows), *self._layouts[name])
            for name, start, rows in writes
        )
        self._reserve.ensure(self.file, new_chunks)
        for name, start, rows in writes:
            _append(self._datasets[name], start, rows)
            self._extents[name] = max(self._extents[name], start + len(rows))
        for index in TABLE_NAMES:
            for name, start, rows in writes:
                if name == checksum_name(index):
                    self.counts[index] = start + len(rows)
        self._pending_records.clear()
        self._pending_scalars.clear()
        self._pending_events.clear()
        self._commit()

    def _planned_writes(self) -> list[tuple[str, int, np.ndarray]]:
        """``(dataset, first row, rows)`` for every buffered row, and for its table's checksums."""
        columns: dict[int, dict[str, np.ndarray]] = {}
        if self._pending_records:
            pending = self._pending_records
            data = {STEPS: np.array([r[0] for r in pending], np.int64)}
            data[WALL_TIME] = np.array([r[1] for r in pending], np.float64)
            for probe, outputs in self.schema.items():
                for key, spec in outputs.items():
                    rows = np.stack([r[2][probe][key] for r in pending]).astype(spec.dtype, copy=False)
                    data[output_name(probe, key)] = rows
            columns[RECORDS] = data
        if self._pending_scalars:
            new_names = []
            for _, name, _ in self._pending_scalars:
                if name not in self._scalar_index:
                    self._scalar_index[name] = len(self._scalar_names)
                    self._scalar_names.append(name)
                    new_names.append(name.encode())
            if new_names:
                columns[SCALAR_NAMES] = {SCALAR_NAME_LIST: np.array(new_names, f"S{SCALAR_NAME_BYTES}")}
            steps, names, values = zip(*self._pending_scalars, strict=True)
            columns[SCALARS] = {
                SCALAR_STEP: np.asarray(steps, np.int64),
                SCALAR_KEY: np.array([self._scalar_index[n] for n in names], np.int32),
                SCALAR_VALUE: np.asarray(values, np.float64),
            }
        if self._pending_events:
            steps, labels = zip(*self._pending_events, strict=True)
            columns[EVENTS] = {
                EVENT_STEP: np.asarray(steps, np.int64),
                EVENT_LABEL: np.array([s.encode() for s in labels], f"S{EVENT_LABEL_BYTES}"),
            }
        writes = []
        for index, data in columns.items():
            start = self.counts[index]
            writes += [(name, start, data[name]) for name in self._columns[index]]
            crcs = np.stack([row_checksums(data[name]) for name in self._columns[index]], axis=1)
            writes.append((checksum_name(index), start, crcs))
        return writes

    def _commit(self) -> None:
        self.file[COMMITTED][:] = [*self.counts, self.generation]
        self.file[COMMITTED].flush()

    def close(self) -> None:
        """Flush and close; compact the file if it holds much dead space.

        Uncompressed chunks are rewritten in place, so dead space is rare (a store written with a
        compression filter by a benchmark, or space an SWMR writer freed and never reused).
        Rebuilding from the committed rows gives it back. Compaction is an optimization: if it
        fails (a full disk), the store stays as it was.
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
        self._reserve.release()
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
            if hasattr(self, "_reserve"):  # the blocks held past the end of the file; the file stays as it is
                self._reserve.release()
        self.lock.release()


def warn_dropped(path: Path, step: int, dropped: int) -> None:
    if dropped:
        warnings.warn(
            f"Recorder: resuming {str(path)!r} at step {step}: dropped {dropped} record(s) at step >= {step} "
            "left by an earlier run. HINT: pass overwrite=True, or a new path, to keep earlier runs apart.",
            stacklevel=3,
        )
