"""The reader: :func:`load` returns a :class:`TrajectoryLog`, a snapshot of the committed rows,
read under a seqlock so that a concurrent resume never mixes two generations.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from trajhook.errors import TrajhookError
from trajhook.store.format import (
    EVENTS,
    GENERATION,
    RECORDS,
    SCALAR_NAMES,
    SCALARS,
    TABLE_NAMES,
    damaged_rows,
    guess_kind,
)
from trajhook.store.h5 import (
    _REOPEN_WINDOW_S,
    CORRUPT_ERRORS,
    corrupt_error,
    members,
    open_for_reading,
    read_sessions,
    rows_inside_file,
)
from trajhook.store.lock import writer_alive


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
        parts = [
            f"damaged {what} at {unit} {values}"
            for what, unit, values in (
                ("records", "steps", self.records),
                ("scalar values", "steps", self.scalars),
                ("events", "steps", self.events),
                ("scalar names", "positions", self.scalar_names),
            )
            if values
        ]
        return "; ".join(parts) or "no damage found"


class TrajectoryLog(Mapping[str, ProbeLog]):
    """A read-only snapshot of a store: the committed rows at the time of :func:`load`.

    ``log.steps`` and ``log.wall_time`` are (N,) arrays; ``log["maze"]["vectors"]`` is
    (N, ...) with ``log["maze"].metadata``; ``log.scalars["loss"]`` is a :class:`Series`;
    ``log.events`` a list of :class:`Event`; ``log.metadata`` the first Recorder's metadata;
    ``log.sessions`` a dict per Recorder session, oldest first (docs/FORMAT.md, "Sessions").
    With ``verify=True``, ``log.damage`` is the :class:`Damage` its checksums reveal.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = False) -> None:
        self.path = Path(path)
        self._verify = verify
        self.damage: Damage | None = None
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
        self.sessions: list[dict[str, Any]] = read_sessions(file)  # each Recorder session, oldest first
        columns = {"steps": rows(file["steps"], n), "wall_time": rows(file["wall_time"], n)}
        self.steps, self.wall_time = columns["steps"], columns["wall_time"]
        self._probes = {}
        for name, group in members(file["probes"]):
            static = file["static"][name]
            meta = json.loads(static.attrs["metadata"])
            meta.update({k: ds[()] for k, ds in members(static)})
            data = {key: rows(ds, n) for key, ds in members(group)}
            columns.update({f"probes/{name}/{key}": value for key, value in data.items()})
            kind = static.attrs.get("kind")
            kind = kind.decode() if isinstance(kind, bytes) else kind or guess_kind(list(data), meta)
            self._probes[name] = ProbeLog(name, data, meta, str(kind))
        for table, keys in ((SCALAR_NAMES, ["names"]), (SCALARS, ["step", "key", "value"])):
            columns.update({f"scalars/{key}": rows(file["scalars"][key], counts[table]) for key in keys})
        columns.update({f"events/{key}": rows(file["events"][key], counts[EVENTS]) for key in ("step", "label")})
        names = [b.decode() for b in columns["scalars/names"]]
        steps, keys, values = columns["scalars/step"], columns["scalars/key"], columns["scalars/value"]
        self.scalars = {name: Series(steps[keys == i], values[keys == i]) for i, name in enumerate(names)}
        self.events = [
            Event(int(s), label.decode())
            for s, label in zip(columns["events/step"], columns["events/label"], strict=True)
        ]
        if self._verify:
            self.damage = self._check(file, counts, columns, rows)
        return _generation(counts)

    def _check(self, file: h5py.File, counts: list[int], columns: dict[str, np.ndarray], rows: Any) -> Damage:
        """Compare every committed row with its stored checksum."""
        if "checksums" not in file:
            return Damage(self.path, False, [], [], [], [])
        bad = {}
        for index, table in TABLE_NAMES.items():
            ds = file["checksums"][table]
            names = json.loads(ds.attrs["columns"])
            bad[index] = damaged_rows([columns[c] for c in names], rows(ds, counts[index]))
        return Damage(
            self.path,
            True,
            records=columns["steps"][bad[RECORDS]].tolist(),
            scalars=columns["scalars/step"][bad[SCALARS]].tolist(),
            events=columns["events/step"][bad[EVENTS]].tolist(),
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


def _generation(committed: Sequence[int]) -> int:
    """The generation in a ``committed`` row; 0 for stores written before it existed."""
    return int(committed[GENERATION]) if len(committed) > GENERATION else 0


def load(path: str | os.PathLike, verify: bool = False) -> TrajectoryLog:
    """Read a trajhook store, also one that is still being written or whose writer crashed.

    ``verify=True`` also checks every committed row against its stored crc32 (format 3) and
    raises a TrajhookError naming the steps of damaged rows; it costs a few times a plain load
    (``benchmarks/bench_store.py``), so it is not the default.

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
    >>> load(path, verify=True).damage.summary()
    'no damage found'
    """
    log = TrajectoryLog(path, verify=verify)
    if log.damage is not None:
        if not log.damage.checked:
            raise TrajhookError(
                f"load: {str(path)!r} has no checksums (trajhook format {log.attrs['trajhook_format']}; they came "
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
    damage = TrajectoryLog(path, verify=True).damage
    assert damage is not None
    return damage
