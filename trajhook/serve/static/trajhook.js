// trajhook's page: one step slider over every panel. The same script draws `trajhook serve` (live, polling the
// server's /api) and `trajhook report` (a static snapshot whose data is inlined in the page).
//
// The automation contract (docs/SERVE.md): the page's one input[type=range] is the step slider; it carries
// data-step (the step shown) and data-head-step (the newest step recorded in any store shown); each panel's root
// has class "trajhook-panel" and data-step, set once it has drawn that step.
(function () {
  "use strict";

  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  const ARROW_STOPS = [[0xfd, 0xae, 0x6b], [0xe6, 0x55, 0x0d], [0x7f, 0x27, 0x04]]; // plots/maze.py ARROW_CMAP
  const WALL = "#3b3b3b", FREE = "#f4f1e8";
  const POLL_MS = 500, CURVES_EVERY_MS = 1000, PCA_EVERY_MS = 5000, FRAME_CACHE = 1024;

  // -- where the data comes from -----------------------------------------------------------------------------------

  function liveSource() {
    const token = new URLSearchParams(window.location.search).get("token");
    function query(params) {
      const q = new URLSearchParams(params || {});
      if (token) q.set("token", token);
      return q.toString();
    }
    async function json(path, params) {
      const response = await fetch(path + "?" + query(params), { cache: "no-store" });
      if (!response.ok) throw new Error(path + ": HTTP " + response.status);
      return response.json();
    }
    return {
      live: true,
      state: function (have) { return json("api/state", { have: have.join(",") }); },
      maze: function (run, probe) { return json("api/maze", { run: run, probe: probe }); },
      frame: async function (run, probe, step) {
        const response = await fetch("api/frame?" + query({ run: run, probe: probe, step: step }));
        return response.ok ? response.arrayBuffer() : null;
      },
      curves: function (run) { return json("api/curves", { run: run }); },
      pca: function () { return json("api/pca"); },
    };
  }

  function snapshotSource(snap) {
    function bytes(text) {
      const raw = atob(text), out = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
      return out.buffer;
    }
    return {
      live: false,
      state: async function () { return snap.state; },
      maze: async function (run, probe) { return snap.mazes[run + "/" + probe]; },
      frame: async function (run, probe, step) {
        const text = snap.frames[run + "/" + probe + "/" + step];
        return text ? bytes(text) : null;
      },
      curves: async function (run) { return snap.curves[run]; },
      pca: async function () { return snap.pca; },
    };
  }

  // -- small pure helpers ------------------------------------------------------------------------------------------

  function decodeFrame(buffer) {
    const view = new DataView(buffer);
    const magic = String.fromCharCode(view.getUint8(0), view.getUint8(1), view.getUint8(2), view.getUint8(3));
    if (magic !== "THF1") throw new Error("not a trajhook frame");
    const n = view.getUint32(4, true), dirs = view.getUint8(8), flags = view.getUint8(9);
    return {
      step: view.getFloat64(12, true),
      n: n,
      dirs: dirs,
      vectors: new Float32Array(buffer, 20, 2 * n),
      probs: flags & 1 ? new Uint8Array(buffer, 20 + 8 * n, n * dirs) : null,
    };
  }

  function atOrBefore(sorted, value) { // index of the last element <= value, or -1
    let lo = 0, hi = sorted.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (sorted[mid] <= value) lo = mid + 1; else hi = mid;
    }
    return lo - 1;
  }

  function mergeSorted(lists) { // the sorted union of sorted integer lists
    const all = [].concat.apply([], lists);
    all.sort(function (a, b) { return a - b; });
    const out = [];
    for (let i = 0; i < all.length; i++) if (i === 0 || all[i] !== all[i - 1]) out.push(all[i]);
    return out;
  }

  function niceTicks(lo, hi, count) {
    if (!(hi > lo)) return [lo];
    const raw = (hi - lo) / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map(function (m) { return m * mag; }).find(function (s) { return s >= raw; });
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(+t.toPrecision(12));
    return ticks;
  }

  function fmt(value) {
    if (value === null || value === undefined || !isFinite(value)) return "n/a";
    const a = Math.abs(value);
    if (a !== 0 && (a >= 1e5 || a < 1e-3)) return value.toExponential(2);
    return (+value.toPrecision(4)).toLocaleString("en-US");
  }

  function arrowColour(strength) {
    const t = Math.max(0, Math.min(1, strength)) * 2, k = Math.min(1, Math.floor(t)), f = t - k;
    const a = ARROW_STOPS[k], b = ARROW_STOPS[k + 1];
    return "rgb(" + [0, 1, 2].map(function (c) { return Math.round(a[c] + (b[c] - a[c]) * f); }).join(",") + ")";
  }

  // One arrow glyph in data coordinates (x = col, y = row), as plots/maze.py's arrow_glyphs draws it.
  function glyph(row, col, dx, dy, g) {
    const strength = Math.hypot(dx, dy);
    const arrow = isFinite(strength) && strength >= g.min_strength;
    if (!arrow) {
      const pts = [];
      for (let k = 0; k < 7; k++) pts.push([col + 0.09 * Math.cos(2 * Math.PI * k / 7), row + 0.09 * Math.sin(2 * Math.PI * k / 7)]);
      return pts;
    }
    const length = Math.min(g.max_length, Math.max(g.min_length, strength));
    const head = Math.min(0.3, 0.45 * length), tail = -length / 2, tip = length / 2, neck = tip - head;
    const along = [tail, neck, neck, tip, neck, neck, tail];
    const across = [-0.06, -0.06, -0.2, 0, 0.2, 0.06, 0.06];
    const ux = dx / strength, uy = dy / strength, wx = -uy, wy = ux;
    return along.map(function (a, k) { return [col + a * ux + across[k] * wx, row + a * uy + across[k] * wy]; });
  }

  // -- panels ------------------------------------------------------------------------------------------------------

  function panelBox(container, title, note) {
    const root = document.createElement("div");
    root.className = "trajhook-panel";
    const h = document.createElement("h2");
    h.textContent = title;
    root.appendChild(h);
    const body = document.createElement("div");
    body.className = "layers";
    root.appendChild(body);
    const p = document.createElement("div");
    p.className = "note";
    p.textContent = note || "";
    root.appendChild(p);
    container.appendChild(root);
    return { root: root, body: body };
  }

  function canvas(parent, width, height) {
    const c = document.createElement("canvas");
    c.width = width;
    c.height = height;
    c.style.width = width + "px";
    c.style.height = height + "px";
    parent.appendChild(c);
    return c;
  }

  // A maze probe's vector field: the level drawn once, the arrows of the record at or before the step.
  function MazePanel(app, run, probe) {
    const box = panelBox(app.panels, app.runs[run].name + " / " + probe + ": vector field",
      "Arrows: the policy's mean move (P_right - P_left, P_up - P_down); length = strength (at least 0.6 cell), " +
      "colour = strength (light: weak, dark: strong); a dot: no direction. Hover a cell for its five direction probabilities.");
    const self = { root: box.root, run: run, probe: probe, kind: "maze", cache: new Map(), wanted: null, epoch: null };
    box.root.dataset.run = String(run);
    box.root.dataset.probe = probe;
    const tip = document.createElement("div");
    tip.className = "trajhook-hover";
    box.body.appendChild(tip);
    let level = null, view = null, frame = null, cellIndex = null;

    async function load() {
      level = await app.source.maze(run, probe);
      if (!level) return;
      const rows = level.free.length, cols = level.free[0].length;
      let r0 = rows, r1 = -1, c0 = cols, c1 = -1;
      for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) if (level.free[r][c]) {
        r0 = Math.min(r0, r); r1 = Math.max(r1, r); c0 = Math.min(c0, c); c1 = Math.max(c1, c);
      }
      if (r1 < 0) { r0 = 0; r1 = rows - 1; c0 = 0; c1 = cols - 1; }
      const spanX = c1 - c0 + 3, spanY = r1 - r0 + 3, px = Math.max(6, Math.floor(460 / Math.max(spanX, spanY)));
      view = { x0: c0 - 1.5, y1: r1 + 1.5, px: px, width: spanX * px, height: spanY * px };
      view.canvas = canvas(box.body, view.width, view.height);
      view.level = document.createElement("canvas");
      view.level.width = view.width;
      view.level.height = view.height;
      const ctx = view.level.getContext("2d");
      ctx.fillStyle = WALL;
      ctx.fillRect(0, 0, view.width, view.height);
      ctx.fillStyle = FREE;
      for (let r = r0 - 1; r <= r1 + 1; r++) for (let c = c0 - 1; c <= c1 + 1; c++) {
        if (r >= 0 && c >= 0 && r < rows && c < cols && level.free[r][c]) {
          ctx.fillRect(X(c - 0.5), Y(r + 0.5), px + 0.5, px + 0.5);
        }
      }
      if (level.start) {
        ctx.strokeStyle = "#1f77b4";
        ctx.lineWidth = 2;
        ctx.strokeRect(X(level.start[1] - 0.38), Y(level.start[0] + 0.38), 0.76 * px, 0.76 * px);
      }
      if (level.cheese) {
        ctx.fillStyle = "#f2c200";
        ctx.strokeStyle = "#000";
        ctx.lineWidth = 1;
        ctx.beginPath();
        ctx.arc(X(level.cheese[1]), Y(level.cheese[0]), 0.36 * px, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
      }
      cellIndex = new Map(level.cells.map(function (cell, i) { return [cell[0] + "," + cell[1], i]; }));
      view.canvas.addEventListener("mousemove", hover);
      view.canvas.addEventListener("mouseleave", function () { tip.style.display = "none"; });
      paint();
    }
    function X(x) { return (x - view.x0) * view.px; }
    function Y(y) { return (view.y1 - y) * view.px; }

    function paint() {
      const ctx = view.canvas.getContext("2d");
      ctx.drawImage(view.level, 0, 0);
      if (!frame) return;
      for (let i = 0; i < frame.n; i++) {
        const dx = frame.vectors[2 * i], dy = frame.vectors[2 * i + 1];
        const pts = glyph(level.cells[i][0], level.cells[i][1], dx, dy, level.glyph);
        ctx.fillStyle = arrowColour(Math.hypot(dx, dy) || 0);
        ctx.beginPath();
        ctx.moveTo(X(pts[0][0]), Y(pts[0][1]));
        for (let k = 1; k < pts.length; k++) ctx.lineTo(X(pts[k][0]), Y(pts[k][1]));
        ctx.closePath();
        ctx.fill();
      }
    }

    function hoverText(i) {
      const cell = level.cells[i], lines = ["cell (row " + cell[0] + ", col " + cell[1] + ")  step " + frame.step];
      if (frame.probs) {
        level.directions.forEach(function (name, k) {
          if (k < frame.dirs) lines.push(name + "  " + (frame.probs[frame.dirs * i + k] / 255).toFixed(3));
        });
      }
      lines.push("arrow (" + frame.vectors[2 * i].toFixed(3) + ", " + frame.vectors[2 * i + 1].toFixed(3) + ")");
      return lines.join("\n");
    }

    function hover(event) {
      if (!frame) return;
      const rect = view.canvas.getBoundingClientRect();
      const x = (event.clientX - rect.left) / view.px + view.x0, y = view.y1 - (event.clientY - rect.top) / view.px;
      const i = cellIndex.get(Math.round(y) + "," + Math.round(x));
      if (i === undefined) { tip.style.display = "none"; return; }
      tip.textContent = hoverText(i);
      tip.style.display = "block";
      tip.style.left = (event.clientX - rect.left + 14) + "px";
      tip.style.top = (event.clientY - rect.top + 8) + "px";
    }

    self.ready = load();
    self.reset = function () { self.cache.clear(); };
    self.draw = async function (step) {
      self.wanted = step;
      await self.ready;
      const r = app.runs[run], at = atOrBefore(r.steps, step), record = r.steps[Math.max(0, at)];
      if (record === undefined || !level) { box.root.dataset.step = String(step); return; }
      const key = r.epoch + ":" + record;
      let decoded = self.cache.get(key);
      if (!decoded) {
        const buffer = await app.source.frame(run, probe, record);
        if (!buffer) return;
        decoded = decodeFrame(buffer);
        self.cache.set(key, decoded);
        if (self.cache.size > FRAME_CACHE) self.cache.delete(self.cache.keys().next().value);
      }
      if (self.wanted !== step) return; // a newer step was asked for meanwhile
      frame = decoded;
      paint();
      box.root.trajhookFrame = frame;
      box.root.dataset.recordStep = String(record);
      box.root.dataset.step = String(step);
    };
    // For tests and tools: the pixel centre of cell i, relative to the canvas, and the hover text there.
    box.root.trajhookCellPixel = function (i) { return { x: X(level.cells[i][1]), y: Y(level.cells[i][0]) }; };
    return self;
  }

  function plotBox(left, top, width, height) { return { left: left, top: top, width: width, height: height }; }

  // "candidate stage boundary (PCA turn; confirmed at step 440)" -> "PCA turn?"; other labels as they are
  function shortEventLabel(label) {
    const m = /^candidate stage boundary \(([^;]+);.*\)$/.exec(label);
    return m ? m[1] + "?" : label;
  }

  function drawAxes(ctx, box, xr, yr, xlabel, ylabel, title) {
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(box.left, box.top, box.width, box.height);
    ctx.fillStyle = "#333";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    niceTicks(xr[0], xr[1], 6).forEach(function (t) {
      const x = box.left + (t - xr[0]) / (xr[1] - xr[0] || 1) * box.width;
      ctx.fillText(fmt(t), x, box.top + box.height + 13);
    });
    ctx.textAlign = "right";
    niceTicks(yr[0], yr[1], 4).forEach(function (t) {
      const y = box.top + box.height - (t - yr[0]) / (yr[1] - yr[0] || 1) * box.height;
      ctx.fillText(fmt(t), box.left - 4, y + 4);
      ctx.strokeStyle = "#eee";
      ctx.beginPath(); ctx.moveTo(box.left + 1, y); ctx.lineTo(box.left + box.width - 1, y); ctx.stroke();
    });
    ctx.textAlign = "center";
    if (xlabel) ctx.fillText(xlabel, box.left + box.width / 2, box.top + box.height + 28);
    if (title) { ctx.font = "12px system-ui, sans-serif"; ctx.fillText(title, box.left + box.width / 2, box.top - 6); }
    if (ylabel) {
      ctx.save(); ctx.translate(12, box.top + box.height / 2); ctx.rotate(-Math.PI / 2);
      ctx.fillText(ylabel, 0, 0); ctx.restore();
    }
  }

  function range(lists) {
    let lo = Infinity, hi = -Infinity;
    lists.forEach(function (v) { v.forEach(function (x) { if (x !== null && isFinite(x)) { lo = Math.min(lo, x); hi = Math.max(hi, x); } }); });
    if (!isFinite(lo)) return [0, 1];
    if (lo === hi) return [lo - 0.5, hi + 0.5];
    const pad = (hi - lo) * 0.05;
    return [lo - pad, hi + pad];
  }

  function polyline(ctx, xs, ys, X, Y) {
    let pen = false;
    ctx.beginPath();
    for (let i = 0; i < xs.length; i++) {
      if (ys[i] === null || xs[i] === null) { pen = false; continue; }
      if (pen) ctx.lineTo(X(xs[i]), Y(ys[i])); else ctx.moveTo(X(xs[i]), Y(ys[i]));
      pen = true;
    }
    ctx.stroke();
  }

  // The loss and every target log-prob over steps (bucketed min/max overviews), events dashed, a cursor at the step.
  function CurvesPanel(app) {
    const box = panelBox(app.panels, "Loss and target log-probabilities",
      "Dashed lines: events. Red line: the slider's step. Long runs: min and max per bucket of a fixed step grid.");
    box.root.id = "curves";
    const width = 760, rowHeight = 210;
    const self = { root: box.root, kind: "curves", data: [], wanted: null };
    let base = null, overlay = null, rows = [], xr = [0, 1];
    const legend = document.createElement("div");
    legend.className = "legend";
    box.root.appendChild(legend);

    self.update = function (data) {
      self.data = data;
      const hasLoss = data.some(function (d) { return d && d.loss; });
      const hasTargets = data.some(function (d) { return d && d.targets.length; });
      rows = [];
      if (hasLoss) rows.push("loss");
      if (hasTargets) rows.push("targets");
      box.root.style.display = rows.length ? "" : "none";
      const height = Math.max(1, rows.length) * rowHeight + 20;
      if (!base || base.height !== height) {
        box.body.innerHTML = "";
        base = canvas(box.body, width, height);
        overlay = canvas(box.body, width, height);
      }
      const ctx = base.getContext("2d");
      ctx.clearRect(0, 0, width, height);
      xr = app.axis.length ? [app.axis[0], Math.max(app.axis[app.axis.length - 1], app.axis[0] + 1)] : [0, 1];
      const several = app.runs.length > 1, items = [];
      rows.forEach(function (row, k) {
        const b = plotBox(70, 22 + k * rowHeight, width - 90, rowHeight - 60);
        const series = [];
        data.forEach(function (d, run) {
          if (!d) return;
          const prefix = several ? app.runs[run].name + ": " : "";
          if (row === "loss" && d.loss) series.push({ label: prefix + "loss", s: d.loss, colour: PALETTE[run % PALETTE.length], dash: [] });
          if (row === "targets") d.targets.forEach(function (t, j) {
            series.push({ label: prefix + t.label, s: t, colour: PALETTE[j % PALETTE.length], dash: [[], [2, 2], [6, 3]][run % 3] });
          });
        });
        const yr = range(series.map(function (x) { return x.s.values; }));
        drawAxes(ctx, b, xr, yr, k === rows.length - 1 ? "step" : "", row === "loss" ? "loss" : "log p", row === "loss" ? "training loss" : "target log-probability, log p(target | prompt)");
        const X = function (x) { return b.left + (x - xr[0]) / (xr[1] - xr[0]) * b.width; };
        const Y = function (y) { return b.top + b.height - (y - yr[0]) / (yr[1] - yr[0]) * b.height; };
        ctx.save();
        ctx.beginPath(); ctx.rect(b.left, b.top, b.width, b.height); ctx.clip();
        series.forEach(function (x) {
          ctx.strokeStyle = x.colour; ctx.lineWidth = 1.3; ctx.setLineDash(x.dash);
          polyline(ctx, x.s.steps, x.s.values, X, Y);
          items.push(x);
        });
        ctx.setLineDash([4, 3]); ctx.strokeStyle = "#666"; ctx.fillStyle = "#555"; ctx.font = "10px system-ui, sans-serif";
        const rowEnds = [-Infinity, -Infinity, -Infinity, -Infinity];  // labels stack in rows, never overlapping
        app.runs.forEach(function (r) {
          r.events.forEach(function (e) {
            ctx.beginPath(); ctx.moveTo(X(e.step), b.top); ctx.lineTo(X(e.step), b.top + b.height); ctx.stroke();
            if (k !== 0) return;
            const text = shortEventLabel(e.label), x = X(e.step) + 3, width = ctx.measureText(text).width;
            const row = rowEnds.findIndex(function (end) { return x > end + 4; });
            if (row < 0) return;  // no room: the dashed line stays, the full label is in the PCA panel and the store
            ctx.textAlign = "left"; ctx.fillText(text, x, b.top + 11 + 12 * row);
            rowEnds[row] = x + width;
          });
        });
        ctx.restore();
        ctx.setLineDash([]);
        (self.boxes = self.boxes || [])[k] = b;
      });
      legend.innerHTML = "";
      items.forEach(function (x) {
        const span = document.createElement("span");
        span.style.color = x.colour;
        span.textContent = "\u2014 " + x.label;
        legend.appendChild(span);
      });
      if (self.wanted !== null) self.draw(self.wanted);
    };

    self.draw = function (step) {
      self.wanted = step;
      if (overlay) {
        const ctx = overlay.getContext("2d");
        ctx.clearRect(0, 0, overlay.width, overlay.height);
        ctx.strokeStyle = "#d62728"; ctx.lineWidth = 2;
        (self.boxes || []).slice(0, rows.length).forEach(function (b) {
          const x = b.left + (step - xr[0]) / (xr[1] - xr[0]) * b.width;
          ctx.beginPath(); ctx.moveTo(x, b.top); ctx.lineTo(x, b.top + b.height); ctx.stroke();
        });
      }
      box.root.dataset.step = String(step);
    };
    return self;
  }

  // Every run's trajectory in one PCA basis: lines, event marks, and each run's record at the step (a red dot).
  function PcaPanel(app, key) {
    const box = panelBox(app.panels, "", "");
    box.root.dataset.key = key;
    const width = 620, height = 460, b = plotBox(70, 20, width - 90, height - 70);
    const base = canvas(box.body, width, height), overlay = canvas(box.body, width, height);
    const readout = document.createElement("div");
    readout.className = "readout icl";
    box.root.appendChild(readout);
    const self = { root: box.root, kind: "pca", data: null, wanted: null };
    let X = null, Y = null;

    self.update = function (entry) {
      self.data = entry;
      box.root.querySelector("h2").textContent = entry.title;
      readout.className = entry.icl_tokens ? "readout icl" : "readout";
      box.root.querySelector(".note").textContent = "x: events (the record at or before them); open red circle: the sharpest turn (a candidate stage " +
        "boundary). Red dots: each run's " +
        "record at the step. " + (entry.icl_tokens ? "ICL score = loss at token " +
        entry.icl_tokens[0] + " (or the prompt's last) - loss at token " + entry.icl_tokens[1] +
        ", averaged over prompts; negative: later tokens are easier (in-context learning)." : "");
      const xr = range(entry.runs.map(function (r) { return r.x; })), yr = range(entry.runs.map(function (r) { return r.y; }));
      X = function (x) { return b.left + (x - xr[0]) / (xr[1] - xr[0]) * b.width; };
      Y = function (y) { return b.top + b.height - (y - yr[0]) / (yr[1] - yr[0]) * b.height; };
      const ctx = base.getContext("2d");
      ctx.clearRect(0, 0, width, height);
      const ratio = entry.explained.concat([0, 0]);
      drawAxes(ctx, b, xr, yr, "PC1 (" + Math.round(100 * (ratio[0] || 0)) + "% of variance)", "PC2 (" + Math.round(100 * (ratio[1] || 0)) + "%)");
      entry.runs.forEach(function (r) {
        ctx.strokeStyle = PALETTE[r.run % PALETTE.length]; ctx.lineWidth = 1.2;
        polyline(ctx, r.x, r.y, X, Y);
        ctx.fillStyle = "#000"; ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "center";
        (r.turns || []).forEach(function (t) {
          if (t.xy[0] === null) return;
          ctx.strokeStyle = "#d62728"; ctx.lineWidth = 2;
          ctx.beginPath(); ctx.arc(X(t.xy[0]), Y(t.xy[1]), 9, 0, 2 * Math.PI); ctx.stroke();
          ctx.fillStyle = "#d62728"; ctx.fillText("turn @ " + t.step, X(t.xy[0]), Y(t.xy[1]) + 20);
        });
        ctx.fillStyle = "#000";
        r.events.forEach(function (e) {
          if (e.xy[0] === null) return;
          const x = X(e.xy[0]), y = Y(e.xy[1]);
          ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
          ctx.beginPath(); ctx.moveTo(x - 5, y - 5); ctx.lineTo(x + 5, y + 5); ctx.moveTo(x - 5, y + 5); ctx.lineTo(x + 5, y - 5); ctx.stroke();
          const text = (entry.runs.length > 1 ? r.name + ": " : "") + shortEventLabel(e.label) + " (" + e.step + ")";
          const right = x > b.left + b.width / 2;  // the text runs towards the middle, never off the plot
          ctx.textAlign = right ? "right" : "left";
          ctx.fillText(text, right ? x - 8 : x + 8, y - 8);
        });
      });
      const legend = entry.runs.map(function (r) { return r.name; });
      ctx.textAlign = "left"; ctx.font = "11px system-ui, sans-serif";
      legend.forEach(function (name, i) {
        ctx.fillStyle = PALETTE[entry.runs[i].run % PALETTE.length];
        ctx.fillText("\u2014 " + name, b.left + 6, b.top + 14 + 13 * i);
      });
      if (self.wanted !== null) self.draw(self.wanted);
    };

    self.draw = function (step) {
      self.wanted = step;
      if (!self.data) return;
      const ctx = overlay.getContext("2d");
      ctx.clearRect(0, 0, width, height);
      const xs = [], ys = [], lines = [];
      self.data.runs.forEach(function (r) {
        const at = Math.max(0, atOrBefore(r.steps, step));
        xs.push([r.x[at]]); ys.push([r.y[at]]);
        const score = r.icl[at];
        if (self.data.icl_tokens) lines.push(r.name + ": ICL score " + (score === null || score === undefined ? "n/a" : score.toFixed(3)));
        else lines.push(r.name + ": step " + r.steps[at]);
        if (r.x[at] === null) return;
        ctx.fillStyle = "#d62728"; ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(X(r.x[at]), Y(r.y[at]), 7, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      });
      readout.textContent = lines.join("   |   ");
      box.root.dataset.cursor = JSON.stringify([xs, ys]);
      box.root.dataset.step = String(step);
    };
    return self;
  }

  // -- the page ----------------------------------------------------------------------------------------------------

  function start() {
    const snapNode = document.getElementById("trajhook-snapshot");
    const source = snapNode ? snapshotSource(JSON.parse(snapNode.textContent)) : liveSource();
    const slider = document.getElementById("step-slider");
    const label = document.getElementById("step-label");
    const followLabel = document.getElementById("follow-label");
    const gotoBox = document.getElementById("goto");
    const play = document.getElementById("play");
    const app = {
      source: source, runs: [], axis: [], panels: document.getElementById("panels"),
      mazes: new Map(), curves: null, pcas: new Map(), index: 0, following: true, head: null,
    };
    let curvesAt = -1e9, pcaAt = -1e9, lastCounts = "", timer = null, curvesDirty = false, pcaDirty = false;

    function allPanels() {
      const list = Array.from(app.mazes.values());
      if (app.curves) list.push(app.curves);
      return list.concat(Array.from(app.pcas.values()));
    }

    function show(i) {
      if (!app.axis.length) return;
      app.index = Math.max(0, Math.min(app.axis.length - 1, i));
      const step = app.axis[app.index];
      slider.max = String(app.axis.length - 1);
      slider.value = String(app.index);
      slider.dataset.step = String(step);
      label.textContent = "step " + step.toLocaleString("en-US") + "  (" + (app.index + 1) + "/" + app.axis.length + ")";
      followLabel.textContent = source.live ? (app.following ? "\u25cf live" : "paused at a step") : "";
      document.body.dataset.index = String(app.index);
      allPanels().forEach(function (panel) { panel.draw(step); });
    }

    function runsTable(state) {
      const rows = state.runs.map(function (r, i) {
        const metadata = app.runs[i] && app.runs[i].metadata;
        const status = r.status === "live" ? (source.live ? (r.writer ? "writing" : "no writer") : "snapshot") : r.status;
        const cells = [r.name, (r.records || 0).toLocaleString("en-US"),
          r.records ? r.first_step.toLocaleString("en-US") + ".." + r.last_step.toLocaleString("en-US") : "",
          r.probes.map(function (p) { return p.name + " (" + p.kind + ")"; }).join(", "), String(r.events.length), r.created];
        return "<tr>" + cells.map(function (c) { return "<td>" + escapeHtml(c) + "</td>"; }).join("") +
          '<td class="trajhook-status ' + escapeHtml(r.status) + '">' + escapeHtml(r.message || status) + "</td>" +
          "<td><details><summary>metadata</summary><pre>" + escapeHtml(JSON.stringify(metadata || {}, null, 1)) +
          "</pre></details></td></tr>";
      });
      const head = ["run", "records", "steps", "probes", "events", "created", "status", "metadata"].map(function (h) { return "<th>" + h + "</th>"; }).join("");
      return '<table class="runs"><tr>' + head + "</tr>" + rows.join("") + "</table>";
    }
    function escapeHtml(text) {
      return String(text).replace(/[&<>"']/g, function (c) { return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]; });
    }

    async function refreshCurves() {
      const data = await Promise.all(app.runs.map(function (_, i) { return source.curves(i).catch(function () { return null; }); }));
      if (!app.curves) app.curves = CurvesPanel(app);
      app.curves.update(data);
    }

    async function refreshPca() {
      const entries = await source.pca().catch(function () { return []; });
      entries.forEach(function (entry) {
        if (!app.pcas.has(entry.key)) app.pcas.set(entry.key, PcaPanel(app, entry.key));
        app.pcas.get(entry.key).update(entry);
      });
    }

    async function poll() {
      if (source.live && document.hidden) return;
      const have = app.runs.map(function (r) { return r.epoch + ":" + r.steps.length; });
      const state = await source.state(have);
      let changed = false;
      state.runs.forEach(function (r, i) {
        let run = app.runs[i];
        if (!run || run.epoch !== r.epoch) {
          run = app.runs[i] = { name: r.name, epoch: r.epoch, steps: [], events: [] };
          app.mazes.forEach(function (panel) { if (panel.run === i) panel.reset(); });
          changed = true;
        }
        if (r.steps_from === 0) {
          if (r.steps.length !== run.steps.length) changed = true;
          run.steps = r.steps;
        } else if (r.steps.length) {
          run.steps = run.steps.concat(r.steps);
          changed = true;
        }
        if (r.metadata !== null && r.metadata !== undefined) run.metadata = r.metadata;
        if (JSON.stringify(run.events) !== JSON.stringify(r.events)) changed = true;
        run.events = r.events;
        r.mazes.forEach(function (probe) {
          const key = i + "/" + probe;
          if (!app.mazes.has(key)) app.mazes.set(key, MazePanel(app, i, probe));
        });
      });
      const table = runsTable(state);
      const runsNode = document.getElementById("runs");
      if (runsNode.dataset.html !== table) { runsNode.innerHTML = table; runsNode.dataset.html = table; }
      document.getElementById("title").textContent = "trajhook" + (source.live ? " (live)" : " report") + ": " +
        state.runs.map(function (r) { return r.name; }).join(", ");
      document.getElementById("version").textContent = "trajhook " + state.version +
        (source.live ? "" : ", snapshot made " + (state.made || ""));
      app.head = state.head_step;
      slider.dataset.headStep = state.head_step === null ? "" : String(state.head_step);
      const step = app.axis.length ? app.axis[app.index] : null;
      if (changed) app.axis = mergeSorted(app.runs.map(function (r) { return r.steps; }));
      const counts = app.runs.map(function (r) { return r.epoch + ":" + r.steps.length; }).join(",") +
        JSON.stringify(app.runs.map(function (r) { return r.events; }));
      if (counts !== lastCounts) { lastCounts = counts; curvesDirty = pcaDirty = true; }
      const now = performance.now(), jobs = [];
      if (curvesDirty && now - curvesAt >= CURVES_EVERY_MS) { curvesDirty = false; curvesAt = now; jobs.push(refreshCurves()); }
      if (pcaDirty && now - pcaAt >= PCA_EVERY_MS) { pcaDirty = false; pcaAt = now; jobs.push(refreshPca()); }
      if (app.axis.length && changed) {
        if (app.following || step === null) show(app.axis.length - 1);
        else show(Math.max(0, atOrBefore(app.axis, step)));
      }
      if (jobs.length) { // not awaited: a slow PCA must not hold back the next poll
        Promise.all(jobs).then(function () { show(app.index); }); // panels these make draw the step too
      }
    }

    function userMove(i) {
      app.following = i >= app.axis.length - 1;
      show(i);
    }
    slider.addEventListener("input", function () { userMove(parseInt(slider.value, 10)); });
    gotoBox.addEventListener("change", function () {
      const want = Number(gotoBox.value);
      if (!app.axis.length || !isFinite(want)) return;
      let i = Math.max(0, atOrBefore(app.axis, want));
      if (i + 1 < app.axis.length && Math.abs(app.axis[i + 1] - want) < Math.abs(app.axis[i] - want)) i += 1;
      userMove(i);
    });
    function toggle() {
      if (timer) { clearInterval(timer); timer = null; play.innerHTML = "&#9654; play"; return; }
      if (app.index >= app.axis.length - 1) userMove(0);
      play.innerHTML = "&#10073;&#10073; pause";
      timer = setInterval(function () {
        if (app.index >= app.axis.length - 1) { toggle(); return; }
        userMove(app.index + 1);
      }, 150);
    }
    play.addEventListener("click", toggle);
    document.addEventListener("keydown", function (e) {
      if (e.target === gotoBox) return;
      if (e.target === slider && e.key !== " ") return; // the slider handles its own keys (and fires "input")
      const page = Math.max(1, Math.round(app.axis.length / 10));
      const moves = { ArrowRight: app.index + 1, ArrowLeft: app.index - 1, PageUp: app.index + page, PageDown: app.index - page,
        Home: 0, End: app.axis.length - 1 };
      if (e.key in moves) { userMove(moves[e.key]); e.preventDefault(); }
      else if (e.key === " ") { toggle(); e.preventDefault(); }
    });

    async function loop() {
      try { await poll(); } catch (err) {
        followLabel.textContent = source.live ? "server unreachable" : "error: " + err;
        window.trajhookError = String(err && err.stack || err);
        if (!source.live) throw err;
      }
      if (source.live) setTimeout(loop, POLL_MS);
    }
    document.addEventListener("visibilitychange", function () { if (!document.hidden && source.live) poll().catch(function () {}); });
    window.trajhook = { app: app, show: userMove, decodeFrame: decodeFrame };
    loop().then(function () { document.body.dataset.ready = "1"; });
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
