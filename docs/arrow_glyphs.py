"""Draw the README's arrow-glyph test card: 12 off-axis angles x 6 strengths on a 25x25 hard-mode world.

    python docs/arrow_glyphs.py --out docs/images/arrows_every_strength.png

The picture is the one ``tests/test_arrow_glyphs.py`` measures pixel by pixel (the test renders it
with ``render_glyphs`` from this file), drawn by ``VectorFieldRenderer``, the renderer behind the
PNGs, the GIF/MP4, W&B, TensorBoard and the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from trajhook.plots.maze import VectorFieldRenderer
from trajhook.procgen_state import EMPTY, WALL

ANGLES = np.arange(12) * 30.0 + 15.0  # 15, 45, ..., 345 degrees: none on an axis
LENGTHS = (0.1, 0.2, 0.35, 0.5, 0.75, 1.0)
TITLE = "12 angles x 6 lengths (0.1 to 1.0), a 25x25 world"


def hard_maze() -> np.ndarray:
    """procgen's hard-mode world (25x25) with the lattice of wall pillars a full-size maze has."""
    grid = np.full((25, 25), EMPTY)
    grid[1::2, 1::2] = WALL
    return grid


def render_glyphs() -> tuple[np.ndarray, VectorFieldRenderer, np.ndarray]:
    """The ``(H, W, 3)`` uint8 image, its renderer, and each glyph's true ``(angle in radians, length)``.

    Glyph ``i`` sits on the free cell ``renderer.cells[i]``: every other cell of every other row,
    angles varying fastest, so neighbouring glyphs never touch.
    """
    grid = hard_maze()
    cells = np.array([(r, c) for r in range(0, 25, 2) for c in range(0, 25, 2)])[: len(ANGLES) * len(LENGTHS)]
    truth = np.array([(np.radians(a), length) for length in LENGTHS for a in ANGLES])
    vectors = np.stack([truth[:, 1] * np.cos(truth[:, 0]), truth[:, 1] * np.sin(truth[:, 0])], axis=1)
    renderer = VectorFieldRenderer(grid, cells)
    return renderer.render(vectors, TITLE), renderer, truth


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/arrows_every_strength.png"), help="the PNG")
    args = parser.parse_args(argv)
    import imageio.v3 as imageio

    image, _, _ = render_glyphs()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(args.out, image)
    print(f"wrote {args.out} ({image.shape[1]}x{image.shape[0]})")
    return args.out


if __name__ == "__main__":
    main()
