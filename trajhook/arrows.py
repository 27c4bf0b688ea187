"""How a maze field is drawn: the arrow encoding and the colours, in one place and without matplotlib.

The matplotlib figures (:mod:`trajhook.plots.maze`) and the live page (:mod:`trajhook.serve`, which serves
:func:`page_constants` with the page) both read these, so a picture and the page draw the same arrow.

>>> page_constants()["arrow_colours"]
['#fdae6b', '#e6550d', '#7f2704']
"""

from __future__ import annotations

from typing import Any

# Arrow strength |v| from 0 (light orange) to 1 (dark brown): every colour stands out from the light free
# cells, and the strong end reads as the heavy one.
ARROW_COLOURS = ("#fdae6b", "#e6550d", "#7f2704")
WALL_COLOUR, FREE_COLOUR = "#3b3b3b", "#f4f1e8"
MIN_ARROW_LENGTH = 0.6  # cells: a shorter glyph cannot show its direction at ~15 px per cell
MAX_ARROW_LENGTH = 0.95  # cells: |v| = 1 spans (almost) its cell, never the neighbour's
MIN_STRENGTH = 0.02  # below this |v| there is no direction to show: a dot


def glyph_encoding() -> dict[str, float]:
    """The arrow's length rule: ``|v|`` cells, clipped to ``[min_length, max_length]``; a dot below ``min_strength``."""
    return {"min_length": MIN_ARROW_LENGTH, "max_length": MAX_ARROW_LENGTH, "min_strength": MIN_STRENGTH}


def page_constants() -> dict[str, Any]:
    """What the page's script draws with, served with the page rather than copied into the script."""
    return {"arrow_colours": list(ARROW_COLOURS), "wall": WALL_COLOUR, "free": FREE_COLOUR, **glyph_encoding()}
