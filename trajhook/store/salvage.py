"""What a damaged store still holds: :func:`salvage` reads it block by block and notes which committed
rows can still be read; :func:`corrupt_error` words the error for a damaged store with what
``trajhook repair`` (:mod:`~trajhook.store.repair`) can save of it.

A record counts as readable when every one of its datasets (step, wall time, every output of every
probe) reads back and matches its stored checksum (format 3); a probe whose datasets cannot be
opened at all is left out.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajhook.errors import TrajhookError
from trajhook.probes.base import OutputSpec
from trajhook.store.format import (
    CHECKSUMS_GROUP,
    COLUMNS_ATTR,
    COMMITTED,
    EVENTS,
    PROBES_GROUP,
    RECORDS,
    SCALAR_KEY,
    SCALAR_NAMES,
    SCALARS,
    TABLE_NAMES,
    TABLE_WORDS,
    checksum_name,
    output_name,
    probe_group,
    row_checksums,
    table_columns,
)
from trajhook.store.h5 import CORRUPT_ERRORS, _open_swmr, members, rows_inside_file

_MAX_BAD_BLOCKS = 16  # per dataset: past this many unreadable blocks, the rest counts as lost (bounded time)


@dataclass
class Salvage:
    """What a damaged store still holds: per table, the committed rows and a mask of readable ones."""

    path: Path
    committed: dict[int, int]
    readable: dict[int, np.ndarray]  # table index -> bool mask over its committed rows
    data: dict[str, np.ndarray] = field(default_factory=dict)  # dataset name -> its committed rows
    probes: dict[str, dict[str, OutputSpec]] = field(default_factory=dict)  # probes that still open
    problems: list[str] = field(default_factory=list)
    damaged: dict[int, np.ndarray] = field(default_factory=dict)  # table index -> rows failing their checksum

    def summary(self) -> str:
        """E.g. ``'1400 of 2000 committed records, 512 of 512 committed scalar values, ...'``."""
        if not any(self.committed.values()) and "the probe list is unreadable" in self.problems:
            return "nothing (the store's root group is damaged; restore the file from a backup)"
        parts = [
            f"{int(self.readable[i].sum())} of {self.committed[i]} committed {TABLE_WORDS[i]}"
            for i in (RECORDS, SCALARS, EVENTS)
        ]
        if self.problems:
            parts.append("; ".join(self.problems))
        return ", ".join(parts)


def corrupt_error(path: str | os.PathLike, err: BaseException, *, resuming: bool = False) -> TrajhookError:
    """The error for a damaged store: names the file, what failed, and what ``trajhook repair`` can save."""
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


def _blocks(ds: h5py.Dataset, n: int) -> Iterator[tuple[int, int]]:
    step = ds.chunks[0] if ds.chunks else max(1, n)
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _read_rows(ds: h5py.Dataset, n: int, file_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` rows of ``ds`` (zeros where unreadable) and the mask of rows that read back."""
    n = min(n, ds.shape[0])
    out = np.zeros((n, *ds.shape[1:]), ds.dtype)
    ok = np.zeros(n, bool)
    bad = 0
    for start, end in _blocks(ds, min(n, rows_inside_file(ds, n, file_size))):
        if bad >= _MAX_BAD_BLOCKS:
            break
        try:
            out[start:end] = ds[start:end]
            ok[start:end] = True
        except CORRUPT_ERRORS:
            bad += 1
    return out, ok


def open_damaged(path: Path) -> h5py.File:
    """Open a store that may be damaged, or whose writer crashed, read-only as HDF5 (no format check)."""
    try:  # without SWMR a damaged block fails at once; a file whose writer crashed needs SWMR
        return _open_swmr(path, swmr=False)
    except FileNotFoundError:
        raise TrajhookError(f"repair: no file at {str(path)!r}.") from None
    except OSError:
        try:
            return _open_swmr(path)
        except OSError as err:
            raise TrajhookError(
                f"repair: {str(path)!r} cannot be opened as HDF5 at all ({err}); nothing can be saved from it. "
                "HINT: its superblock is damaged; restore the file from a backup."
            ) from None


