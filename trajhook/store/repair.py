"""Saving what can still be read from a damaged store: ``trajhook repair RUN.h5``.

:func:`salvage` reads a store block by block and notes which committed rows can still be read;
:func:`repair` writes those rows into a new store (``RUN.repaired.h5``), never touching the
original. A record is kept when every one of its datasets (step, wall time, every output of
every probe) reads back and matches its stored checksum (format 3); a probe whose datasets
cannot be opened at all is left out.
"""

from __future__ import annotations

import contextlib
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
    EVENTS,
    GENERATION,
    RECORDS,
    SCALAR_NAMES,
    SCALARS,
    TABLE_NAMES,
    guess_kind,
    row_checksums,
)
from trajhook.store.h5 import CORRUPT_ERRORS, _append, _open_swmr, abandon, members, rows_inside_file
from trajhook.store.writer import create_store, write_checksums

_MAX_BAD_BLOCKS = 16  # per dataset: past this many unreadable blocks, the rest counts as lost (bounded time)
_TABLES = {
    RECORDS: ("records", ["steps", "wall_time"]),
    SCALARS: ("scalar values", ["scalars/step", "scalars/key", "scalars/value"]),
    EVENTS: ("events", ["events/step", "events/label"]),
    SCALAR_NAMES: ("scalar names", ["scalars/names"]),
}


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
            f"{int(self.readable[i].sum())} of {self.committed[i]} committed {_TABLES[i][0]}"
            for i in (RECORDS, SCALARS, EVENTS)
        ]
        if self.problems:
            parts.append("; ".join(self.problems))
        return ", ".join(parts)


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


def _open(path: Path) -> h5py.File:
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
    with _open(path) as file:
        problems: list[str] = []
        try:
            stored = [int(c) for c in file["committed"][:]]
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

        committed = {}
        for index, (_, names) in _TABLES.items():
            n = stored[index] if len(stored) > index else None
            for name in names:
                take(name, n)
            committed[index] = n if n is not None else min(len(masks[name]) for name in names)
        probes: dict[str, dict[str, OutputSpec]] = {}
        try:
            probe_names = list(file["probes"])
        except CORRUPT_ERRORS:
            probe_names = []
            problems.append("the probe list is unreadable")
        record_masks = [masks["steps"], masks["wall_time"]]
        for probe in probe_names:
            try:
                group = file["probes"][probe]
                specs = {k: OutputSpec(k, tuple(ds.shape[1:]), ds.dtype) for k, ds in members(group)}
            except CORRUPT_ERRORS as err:
                problems.append(f"probe {probe!r} is lost ({type(err).__name__})")
                continue
            for key in specs:
                take(f"probes/{probe}/{key}", committed[RECORDS])
            probe_masks = [masks[f"probes/{probe}/{key}"] for key in specs]
            if all(m.any() for m in probe_masks) or committed[RECORDS] == 0:
                probes[probe] = specs
                record_masks += probe_masks
            else:
                problems.append(f"probe {probe!r} is lost (none of its records read back)")
        readable = {}
        for index, (_, names) in _TABLES.items():
            group = record_masks if index == RECORDS else [masks[n] for n in names]
            readable[index] = np.logical_and.reduce([m[: committed[index]] for m in group]) if group else []
        damaged = _checksum_failures(file, committed, data, take, masks, problems)
        for index, bad in damaged.items():
            readable[index] = readable[index] & ~bad
            if bad.any():
                what, rows = _TABLES[index][0], np.flatnonzero(bad)
                steps = data.get(_TABLES[index][1][0])
                where = f"steps {steps[rows].tolist()}" if index != SCALAR_NAMES and steps is not None else None
                where = where or f"rows {rows.tolist()}"
                problems.append(f"{len(rows)} {what} fail their checksums ({where}) and are left out")
        if committed[SCALARS]:  # a value whose name is lost cannot be kept
            keys = np.full(committed[SCALARS], -1, np.int64)
            read = data.get("scalars/key", np.zeros(0, np.int32))[: committed[SCALARS]]
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
        if "checksums" not in file:
            return {}
    except CORRUPT_ERRORS:
        return {}
    damaged = {}
    for index, table in TABLE_NAMES.items():
        name, n = f"checksums/{table}", committed[index]
        try:
            columns = json.loads(file[name].attrs["columns"])
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
            problems.append(f"{unchecked} {_TABLES[index][0]} could not be checked (their checksums are unreadable)")
        damaged[index] = bad
    return damaged


def _attrs(file: h5py.File, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    attrs, metadata = {}, {}
    for key in ("created", "trajhook_version"):
        with contextlib.suppress(*CORRUPT_ERRORS):
            attrs[key] = file.attrs[key]
    try:
        metadata = json.loads(file.attrs["metadata"])
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
    with _open(path) as old:
        attrs, metadata = _attrs(old, found.problems)
        new = create_store(out, found.probes, {}, metadata)
        try:
            new.attrs.update(attrs)
            static = new.require_group("static")
            for probe in found.probes:
                del static[probe]
                try:
                    old.copy(old["static"][probe], static, probe)
                except CORRUPT_ERRORS:
                    lost = static.create_group(probe)
                    lost.attrs["metadata"] = "{}"
                    lost.attrs["kind"] = guess_kind(list(found.probes[probe]), {})
                    found.problems.append(f"probe {probe!r} lost its static metadata")
            counts = [0] * (GENERATION + 1)
            for index, (_, names) in _TABLES.items():
                keep = found.readable[index]
                if index == RECORDS:
                    names = names + [f"probes/{p}/{k}" for p, specs in found.probes.items() for k in specs]
                if index == SCALAR_NAMES:  # keys index names by position: keep every slot
                    names_read = found.data.get("scalars/names", np.zeros(0, new["scalars/names"].dtype))
                    rows = np.array(
                        [
                            names_read[i] if i < len(names_read) and keep[i] else f"lost_name_{i}".encode()
                            for i in range(len(keep))
                        ],
                        new["scalars/names"].dtype,
                    )
                    _append(new["scalars/names"], 0, rows)
                    counts[index] = len(keep)
                    if not keep.all():
                        found.problems.append("some scalar names were unreadable; their values were left out")
                    continue
                for name in names:
                    rows = found.data.get(name, np.zeros((0, *new[name].shape[1:]), new[name].dtype))
                    _append(new[name], 0, rows[: len(keep)][keep[: len(rows)]])
                counts[index] = int(keep.sum())
            write_checksums(new, counts)  # of the rows kept: each was checked against its old checksum
            new["committed"][:] = counts
            new.close()
        except BaseException:
            abandon(new)
            with contextlib.suppress(OSError):
                out.unlink()
            raise
    return out, found
