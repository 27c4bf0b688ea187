"""``trajhook report``: the live page of :mod:`trajhook.serve` as one offline HTML file.

The same page and script as ``trajhook serve``, with the server's answers inlined: the runs and their
(thinned) step indices, each maze probe's level and frames (the same binary frames, base64), the
bucketed curves and the PCA panels. Nothing is fetched: it opens from disk with no network.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajhook.errors import TrajhookError


def snapshot(paths: Sequence[str | os.PathLike], max_frames: int = 120, progress: bool = True) -> dict[str, Any]:
    """What the page would fetch from a server following ``paths``, with maze frames thinned to
    ``max_frames`` per run (first, last and event records kept)."""
    from tqdm.auto import tqdm

    from trajhook.report.data import thin_indices
    from trajhook.serve import payloads
    from trajhook.serve.follow import Follower
    from trajhook.serve.server import check_stores

    if not paths:
        raise TrajhookError("report: no runs given. HINT: trajhook report RUN.h5 [MORE.h5 ...] -o report.html.")
    check_stores(paths, folders=False)
    names = payloads.run_names(paths)
    followers = [Follower(p, start=False) for p in paths]
    try:
        snaps, shown = [], []
        for path, follower in zip(paths, followers, strict=True):
            follower.refresh()
            snap = follower.snapshot()
            if snap.status == "error":
                raise TrajhookError(f"report: {snap.message}")
            if len(snap.steps) == 0:
                raise TrajhookError(f"report: {str(path)!r} has no records yet. HINT: record at least one step.")
            keep = thin_indices(snap.steps, max_frames, [s for s, _ in snap.events])
            snaps.append(snap)
            shown.append(dataclasses.replace(snap, steps=snap.steps[keep]))
        data: dict[str, Any] = {
            "state": payloads.state(names, shown),
            "mazes": {},
            "frames": {},
            "curves": [payloads.curves(s) for s in snaps],
            "pca": payloads.pca(names, snaps),
        }
        for run, (follower, snap, thin) in enumerate(zip(followers, snaps, shown, strict=True)):
            for probe in payloads.maze_probes(snap):
                data["mazes"][f"{run}/{probe}"] = payloads.maze(snap, probe)
                for step in tqdm(thin.steps.tolist(), desc=f"{names[run]}/{probe}", disable=not progress):
                    blob = follower.frame(probe, step)
                    data["frames"][f"{run}/{probe}/{step}"] = base64.b64encode(blob).decode()
        data["state"]["made"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        data["state"]["stores"] = [str(p) for p in paths]  # the header names them: a snapshot of which stores
        for entry in data["state"]["runs"]:
            entry["status"], entry["message"] = "live", ""  # its run_status says how the run stood then
        return data
    finally:
        for follower in followers:
            follower.stop()


def render_page(data: dict[str, Any]) -> str:
    """The whole self-contained HTML page of a :func:`snapshot`."""
    from trajhook.serve.app import STATIC, page_html

    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    text = text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    script = (STATIC / "trajhook.js").read_text(encoding="utf-8").replace("</script", "<\\/script")
    title = "trajhook report: " + ", ".join(run["name"] for run in data["state"]["runs"])
    return page_html(snapshot=text, script=script, title=title)


def write_report(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, max_frames: int = 120, progress: bool = True
) -> Path:
    """Build the page of ``paths`` and write it to ``out``; returns the path."""
    page = render_page(snapshot(paths, max_frames=max_frames, progress=progress))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
