"""Turn loaded logs into the report page's data: thinned frames on one shared step axis.

Numbers come from :mod:`trajhook.analysis` (joint PCA, ICL score, turning points), so the
report shows what the plots and the analysis functions compute. Pure apart from the maze frames,
which are drawn by :class:`~trajhook.plots.maze.VectorFieldRenderer`, the renderer behind every
other maze picture.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from trajhook.analysis.trajectory import icl_score, trajectory_pca, turning_points
from trajhook.errors import TrajhookError

MAX_CURVE_POINTS = 2000
ICL_LATE, ICL_EARLY = 500, 50


def thin_indices(steps: np.ndarray, max_frames: int, keep_steps: Sequence[int] = ()) -> np.ndarray:
    """Indices of at most about ``max_frames`` records, evenly spread, always with the first, the
    last, and the record nearest each of ``keep_steps`` (events).

    >>> thin_indices(np.arange(0, 1000, 10), 5, keep_steps=[333]).tolist()
    [0, 25, 33, 50, 74, 99]
    >>> thin_indices(np.array([0, 5]), 100).tolist()
    [0, 1]
    """
    steps = np.asarray(steps)
    n = len(steps)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = set(np.rint(np.linspace(0, n - 1, min(n, max(2, int(max_frames))))).astype(int).tolist())
    for step in keep_steps:
        chosen.add(int(np.argmin(np.abs(steps - step))))
    return np.array(sorted(chosen), dtype=np.int64)


def _even(n: int, limit: int = MAX_CURVE_POINTS) -> np.ndarray:
    return np.unique(np.rint(np.linspace(0, n - 1, min(n, limit))).astype(int)) if n else np.zeros(0, int)


def _image_data_uri(rgb: np.ndarray) -> str:
    """A frame as a lossless WebP data URI: exactly the rendered pixels, about 40% smaller than PNG."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(buffer, format="WEBP", lossless=True)
    return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()


def _finite_list(values: np.ndarray, digits: int = 4) -> list:
    """JSON-ready floats; NaN and inf become None (a gap in a Plotly line)."""
    values = np.round(np.asarray(values, dtype=float), digits)
    return [None if not np.isfinite(v) else float(v) for v in values.ravel()]


def _maze_probes(log: Any) -> list[str]:
    return [name for name, probe in log.items() if probe.kind == "maze"]


def _prompt_probes(log: Any) -> list[str]:
    return [name for name, probe in log.items() if probe.kind in ("prompts", "token_loss")]


def run_names(logs: Sequence[Any]) -> list[str]:
    """Short unique names for the runs: the file stems, numbered where they repeat.

    >>> from types import SimpleNamespace
    >>> from pathlib import Path
    >>> run_names([SimpleNamespace(path=Path("a/run.h5")), SimpleNamespace(path=Path("b/run.h5"))])
    ['run', 'run (2)']
    """
    names: list[str] = []
    for log in logs:
        stem = log.path.stem
        names.append(stem if stem not in names else f"{stem} ({sum(n.split(' (')[0] == stem for n in names) + 1})")
    return names


