"""What the page asks for, as JSON-ready data built from followers' snapshots.

Pure functions of :class:`~trajhook.serve.follow.Snapshot` objects: the live server answers its API
with them, and ``trajhook report`` inlines their answers, so both pages draw the same data.
Runs are addressed by their index in the list given on the command line, never by a path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajhook._version import __version__
from trajhook.arrows import glyph_encoding
from trajhook.serve.follow import PCA_SOURCES, Snapshot
from trajhook.serve.frames import bucket_minmax

ICL_LATE, ICL_EARLY = 500, 50


def run_names(paths: Sequence[str | Path]) -> list[str]:
    """Short unique names for the runs: the file stems, numbered where they repeat.

    >>> run_names(["a/run.h5", "b/run.h5", "c/other.h5"])
    ['run', 'run (2)', 'other']
    """
    names: list[str] = []
    for path in paths:
        stem = Path(path).stem
        names.append(stem if stem not in names else f"{stem} ({sum(n.split(' (')[0] == stem for n in names) + 1})")
    return names


def _floats(values: np.ndarray, digits: int = 5) -> list:
    """JSON-ready floats; NaN and inf become None (a gap in a line)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    return [None if not math.isfinite(v) else round(v, digits) for v in values.tolist()]


def maze_probes(snap: Snapshot) -> list[str]:
    return [n for n, p in snap.probes.items() if p["kind"] == "maze" and "vectors" in p["outputs"]]


def state(names: Sequence[str], snaps: Sequence[Snapshot], have: Sequence[tuple[int, int]] = ()) -> dict[str, Any]:
    """The runs, the newest step of each, and their step indices.

    ``have`` holds the page's ``(epoch, count)`` per run: an unchanged epoch gets only the steps from
    ``count`` on (``steps_from``); a new epoch (the file was rebuilt or rows dropped) all of them.
    """
    import time

    now = time.time()
    runs = []
    head = None
    for i, (name, snap) in enumerate(zip(names, snaps, strict=True)):
        steps = snap.steps
        epoch, count = have[i] if i < len(have) else (-1, 0)
        start = count if epoch == snap.epoch and 0 <= count <= len(steps) else 0
        if len(steps):
            head = int(steps[-1]) if head is None else max(head, int(steps[-1]))
        runs.append(
            {
                "name": name,
                "status": snap.status,
                "run_status": snap.run_status,
                "message": snap.message,
                "newest_age_s": round(now - float(snap.wall[-1]), 1) if len(snap.wall) else None,
                "records_per_min": records_per_minute(snap.wall),
                "writer": snap.writer,
                "epoch": snap.epoch,
                "records": len(steps),
                "first_step": int(steps[0]) if len(steps) else None,
                "last_step": int(steps[-1]) if len(steps) else None,
                "steps_from": start,
                "steps": steps[start:].tolist(),
                "events": [{"step": s, "label": label} for s, label in snap.events],
                "probes": [{"name": n, "kind": p["kind"]} for n, p in snap.probes.items()],
                "mazes": maze_probes(snap),
                "created": str(snap.attrs.get("created", "")),
                "writer_version": str(snap.attrs.get("trajhook_version", "")),
                "metadata": _metadata(snap) if start == 0 else None,
            }
        )
    return {"head_step": head, "version": __version__, "runs": runs}


def records_per_minute(wall: np.ndarray, window_s: float = 600.0) -> float | None:
    """Records a minute over the last ``window_s`` seconds of wall time (or the whole run, if shorter).

    >>> records_per_minute(np.arange(0.0, 121.0, 2.0))  # one record every 2 s
    30.0
    >>> records_per_minute(np.array([5.0])) is None
    True
    """
    wall = np.asarray(wall, dtype=np.float64)
    if len(wall) < 2:
        return None
    first = int(np.searchsorted(wall, wall[-1] - window_s))
    first = min(first, len(wall) - 2)
    span = float(wall[-1] - wall[first])
    return round(60.0 * (len(wall) - 1 - first) / span, 1) if span > 0 else None


