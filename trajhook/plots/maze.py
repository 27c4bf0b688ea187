"""Maze vector fields: one arrow per probed cell, drawn over the maze, and animated across steps.

The core is :func:`vector_field` on plain arrays (grid, cells, vectors). Thin shells read the
arrays from a loaded log (:func:`vector_field_from_log`) or a set-up
:class:`~trajhook.probes.maze.MazeProbe` (:func:`vector_field_from_probe`).
:func:`animate_vector_field` writes a GIF or MP4 over all recorded steps, and
:func:`figure_to_rgb` turns any figure into an ``(H, W, 3)`` uint8 image (for W&B).

Orientation: ``grid[row, col]`` has row 0 at the bottom, drawn with ``origin="lower"``; the
arrow at ``(row, col)`` is ``(dx, dy) = (P_right - P_left, P_up - P_down)`` at ``x = col``,
``y = row``, so "up" points up on screen.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import LinearSegmentedColormap, ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from trajhook.arrows import (
    ARROW_COLOURS,
    FREE_COLOUR,
    MAX_ARROW_LENGTH,
    MIN_ARROW_LENGTH,
    MIN_STRENGTH,
    WALL_COLOUR,
)
from trajhook.errors import TrajhookError
from trajhook.plots.figures import figure_to_rgb, new_figure
from trajhook.procgen_state import WALL

PROGRESS_COLOR = "#2ca02c"  # the animation's progress bar along the bottom edge
PROGRESS_BAR_HEIGHT = 0.012  # in figure heights
_MAZE_CMAP = ListedColormap([WALL_COLOUR, FREE_COLOUR])
ARROW_CMAP = LinearSegmentedColormap.from_list("trajhook_arrows", list(ARROW_COLOURS))  # strength 0 to 1
FIGSIZE = (6.0, 5.0)  # inches; the maze is square, the colour bar takes the rest
ENCODING_NOTE = f"length = strength (min {MIN_ARROW_LENGTH:g} cell)"


def arrow_glyphs(
    cells: np.ndarray,
    vectors: np.ndarray,
    min_length: float = MIN_ARROW_LENGTH,
    max_length: float = MAX_ARROW_LENGTH,
    min_strength: float = MIN_STRENGTH,
) -> np.ndarray:
    """One closed polygon of 7 vertices in data coordinates ``(x=col, y=row)`` per cell: ``(n, 7, 2)``.

    An arrow is a shaft plus a head, centred on its cell and pointing along ``(dx, dy)``. Its
    length is ``|v|`` cells, clipped to ``[min_length, max_length]``, so a weak vector still
    draws as an elongated arrow whose head shows the way (the colour shows its strength,
    see :data:`ARROW_CMAP`). Below ``min_strength`` the direction is noise: a small heptagon (a dot).
    Pure numpy, so every picture (PNG, GIF/MP4, W&B, the HTML report) draws the same glyphs.

    >>> right, dot = arrow_glyphs(np.array([[0, 0], [0, 2]]), np.array([[0.1, 0.0], [0.0, 0.0]]))
    >>> right.shape, float(right[:, 0].max()), float(right[:, 0].min())  # 0.6 cell long, head at +x
    ((7, 2), 0.3, -0.3)
    >>> float(np.ptp(dot[:, 0])) < 0.2  # no direction: a dot
    True
    """
    cells = np.asarray(cells, dtype=float).reshape(-1, 2)
    vectors = np.asarray(vectors, dtype=float).reshape(-1, 2)
    strength = np.hypot(vectors[:, 0], vectors[:, 1])
    arrow = np.isfinite(strength) & (strength >= min_strength)
    length = np.clip(np.where(arrow, strength, min_length), min_length, max_length)
    head_length = np.minimum(0.3, 0.45 * length)
    head_half, shaft_half = 0.2, 0.06
    tail, tip = -length / 2, length / 2
    neck = tip - head_length
    along = np.stack([tail, neck, neck, tip, neck, neck, tail], axis=1)  # (n, 7)
    across = np.array([-shaft_half, -shaft_half, -head_half, 0.0, head_half, shaft_half, shaft_half])
    safe = np.where(arrow, strength, 1.0)
    u = np.where(arrow[:, None], vectors / safe[:, None], [1.0, 0.0])  # unit direction
    w = np.stack([-u[:, 1], u[:, 0]], axis=1)
    glyphs = along[:, :, None] * u[:, None, :] + across[None, :, None] * w[:, None, :]
    angles = np.linspace(0, 2 * np.pi, 7, endpoint=False)
    dot = 0.09 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    glyphs[~arrow] = dot
    centres = np.stack([cells[:, 1], cells[:, 0]], axis=1)
    return glyphs + centres[:, None, :]


def _check_arrays(grid: Any, cells: Any, vectors: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grid, cells, vectors = np.asarray(grid), np.asarray(cells), np.asarray(vectors, dtype=float)
    if grid.ndim != 2:
        raise TrajhookError(
            f"vector_field: grid has shape {grid.shape}, expected (world_dim, world_dim). "
            "HINT: pass probe.grid or log['maze'].metadata['grid']."
        )
    if cells.ndim != 2 or cells.shape[1] != 2 or vectors.shape != cells.shape:
        raise TrajhookError(
            f"vector_field: cells {cells.shape} and vectors {vectors.shape} must both be (n, 2). "
            "HINT: pass one step's vectors, e.g. log['maze']['vectors'][-1], not the whole stack."
        )
    return grid, cells, vectors


def arrow_collection(ax: Axes) -> PolyCollection:
    """The arrows of a :func:`vector_field` axes (for tests and renderers that update them)."""
    return next(c for c in ax.collections if c.get_gid() == "trajhook-arrows")


def vector_field(
    grid: np.ndarray,
    cells: np.ndarray,
    vectors: np.ndarray,
    cheese: Sequence[int] | None = None,
    start: Sequence[int] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
    crop: bool = True,
    dpi: float = 100,
    colorbar: bool = True,
) -> Figure:
    """Draw the maze (walls dark, free cells light, cheese and start marked) with one arrow per cell.

    ``grid`` is ``(H, W)`` procgen codes, ``cells`` ``(n, 2)`` ``(row, col)`` with row 0 at the
    bottom, ``vectors`` ``(n, 2)`` ``(dx, dy)`` with y up. The encoding (see
    :func:`arrow_glyphs`): an arrow's length is its strength ``|v|`` in cells, never shorter
    than :data:`MIN_ARROW_LENGTH`; its colour is the strength on :data:`ARROW_CMAP` (the colour
    bar), and a dot marks a cell with no direction. ``crop`` trims the all-wall margin around
    the maze. Returns the figure (a new one unless ``ax`` is given).

    >>> grid = np.full((6, 6), 51)
    >>> grid[2, 2], grid[2, 3] = 100, 2  # one free cell, the cheese to its right
    >>> fig = vector_field(grid, np.array([[2, 2]]), np.array([[1.0, 0.0]]), cheese=(2, 3))
    >>> [float(v) for v in (*fig.axes[0].get_xlim(), *fig.axes[0].get_ylim())]  # the maze plus one wall ring
    [0.5, 4.5, 0.5, 3.5]
    >>> fig.axes[1].get_ylabel().splitlines()[1]  # the colour bar says what colour and length mean
    'length = strength (min 0.6 cell)'
    """
    grid, cells, vectors = _check_arrays(grid, cells, vectors)
    if ax is None:
        fig = new_figure(FIGSIZE if colorbar else (5, 5), dpi=dpi)
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    ax.imshow(grid != WALL, origin="lower", cmap=_MAZE_CMAP, vmin=0, vmax=1, interpolation="nearest")
    arrows = PolyCollection(
        arrow_glyphs(cells, vectors), cmap=ARROW_CMAP, norm=Normalize(0.0, 1.0), edgecolors="none", zorder=3
    )
    arrows.set_array(np.nan_to_num(np.hypot(vectors[:, 0], vectors[:, 1])))
    arrows.set_gid("trajhook-arrows")
    ax.add_collection(arrows)
    if cheese is not None:
        ax.plot(cheese[1], cheese[0], marker="o", color="#f2c200", markersize=11, markeredgecolor="k")
    if start is not None:
        ax.plot(start[1], start[0], marker="s", color="none", markersize=11, markeredgecolor="#1f77b4", mew=2)
    if crop:
        rows, cols = np.nonzero(grid != WALL)
        if len(rows):
            ax.set_xlim(float(cols.min()) - 1.5, float(cols.max()) + 1.5)
            ax.set_ylim(float(rows.min()) - 1.5, float(rows.max()) + 1.5)
    else:
        ax.set_xlim(-0.5, grid.shape[1] - 0.5)
        ax.set_ylim(-0.5, grid.shape[0] - 0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if colorbar:
        bar = fig.colorbar(arrows, ax=ax, fraction=0.046, pad=0.03)
        bar.set_label(f"arrow strength |(P_right − P_left, P_up − P_down)|\n{ENCODING_NOTE}", fontsize=8)
        bar.ax.tick_params(labelsize=8)
    if title:
        ax.set_title(title)
    return fig


def _probe_log(log: Any, probe: str) -> Any:
    try:
        return log[probe]
    except KeyError:
        names = sorted(log) if hasattr(log, "__iter__") else "?"
        raise TrajhookError(
            f"vector_field_from_log: probe {probe!r} is not in the log (probes: {names}). "
            "HINT: pass probe=<the MazeProbe's name>."
        ) from None


def _record_index(steps: np.ndarray, step: int | None, who: str = "vector_field_from_log") -> int:
    if len(steps) == 0:
        raise TrajhookError(f"{who}: the log has no records. HINT: record at least one step first.")
    if step is None:
        return len(steps) - 1
    hits = np.flatnonzero(np.asarray(steps) == step)
    if len(hits) == 0:
        raise TrajhookError(
            f"{who}: step {step!r} was not recorded (first {int(steps[0])}, last "
            f"{int(steps[-1])}, {len(steps)} records). "
            "HINT: pass one of log.steps, or step=None for the last."
        )
    return int(hits[-1])


def vector_field_from_log(log: Any, step: int | None = None, probe: str = "maze", ax: Axes | None = None) -> Figure:
    """:func:`vector_field` of one recorded step (``None``: the last) of a loaded log's maze probe.

    ``log`` is anything with ``log[probe]["vectors"]`` ``(N, n, 2)``, ``log[probe].metadata``
    (``grid``, ``cells``, ``cheese``, ``start``) and ``log.steps`` ``(N,)``, e.g.
    ``trajhook.load(path)``.
    """
    probe_log = _probe_log(log, probe)
    steps = np.asarray(log.steps)
    index = _record_index(steps, step)
    meta = probe_log.metadata
    return vector_field(
        meta["grid"],
        meta["cells"],
        np.asarray(probe_log["vectors"][index]),
        cheese=meta.get("cheese"),
        start=meta.get("start"),
        ax=ax,
        title=f"{probe} (seed {meta.get('seed', '?')}), step {int(steps[index])}",
    )


def vector_field_from_probe(probe: Any, vectors: np.ndarray, ax: Axes | None = None, title: str | None = None):
    """:func:`vector_field` of a set-up MazeProbe and one record's ``vectors`` ``(n, 2)``."""
    return vector_field(
        probe.grid,
        probe.cells,
        np.asarray(vectors),
        cheese=probe.cheese,
        start=probe.start,
        ax=ax,
        title=title,
    )


