"""Maze plots: arrows point the way the policy goes and sit on their own cells, in data and pixels."""

from __future__ import annotations

import imageio.v2 as imageio
import matplotlib
import numpy as np
import pytest

from trajhook.errors import TrajhookError
from trajhook.plots.maze import (
    animate_vector_field,
    arrow_collection,
    figure_to_rgb,
    vector_field,
    vector_field_from_log,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt

W, E, C = 51, 100, 2
FREE_RGB = np.array(matplotlib.colors.to_rgb("#f4f1e8")) * 255


def _arrow_mask(image: np.ndarray) -> np.ndarray:
    """Arrow pixels: red-orange (R far above B), not the cheese's yellow, left of the colour bar."""
    rgb = image.astype(float)
    mask = (rgb[..., 0] - rgb[..., 2] > 50) & ~((rgb[..., 1] > 180) & (rgb[..., 2] < 60))
    mask[:, int(0.83 * image.shape[1]) :] = False
    return mask


def _one_cell_grid(row: int, col: int, size: int = 7) -> np.ndarray:
    grid = np.full((size, size), W)
    grid[row, col] = E
    return grid


def test_figure_to_rgb_matches_figure_size_and_content():
    fig = plt.figure(figsize=(3, 2), dpi=40, facecolor="red")
    image = figure_to_rgb(fig)
    plt.close(fig)
    assert image.shape == (80, 120, 3) and image.dtype == np.uint8
    assert (image == [255, 0, 0]).all()


@pytest.mark.parametrize(
    ("vector", "axis", "sign"),
    [((1.0, 0.0), "x", 1), ((-1.0, 0.0), "x", -1), ((0.0, 1.0), "y_up", 1), ((0.0, -1.0), "y_up", -1)],
)
def test_rendered_arrow_points_the_way_of_the_vector(vector, axis, sign):
    """The arrowhead is the heavy end: the red pixels' centroid lies toward the pointing direction,
    and their extent is long along that axis and short across it."""
    grid = np.full((5, 5), E)
    fig = vector_field(grid, np.array([[2, 2]]), np.array([vector]), crop=False)
    image = figure_to_rgb(fig)
    plt.close(fig)
    ys, xs = np.nonzero(_arrow_mask(image))
    assert len(xs) > 20
    mid_x, mid_y = (xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2  # pivot="middle": the cell centre
    if axis == "x":
        assert (xs.max() - xs.min()) > 2 * (ys.max() - ys.min())
        assert np.sign(xs.mean() - mid_x) == sign
    else:  # image rows grow downwards, so "up" means smaller row indices
        assert (ys.max() - ys.min()) > 2 * (xs.max() - xs.min())
        assert np.sign(mid_y - ys.mean()) == sign


@pytest.mark.parametrize(("row", "col"), [(1, 4), (5, 1), (3, 3)])
def test_arrow_sits_on_its_free_cell_with_row_zero_at_the_bottom(row, col):
    """One free cell in a walled 7x7 grid: the arrow must be drawn inside the light (free) square,
    which in the image lies at height 'row' counted from the bottom and at column 'col'."""
    grid = _one_cell_grid(row, col)
    fig = vector_field(grid, np.array([[row, col]]), np.array([[0.0, 0.6]]), crop=False)
    image = figure_to_rgb(fig)
    plt.close(fig)
    free = np.abs(image.astype(float) - FREE_RGB).sum(axis=-1) < 10
    arrow = _arrow_mask(image)
    fy, fx = np.nonzero(free)
    ay, ax_ = np.nonzero(arrow)
    # the free square's centre and the arrow's midpoint coincide (within a cell's tenth)
    cell_px = fx.max() - fx.min() + 1
    assert abs((ax_.min() + ax_.max()) / 2 - (fx.min() + fx.max()) / 2) < cell_px / 10
    assert abs((ay.min() + ay.max()) / 2 - (fy.min() + fy.max()) / 2) < cell_px * 0.6
    # and the free square is where row/col say: the maze spans 7 cells, row 0 at the bottom
    image = image[:, : int(0.83 * image.shape[1])]  # the maze, not the colour bar's labels
    maze_y = np.nonzero((np.abs(image.astype(float) - [59, 59, 59]).sum(-1) < 10).any(axis=1))[0]
    maze_x = np.nonzero((np.abs(image.astype(float) - [59, 59, 59]).sum(-1) < 10).any(axis=0))[0]
    height, width = maze_y.max() - maze_y.min() + 1, maze_x.max() - maze_x.min() + 1
    assert round((maze_y.max() - (fy.min() + fy.max()) / 2) / height * 7 - 0.5) == row
    assert round(((fx.min() + fx.max()) / 2 - maze_x.min()) / width * 7 - 0.5) == col


def test_data_and_pixels_agree_for_a_field_of_always_right_and_always_up_arrows():
    """Across a whole maze: every arrow of an always-right field is wide, an always-up one tall."""
    grid = np.array([[W, W, W, W, W], [W, E, E, E, W], [W, E, W, C, W], [W, E, E, E, W], [W, W, W, W, W]])
    cells = np.argwhere(grid == E)
    extents = {}
    for name, vec in {"right": (0.8, 0.0), "up": (0.0, 0.8)}.items():
        fig = vector_field(grid, cells, np.tile(vec, (len(cells), 1)), cheese=(2, 3), start=(1, 1))
        image = figure_to_rgb(fig)
        plt.close(fig)
        ys, xs = np.nonzero(_arrow_mask(image))
        extents[name] = (np.ptp(xs), np.ptp(ys))
    # rightward arrows spread over the columns 1..3 and only three rows; upward ones the reverse
    assert extents["right"][0] > extents["right"][1] * 0.9 and extents["up"][1] > extents["up"][0] * 0.9


class FakeProbeLog(dict):
    def __init__(self, vectors: np.ndarray, metadata: dict) -> None:
        super().__init__(vectors=vectors)
        self.metadata = metadata


class FakeLog(dict):
    def __init__(self, steps: np.ndarray, probe: FakeProbeLog) -> None:
        super().__init__(maze=probe)
        self.steps = steps


@pytest.fixture
def fake_log():
    grid = np.array([[W, W, W, W], [W, E, E, W], [W, E, C, W], [W, W, W, W]])
    cells = np.array([[1, 1], [1, 2], [2, 1]])
    vectors = np.stack([np.tile([np.cos(a), np.sin(a)], (3, 1)) for a in np.linspace(0, np.pi, 5)])
    meta = {"grid": grid, "cells": cells, "cheese": [2, 2], "start": [1, 1], "seed": 4}
    return FakeLog(np.array([0, 50, 100, 150, 200]), FakeProbeLog(vectors, meta))


def test_vector_field_from_log_draws_the_requested_step(fake_log):
    fig = vector_field_from_log(fake_log, step=100)
    arrows = arrow_collection(fig.axes[0])
    vectors = fake_log["maze"]["vectors"][2]
    np.testing.assert_allclose(arrows.get_array(), np.hypot(vectors[:, 0], vectors[:, 1]))  # colour = strength
    glyphs = [path.vertices[:7] for path in arrows.get_paths()]
    centres = [(g.max(0) + g.min(0)) / 2 for g in glyphs]
    tips = [g[3] - c for g, c in zip(glyphs, centres, strict=True)]  # vertex 3 is the head's tip
    unit = vectors / np.linalg.norm(vectors, axis=1)[:, None]
    np.testing.assert_allclose([t / np.linalg.norm(t) for t in tips], unit, atol=1e-9)
    assert "step 100" in fig.axes[0].get_title()
    plt.close(fig)
    fig = vector_field_from_log(fake_log)
    assert "step 200" in fig.axes[0].get_title()
    plt.close(fig)
    with pytest.raises(TrajhookError, match=r"step 75 .*HINT"):
        vector_field_from_log(fake_log, step=75)
    with pytest.raises(TrajhookError, match=r"'mouse'.*HINT"):
        vector_field_from_log(fake_log, probe="mouse")


def test_vector_field_rejects_a_stack_of_steps(fake_log):
    meta = fake_log["maze"].metadata
    with pytest.raises(TrajhookError, match=r"\(5, 3, 2\).*HINT"):
        vector_field(meta["grid"], meta["cells"], fake_log["maze"]["vectors"])


def test_animation_gif_and_mp4_have_one_frame_per_step_with_even_size(fake_log, tmp_path):
    gif, mp4 = animate_vector_field(fake_log, [tmp_path / "m.gif", tmp_path / "m.mp4"], fps=5, progress=False)
    frames = imageio.mimread(gif)
    assert len(frames) == 5
    # the arrows turn from pointing right (frame 0) to pointing left (frame 4): mirror images
    first, last = (_arrow_mask(np.asarray(f)[..., :3]) for f in (frames[0], frames[-1]))
    assert first.sum() > 20 and abs(int(first.sum()) - int(last.sum())) < 0.1 * first.sum()
    xs0 = np.nonzero(first)[1]
    xs4 = np.nonzero(last)[1]
    assert xs0.mean() > xs4.mean()
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    width, height = meta["size"]
    assert sum(1 for _ in reader) == 5 and width % 2 == 0 and height % 2 == 0
    with pytest.raises(TrajhookError, match=r"\.avi.*HINT"):
        animate_vector_field(fake_log, tmp_path / "m.avi")


def test_animation_frames_carry_a_progress_bar_along_the_bottom(fake_log):
    from trajhook.plots.maze import PROGRESS_COLOR, vector_field_frames

    green = np.array([int(PROGRESS_COLOR[i : i + 2], 16) for i in (1, 3, 5)])
    widths = []
    for frame in vector_field_frames(fake_log, progress=False):
        bottom = frame[-3]  # a pixel row inside the bar
        widths.append(np.all(np.abs(bottom.astype(int) - green) < 30, axis=1).mean())
    np.testing.assert_allclose(widths, [0.2, 0.4, 0.6, 0.8, 1.0], atol=0.02)  # frame i of 5: (i + 1) / 5


def test_trajectory_labels_near_the_right_edge_stay_inside_the_axes():
    """A turn and an event at the right end of the PCA trajectory: their labels are drawn inwards, on pixels."""
    from trajhook.analysis.field import field_trajectory
    from trajhook.plots.field import draw_field_trajectory
    from trajhook.plots.figures import new_figure

    steps = np.arange(0, 40_000_000, 1_000_000)
    t = np.linspace(0, 1, len(steps))
    fields = np.stack([10 * t, np.where(t < 0.85, 0.0, (t - 0.85) * 10)], axis=1)[:, None, :]  # along, then turning
    trajectory = field_trajectory(steps, fields)
    turn = int(trajectory.turns[0])
    assert trajectory.coords[turn, 0] > np.percentile(trajectory.coords[:, 0], 80)  # the turn sits far right
    fig = new_figure((5, 4))
    ax = fig.add_subplot()
    draw_field_trajectory(ax, trajectory, events=[(int(steps[-1]), "live PCA turn")], colorbar=False)
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    labels = [text for text in ax.texts if "turn" in text.get_text()]
    assert len(labels) == 2
    for text in labels:
        extent = text.get_window_extent(renderer)
        assert box.x0 <= extent.x0 and extent.x1 <= box.x1, (text.get_text(), extent, box)