def _metadata(snap: Snapshot) -> Any:
    """The Recorder's metadata of a run (JSON), sent with a full step index only."""
    import json

    try:
        return json.loads(snap.attrs.get("metadata", "{}"))
    except (TypeError, ValueError):
        return None


def maze(snap: Snapshot, probe: str) -> dict[str, Any] | None:
    """A maze probe's level: the grid, the free cells, cheese, start, and the arrow encoding's constants."""
    from trajhook.probes.maze import DIRECTIONS

    info = snap.probes.get(probe)
    if info is None or info["kind"] != "maze":
        return None
    meta = info["metadata"]
    grid = np.asarray(meta["grid"])
    from trajhook.procgen_state import WALL

    return {
        "probe": probe,
        "free": (grid != WALL).astype(int).tolist(),
        "cells": np.asarray(meta["cells"]).astype(int).tolist(),
        "cheese": None if meta.get("cheese") is None else [int(v) for v in meta["cheese"]],
        "start": None if meta.get("start") is None else [int(v) for v in meta["start"]],
        "directions": [str(d) for d in meta.get("directions", DIRECTIONS)],
        "glyph": glyph_encoding(),
    }


def curves(snap: Snapshot) -> dict[str, Any]:
    """Every scalar, each maze probe's shortest-path agreement (with chance) and every target's log-prob,
    bucketed for an overview (events and the last point kept)."""
    events = [s for s, _ in snap.events]

    def bucketed(steps: np.ndarray, values: np.ndarray) -> dict[str, list]:
        pick = bucket_minmax(steps, values, events)
        return {"steps": steps[pick].tolist(), "values": _floats(values[pick])}

    out: dict[str, Any] = {"epoch": snap.epoch, "scalars": {}, "agreement": [], "targets": []}
    for name, (steps, values) in snap.scalars.items():
        out["scalars"][name] = bucketed(steps, values)
    for probe, (values, chance, corner) in snap.agreement.items():
        curve = bucketed(snap.steps[: len(values)], values)
        corner_curve = bucketed(snap.steps[: len(corner)], corner)
        out["agreement"].append({"probe": probe, "chance": round(chance, 5), "corner": corner_curve, **curve})
    for probe, lp in snap.targets.items():
        meta = snap.probes[probe]["metadata"]
        steps = snap.steps[: len(lp)]
        prompts = meta.get("prompt_names") or [f"prompt {i}" for i in range(lp.shape[1])]
        texts = meta.get("target_texts") or [[f"target {j}" for j in range(lp.shape[2])] for _ in prompts]
        for i, (prompt, labels) in enumerate(zip(prompts, texts, strict=False)):
            for j, text in enumerate(labels[: lp.shape[2]]):
                out["targets"].append({"label": f"{probe}/{prompt}: {text!r}", **bucketed(steps, lp[:, i, j])})
    return out


