"""Saving what can still be read from a damaged store: ``trajhook repair RUN.h5``.

:func:`repair` writes the rows that :func:`~trajhook.store.salvage.salvage` finds readable into a
new store (``RUN.repaired.h5``), never touching the original. A record is kept when every one of
its datasets (step, wall time, every output of every probe) reads back and matches its stored
checksum (format 3); a probe whose datasets cannot be opened at all is left out. The list of
Recorder sessions (``/sessions``) is copied whole when it reads back.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajhook.errors import TrajhookError
from trajhook.store.format import (
    COMMITTED,
    CREATED_ATTR,
    GENERATION,
    KIND_ATTR,
    METADATA_ATTR,
    SCALAR_NAME_LIST,
    SCALAR_NAMES,
    STATIC_GROUP,
    VERSION_ATTR,
    guess_kind,
    static_group,
    table_columns,
)
from trajhook.store.h5 import CORRUPT_ERRORS, _append, abandon
from trajhook.store.salvage import Salvage, open_damaged, salvage
from trajhook.store.writer import copy_sessions, create_store, write_checksums


def _attrs(file: h5py.File, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs, metadata = {}, {}
    for key in (CREATED_ATTR, VERSION_ATTR):
        with contextlib.suppress(*CORRUPT_ERRORS):
            attrs[key] = file.attrs[key]
    try:
        metadata = json.loads(file.attrs[METADATA_ATTR])
    except (*CORRUPT_ERRORS, json.JSONDecodeError):
        problems.append("the run metadata is lost")
    return attrs, metadata


def repair(path: str | os.PathLike, out: str | os.PathLike | None = None) -> tuple[Path, Salvage]:
    """Write the readable committed rows of ``path`` into a new store; returns its path and the salvage.

    >>> import tempfile, torch, trajhook
    >>> path = tempfile.mkdtemp() + "/run.h5"
    >>> with trajhook.Recorder(path, [trajhook.TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
    ...     for step in range(3):
    ...         recorded = rec.maybe_record(torch.nn.Linear(2, 1), step, loss=0.5)
    >>> out, found = repair(path)
    >>> out.name, found.summary(), trajhook.load(out).steps.tolist()
    ('run.repaired.h5', '3 of 3 committed records, 3 of 3 committed scalar values, 0 of 0 committed events', [0, 1, 2])
    """
    path = Path(path)
    out = Path(out) if out is not None else path.with_name(f"{path.stem}.repaired{path.suffix or '.h5'}")
    if out.resolve() == path.resolve():
        raise TrajhookError(f"repair: the output {str(out)!r} is the damaged file itself. HINT: pass another --out.")
    found = salvage(path)
    if not any(mask.any() for mask in found.readable.values()):
        raise TrajhookError(
            f"repair: nothing in {str(path)!r} can be read back: {found.summary()}. "
            "HINT: restore the file from a backup; the run's W&B or TensorBoard logs may hold its curves."
        )
    with open_damaged(path) as old:
        attrs, metadata = _attrs(old, found.problems)
        new = create_store(out, found.probes, {}, metadata)
        try:
            new.attrs.update(attrs)
            static = new.require_group(STATIC_GROUP)
            for probe in found.probes:
                del static[probe]
                try:
                    old.copy(old[static_group(probe)], static, probe)
                except CORRUPT_ERRORS:
                    lost = static.create_group(probe)
                    lost.attrs[METADATA_ATTR] = "{}"
                    lost.attrs[KIND_ATTR] = guess_kind(list(found.probes[probe]), {})
                    found.problems.append(f"probe {probe!r} lost its static metadata")
            counts = [0] * (GENERATION + 1)
            for index, names in table_columns(found.probes).items():
                keep = found.readable[index]
                if index == SCALAR_NAMES:  # keys index names by position: keep every slot
                    names_ds = new[SCALAR_NAME_LIST]
                    names_read = found.data.get(SCALAR_NAME_LIST, np.zeros(0, names_ds.dtype))
                    rows = np.array(
                        [
                            names_read[i] if i < len(names_read) and keep[i] else f"lost_name_{i}".encode()
                            for i in range(len(keep))
                        ],
                        names_ds.dtype,
                    )
                    _append(names_ds, 0, rows)
                    counts[index] = len(keep)
                    if not keep.all():
                        found.problems.append("some scalar names were unreadable; their values were left out")
                    continue
                for name in names:
                    rows = found.data.get(name, np.zeros((0, *new[name].shape[1:]), new[name].dtype))
                    _append(new[name], 0, rows[: len(keep)][keep[: len(rows)]])
                counts[index] = int(keep.sum())
            try:
                copy_sessions(old, new, counts)
            except CORRUPT_ERRORS:
                found.problems.append("the list of Recorder sessions is lost")
            write_checksums(new, counts)  # of the rows kept: each was checked against its old checksum
            new[COMMITTED][:] = counts
            new.close()
        except BaseException:
            abandon(new)
            with contextlib.suppress(OSError):
                out.unlink()
            raise
    return out, found
