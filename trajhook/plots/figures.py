"""Figures without pyplot: safe on any thread and under any backend the user has chosen.

trajhook draws on its writer and W&B threads, where pyplot's global state and GUI backends are
not safe. Every figure therefore gets its own Agg canvas, and nothing needs ``plt.close``.
"""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(figsize: tuple[float, float], dpi: float = 100) -> Figure:
    """A Figure on its own Agg canvas.

    >>> new_figure((2, 1), dpi=50).canvas.get_width_height()
    (100, 50)
    """
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def figure_to_rgb(fig: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 array.

    >>> image = figure_to_rgb(new_figure((2, 1), dpi=50))
    >>> image.shape, image.dtype
    ((50, 100, 3), dtype('uint8'))
    """
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def inward_label(coords: np.ndarray, index: int, dx: float, dy: float) -> dict:
    """``annotate`` keywords that put point ``index``'s label on the side towards the middle of ``coords``
    (offset ``dx``, ``dy`` points), so a label on the right edge does not run off the axes.

    >>> coords = np.array([[0.0, 0.0], [1.0, 0.0], [4.0, 0.0]])
    >>> inward_label(coords, 0, 8, -12), inward_label(coords, 2, 8, -12)["ha"]
    ({'xytext': (8, -12), 'textcoords': 'offset points', 'ha': 'left'}, 'right')
    """
    right_half = coords[index, 0] > coords[:, 0].mean()
    return {
        "xytext": (-dx if right_half else dx, dy),
        "textcoords": "offset points",
        "ha": "right" if right_half else "left",
    }