def _icl(rows: np.ndarray) -> np.ndarray:
    from trajhook.analysis.trajectory import icl_score

    early = min(ICL_EARLY, rows.shape[-1] // 4)
    return np.atleast_1d(icl_score(rows, late=ICL_LATE, early=early))


MIN_PCA_RECORDS = 8  # records (all runs of a panel together) before a PCA basis is fitted
MAX_FIT_RECORDS = 1024  # a basis is fitted on at most this many records, evenly spaced in each run
TURN_RECORDS = 512  # a finished run's offline turning point is found on at most this many evenly spaced records


def fit_rows(rows: Sequence[np.ndarray], limit: int = MAX_FIT_RECORDS) -> list[np.ndarray]:
    """Each run's rows, thinned evenly (first and last kept) so that all runs together hold at most about ``limit``.

    Two components fitted on 1,024 evenly spaced records of 20,000 span the same plane for a trajectory that
    moves slowly, at a twentieth of the SVD's memory (20 stores x 1,000 maze records: an SVD of 20,000 x 674
    took 10 s and 400 MB on the 2-core machine, one of 1,024 x 674 0.5 s).

    >>> [len(r) for r in fit_rows([np.zeros((30, 2)), np.zeros((10, 2))], limit=20)]
    [15, 5]
    """
    total = sum(len(r) for r in rows)
    if total <= limit:
        return list(rows)
    return [
        r[np.unique(np.linspace(0, len(r) - 1, max(2, round(limit * len(r) / total))).round().astype(int))]
        for r in rows
    ]


@dataclass
class Basis:
    """One PCA panel's fitted basis, kept between polls so that the trajectory holds still.

    The refit policy (:func:`pca`): fitted once the runs have :data:`MIN_PCA_RECORDS` records, refitted
    only when their record count has doubled since, when a run's file was rebuilt (a new epoch), and
    once more when no run of the panel is writing any more (the final basis: every record of the
    finished runs, as ``trajhook pca`` fits it). A refit keeps each component's sign.
    """

    fit: Any  # trajhook.analysis.trajectory.TrajectoryPCA
    records: int
    members: tuple
    settled: bool


def _aligned(fit: Any, old: Basis | None) -> Any:
    """``fit`` with each component's sign flipped to agree with ``old``'s (a refit must not mirror the picture)."""
    import dataclasses

    if old is None or old.fit.components.shape != fit.components.shape:
        return fit
    if not np.array_equal(old.fit.kept_columns, fit.kept_columns):
        return fit
    signs = np.where(np.sum(old.fit.components * fit.components, axis=1) < 0, -1.0, 1.0)
    coords = [c * signs for c in fit.coords] if isinstance(fit.coords, list) else fit.coords * signs
    return dataclasses.replace(fit, coords=coords, components=fit.components * signs[:, None])


def offline_turn(steps: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The record index of a finished run's sharpest turn: :func:`~trajhook.analysis.field.field_trajectory` on
    its own records (at most :data:`TURN_RECORDS`, evenly spaced), as ``trajhook pca`` finds it."""
    from trajhook.analysis.field import field_trajectory

    pick = np.unique(np.linspace(0, len(data) - 1, min(len(data), TURN_RECORDS)).round().astype(int))
    try:
        return pick[field_trajectory(steps[pick], data[pick], n_turns=1).turns]
    except Exception:  # nothing finite to fit: no turn to show
        return np.zeros(0, np.int64)


def pca(
    names: Sequence[str], snaps: Sequence[Snapshot], bases: dict[str, Any] | None = None, defer_turns: bool = False
) -> list[dict[str, Any]]:
    """Every run's trajectory in ONE PCA basis per probe, with the store's events (and the ICL score for token losses).

    ``bases`` holds each panel's :class:`Basis` between calls (the live server keeps it; the report
    passes none and fits once on every record). With ``defer_turns``, offline turning points not yet
    found are left out (the entry says ``turns_pending``) and listed in ``bases["turns wanted"]`` for the
    caller to find (:func:`offline_turn`) into ``bases["offline turns"]``: the live server does that on
    another thread, so that 20 finished runs do not hold back the first paint.

    Between refits, new records are projected onto the kept basis, so the trajectory drawn so far never
    moves. Stage marks are the store's events (the live tracker's among them), placed at their records.
    A run that finished (closed cleanly) also gets its offline turning point (:func:`offline_turn`).

    Rows come from each follower's thinned sample (at most a few thousand records a run, always the
    newest): the trajectory of a long run is drawn from evenly spaced records; the basis is fitted on
    at most :data:`MAX_FIT_RECORDS` of them (:func:`fit_rows`).
    """
    bases = {} if bases is None else bases
    turns = TurnFinder(bases.setdefault("offline turns", {}), bases.setdefault("turns wanted", {}), defer_turns)
    panels = []
    for dataset, kinds, title in PCA_SOURCES:
        for probe in _probes_with(snaps, dataset, kinds):
            key = f"{probe}/{dataset}"
            members = [(i, s) for i, s in enumerate(snaps) if key in s.samples and len(s.samples[key][0])]
            shapes = {s.samples[key][1].shape[1:] for _, s in members}
            if len(shapes) != 1 or sum(len(s.samples[key][0]) for _, s in members) < 2:
                continue
            rows = [s.samples[key][1] for _, s in members]  # float32; each run is cast when it is projected
            basis = _kept_basis(bases, key, members, rows, next(iter(shapes)))
            if basis is None:
                continue
            entry: dict[str, Any] = {
                "key": f"{dataset}:{probe}",
                "title": f"{probe}: {title}",
                "probe": probe,
                "explained": _floats(basis.fit.explained_variance_ratio, 4),
                "basis_records": basis.records,
                "basis_final": basis.settled,
                "icl_tokens": [ICL_LATE, min(ICL_EARLY, next(iter(shapes))[-1] // 4)]
                if dataset == "token_loss"
                else None,
                "runs": [],
            }
            for (i, snap), data in zip(members, rows, strict=True):
                entry["runs"].append(_run_trajectory(names[i], i, snap, key, data, basis, dataset, turns))
            if turns.pending:
                entry["turns_pending"], turns.pending = True, False
            panels.append(entry)
    return panels


def _probes_with(snaps: Sequence[Snapshot], dataset: str, kinds: Sequence[str]) -> list[str]:
    """The probes of these kinds, in any run, whose ``dataset`` the followers sample for the PCA panels."""
    return sorted(
        {p for s in snaps for p, info in s.probes.items() if info["kind"] in kinds and f"{p}/{dataset}" in s.samples}
    )


def _kept_basis(
    bases: dict[str, Any], key: str, members: Sequence[tuple[int, Snapshot]], rows: list[np.ndarray], shape: tuple
) -> Basis | None:
    """The panel's basis: the kept one, refitted when the runs or the files changed, the records doubled (or
    shrank), or every run stopped writing; None (no panel yet) where a refit is due but cannot be made."""
    from trajhook.analysis.trajectory import trajectory_pca

    records = sum(len(s.steps) for _, s in members)
    member_key = (tuple((i, s.epoch) for i, s in members), shape)
    settled = all(s.run_status != "writing" for _, s in members)
    old = bases.get(key)
    refit = (
        old is None
        or old.members != member_key
        or records >= 2 * old.records
        or records < old.records
        or (settled and not old.settled)
    )
    if not refit:
        return old
    if not settled and sum(len(r) for r in rows) < MIN_PCA_RECORDS:
        return None
    try:
        fit = _aligned(trajectory_pca(fit_rows(rows), n_components=2), old)
    except Exception:  # every column NaN somewhere: nothing to draw yet
        return None
    bases[key] = Basis(fit, records, member_key, settled)
    return bases[key]


@dataclass
class TurnFinder:
    """A finished run's offline turning point, found once per file and record count (``found``); with ``defer``,
    a turn not found yet is only asked for (``wanted``) and the panel says so (``pending``)."""

    found: dict[str, Any]
    wanted: dict[str, Any]
    defer: bool = False
    pending: bool = False

    def __call__(self, cached: str, steps: np.ndarray, data: np.ndarray) -> Any:
        if cached not in self.found and self.defer:
            self.wanted[cached] = (steps, data)
            self.pending = True
        elif cached not in self.found:
            self.found[cached] = offline_turn(steps, data)
        return self.found.get(cached, ())


def _run_trajectory(
    name: str, i: int, snap: Snapshot, key: str, data: np.ndarray, basis: Basis, dataset: str, turns: TurnFinder
) -> dict[str, Any]:
    """One run's trajectory in the panel's basis, with its events and (finished) its offline turn."""
    coords = basis.fit.transform(data)
    coords = coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 1)))
    index = snap.samples[key][0]
    steps = snap.steps[np.minimum(index, len(snap.steps) - 1)]
    found = []
    if snap.run_status == "finished" and len(data) >= 5:
        found = turns(f"turn:{key}:{i}:{snap.epoch}:{len(data)}", steps, data)
    events = []
    for step, label in snap.events:
        at = int(np.searchsorted(steps, step, side="right")) - 1
        if at >= 0:
            events.append({"step": step, "label": label, "xy": _floats(coords[at])})
    return {
        "run": i,
        "name": name,
        "run_status": snap.run_status,
        "steps": steps.tolist(),
        "x": _floats(coords[:, 0]),
        "y": _floats(coords[:, 1]),
        "icl": _floats(_icl(data) if dataset == "token_loss" else np.full(len(data), np.nan), 4),
        "events": events,
        "turns": [{"step": int(steps[t]), "xy": _floats(coords[t])} for t in found],
    }