def salvage(path: str | os.PathLike) -> Salvage:
    """Read everything that can still be read from a store, in bounded time."""
    path = Path(path)
    file_size = path.stat().st_size if path.exists() else 0
    with open_damaged(path) as file:
        problems: list[str] = []
        try:
            stored = [int(c) for c in file[COMMITTED][:]]
        except CORRUPT_ERRORS as err:
            stored = []
            problems.append(f"the commit counter is unreadable ({type(err).__name__}); rows were counted instead")
        data: dict[str, np.ndarray] = {}
        masks: dict[str, np.ndarray] = {}

        def take(name: str, n: int | None) -> None:
            try:
                ds = file[name]
                count = ds.shape[0] if n is None else n
                data[name], masks[name] = _read_rows(ds, count, file_size)
                if len(masks[name]) < count:
                    masks[name] = np.concatenate([masks[name], np.zeros(count - len(masks[name]), bool)])
            except CORRUPT_ERRORS as err:
                problems.append(f"{name} is unreadable ({type(err).__name__})")
                masks[name] = np.zeros(n or 0, bool)

        tables = table_columns({})  # the datasets of each table, the probes' outputs aside
        committed = {}
        for index, names in tables.items():
            n = stored[index] if len(stored) > index else None
            for name in names:
                take(name, n)
            committed[index] = n if n is not None else min(len(masks[name]) for name in names)
        probes: dict[str, dict[str, OutputSpec]] = {}
        try:
            probe_names = list(file[PROBES_GROUP])
        except CORRUPT_ERRORS:
            probe_names = []
            problems.append("the probe list is unreadable")
        record_masks = [masks[name] for name in tables[RECORDS]]
        for probe in probe_names:
            try:
                group = file[probe_group(probe)]
                specs = {k: OutputSpec(k, tuple(ds.shape[1:]), ds.dtype) for k, ds in members(group)}
            except CORRUPT_ERRORS as err:
                problems.append(f"probe {probe!r} is lost ({type(err).__name__})")
                continue
            for key in specs:
                take(output_name(probe, key), committed[RECORDS])
            probe_masks = [masks[output_name(probe, key)] for key in specs]
            if all(m.any() for m in probe_masks) or committed[RECORDS] == 0:
                probes[probe] = specs
                record_masks += probe_masks
            else:
                problems.append(f"probe {probe!r} is lost (none of its records read back)")
        readable = {}
        for index, names in tables.items():
            group = record_masks if index == RECORDS else [masks[n] for n in names]
            readable[index] = np.logical_and.reduce([m[: committed[index]] for m in group]) if group else []
        damaged = _checksum_failures(file, committed, data, take, masks, problems)
        for index, bad in damaged.items():
            readable[index] = readable[index] & ~bad
            if bad.any():
                what, rows = TABLE_WORDS[index], np.flatnonzero(bad)
                steps = data.get(tables[index][0])
                where = f"steps {steps[rows].tolist()}" if index != SCALAR_NAMES and steps is not None else None
                where = where or f"rows {rows.tolist()}"
                problems.append(f"{len(rows)} {what} fail their checksums ({where}) and are left out")
        if committed[SCALARS]:  # a value whose name is lost cannot be kept
            keys = np.full(committed[SCALARS], -1, np.int64)
            read = data.get(SCALAR_KEY, np.zeros(0, np.int32))[: committed[SCALARS]]
            keys[: len(read)] = read
            readable[SCALARS] &= np.isin(keys, np.flatnonzero(readable[SCALAR_NAMES]))
        return Salvage(path, committed, readable, data, probes, problems, damaged)


def _checksum_failures(
    file: h5py.File,
    committed: dict[int, int],
    data: dict[str, np.ndarray],
    take: Any,
    masks: dict[str, np.ndarray],
    problems: list[str],
) -> dict[int, np.ndarray]:
    """Per table, a mask of the committed rows whose values no longer match their stored crc32 (or whose
    checksum is unreadable). Stores from before checksums (format < 3) have none: nothing is flagged."""
    try:
        if CHECKSUMS_GROUP not in file:
            return {}
    except CORRUPT_ERRORS:
        return {}
    damaged = {}
    for index in TABLE_NAMES:
        name, n = checksum_name(index), committed[index]
        try:
            columns = json.loads(file[name].attrs[COLUMNS_ATTR])
        except (*CORRUPT_ERRORS, json.JSONDecodeError) as err:
            problems.append(f"{name} is unreadable ({type(err).__name__}); its rows were not checked")
            continue
        take(name, n)
        stored = data.get(name, np.zeros((0, len(columns)), np.uint32))
        bad = np.zeros(n, bool)
        for j, column in enumerate(columns):  # only rows whose values and checksum both read back
            if column in data:
                m = min(n, len(stored), len(data[column]))
                both = masks[name][:m] & masks[column][:m]
                bad[:m] |= both & (row_checksums(data[column][:m]) != stored[:m, j])
        unchecked = int((~masks[name][:n]).sum())
        if unchecked:
            problems.append(f"{unchecked} {TABLE_WORDS[index]} could not be checked (their checksums are unreadable)")
        damaged[index] = bad
    return damaged
