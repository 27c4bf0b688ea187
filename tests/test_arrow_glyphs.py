"""Arrows read right at every magnitude: measured on rendered pixels of a hard-mode-sized maze.

A hard maze is 25x25 cells; at the default figure size a cell is ~13 px. Every glyph of length
0.1..1.0 at 12 off-axis angles must be elongated along its true direction, with its head (the
wide end) on the side the vector points to, and its colour must grow with its strength.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from trajhook.plots.maze import ARROW_CMAP, arrow_collection, arrow_glyphs, vector_field

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
# The README's picture of this test card: `python docs/arrow_glyphs.py` (`make figures`) draws it.
from arrow_glyphs import LENGTHS, hard_maze, render_glyphs


def glyph_weight(image: np.ndarray) -> np.ndarray:
    """How much of each pixel is arrow: the arrow colours are red-orange (R far above B); the
    free cells (beige), the walls (grey) and the figure (white) are not."""
    rgb = image.astype(float)
    return np.clip((rgb[..., 0] - rgb[..., 2] - 20) / 60, 0, 1)


def measure(image: np.ndarray, centre: np.ndarray, cell_px: float) -> dict:
    """Principal axis, elongation and head side of the glyph around ``centre`` (pixel x, y down)."""
    half = int(0.9 * cell_px)
    x0, y0 = (int(v) for v in np.rint(centre))
    window = glyph_weight(image[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1])
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1]
    w = window.ravel()
    pts = np.stack([xs.ravel() + x0 - centre[0], -(ys.ravel() + y0 - centre[1])], axis=1)  # y up
    mean = (pts * w[:, None]).sum(0) / w.sum()
    d = pts - mean
    cov = (d * w[:, None]).T @ d / w.sum()
    evals, evecs = np.linalg.eigh(cov)
    axis = evecs[:, 1]
    along, across = d @ axis, d @ evecs[:, 0]
    mid = (along[w > 0.3].min() + along[w > 0.3].max()) / 2

    def spread(side: np.ndarray) -> float:
        return float(np.sqrt((across[side] ** 2 * w[side]).sum() / w[side].sum()))

    head = axis if spread(along > mid) > spread(along < mid) else -axis
    return {"pixels": float(w.sum()), "elongation": float(np.sqrt(evals[1] / evals[0])), "head": head}


def test_every_glyph_is_elongated_with_its_head_on_the_true_side():
    image, renderer, truth = render_glyphs()  # the renderer behind PNG, GIF/MP4, W&B and the report
    centres = renderer.cell_pixels()
    cell_px = float(np.linalg.norm(centres[1] - centres[0]) / 2)  # neighbours in the list are 2 cells apart
    assert 10 < cell_px < 20, cell_px  # the regime of the bug: ~15 px per cell
    failures = []
    for (angle, length), centre in zip(truth, centres, strict=True):
        m = measure(image, centre, cell_px)
        true_dir = np.array([np.cos(angle), np.sin(angle)])
        off = np.degrees(np.arccos(np.clip(m["head"] @ true_dir, -1, 1)))
        if m["elongation"] < 1.5 or off > 20:
            failures.append((round(np.degrees(angle)), length, round(m["elongation"], 2), round(off)))
    assert not failures, f"(angle, length, elongation, degrees off): {failures}"


def test_length_grows_above_the_minimum_and_colour_shows_strength_below_it():
    glyphs = arrow_glyphs(np.zeros((len(LENGTHS), 2)), np.array([[length, 0.0] for length in LENGTHS]))
    extents = [float(np.ptp(g[:, 0])) for g in glyphs]
    assert extents[:4] == pytest.approx([0.6] * 4)  # the minimum drawn length
    assert extents[4:] == pytest.approx([0.75, 0.95])  # then the strength itself (capped inside the cell)
    fig = vector_field(hard_maze(), np.array([[0, 0], [0, 2]]), np.array([[0.1, 0.0], [0.35, 0.0]]))
    fig.canvas.draw()
    colours = arrow_collection(fig.axes[0]).get_facecolors()
    np.testing.assert_allclose(colours[:, :3], ARROW_CMAP([0.1, 0.35])[:, :3], atol=1e-6)
    assert "strength" in fig.axes[1].get_ylabel()  # the colour bar names the encoding
