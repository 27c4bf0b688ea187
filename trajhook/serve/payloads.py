"""What the page asks for, as JSON-ready data built from followers' snapshots.

Pure functions of :class:`~trajhook.serve.follow.Snapshot` objects: the live server answers its API
with them, and ``trajhook report`` inlines their answers, so both pages draw the same data.
Runs are addressed by their index in the list given on the command line, never by a path.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajhook.serve.follow import Snapshot
from trajhook.serve.frames import bucket_minmax

ICL_LATE, ICL_EARLY = 500, 50
# trajhook.plots.maze's arrow encoding (MIN_ARROW_LENGTH, MAX_ARROW_LENGTH, MIN_STRENGTH), here without
# importing matplotlib; tests/test_serve.py checks that they agree
GLYPH = {"min_length": 0.6, "max_length": 0.95, "min_strength": 0.02}


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
                "message": snap.message,
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
    from trajhook import __version__

    return {"head_step": head, "version": __version__, "runs": runs}


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
        "glyph": dict(GLYPH),
    }


def curves(snap: Snapshot) -> dict[str, Any]:
    """The loss and every target's log-prob, bucketed for an overview (events and the last point kept)."""
    events = [s for s, _ in snap.events]
    out: dict[str, Any] = {"epoch": snap.epoch, "loss": None, "targets": []}
    if "loss" in snap.scalars:
        steps, values = snap.scalars["loss"]
        pick = bucket_minmax(steps, values, events)
        out["loss"] = {"steps": steps[pick].tolist(), "values": _floats(values[pick])}
    for probe, lp in snap.targets.items():
        meta = snap.probes[probe]["metadata"]
        steps = snap.steps[: len(lp)]
        prompts = meta.get("prompt_names") or [f"prompt {i}" for i in range(lp.shape[1])]
        texts = meta.get("target_texts") or [[f"target {j}" for j in range(lp.shape[2])] for _ in prompts]
        for i, (prompt, labels) in enumerate(zip(prompts, texts, strict=False)):
            for j, text in enumerate(labels[: lp.shape[2]]):
                values = lp[:, i, j]
                pick = bucket_minmax(steps, values, events)
                out["targets"].append(
                    {
                        "label": f"{probe}/{prompt}: {text!r}",
                        "steps": steps[pick].tolist(),
                        "values": _floats(values[pick]),
                    }
                )
    return out


def _icl(rows: np.ndarray) -> np.ndarray:
    from trajhook.analysis.trajectory import icl_score

    early = min(ICL_EARLY, rows.shape[-1] // 4)
    return np.atleast_1d(icl_score(rows, late=ICL_LATE, early=early))


# The PCA panels: (dataset, probe kinds, title). Each entry draws one panel per probe that records the dataset,
# every run in one basis; e.g. ("vectors", ("maze",), "vector-field PCA trajectory") adds the mazes' panel.
PCA_SOURCES: list[tuple[str, tuple[str, ...], str]] = [
    ("token_loss", ("prompts", "token_loss"), "per-token-loss PCA trajectory (one basis for all runs)"),
]
if importlib.util.find_spec("trajhook.analysis.field") is not None:  # the maze's essential dynamics (h-stream)
    PCA_SOURCES.append(("vectors", ("maze",), "vector-field PCA trajectory (one basis for all runs)"))


def pca(names: Sequence[str], snaps: Sequence[Snapshot]) -> list[dict[str, Any]]:
    """Every run's trajectory in ONE PCA basis per probe, with event markers (and the ICL score for token losses).

    Rows come from each follower's thinned sample (at most a few thousand records a run, always the
    newest): the trajectory of a long run is drawn from evenly spaced records.
    """
    from trajhook.analysis.trajectory import trajectory_pca, turning_points

    panels = []
    for dataset, kinds, title in PCA_SOURCES:
        probes = sorted(
            {
                p
                for s in snaps
                for p, info in s.probes.items()
                if info["kind"] in kinds and f"{p}/{dataset}" in s.samples
            }
        )
        for probe in probes:
            key = f"{probe}/{dataset}"
            members = [(i, s) for i, s in enumerate(snaps) if key in s.samples and len(s.samples[key][0])]
            shapes = {s.samples[key][1].shape[1:] for _, s in members}
            if len(shapes) != 1 or sum(len(s.samples[key][0]) for _, s in members) < 2:
                continue
            rows = [s.samples[key][1].astype(np.float64) for _, s in members]
            try:
                fit = trajectory_pca(rows, n_components=2)
            except Exception:  # every column NaN somewhere: nothing to draw yet
                continue
            entry: dict[str, Any] = {
                "key": f"{dataset}:{probe}",
                "title": f"{probe}: {title}",
                "probe": probe,
                "explained": _floats(fit.explained_variance_ratio, 4),
                "icl_tokens": [ICL_LATE, min(ICL_EARLY, next(iter(shapes))[-1] // 4)]
                if dataset == "token_loss"
                else None,
                "runs": [],
            }
            for (i, snap), coords, data in zip(members, fit.coords, rows, strict=True):
                coords = coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 1)))
                index = snap.samples[key][0]
                steps = snap.steps[np.minimum(index, len(snap.steps) - 1)]
                turns = turning_points(coords, n=1) if len(coords) >= 5 else np.zeros(0, int)
                events = []
                for step, label in snap.events:
                    at = int(np.searchsorted(steps, step, side="right")) - 1
                    if at >= 0:
                        events.append({"step": step, "label": label, "xy": _floats(coords[at])})
                entry["runs"].append(
                    {
                        "run": i,
                        "name": names[i],
                        "steps": steps.tolist(),
                        "x": _floats(coords[:, 0]),
                        "y": _floats(coords[:, 1]),
                        "icl": _floats(_icl(data) if dataset == "token_loss" else np.full(len(data), np.nan), 4),
                        "events": events,
                        "turns": [{"step": int(steps[t]), "xy": _floats(coords[t])} for t in turns],
                    }
                )
            panels.append(entry)
    return panels