def _even(frame: np.ndarray) -> np.ndarray:
    """Pad a frame with white to even height and width (H.264 in yuv420p needs both even)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=255)
    return frame


class VectorFieldRenderer:
    """Draws the maze once, then redraws only the arrows: many frames of one level, cheaply.

    >>> from trajhook.procgen_state import EMPTY
    >>> grid = np.full((5, 5), WALL); grid[1:4, 1:4] = EMPTY
    >>> cells = np.argwhere(grid == EMPTY)
    >>> renderer = VectorFieldRenderer(grid, cells)
    >>> frame = renderer.render(np.tile([1.0, 0.0], (len(cells), 1)), "step 10")
    >>> frame.shape, frame.dtype
    ((500, 600, 3), dtype('uint8'))
    """

    def __init__(
        self,
        grid: np.ndarray,
        cells: np.ndarray,
        cheese: Sequence[int] | None = None,
        start: Sequence[int] | None = None,
        dpi: float = 100,
    ) -> None:
        self.cells = np.asarray(cells)
        zeros = np.zeros((len(cells), 2))
        self.figure = vector_field(grid, cells, zeros, cheese=cheese, start=start, title=" ", dpi=dpi)
        self.ax = self.figure.axes[0]
        self.arrows = arrow_collection(self.ax)
        self.bar = Rectangle((0, 0), 0, PROGRESS_BAR_HEIGHT, transform=self.figure.transFigure, color=PROGRESS_COLOR)
        self.figure.add_artist(self.bar)

    def render(self, vectors: np.ndarray, title: str, progress: float | None = None) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 frame of one record's ``vectors`` ``(n, 2)``.

        ``progress`` in [0, 1] draws a bar of that width along the frame's bottom edge.
        """
        vectors = np.asarray(vectors, dtype=float)
        self.arrows.set_verts(arrow_glyphs(self.cells, vectors))
        self.arrows.set_array(np.nan_to_num(np.hypot(vectors[:, 0], vectors[:, 1])))
        self.ax.set_title(title)
        self.bar.set_visible(progress is not None)  # a zero-width patch still draws its edge
        self.bar.set_width(0.0 if progress is None else float(np.clip(progress, 0.0, 1.0)))
        return figure_to_rgb(self.figure)

    def cell_pixels(self) -> np.ndarray:
        """``(n, 2)`` pixel ``(x, y)`` of each cell's centre in a rendered frame (y down from the top).

        For overlays on the frame, e.g. the HTML report's per-cell hover.
        """
        self.figure.canvas.draw()
        xy = self.ax.transData.transform(np.stack([self.cells[:, 1], self.cells[:, 0]], axis=1).astype(float))
        height = self.figure.canvas.get_width_height()[1]
        return np.stack([xy[:, 0], height - xy[:, 1]], axis=1)


