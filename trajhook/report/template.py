"""The report page's HTML, CSS and script; ``__NAME__`` tokens are filled in by :mod:`trajhook.report.page`.

Kept as a Python string (not a package data file) so that every install carries it.
"""

TEMPLATE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>trajhook report: __TITLE__</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #222;
         background: #fafafa; }
  header { padding: 12px 20px 4px; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .meta { font-size: 12px; color: #555; }
  table.runs { border-collapse: collapse; font-size: 12px; margin: 6px 0; }
  table.runs td, table.runs th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; vertical-align: top; }
  #controls { position: sticky; top: 0; z-index: 10; background: #fff; border-bottom: 1px solid #ddd;
              padding: 8px 20px; display: flex; align-items: center; gap: 12px; }
  #controls input[type=range] { flex: 1; }
  #step-label { font-variant-numeric: tabular-nums; min-width: 140px; font-weight: 600; }
  button { font-size: 14px; padding: 4px 12px; }
  .panels { display: flex; flex-wrap: wrap; gap: 12px; padding: 12px 20px; }
  .panel { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 6px; }
  .panel h2 { font-size: 14px; margin: 2px 4px 6px; }
  .note { font-size: 11px; color: #666; margin: 2px 4px; max-width: 520px; }
  .icl { font-size: 13px; margin: 4px; font-variant-numeric: tabular-nums; }
  details { font-size: 12px; }
  pre { font-size: 11px; max-height: 200px; overflow: auto; background: #f4f4f4; padding: 4px; }
</style>
</head>
<body>
<header>
  <h1>trajhook report: __TITLE__</h1>
  <div class="meta">made by trajhook __VERSION__ on __CREATED__. One step slider drives every panel;
    keys: &larr; &rarr; step, Home/End, space plays.</div>
  __RUNS_TABLE__
</header>
<div id="controls">
  <button id="play" type="button" title="play / pause (space)">&#9654; play</button>
  <input id="step-slider" type="range" min="0" max="0" value="0" step="1" aria-label="step">
  <span id="step-label">step</span>
</div>
<div class="panels" id="panels"></div>
<script id="plotly-js-gzip" type="application/octet-stream">__PLOTLY_JS__</script>
<script>
const DATA = __DATA__;
const FIGURES = __FIGURES__;
</script>
<script>
// plotly.js is inlined gzip-compressed (a third of its size) and unpacked by the browser itself.
(async function () {
  const packed = document.getElementById("plotly-js-gzip").textContent.trim();
  const bytes = Uint8Array.from(atob(packed), function (c) { return c.charCodeAt(0); });
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const code = await new Response(stream).text();
  const script = document.createElement("script");
  script.textContent = code;
  document.head.appendChild(script);
  startReport();
})().catch(function (err) {
  document.getElementById("panels").textContent = "This browser could not unpack the report's plotting code: " + err;
  throw err;
});

function startReport() {
  "use strict";
  const slider = document.getElementById("step-slider");
  const label = document.getElementById("step-label");
  const play = document.getElementById("play");
  const panels = document.getElementById("panels");
  const steps = DATA.steps;
  slider.max = String(steps.length - 1);
  const views = [];

  function panel(title, note) {
    const box = document.createElement("div");
    box.className = "panel";
    const h = document.createElement("h2");
    h.textContent = title;
    box.appendChild(h);
    const plot = document.createElement("div");
    box.appendChild(plot);
    if (note) {
      const p = document.createElement("div");
      p.className = "note";
      p.textContent = note;
      box.appendChild(p);
    }
    panels.appendChild(box);
    return [box, plot];
  }
  const config = { displaylogo: false, responsive: false, modeBarButtonsToRemove: ["toImage"] };

  // maze vector fields: the frame image and per-cell hover with the five direction probabilities
  DATA.mazes.forEach(function (maze, m) {
    const run = DATA.runs[maze.run];
    const [, plot] = panel(run.name + " / " + maze.probe + ": vector field",
      "Arrows: the policy's mean move (P_right - P_left, P_up - P_down). Length = strength (at least 0.6 cell), " +
      "colour = strength (colour bar). Hover a cell for its five direction probabilities.");
    plot.id = "maze-" + m;
    Plotly.newPlot(plot, FIGURES.mazes[m].data, FIGURES.mazes[m].layout, config);
    views.push(function (i) {
      const f = run.frame_at[i];
      const custom = maze.cells.map(function (cell, c) {
        const p = maze.probs ? maze.probs[f].slice(5 * c, 5 * c + 5) : [null, null, null, null, null];
        return [cell[0], cell[1]].concat(p, maze.vectors[f].slice(2 * c, 2 * c + 2));
      });
      Plotly.restyle(plot, { source: [maze.frames[f]] }, [0]);
      Plotly.restyle(plot, { customdata: [custom] }, [1]);
      plot.dataset.frame = String(f);
    });
  });

  // curves: the loss and each target's log-prob, events as dashed lines, a cursor at the step
  if (FIGURES.curves) {
    const [, plot] = panel("Loss and target log-probabilities", "Dashed lines: events. Red line: the slider's step.");
    plot.id = "curves";
    Plotly.newPlot(plot, FIGURES.curves.data, FIGURES.curves.layout, config);
    const cursor = FIGURES.curves.layout.shapes.length - 1;
    views.push(function (i) {
      const update = {};
      update["shapes[" + cursor + "].x0"] = steps[i];
      update["shapes[" + cursor + "].x1"] = steps[i];
      Plotly.relayout(plot, update);
    });
  }

  // per-token-loss PCA: every run in one basis, the current record highlighted, ICL score beside it
  DATA.pcas.forEach(function (pca, k) {
    const [box, plot] = panel(pca.probe + ": per-token-loss PCA trajectory (one basis for all runs)",
      "x: events, open circles: the sharpest turn (a candidate stage boundary). ICL score = loss at token " +
      pca.icl_tokens[0] + " (or the prompt's last) - loss at token " + pca.icl_tokens[1] +
      ", averaged over prompts; negative means later tokens are easier: in-context learning.");
    plot.id = "pca-" + k;
    const icl = document.createElement("div");
    icl.className = "icl";
    box.appendChild(icl);
    const fig = FIGURES.pcas[k];
    Plotly.newPlot(plot, fig.data, fig.layout, config);
    views.push(function (i) {
      const xs = [], ys = [], lines = [];
      pca.runs.forEach(function (r) {
        const f = DATA.runs[r.run].frame_at[i];
        xs.push([r.x[f]]);
        ys.push([r.y[f]]);
        const score = r.icl[f];
        lines.push(DATA.runs[r.run].name + ": ICL score " + (score === null ? "n/a" : score.toFixed(3)));
      });
      Plotly.restyle(plot, { x: xs, y: ys }, fig.cursor_traces);
      icl.textContent = lines.join("   |   ");
      plot.dataset.cursor = JSON.stringify([xs, ys]);
    });
  });

  let index = 0;
  function show(i) {
    index = Math.max(0, Math.min(steps.length - 1, i));
    slider.value = String(index);
    label.textContent = "step " + steps[index].toLocaleString("en-US") + "  (" + (index + 1) + "/" + steps.length + ")";
    views.forEach(function (view) { view(index); });
    document.body.dataset.index = String(index);
  }
  slider.addEventListener("input", function () { show(parseInt(slider.value, 10)); });
  let timer = null;
  function toggle() {
    if (timer) { clearInterval(timer); timer = null; play.innerHTML = "&#9654; play"; return; }
    if (index >= steps.length - 1) show(0);
    play.innerHTML = "&#10073;&#10073; pause";
    timer = setInterval(function () {
      if (index >= steps.length - 1) { toggle(); return; }
      show(index + 1);
    }, 150);
  }
  play.addEventListener("click", toggle);
  document.addEventListener("keydown", function (e) {
    if (e.target === slider && e.key !== " ") return;  // the slider handles its own keys
    if (e.key === "ArrowRight") { show(index + 1); e.preventDefault(); }
    else if (e.key === "ArrowLeft") { show(index - 1); e.preventDefault(); }
    else if (e.key === "Home") { show(0); e.preventDefault(); }
    else if (e.key === "End") { show(steps.length - 1); e.preventDefault(); }
    else if (e.key === " ") { toggle(); e.preventDefault(); }
  });
  show(steps.length - 1);
  window.trajhookReport = { show: show, steps: steps };
  document.body.dataset.ready = "1";
}
</script>
</body>
</html>
"""
