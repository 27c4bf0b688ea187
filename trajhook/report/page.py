"""The report page: Plotly figures from :func:`~trajhook.report.data.report_data`, the template,
and plotly.js inlined, so that the one HTML file opens with no network."""

from __future__ import annotations

import base64
import datetime
import gzip
import html
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trajhook.extras import require
from trajhook.report.template import TEMPLATE

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _plotly() -> Any:
    return require("plotly.graph_objects", "report", "trajhook report (the HTML report draws with Plotly)")


def maze_figure(maze: dict[str, Any]) -> dict[str, Any]:
    """The vector-field image (frame 0) with an invisible marker on each cell that carries the hover."""
    go = _plotly()
    xy = maze["cell_xy"]
    names = maze["directions"]
    rows = [f"{name} %{{customdata[{2 + k}]:.3f}}" for k, name in enumerate(names)]
    hover = (
        "cell (row %{customdata[0]}, col %{customdata[1]})<br>"
        + "<br>".join(rows)
        + "<br>arrow (%{customdata[7]:.2f}, %{customdata[8]:.2f})<extra></extra>"
    )
    fig = go.Figure(
        [
            go.Image(source=maze["frames"][-1], hoverinfo="skip"),
            go.Scatter(
                x=[p[0] for p in xy],
                y=[p[1] for p in xy],
                mode="markers",
                marker={"size": 12, "opacity": 0, "color": "black"},
                hovertemplate=hover,
                showlegend=False,
            ),
        ]
    )
    fig.update_layout(
        width=maze["width"],
        height=maze["height"],
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        xaxis={"visible": False, "range": [0, maze["width"]]},
        yaxis={"visible": False, "range": [maze["height"], 0], "scaleanchor": "x"},
        hovermode="closest",
        plot_bgcolor="white",
    )
    return fig.to_plotly_json()


def curves_figure(data: dict[str, Any]) -> dict[str, Any] | None:
    """Loss (top) and target log-probs (bottom) over steps, per run; events dashed; a cursor last."""
    go = _plotly()
    from plotly.subplots import make_subplots

    has_loss = any(c["loss"] for c in data["curves"])
    has_targets = any(c["targets"] for c in data["curves"])
    if not (has_loss or has_targets):
        return None
    rows = [r for r, present in (("loss", has_loss), ("targets", has_targets)) if present]
    titles = {"loss": "training loss", "targets": "target log-probability, log p(target | prompt)"}
    fig = make_subplots(rows=len(rows), cols=1, shared_xaxes=True, subplot_titles=[titles[r] for r in rows])
    several = len(data["runs"]) > 1
    for curves in data["curves"]:
        run = data["runs"][curves["run"]]
        prefix = f"{run['name']}: " if several else ""
        colour = PALETTE[curves["run"] % len(PALETTE)]
        if curves["loss"]:
            fig.add_trace(
                go.Scatter(
                    x=curves["loss"]["steps"],
                    y=curves["loss"]["values"],
                    name=f"{prefix}loss",
                    line={"color": colour, "width": 1},
                ),
                row=rows.index("loss") + 1,
                col=1,
            )
        for k, target in enumerate(curves["targets"]):
            fig.add_trace(
                go.Scatter(
                    x=target["steps"],
                    y=target["values"],
                    name=prefix + target["label"],
                    line={"width": 1.5, "dash": ("solid", "dot", "dash")[curves["run"] % 3]},
                    marker={"color": PALETTE[k % len(PALETTE)]},
                ),
                row=rows.index("targets") + 1,
                col=1,
            )
    shapes, annotations = [], []
    for run in data["runs"]:
        for event in run["events"]:
            shapes.append(
                {
                    "type": "line", "xref": "x", "yref": "paper", "x0": event["step"], "x1": event["step"],
                    "y0": 0, "y1": 1, "line": {"color": "#555", "dash": "dash", "width": 1},
                }
            )  # fmt: skip
            text = f"{run['name']}: {event['label']}" if several else event["label"]
            annotations.append(
                {
                    "x": event["step"], "y": 1.0, "xref": "x", "yref": "paper", "text": html.escape(text),
                    "showarrow": False, "xanchor": "left", "yanchor": "top", "font": {"size": 10, "color": "#555"},
                }
            )  # fmt: skip
    shapes.append(
        {
            "type": "line", "xref": "x", "yref": "paper", "x0": data["steps"][-1], "x1": data["steps"][-1],
            "y0": 0, "y1": 1, "line": {"color": "#d62728", "width": 2},
        }
    )  # fmt: skip
    fig.update_layout(
        width=760,
        height=260 * len(rows) + 60,
        margin={"l": 60, "r": 20, "t": 40, "b": 40},
        shapes=shapes,
        annotations=list(fig.layout.annotations) + annotations,
        legend={"font": {"size": 10}},
        hovermode="x unified",
    )
    fig.update_xaxes(title_text="step", row=len(rows), col=1)
    return fig.to_plotly_json()