def vector_field_frames(log: Any, probe: str = "maze", progress: bool = True) -> list[np.ndarray]:
    """One RGB frame per recorded step: the step counter in the title, a progress bar along the bottom."""
    from tqdm.auto import tqdm

    probe_log = _probe_log(log, probe)
    steps = np.asarray(log.steps)
    if len(steps) == 0:
        raise TrajhookError("animate_vector_field: the log has no records. HINT: record at least one step first.")
    vectors = np.asarray(probe_log["vectors"], dtype=float)
    meta = probe_log.metadata
    renderer = VectorFieldRenderer(meta["grid"], meta["cells"], cheese=meta.get("cheese"), start=meta.get("start"))
    n = len(steps)
    return [
        _even(renderer.render(vectors[i], f"{probe}: step {int(steps[i]):,}  ({i + 1}/{n})", progress=(i + 1) / n))
        for i in tqdm(range(n), desc=f"{probe} frames", disable=not progress, unit="frame")
    ]


def _write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """H.264 MP4 through imageio-ffmpeg's ``write_frames`` (imageio's own ffmpeg plugin needs
    imageio-ffmpeg >= 0.4, and gym3 pins < 0.4). Frames must share one even size."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # imageio-ffmpeg 0.3 imports the deprecated pkg_resources
        import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (width, height),
        fps=fps,
        codec="libx264",
        quality=7,
        macro_block_size=2,
        ffmpeg_log_level="error",
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame, dtype=np.uint8))
    finally:
        writer.close()


def animate_vector_field(
    log: Any,
    path: str | os.PathLike | Sequence[str | os.PathLike],
    probe: str = "maze",
    fps: float = 8.0,
    progress: bool = True,
) -> list[Path]:
    """Write the vector field over all recorded steps as a GIF and/or MP4 (chosen by suffix).

    ``path`` may be one path or several (e.g. ``["maze.gif", "maze.mp4"]``); frames are drawn
    once. MP4 uses imageio-ffmpeg's bundled ffmpeg (H.264). Returns the written paths.
    """
    import imageio.v2 as imageio

    paths = [Path(path)] if isinstance(path, str | os.PathLike) else [Path(p) for p in path]
    for p in paths:
        if p.suffix.lower() not in (".gif", ".mp4"):
            raise TrajhookError(
                f"animate_vector_field: path {str(p)!r} is neither .gif nor .mp4. HINT: e.g. 'runs/maze.gif'."
            )
    frames = vector_field_frames(log, probe, progress=progress)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix.lower() == ".gif":
            imageio.mimsave(p, frames, duration=1000.0 / fps, loop=0)
        else:
            _write_mp4(p, frames, fps)
    return paths