def report_data(logs: Sequence[Any], max_frames: int = 120, progress: bool = True) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data.

    ``steps`` is the shared slider axis (the union of every run's thinned steps); each run's
    ``frame_at[i]`` is its frame shown at ``steps[i]`` (its last record at or before that step).
    """
    from tqdm.auto import tqdm

    from trajhook.plots.maze import VectorFieldRenderer

    logs = list(logs)
    if not logs:
        raise TrajhookError("report: no runs given. HINT: trajhook report RUN.h5 [MORE.h5 ...] -o report.html.")
    for log in logs:
        if len(log.steps) == 0:
            raise TrajhookError(f"report: {str(log.path)!r} has no records yet. HINT: record at least one step.")
    names = run_names(logs)
    runs = []
    for name, log in zip(names, logs, strict=True):
        steps = np.asarray(log.steps)
        keep = thin_indices(steps, max_frames, [e.step for e in log.events])
        runs.append({"name": name, "log": log, "steps": steps, "keep": keep})
    axis = np.unique(np.concatenate([r["steps"][r["keep"]] for r in runs]))

    data: dict[str, Any] = {"steps": axis.tolist(), "runs": [], "mazes": [], "curves": [], "pcas": []}
    for run in runs:
        log, keep, steps = run["log"], run["keep"], run["steps"]
        shown = steps[keep]
        frame_at = np.clip(np.searchsorted(shown, axis, side="right") - 1, 0, len(shown) - 1)
        run["frame_at"] = frame_at.tolist()
        data["runs"].append(
            {
                "name": run["name"],
                "path": str(log.path),
                "records": len(steps),
                "first_step": int(steps[0]),
                "last_step": int(steps[-1]),
                "frames": len(keep),
                "created": str(log.attrs.get("created", "?")),
                "format": str(log.attrs.get("trajhook_format", "?")),
                "probes": sorted(log),
                "metadata": log.metadata,
                "events": [{"step": e.step, "label": e.label} for e in log.events],
                "frame_at": run["frame_at"],
            }
        )
        # maze vector fields: frames from the shared renderer, direction probabilities for the hover
        for probe in _maze_probes(log):
            meta = log[probe].metadata
            renderer = VectorFieldRenderer(meta["grid"], meta["cells"], meta.get("cheese"), meta.get("start"))
            vectors = log[probe]["vectors"]
            frames = [
                _image_data_uri(renderer.render(vectors[i], f"{run['name']}: {probe}, step {int(steps[i]):,}"))
                for i in tqdm(keep, desc=f"{run['name']}/{probe} frames", disable=not progress, unit="frame")
            ]
            height, width = renderer.figure.canvas.get_width_height()[::-1]
            probs = log[probe].get("direction_probs")
            data["mazes"].append(
                {
                    "run": len(data["runs"]) - 1,
                    "probe": probe,
                    "width": width,
                    "height": height,
                    "frames": frames,
                    "cell_xy": np.round(renderer.cell_pixels(), 1).tolist(),
                    "cells": np.asarray(meta["cells"]).tolist(),
                    "directions": list(meta.get("directions", ["left", "right", "up", "down", "no-op"])),
                    "probs": None if probs is None else [_finite_list(probs[i], 3) for i in keep],
                    "vectors": [_finite_list(vectors[i], 3) for i in keep],
                }
            )
        # curves: the training loss and every target's log-prob
        curves: dict[str, Any] = {"run": len(data["runs"]) - 1, "loss": None, "targets": []}
        if "loss" in log.scalars:
            series = log.scalars["loss"]
            pick = _even(len(series.steps))
            curves["loss"] = {"steps": series.steps[pick].tolist(), "values": _finite_list(series.values[pick])}
        for probe in _prompt_probes(log):
            if "target_logprob" not in log[probe]:
                continue
            meta = log[probe].metadata
            pick = _even(len(steps))
            lp = log[probe]["target_logprob"]
            for i, (prompt, texts) in enumerate(zip(meta["prompt_names"], meta["target_texts"], strict=True)):
                for j, text in enumerate(texts):
                    curves["targets"].append(
                        {
                            "label": f"{probe}/{prompt}: {text!r}",
                            "steps": steps[pick].tolist(),
                            "values": _finite_list(lp[pick, i, j]),
                        }
                    )
        data["curves"].append(curves)

    # per-token-loss PCA, fitted jointly over every run that has the probe, in one basis
    probe_names = sorted({p for r in runs for p in _prompt_probes(r["log"]) if "token_loss" in r["log"][p]})
    for probe in probe_names:
        members = [r for r in runs if probe in r["log"] and "token_loss" in r["log"][probe]]
        shapes = {r["log"][probe]["token_loss"].shape[1:] for r in members}
        if len(shapes) != 1:
            continue  # different prompts: no shared basis
        losses = [np.asarray(r["log"][probe]["token_loss"], dtype=np.float64) for r in members]
        if sum(len(x) for x in losses) < 2:
            continue
        pca = trajectory_pca(losses, n_components=2)
        # Olsson et al.'s tokens 500 and 50; for short prompts, token 50 moves to a quarter of the length
        early = min(ICL_EARLY, losses[0].shape[-1] // 4)
        entry: dict[str, Any] = {
            "probe": probe,
            "icl_tokens": [ICL_LATE, early],
            "explained": _finite_list(pca.explained_variance_ratio, 4),
            "runs": [],
        }
        for run, coords, loss in zip(members, pca.coords, losses, strict=True):
            coords = coords if coords.shape[1] == 2 else np.pad(coords, ((0, 0), (0, 1)))
            steps, keep = run["steps"], run["keep"]
            icl = np.atleast_1d(icl_score(loss, late=ICL_LATE, early=early))
            turns = turning_points(coords, n=1) if len(coords) >= 5 else np.zeros(0, int)
            events = [
                {"label": e.label, "step": e.step, "xy": _finite_list(coords[int(np.argmin(np.abs(steps - e.step)))])}
                for e in run["log"].events
            ]
            line = _even(len(steps))
            entry["runs"].append(
                {
                    "run": names.index(run["name"]),
                    "line_x": _finite_list(coords[line, 0]),
                    "line_y": _finite_list(coords[line, 1]),
                    "line_steps": steps[line].tolist(),
                    "x": _finite_list(coords[keep, 0]),
                    "y": _finite_list(coords[keep, 1]),
                    "icl": _finite_list(icl[keep], 4),
                    "turns": [{"step": int(steps[t]), "xy": _finite_list(coords[t])} for t in turns],
                    "events": events,
                }
            )
        data["pcas"].append(entry)
    return data