def pca_figure(pca: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """PC1 against PC2 for every run in the joint basis; events, the sharpest turn, and a cursor per run.

    The cursor traces come last; their indices are in ``cursor_traces`` for the page's script.
    """
    go = _plotly()
    fig = go.Figure()
    several = len(pca["runs"]) > 1
    for entry in pca["runs"]:
        run = data["runs"][entry["run"]]
        colour = PALETTE[entry["run"] % len(PALETTE)]
        fig.add_trace(
            go.Scatter(
                x=entry["line_x"],
                y=entry["line_y"],
                mode="lines+markers",
                name=run["name"],
                line={"color": colour, "width": 1},
                marker={"size": 4, "color": colour},
                customdata=entry["line_steps"],
                hovertemplate="step %{customdata}<extra>" + html.escape(run["name"]) + "</extra>",
            )
        )
        for event in entry["events"]:
            fig.add_trace(
                go.Scatter(
                    x=[event["xy"][0]], y=[event["xy"][1]], mode="markers+text", showlegend=False,
                    marker={"symbol": "x", "size": 10, "color": "black"},
                    text=[html.escape(f"{run['name'] + ': ' if several else ''}{event['label']} ({event['step']})")],
                    textposition="top center", textfont={"size": 10}, hoverinfo="skip",
                )
            )  # fmt: skip
        for turn in entry["turns"]:
            fig.add_trace(
                go.Scatter(
                    x=[turn["xy"][0]], y=[turn["xy"][1]], mode="markers+text", showlegend=False,
                    marker={"symbol": "circle-open", "size": 18, "color": "#d62728", "line": {"width": 2}},
                    text=[f"turn @ {turn['step']}"], textposition="bottom center",
                    textfont={"size": 10, "color": "#d62728"}, hoverinfo="skip",
                )
            )  # fmt: skip
    cursors = []
    for entry in pca["runs"]:
        cursors.append(len(fig.data))
        fig.add_trace(
            go.Scatter(
                x=[entry["x"][-1]],
                y=[entry["y"][-1]],
                mode="markers",
                showlegend=False,
                marker={"size": 16, "color": "#d62728", "line": {"color": "white", "width": 2}},
                hoverinfo="skip",
            )
        )
    ratio = pca["explained"] + [0.0, 0.0]
    fig.update_layout(
        width=620,
        height=480,
        margin={"l": 60, "r": 20, "t": 20, "b": 50},
        xaxis_title=f"PC1 ({ratio[0]:.0%} of variance)",
        yaxis_title=f"PC2 ({ratio[1]:.0%})",
        hovermode="closest",
        legend={"font": {"size": 10}},
    )
    figure = fig.to_plotly_json()
    figure["cursor_traces"] = cursors
    return figure


def _runs_table(data: dict[str, Any]) -> str:
    rows = []
    for run in data["runs"]:
        metadata = json.dumps(run["metadata"], indent=1, default=str)
        rows.append(
            "<tr>"
            + "".join(
                f"<td>{html.escape(str(v))}</td>"
                for v in (
                    run["name"],
                    run["path"],
                    f"{run['records']:,} ({run['frames']} shown)",
                    f"{run['first_step']:,}..{run['last_step']:,}",
                    ", ".join(run["probes"]),
                    f"{len(run['events'])}",
                    run["created"],
                )
            )
            + f"<td><details><summary>metadata</summary><pre>{html.escape(metadata)}</pre></details></td></tr>"
        )
    head = "".join(
        f"<th>{h}</th>" for h in ("run", "file", "records", "steps", "probes", "events", "created", "metadata")
    )
    return f'<table class="runs"><tr>{head}</tr>{"".join(rows)}</table>'


def _script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element."""
    from plotly.utils import PlotlyJSONEncoder

    text = json.dumps(value, cls=PlotlyJSONEncoder, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_page(data: dict[str, Any]) -> str:
    """The whole self-contained HTML page."""
    _plotly()
    from plotly.offline import get_plotlyjs

    import trajhook

    figures = {
        "mazes": [maze_figure(m) for m in data["mazes"]],
        "curves": curves_figure(data),
        "pcas": [pca_figure(p, data) for p in data["pcas"]],
    }
    title = ", ".join(run["name"] for run in data["runs"])
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    replacements = {
        "__TITLE__": html.escape(title),
        "__VERSION__": html.escape(trajhook.__version__),
        "__CREATED__": created,
        "__RUNS_TABLE__": _runs_table(data),
        "__DATA__": _script_json(data),
        "__FIGURES__": _script_json(figures),
        "__PLOTLY_JS__": base64.b64encode(gzip.compress(get_plotlyjs().encode(), 9)).decode(),
    }
    token = re.compile(r"__(TITLE|VERSION|CREATED|RUNS_TABLE|DATA|FIGURES|PLOTLY_JS)__")
    return token.sub(lambda m: replacements[m.group(0)], TEMPLATE)  # one pass: inserted text stays as is


def write_report(
    paths: Sequence[str | os.PathLike], out: str | os.PathLike, max_frames: int = 120, progress: bool = True
) -> Path:
    """Load the stores, build the page and write it to ``out``; returns the path."""
    from trajhook.report.data import report_data
    from trajhook.store import load

    _plotly()  # fail before the slow part
    logs = [load(p) for p in paths]
    page = render_page(report_data(logs, max_frames=max_frames, progress=progress))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
