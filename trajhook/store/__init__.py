"""The HDF5 trajectory store: the writer used by the Recorder, and ``load`` for reading.

One module per concept:

- :mod:`~trajhook.store.format`: every group, dataset and attribute name (the only module that spells
  them), the format version, table indices, probe kinds, schemas;
- :mod:`~trajhook.store.lock`: one writer per store (``<store>.lock``);
- :mod:`~trajhook.store.h5`: the h5py layer (SWMR opening, chunk shapes, appending, abandoning a file);
- :mod:`~trajhook.store.salvage`: what a damaged store still holds, and the error that says so;
- :mod:`~trajhook.store.reader`: opening a store (:func:`open_for_reading`), :func:`load`,
  :class:`TrajectoryLog` (read under a seqlock) and its :class:`LazyArray` datasets, read when indexed;
  :class:`StoreFollower`, which follows a store's new committed rows as a writer appends them;
- :mod:`~trajhook.store.writer`: :class:`StoreWriter` (append, commit, resume, rebuild);
- :mod:`~trajhook.store.repair`: ``trajhook repair``, saving what a damaged store still holds.

Each imports only modules listed above it.

The format is documented in ``docs/FORMAT.md``. In short: every dataset is created before SWMR
mode is switched on, rows are appended to chunked, uncompressed, resizable datasets, and the
``committed`` dataset, written after the rows, says how many rows of each table are whole.
Readers trust only ``committed``. This package knows nothing of torch.
"""

from trajhook.store.format import (
    EVENT_LABEL_BYTES,
    EVENTS,
    FORMAT_VERSION,
    GENERATION,
    KINDS,
    RECORDS,
    SCALAR_NAME_BYTES,
    SCALAR_NAMES,
    SCALARS,
    TABLE_NAMES,
    Schema,
    damaged_rows,
    dump_json,
    guess_kind,
    row_checksums,
    schema_difference,
    table_columns,
)
from trajhook.store.h5 import (
    COMPRESSION,
    CORRUPT_ERRORS,
    abandon,
    chunk_shape,
    is_disk_full,
    members,
    open_for_writing_flag,
    read_schema,
    rows_inside_file,
)
from trajhook.store.lock import WriterLock, lock_path, writer_alive
from trajhook.store.reader import (
    Damage,
    Event,
    LazyArray,
    NewRows,
    ProbeLog,
    Series,
    StoreFollower,
    TrajectoryLog,
    check_store,
    load,
    open_for_reading,
    verify,
)
from trajhook.store.salvage import corrupt_error
from trajhook.store.writer import StoreWriter, create_store, tables, warn_dropped

__all__ = [
    "CORRUPT_ERRORS",
    "EVENTS",
    "EVENT_LABEL_BYTES",
    "FORMAT_VERSION",
    "GENERATION",
    "KINDS",
    "RECORDS",
    "SCALARS",
    "SCALAR_NAMES",
    "SCALAR_NAME_BYTES",
    "Damage",
    "Event",
    "LazyArray",
    "NewRows",
    "ProbeLog",
    "Schema",
    "Series",
    "StoreFollower",
    "StoreWriter",
    "TrajectoryLog",
    "WriterLock",
    "abandon",
    "check_store",
    "chunk_shape",
    "corrupt_error",
    "create_store",
    "guess_kind",
    "is_disk_full",
    "load",
    "lock_path",
    "members",
    "open_for_reading",
    "open_for_writing_flag",
    "read_schema",
    "rows_inside_file",
    "schema_difference",
    "tables",
    "verify",
    "warn_dropped",
    "writer_alive",
]
