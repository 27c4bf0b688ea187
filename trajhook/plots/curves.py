"""Curves of logged scalars (the loss, say) over steps, with the log's events."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from matplotlib.figure import Figure

from trajhook.plots.figures import new_figure
from trajhook.plots.prompts import _draw_events, _events


def scalar_curves(log: Any, names: Sequence[str] | None = None) -> Figure:
    """Every logged scalar (or ``names``) over steps, one panel each, with the log's events."""
    names = list(names or log.scalars)
    fig = new_figure((5 * max(1, len(names)), 4))
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    events = _events(log.events)
    for ax, name in zip(axes, names, strict=False):
        series = log.scalars[name]
        ax.plot(series.steps, series.values, lw=0.8, color="0.3")
        ax.set(title=name, xlabel="step")
        _draw_events(ax, events)
    fig.tight_layout()
    return fig
