"""The h5py layer: SWMR opening for readers and writers, chunk shapes, appending rows, and
abandoning a file after a write error. Knows the layout only through :mod:`trajhook.store.format`.
Opening a file as a trajhook store (:func:`~trajhook.store.reader.open_for_reading`) is the reader's.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajhook.probes.base import OutputSpec
from trajhook.store.format import PROBES_GROUP, SESSION_FIRST_STEP, SESSION_INFO, SESSIONS_GROUP, Schema, parse_sessions
from trajhook.store.lock import writer_alive

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


# Errors h5py raises on damaged files: OSError and RuntimeError from HDF5, KeyError for objects it
# cannot open, ValueError and TypeError for garbled attributes and shapes.
CORRUPT_ERRORS = (OSError, RuntimeError, KeyError, IndexError, ValueError, TypeError)


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
    for name, group in members(file[PROBES_GROUP]):
        schema[name] = {
            key: OutputSpec(key, tuple(ds.shape[1:]), ds.dtype)
            for key, ds in members(group)
            if isinstance(ds, h5py.Dataset)
        }
    return schema


def read_sessions(file: h5py.File) -> list[dict[str, Any]]:
    """The Recorder sessions a store lists (``/sessions``, format 4), oldest first; [] before format 4."""
    if SESSIONS_GROUP not in file:
        return []
    info, first_step = file[SESSION_INFO], file[SESSION_FIRST_STEP]
    info.refresh()
    first_step.refresh()
    n = min(info.shape[0], first_step.shape[0])
    return parse_sessions(info[:n], first_step[:n])


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


def _create_appendable(
    group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any, chunk_rows: int | None = None
) -> h5py.Dataset:
    dtype = np.dtype(dtype)
    maxshape = (None, *(None if s == 0 else s for s in shape))
    # names and labels: few rows, so small chunks
    rows = chunk_rows or (_STRING_CHUNK_ROWS if dtype.kind == "S" else None)
    chunks = (rows, *shape) if rows else chunk_shape(shape, dtype.itemsize)
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


# -- reserving disk space before a flush ----------------------------------------------------------

_FALLOC_KEEP_SIZE, _FALLOC_PUNCH_HOLE = 0x01, 0x02
# Room for the metadata a flush adds (chunk index blocks, object header updates) beyond its new chunks.
_METADATA_SLACK = 256 * 1024


def _libc_fallocate() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


_FALLOCATE = _libc_fallocate()


def allocate(fd: int, offset: int, length: int, mode: int = _FALLOC_KEEP_SIZE) -> bool:
    """Linux ``fallocate``: blocks for ``[offset, offset + length)``, the file size unchanged.

    Returns False where the filesystem cannot preallocate (then nothing is reserved); raises
    OSError(ENOSPC) when the disk has no room.
    """
    if length <= 0:
        return True
    if _FALLOCATE is None:
        return False
    if _FALLOCATE(fd, mode, offset, length) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(code, os.strerror(code))


def chunk_layout(ds: h5py.Dataset) -> tuple[int, int]:
    """``(rows per chunk, bytes of the chunks that hold one band of rows)`` of a chunked dataset."""
    per_band = int(np.prod([-(-max(s, 1) // c) for s, c in zip(ds.shape[1:], ds.chunks[1:], strict=True)]))
    return ds.chunks[0], per_band * int(np.prod(ds.chunks)) * ds.dtype.itemsize


def new_chunk_bytes(extent: int, start: int, end: int, rows: int, band_bytes: int) -> int:
    """Bytes of the chunks that writing rows ``[start, end)`` newly allocates in a dataset of ``extent``
    rows: every band of ``rows`` rows that starts at or past the extent (the writer writes whole rows,
    so every band that starts inside the extent has its chunks).

    >>> new_chunk_bytes(extent=100, start=100, end=150, rows=64, band_bytes=1000)  # rows 128.. start a band
    1000
    >>> new_chunk_bytes(extent=0, start=0, end=1, rows=64, band_bytes=1000), new_chunk_bytes(100, 100, 110, 64, 1000)
    (1000, 0)
    """
    if end <= start:
        return 0
    first = max(start // rows, -(-extent // rows))
    return max(0, (end - 1) // rows - first + 1) * band_bytes


class SpaceReserve:
    """Disk blocks held for the next flush, so that a full disk fails a flush before it writes a byte.

    Before a flush writes, :meth:`ensure` preallocates (``fallocate``, keeping the file size) every
    byte from the end of what it reserved before up to HDF5's end of file plus the chunks the
    flush will allocate and some room for metadata. Every write of the flush then lands in blocks
    the file already owns; ENOSPC comes from ``fallocate`` instead, before the store is touched.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reserved_to = 0  # every byte below this is allocated
        self.supported = True

    def ensure(self, file: h5py.File, new_chunks: int) -> None:
        """Reserve room for a flush that allocates ``new_chunks`` bytes of new chunks (:func:`new_chunk_bytes`)."""
        if not self.supported:
            return
        need = new_chunks + _METADATA_SLACK
        target = int(file.id.get_filesize()) + need  # HDF5's max(end of file, end of allocated space)
        if target <= self.reserved_to:
            return
        fd = os.open(self.path, os.O_WRONLY)
        try:
            self.supported = allocate(fd, self.reserved_to, target - self.reserved_to)
        except OSError as err:
            raise OSError(err.errno, f"{err.strerror} ({need / 2**20:.1f} MiB needed)") from None
        finally:
            os.close(fd)
        self.reserved_to = target if self.supported else 0

    def release(self) -> None:
        """Give back the blocks reserved past the end of the (closed) file."""
        if not self.supported or self.reserved_to == 0:
            return
        with contextlib.suppress(OSError):
            fd = os.open(self.path, os.O_WRONLY)
            try:
                size = os.fstat(fd).st_size
                allocate(fd, size, self.reserved_to - size, _FALLOC_KEEP_SIZE | _FALLOC_PUNCH_HOLE)
            finally:
                os.close(fd)
        self.reserved_to = 0
