// trajhook's page: one step slider over every panel. The same script draws `trajhook serve` (live, polling the
// server's /api) and `trajhook report` (a static snapshot whose data is inlined in the page).
//
// The automation contract (docs/SERVE.md): the page's one input[type=range] is the step slider; it carries
// data-step (the step shown) and data-head-step (the newest step recorded in any store shown); each panel's root
// has class "trajhook-panel" and data-step, set once it has drawn that step; each scalar's curve panel carries
// data-scalar, each run's row data-run-status (writing, finished, writer-gone), and a panel whose run ended before
// the slider's step data-ended-at.
(function () {
  "use strict";

  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
  // The field's colours and arrow rule, served with the page from trajhook/arrows.py (what the PNGs draw with).
  const DRAWN = JSON.parse(document.getElementById("trajhook-constants").textContent);
  const ARROW_STOPS = DRAWN.arrow_colours.map(function (hex) {
    return [1, 3, 5].map(function (i) { return parseInt(hex.slice(i, i + 2), 16); });
  });
  const WALL = DRAWN.wall, FREE = DRAWN.free;
  const POLL_MS = 500, CURVES_EVERY_MS = 1000, PCA_EVERY_MS = 5000, FRAME_CACHE = 1024;
  const STATUS_WORDS = {
    writing: "\u25cf writing", finished: "finished (closed cleanly)",
    "writer-gone": "writer gone (no clean close): showing the last committed state",
  };

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

  // One number format: labels with thousands separators, axis ticks in compact SI (50k, 1.4M).
  function fmtStep(value) { return Math.round(value).toLocaleString("en-US"); }

  function fmt(value) {
    if (value === null || value === undefined || !isFinite(value)) return "n/a";
    const a = Math.abs(value);
    if (a !== 0 && a < 1e-3) return value.toExponential(2);
    return value.toLocaleString("en-US", { maximumSignificantDigits: 4 });
  }

  function fmtTick(value) {
    if (!isFinite(value)) return "";
    if (value === 0) return "0";
    const a = Math.abs(value), short = function (x) { return String(+x.toPrecision(3)); };
    const big = [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]], small = [[1e-3, "m"], [1e-6, "\u00b5"], [1e-9, "n"]];
    for (let k = 0; k < big.length; k++) if (a >= big[k][0]) return short(value / big[k][0]) + big[k][1];
    if (a >= 0.01) return short(value);
    for (let k = 0; k < small.length; k++) if (a >= small[k][0]) return short(value / small[k][0]) + small[k][1];
    return value.toExponential(1);
  }

  function runColour(run) { return PALETTE[run % PALETTE.length]; }

  // A panel whose run has no record at the step: greyed, with "ended at step X" (and data-ended-at) after its
  // last record, "starts at step X" before its first.
  function markEnded(root, note, run, step) {
    const n = run.steps.length, last = n ? run.steps[n - 1] : null, first = n ? run.steps[0] : null;
    if (n && step > last) {
      root.classList.add("ended");
      root.dataset.endedAt = String(last);
      note.textContent = run.name + " ended at step " + fmtStep(last) + ": showing its last record";
    } else if (n && step < first) {
      root.classList.add("ended");
      delete root.dataset.endedAt;
      note.textContent = run.name + " starts at step " + fmtStep(first) + ": showing its first record";
    } else {
      root.classList.remove("ended");
      delete root.dataset.endedAt;
      note.textContent = "";
    }
  }

  // The field's colour bar: arrow colour against strength |arrow| (0..1; under the glyph's minimum, a dot).
  function colourBar() {
    const wrap = document.createElement("div");
    wrap.className = "colour-bar";
    const c = document.createElement("canvas");
    c.width = 260; c.height = 30;
    const ctx = c.getContext("2d");
    for (let x = 0; x < 240; x++) { ctx.fillStyle = arrowColour(x / 239); ctx.fillRect(10 + x, 2, 1, 12); }
    ctx.strokeStyle = "#888"; ctx.strokeRect(10.5, 2.5, 239, 11);
    ctx.fillStyle = "#333"; ctx.font = "10px system-ui, sans-serif"; ctx.textAlign = "center";
    [0, 0.25, 0.5, 0.75, 1].forEach(function (t) { ctx.fillText(fmtTick(t), 10 + 239 * t, 26); });
    wrap.appendChild(c);
    const label = document.createElement("span");
    label.textContent = "strength |arrow|";
    wrap.appendChild(label);
    return wrap;
  }

  // Debiased exponential moving average (as TensorBoard's smoothing): weight in [0, 1), nulls stay gaps.
  function ema(values, weight) {
    if (!(weight > 0)) return values;
    let s = 0, k = 0;
    return values.map(function (v) {
      if (v === null || !isFinite(v)) return null;
      s = weight * s + (1 - weight) * v; k += 1;
      return s / (1 - Math.pow(weight, k));
    });
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
    const box = mazeBox(app, run, probe);
    const self = { root: box.root, run: run, probe: probe, kind: "maze", cache: new Map(), wanted: null, epoch: null,
      box: box, level: null, view: null, frame: null, cellIndex: null };
    self.ready = loadMaze(app, self);
    self.reset = function () { self.cache.clear(); };
    self.draw = function (step) { return drawMazeStep(app, self, step); };
    // For tests and tools: the pixel centre of cell i, relative to the canvas, and the hover text there.
    box.root.trajhookCellPixel = function (i) {
      return { x: self.view.X(self.level.cells[i][1]), y: self.view.Y(self.level.cells[i][0]) };
    };
    return self;
  }

  // The panel's frame: title, note, the run's colour, the "ended" note, the colour bar and the hover tip.
  function mazeBox(app, run, probe) {
    const box = panelBox(app.sections.mazes, app.runs[run].name + " / " + probe + ": vector field",
      "Arrows: the policy's mean move (P_right - P_left, P_up - P_down); length = strength (at least 0.6 cell), " +
      "colour = strength (bar below); a dot: no direction. Rows count from the bottom, as drawn. " +
      "Hover a cell for its five direction probabilities.");
    box.root.dataset.run = String(run);
    box.root.dataset.probe = probe;
    box.root.style.borderColor = runColour(run);
    box.root.classList.add("run-framed");
    box.ended = document.createElement("div");
    box.ended.className = "ended-note";
    box.root.insertBefore(box.ended, box.body);
    box.root.appendChild(colourBar());
    box.tip = document.createElement("div");
    box.tip.className = "trajhook-hover";
    box.body.appendChild(box.tip);
    return box;
  }

  // Fetch the level, draw it once (offscreen), wire the hover, then paint (no frame yet: the level alone).
  async function loadMaze(app, self) {
    const level = self.level = await app.source.maze(self.run, self.probe);
    if (!level) return;
    const view = self.view = mazeView(level, self.box.body);
    drawLevel(view, level);
    self.cellIndex = new Map(level.cells.map(function (cell, i) { return [cell[0] + "," + cell[1], i]; }));
    view.canvas.addEventListener("mousemove", function (event) { mazeHover(self, event); });
    view.canvas.addEventListener("mouseleave", function () { self.box.tip.style.display = "none"; });
    paintMaze(self);
  }

  // The rows and columns of the free cells' bounding box (the whole grid if none is free).
  function freeBounds(free) {
    const rows = free.length, cols = free[0].length;
    let r0 = rows, r1 = -1, c0 = cols, c1 = -1;
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) if (free[r][c]) {
      r0 = Math.min(r0, r); r1 = Math.max(r1, r); c0 = Math.min(c0, c); c1 = Math.max(c1, c);
    }
    if (r1 < 0) { r0 = 0; r1 = rows - 1; c0 = 0; c1 = cols - 1; }
    return { r0: r0, r1: r1, c0: c0, c1: c1 };
  }

  // Where the level is drawn: its free cells and a cell of wall around them, at most 460 px a side; X and Y map
  // data coordinates (x = col, y = row from the bottom) to pixels. The shown canvas, and an offscreen one for the level.
  function mazeView(level, parent) {
    const k = freeBounds(level.free);
    const spanX = k.c1 - k.c0 + 3, spanY = k.r1 - k.r0 + 3, px = Math.max(6, Math.floor(460 / Math.max(spanX, spanY)));
    const view = { x0: k.c0 - 1.5, y1: k.r1 + 1.5, px: px, width: spanX * px, height: spanY * px, bounds: k };
    view.X = function (x) { return (x - view.x0) * view.px; };
    view.Y = function (y) { return (view.y1 - y) * view.px; };
    view.canvas = canvas(parent, view.width, view.height);
    view.level = document.createElement("canvas");
    view.level.width = view.width;
    view.level.height = view.height;
    return view;
  }

  // The level into its offscreen canvas: walls, free cells, the start (a square) and the cheese (a disc).
  function drawLevel(view, level) {
    const ctx = view.level.getContext("2d"), k = view.bounds, px = view.px, X = view.X, Y = view.Y;
    const rows = level.free.length, cols = level.free[0].length;
    ctx.fillStyle = WALL;
    ctx.fillRect(0, 0, view.width, view.height);
    ctx.fillStyle = FREE;
    for (let r = k.r0 - 1; r <= k.r1 + 1; r++) for (let c = k.c0 - 1; c <= k.c1 + 1; c++) {
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
  }

  // The level, then the frame's arrows (one glyph a cell, coloured by strength).
  function paintMaze(self) {
    const view = self.view, level = self.level, frame = self.frame, ctx = view.canvas.getContext("2d");
    ctx.drawImage(view.level, 0, 0);
    if (!frame) return;
    for (let i = 0; i < frame.n; i++) {
      const dx = frame.vectors[2 * i], dy = frame.vectors[2 * i + 1];
      const pts = glyph(level.cells[i][0], level.cells[i][1], dx, dy, level.glyph);
      ctx.fillStyle = arrowColour(Math.hypot(dx, dy) || 0);
      ctx.beginPath();
      ctx.moveTo(view.X(pts[0][0]), view.Y(pts[0][1]));
      for (let k = 1; k < pts.length; k++) ctx.lineTo(view.X(pts[k][0]), view.Y(pts[k][1]));
      ctx.closePath();
      ctx.fill();
    }
  }

  function mazeHoverText(level, frame, i) {
    const cell = level.cells[i];
    const lines = ["cell (row " + cell[0] + " from the bottom, col " + cell[1] + " from the left)  step " + fmtStep(frame.step)];
    if (frame.probs) {
      level.directions.forEach(function (name, k) {
        if (k < frame.dirs) lines.push(name + "  " + (frame.probs[frame.dirs * i + k] / 255).toFixed(3));
      });
    }
    lines.push("arrow (" + frame.vectors[2 * i].toFixed(3) + ", " + frame.vectors[2 * i + 1].toFixed(3) + ")");
    return lines.join("\n");
  }

  function mazeHover(self, event) {
    if (!self.frame) return;
    const view = self.view, tip = self.box.tip, rect = view.canvas.getBoundingClientRect();
    const x = (event.clientX - rect.left) / view.px + view.x0, y = view.y1 - (event.clientY - rect.top) / view.px;
    const i = self.cellIndex.get(Math.round(y) + "," + Math.round(x));
    if (i === undefined) { tip.style.display = "none"; return; }
    tip.textContent = mazeHoverText(self.level, self.frame, i);
    tip.style.display = "block";
    tip.style.left = (event.clientX - rect.left + 14) + "px";
    tip.style.top = (event.clientY - rect.top + 8) + "px";
  }

  // Draw the record at or before the step (its frame fetched once, then cached); a step asked for meanwhile wins.
  async function drawMazeStep(app, self, step) {
    self.wanted = step;
    await self.ready;
    const root = self.root, r = app.runs[self.run], at = atOrBefore(r.steps, step), record = r.steps[Math.max(0, at)];
    markEnded(root, self.box.ended, r, step);
    if (record === undefined || !self.level) { root.dataset.step = String(step); return; }
    const key = r.epoch + ":" + record;
    const decoded = self.cache.get(key) || await fetchFrame(app, self, key, record);
    if (!decoded) return;
    if (self.wanted !== step) return; // a newer step was asked for meanwhile
    self.frame = decoded;
    paintMaze(self);
    root.trajhookFrame = decoded;
    root.dataset.recordStep = String(record);
    root.dataset.step = String(step);
  }

  // A record's frame from the source, decoded and cached (the oldest dropped past FRAME_CACHE); null if there is none.
  async function fetchFrame(app, self, key, record) {
    const buffer = await app.source.frame(self.run, self.probe, record);
    if (!buffer) return null;
    const decoded = decodeFrame(buffer);
    self.cache.set(key, decoded);
    if (self.cache.size > FRAME_CACHE) self.cache.delete(self.cache.keys().next().value);
    return decoded;
  }

  function plotBox(left, top, width, height) { return { left: left, top: top, width: width, height: height }; }

  // "candidate stage boundary (PCA turn; confirmed at step 440)" -> "PCA turn?"; other labels as they are
  function shortEventLabel(label) {
    const m = /^candidate stage boundary \(([^;]+);.*\)$/.exec(label);
    return m ? m[1] + "?" : label;
  }

  // Axes with compact SI ticks; ``logy``: the y values are log10, the ticks say the value.
  function drawAxes(ctx, box, xr, yr, xlabel, ylabel, title, logy) {
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(box.left, box.top, box.width, box.height);
    ctx.fillStyle = "#333";
    ctx.font = "11px system-ui, sans-serif";
    ctx.textAlign = "center";
    niceTicks(xr[0], xr[1], 5).forEach(function (t) {
      const x = box.left + (t - xr[0]) / (xr[1] - xr[0] || 1) * box.width;
      ctx.fillText(fmtTick(t), x, box.top + box.height + 13);
    });
    ctx.textAlign = "right";
    niceTicks(yr[0], yr[1], 4).forEach(function (t) {
      const y = box.top + box.height - (t - yr[0]) / (yr[1] - yr[0] || 1) * box.height;
      ctx.fillText(fmtTick(logy ? Math.pow(10, t) : t), box.left - 4, y + 4);
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

  // Where labels may go: a grid of 4-pixel cells marked where a line, a mark or a placed label is.
  function Occupancy(width, height) {
    const cell = 4, cols = Math.ceil(width / cell) + 1, rows = Math.ceil(height / cell) + 1;
    const grid = new Uint8Array(cols * rows);
    function mark(x0, y0, x1, y1) {
      const c0 = Math.max(0, Math.floor(x0 / cell)), c1 = Math.min(cols - 1, Math.floor(x1 / cell));
      const r0 = Math.max(0, Math.floor(y0 / cell)), r1 = Math.min(rows - 1, Math.floor(y1 / cell));
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) grid[r * cols + c] = 1;
    }
    function free(x0, y0, x1, y1) {
      const c0 = Math.max(0, Math.floor(x0 / cell)), c1 = Math.min(cols - 1, Math.floor(x1 / cell));
      const r0 = Math.max(0, Math.floor(y0 / cell)), r1 = Math.min(rows - 1, Math.floor(y1 / cell));
      for (let r = r0; r <= r1; r++) for (let c = c0; c <= c1; c++) if (grid[r * cols + c]) return false;
      return true;
    }
    function segment(ax, ay, bx, by, pad) { // every pixel along the segment, padded by the line's half-width
      const n = Math.max(1, Math.ceil(Math.hypot(bx - ax, by - ay)));
      for (let k = 0; k <= n; k++) { const x = ax + (bx - ax) * k / n, y = ay + (by - ay) * k / n; mark(x - pad, y - pad, x + pad, y + pad); }
    }
    function freeLine(ax, ay, bx, by) {
      const n = Math.max(1, Math.ceil(Math.hypot(bx - ax, by - ay)));
      for (let k = 0; k <= n; k++) { const x = ax + (bx - ax) * k / n, y = ay + (by - ay) * k / n; if (!free(x - 1, y - 1, x + 1, y + 1)) return false; }
      return true;
    }
    return { mark: mark, free: free, segment: segment, freeLine: freeLine };
  }

  // Candidate spots around an anchor, nearest first: right, left, above, below, then the diagonals.
  const SPOTS = [], NEAR = 38;  // beyond NEAR pixels a label gets a leader line to its mark
  [8, 16, 26, 32, 38, 46, 56, 68, 80, 110, 150].forEach(function (d) {
    [[1, 0], [-1, 0], [0, -1], [0, 1], [1, -1], [-1, -1], [1, 1], [-1, 1]].forEach(function (v) { SPOTS.push([d, v[0], v[1]]); });
  });
  function place(occ, bounds, ax, ay, w, h, extra, near) { // a free rect {x, y, w, h} near (ax, ay), or null
    for (let k = 0; k < SPOTS.length; k++) {
      const d = SPOTS[k][0], vx = SPOTS[k][1], vy = SPOTS[k][2];
      if (near && d > NEAR) break;
      const x = vx > 0 ? ax + d : vx < 0 ? ax - d - w : ax - w / 2;
      const y = vy > 0 ? ay + d : vy < 0 ? ay - d - h : ay - h / 2;
      if (x < bounds.left || y < bounds.top || x + w > bounds.left + bounds.width || y + h > bounds.top + bounds.height) continue;
      if (!occ.free(x - 1, y - 1, x + w + 1, y + h + 1)) continue;
      if (extra && extra.some(function (o) { return x < o.x + o.w + 1 && o.x < x + w + 1 && y < o.y + o.h + 1 && o.y < y + h + 1; })) continue;
      const rect = { x: x, y: y, w: w, h: h, d: d };
      if (d > NEAR) { // the leader, from the mark's edge to the label's nearest point, must not cross a marked cell either
        const end = nearestPoint(rect, ax, ay), len = Math.hypot(end[0] - ax, end[1] - ay);
        const sx = ax + (end[0] - ax) * 17 / len, sy = ay + (end[1] - ay) * 17 / len;  // past the mark (11 px) and its cell
        if (!occ.freeLine(sx, sy, end[0], end[1])) continue;
        if (extra && extra.some(function (o) { return crosses(o, sx, sy, end[0], end[1]); })) continue;
        rect.leader = [sx, sy, end[0], end[1]];
      }
      return rect;
    }
    return null;
  }
  function nearestPoint(r, x, y) { return [Math.max(r.x, Math.min(x, r.x + r.w)), Math.max(r.y, Math.min(y, r.y + r.h))]; }
  function crosses(o, ax, ay, bx, by) { // whether the segment passes through the rect (sampled every pixel)
    const n = Math.max(1, Math.ceil(Math.hypot(bx - ax, by - ay)));
    for (let k = 0; k <= n; k++) {
      const x = ax + (bx - ax) * k / n, y = ay + (by - ay) * k / n;
      if (x > o.x - 1 && x < o.x + o.w + 1 && y > o.y - 1 && y < o.y + o.h + 1) return true;
    }
    return false;
  }

  // The curves: one small panel per scalar (data-scalar), one per maze probe's shortest-path agreement (chance
  // dashed), one for the target log-probs. Every panel shares the x-axis (the union of the shown runs' steps, or
  // the zoom: drag across a panel, double-click to reset), the EMA smoothing and the log y switch.
  function CurvePanel(app, spec) {
    const box = panelBox(app.sections.curves, spec.title, spec.note || "");
    const width = 440, height = 220;
    const self = { root: box.root, kind: "curves", spec: spec, series: [], wanted: null, xr: [0, 1],
      width: width, height: height, b: plotBox(58, 22, width - 74, height - 58), X: null, Y: null, drag: null };
    self.base = canvas(box.body, width, height);
    self.overlay = canvas(box.body, width, height);
    box.root.classList.add("curve-panel");
    if (spec.kind === "scalar") box.root.dataset.scalar = spec.name;
    if (spec.kind === "agreement") box.root.dataset.agreement = spec.name;
    if (spec.kind === "targets") box.root.dataset.curves = "targets";
    self.update = function () { updateCurvePanel(app, self); };
    self.legend = document.createElement("div");
    self.legend.className = "legend";
    box.root.appendChild(self.legend);
    self.draw = function (step) { drawCurveCursor(app, self, step); };
    wireZoomDrag(app, self);
    return self;
  }

  // The series a curve panel draws, run by run (the hidden runs left out; names prefixed when several are shown).
  function curveSeries(app, spec) {
    const out = [];
    const shown = app.runs.map(function (_, i) { return i; }).filter(function (i) { return !app.hidden.has(i) && app.curveData[i]; });
    const several = shown.length > 1;
    shown.forEach(function (run) {
      const d = app.curveData[run], name = app.runs[run].name, prefix = several ? name + ": " : "";
      if (spec.kind === "scalar" && d.scalars && d.scalars[spec.name]) {
        out.push({ run: run, label: prefix + spec.name, s: d.scalars[spec.name], colour: runColour(run), dash: [], cursor: true });
      }
      if (spec.kind === "agreement") (d.agreement || []).forEach(function (a) {
        if (a.probe !== spec.name) return;
        out.push({ run: run, label: prefix + "to the cheese", s: a, colour: runColour(run), dash: [], cursor: true });
        out.push({ run: run, label: prefix + "chance " + fmt(a.chance), chance: a.chance, colour: runColour(run), dash: [5, 4] });
        if (a.corner) out.push({ run: run, label: prefix + "to the top-right corner", s: a.corner, colour: runColour(run), dash: [1, 3] });
      });
      if (spec.kind === "targets") (d.targets || []).forEach(function (t, j) {
        out.push({ run: run, label: prefix + t.label, s: t, colour: several ? runColour(run) : PALETTE[j % PALETTE.length],
          dash: several ? [[], [2, 2], [6, 3]][j % 3] : [] });
      });
    });
    return out;
  }

  // A series as drawn: its values smoothed (not the targets') and, with ``logy``, as log10 (a chance line as it is).
  function drawnSeries(x, spec, view, logy) {
    if (x.chance !== undefined) return x;
    let values = spec.kind === "targets" ? x.s.values : ema(x.s.values, view.ema);
    if (logy) values = values.map(function (v) { return v !== null && v > 0 ? Math.log10(v) : null; });
    return Object.assign({}, x, { steps: x.s.steps, values: values });
  }

  // The drawn values inside the x range (and each chance level): what the y range must hold.
  function valuesInView(drawn, xr, logy) {
    const inView = [];
    drawn.forEach(function (x) {
      if (x.chance !== undefined) { inView.push(logy ? (x.chance > 0 ? Math.log10(x.chance) : null) : x.chance); return; }
      x.steps.forEach(function (t, i) { if (t >= xr[0] && t <= xr[1]) inView.push(x.values[i]); });
    });
    return inView;
  }

  // Redraw a curve panel from the data: axes, series and events on the base canvas, the legend, then the cursor.
  function updateCurvePanel(app, self) {
    const spec = self.spec, view = app.view, logy = view.logy && spec.kind !== "targets", b = self.b;
    self.series = curveSeries(app, spec);
    self.xr = view.zoom || app.fullRange();
    const xr = self.xr;
    const drawn = self.series.map(function (x) { return drawnSeries(x, spec, view, logy); });
    const yr = range([valuesInView(drawn, xr, logy)]);
    self.X = function (x) { return b.left + (x - xr[0]) / (xr[1] - xr[0] || 1) * b.width; };
    self.Y = function (y) { return b.top + b.height - (y - yr[0]) / (yr[1] - yr[0] || 1) * b.height; };
    const ctx = self.base.getContext("2d");
    ctx.clearRect(0, 0, self.width, self.height);
    drawAxes(ctx, b, xr, yr, "step", logy ? "log10" : "", "", logy);
    drawCurves(ctx, app, self, drawn, logy);
    self.drawn = drawn;
    self.root.dataset.xRange = JSON.stringify(xr);
    self.root.dataset.logY = logy ? "1" : "0";
    self.root.dataset.ema = String(view.ema);
    fillLegend(self.legend, self.series);
    if (self.wanted !== null) self.draw(self.wanted);
  }

  // The series (a chance level as a flat line) and the shown runs' events (dashed), clipped to the plot.
  function drawCurves(ctx, app, self, drawn, logy) {
    const b = self.b, X = self.X, Y = self.Y;
    ctx.save();
    ctx.beginPath(); ctx.rect(b.left, b.top, b.width, b.height); ctx.clip();
    drawn.forEach(function (x) {
      ctx.strokeStyle = x.colour; ctx.lineWidth = 1.3; ctx.setLineDash(x.dash);
      if (x.chance !== undefined) {
        const y = Y(logy ? Math.log10(x.chance) : x.chance);
        ctx.beginPath(); ctx.moveTo(b.left, y); ctx.lineTo(b.left + b.width, y); ctx.stroke();
      } else polyline(ctx, x.steps, x.values, X, Y);
    });
    ctx.setLineDash([4, 3]); ctx.strokeStyle = "#888"; ctx.lineWidth = 1;
    app.runs.forEach(function (r, i) {
      if (app.hidden.has(i)) return;
      r.events.forEach(function (e) { ctx.beginPath(); ctx.moveTo(X(e.step), b.top); ctx.lineTo(X(e.step), b.top + b.height); ctx.stroke(); });
    });
    ctx.restore();
    ctx.setLineDash([]);
  }

  function fillLegend(legend, series) {
    legend.innerHTML = "";
    series.forEach(function (x) {
      const span = document.createElement("span");
      span.style.color = x.colour;
      span.textContent = (x.dash.length ? "- - " : "\u2014 ") + x.label;
      legend.appendChild(span);
    });
  }

  // The overlay: the step's cursor line, each run's value there (a dot in its colour), and a zoom drag's band.
  function drawCurveCursor(app, self, step) {
    self.wanted = step;
    const ctx = self.overlay.getContext("2d"), b = self.b, X = self.X;
    ctx.clearRect(0, 0, self.width, self.height);
    if (X && step >= self.xr[0] && step <= self.xr[1]) {
      ctx.strokeStyle = "#555"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.moveTo(X(step), b.top); ctx.lineTo(X(step), b.top + b.height); ctx.stroke();
      (self.drawn || []).forEach(function (x) {  // each run's value at the step, a dot in its colour
        if (!x.cursor) return;
        const r = app.runs[x.run], last = r.steps[r.steps.length - 1];
        const at = atOrBefore(x.steps, step);
        if (at < 0 || step > last || x.values[at] === null) return;
        ctx.fillStyle = x.colour; ctx.strokeStyle = "#fff"; ctx.lineWidth = 1.5;
        ctx.beginPath(); ctx.arc(X(step), self.Y(x.values[at]), 4.5, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      });
    }
    if (self.drag) {
      ctx.fillStyle = "rgba(31,119,180,0.15)";
      ctx.fillRect(Math.min(self.drag.x0, self.drag.x1), b.top, Math.abs(self.drag.x1 - self.drag.x0), b.height);
    }
    self.root.dataset.step = String(step);
  }

  // Drag across the plot to zoom every curve panel to those steps; double-click to reset.
  function wireZoomDrag(app, self) {
    const overlay = self.overlay, b = self.b;
    function stepAt(event) {
      const rect = overlay.getBoundingClientRect(), x = event.clientX - rect.left;
      return { x: x, step: self.xr[0] + (x - b.left) / b.width * (self.xr[1] - self.xr[0]) };
    }
    overlay.addEventListener("mousedown", function (e) { const p = stepAt(e); self.drag = { x0: p.x, x1: p.x, s0: p.step, s1: p.step }; });
    overlay.addEventListener("mousemove", function (e) { if (self.drag) { const p = stepAt(e); self.drag.x1 = p.x; self.drag.s1 = p.step; self.draw(self.wanted); } });
    window.addEventListener("mouseup", function () {
      if (!self.drag) return;
      const d = self.drag; self.drag = null;
      if (Math.abs(d.x1 - d.x0) > 5) app.zoom(Math.min(d.s0, d.s1), Math.max(d.s0, d.s1)); else self.draw(self.wanted);
    });
    overlay.addEventListener("dblclick", function () { app.zoom(null); });
  }

  // The curve panels the data asks for, in a fixed order: scalars ("loss" first, then by name), agreement per maze
  // probe, target log-probs (only if a run has targets).
  function curveSpecs(data) {
    const scalars = new Set(), mazes = new Set();
    let targets = false;
    data.forEach(function (d) {
      if (!d) return;
      Object.keys(d.scalars || {}).forEach(function (n) { scalars.add(n); });
      (d.agreement || []).forEach(function (a) { mazes.add(a.probe); });
      if ((d.targets || []).length) targets = true;
    });
    const names = Array.from(scalars).sort(function (a, b) { return (a !== "loss") - (b !== "loss") || (a < b ? -1 : a > b ? 1 : 0); });
    const specs = names.map(function (n) { return { id: "scalar:" + n, kind: "scalar", name: n, title: n }; });
    Array.from(mazes).sort().forEach(function (p) {
      specs.push({ id: "agreement:" + p, kind: "agreement", name: p, title: p + ": shortest-path agreement",
        note: "The share of cells whose strongest move starts a shortest path to the cheese; dashed: chance (a random move); dotted: to the maze's top-right corner instead (where the two ways part, it tells a policy that finds the cheese from one that heads for the corner)." });
    });
    if (targets) specs.push({ id: "targets", kind: "targets", name: "targets", title: "target log-probabilities, log p(target | prompt)" });
    return specs;
  }

  // Every run's trajectory in one PCA basis (kept between refits, see docs/SERVE.md): lines, the store's events
  // (x), a finished run's offline turning point (open circle), each run's record at the step (a dot in its colour).
  // Labels are elements placed where no other label, line, mark or cursor is (or listed under the plot).
  function PcaPanel(app, key) {
    const box = panelBox(app.sections.pcas, "", "");
    box.root.dataset.key = key;
    const width = 620, height = 460, b = plotBox(70, 20, width - 90, height - 70);
    const self = { root: box.root, kind: "pca", data: null, wanted: null, width: width, height: height, b: b,
      room: plotBox(b.left, 2, b.width, b.top + b.height - 2),  // labels go in the plot or the empty margin above it
      X: null, Y: null, occ: null, labels: [], shown: [] };
    self.base = canvas(box.body, width, height);
    self.overlay = canvas(box.body, width, height);
    self.layer = document.createElement("div");
    self.layer.className = "pca-labels";
    box.body.appendChild(self.layer);
    self.unplaced = document.createElement("div");
    self.unplaced.className = "note unplaced";
    box.root.appendChild(self.unplaced);
    self.readout = document.createElement("div");
    self.readout.className = "readout icl";
    box.root.appendChild(self.readout);
    self.update = function (entry) { updatePcaPanel(app, self, entry); };
    self.draw = function (step) { drawPcaCursors(self, step); };
    return self;
  }

  function pcaNote(entry) {
    return "x: the store's events (at the record at or before them); open circle: " +
      "a finished run's offline turning point (the sharpest turn of its own trajectory, a candidate stage boundary). " +
      "Dots: each run's record at the step. Basis fitted on " + fmtStep(entry.basis_records || 0) + " records" +
      (entry.basis_final ? " (final: no run is writing)" : "; refitted when the record count doubles and once the runs stop") + ". " +
      (entry.icl_tokens ? "ICL score = loss at token " + entry.icl_tokens[0] + " (or the prompt's last) - loss at token " +
      entry.icl_tokens[1] + ", averaged over prompts; negative: later tokens are easier (in-context learning)." : "");
  }

  // Redraw a PCA panel from the server's entry: axes, the shown runs' trajectories and marks, their names, the
  // labels (placed where nothing is); then the cursors.
  function updatePcaPanel(app, self, entry) {
    const b = self.b;
    self.data = entry;
    self.shown = entry.runs.filter(function (r) { return !app.hidden.has(r.run); });
    self.root.querySelector("h2").textContent = entry.title;
    self.readout.className = entry.icl_tokens ? "readout icl" : "readout";
    self.root.querySelector(".note").textContent = pcaNote(entry);
    const xr = range(self.shown.map(function (r) { return r.x; })), yr = range(self.shown.map(function (r) { return r.y; }));
    self.X = function (x) { return b.left + (x - xr[0]) / (xr[1] - xr[0]) * b.width; };
    self.Y = function (y) { return b.top + b.height - (y - yr[0]) / (yr[1] - yr[0]) * b.height; };
    const ctx = self.base.getContext("2d");
    ctx.clearRect(0, 0, self.width, self.height);
    const ratio = entry.explained.concat([0, 0]);
    drawAxes(ctx, b, xr, yr, "PC1 (" + Math.round(100 * (ratio[0] || 0)) + "% of variance)", "PC2 (" + Math.round(100 * (ratio[1] || 0)) + "%)");
    self.occ = Occupancy(self.width, self.height);
    self.occ.mark(b.left - 1, b.top, b.left + b.width + 1, b.top + 1);  // the frame's top edge: labels above it stay clear
    const drawn = drawTrajectories(ctx, self);
    drawRunNames(ctx, self);
    self.root.trajhookPolylines = drawn.lines;
    placeLabels(ctx, self, drawn.wanted);
    if (self.wanted !== null) self.draw(self.wanted);
  }

  // Each shown run's line, offline turns and events, marked as taken; returns the lines' pixel points and the
  // labels wanted at the marks.
  function drawTrajectories(ctx, self) {
    const lines = [], wanted = [], X = self.X, Y = self.Y, occ = self.occ;
    self.shown.forEach(function (r) {
      const colour = runColour(r.run), who = self.shown.length > 1 ? r.name + ": " : "";
      lines.push(drawTrajectory(ctx, self, r, colour));
      (r.turns || []).forEach(function (t) {
        if (t.xy[0] === null) return;
        const x = X(t.xy[0]), y = Y(t.xy[1]);
        ctx.strokeStyle = colour; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.arc(x, y, 9, 0, 2 * Math.PI); ctx.stroke();
        occ.mark(x - 11, y - 11, x + 11, y + 11);
        wanted.push({ x: x, y: y, colour: colour, text: who + "offline turn @ " + fmtStep(t.step) + " (finished run)" });
      });
      r.events.forEach(function (e) {
        if (e.xy[0] === null) return;
        const x = X(e.xy[0]), y = Y(e.xy[1]);
        ctx.strokeStyle = "#000"; ctx.lineWidth = 2;
        ctx.beginPath(); ctx.moveTo(x - 5, y - 5); ctx.lineTo(x + 5, y + 5); ctx.moveTo(x - 5, y + 5); ctx.lineTo(x + 5, y - 5); ctx.stroke();
        occ.mark(x - 6, y - 6, x + 6, y + 6);
        wanted.push({ x: x, y: y, colour: "#000", text: who + shortEventLabel(e.label) + " @ " + fmtStep(e.step) });
      });
    });
    return { lines: lines, wanted: wanted };
  }

  // One run's trajectory line, its path marked as taken; returns its points in pixels (null where it has a gap).
  function drawTrajectory(ctx, self, r, colour) {
    const occ = self.occ;
    ctx.strokeStyle = colour; ctx.lineWidth = 1.2;
    polyline(ctx, r.x, r.y, self.X, self.Y);
    const pts = [];
    for (let i = 0; i < r.x.length; i++) if (r.x[i] !== null && r.y[i] !== null) pts.push([self.X(r.x[i]), self.Y(r.y[i])]); else pts.push(null);
    for (let i = 1; i < pts.length; i++) if (pts[i] && pts[i - 1]) occ.segment(pts[i - 1][0], pts[i - 1][1], pts[i][0], pts[i][1], 1.5);
    if (pts.length === 1 && pts[0]) occ.mark(pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2);
    return pts;
  }

  // The shown runs' names, top left inside the plot, in their colours.
  function drawRunNames(ctx, self) {
    const b = self.b;
    ctx.textAlign = "left"; ctx.font = "11px system-ui, sans-serif";
    self.shown.forEach(function (r, i) {
      const text = "\u2014 " + r.name;
      ctx.fillStyle = runColour(r.run);
      ctx.fillText(text, b.left + 6, b.top + 14 + 13 * i);
      self.occ.mark(b.left + 4, b.top + 3 + 13 * i, b.left + 8 + ctx.measureText(text).width, b.top + 17 + 13 * i);
    });
  }

  // The labels: measured as drawn, then placed one by one where nothing is (far ones with a dashed leader); those
  // with no free room are listed under the plot.
  function placeLabels(ctx, self, wanted) {
    self.layer.innerHTML = "";
    const labels = wanted.map(function (w) {
      const span = document.createElement("span");
      span.className = "pca-label";
      span.textContent = w.text;
      span.style.color = w.colour;
      self.layer.appendChild(span);
      return { w: w, span: span };
    });
    const missing = [], leaders = [];
    labels.forEach(function (l) {
      l.size = [l.span.offsetWidth, l.span.offsetHeight];
      l.home = place(self.occ, self.room, l.w.x, l.w.y, l.size[0], l.size[1], null);
      if (!l.home) { l.span.remove(); missing.push(l.w.text); return; }
      self.occ.mark(l.home.x, l.home.y, l.home.x + l.home.w, l.home.y + l.home.h);
      if (l.home.leader) { // drawn with the lines, and kept clear of the labels placed after it
        const p = l.home.leader;
        ctx.strokeStyle = l.w.colour; ctx.lineWidth = 1; ctx.setLineDash([2, 2]);
        ctx.beginPath(); ctx.moveTo(p[0], p[1]); ctx.lineTo(p[2], p[3]); ctx.stroke(); ctx.setLineDash([]);
        self.occ.segment(p[0], p[1], p[2], p[3], 1.5);
        leaders.push([[p[0], p[1]], [p[2], p[3]]]);
      }
    });
    self.labels = labels.filter(function (l) { return l.home; });
    self.root.trajhookLeaders = leaders;
    self.unplaced.textContent = missing.length ? "Not labelled in the picture (no free room): " + missing.join("; ") : "";
  }

  function putLabel(l, rect) {
    l.at = rect;
    l.span.style.visibility = rect ? "visible" : "hidden";
    if (rect) { l.span.style.left = rect.x + "px"; l.span.style.top = rect.y + "px"; }
  }

  // The overlay: each shown run's record at the step (a dot), the readout, and the labels moved off the dots.
  function drawPcaCursors(self, step) {
    self.wanted = step;
    if (!self.data) return;
    const ctx = self.overlay.getContext("2d");
    ctx.clearRect(0, 0, self.width, self.height);
    const xs = [], ys = [], out = [], cursors = [];
    self.shown.forEach(function (r) {
      const at = Math.max(0, atOrBefore(r.steps, step));
      xs.push([r.x[at]]); ys.push([r.y[at]]);
      const score = r.icl[at];
      const text = r.name + ": step " + fmtStep(r.steps[at]);
      out.push(self.data.icl_tokens ? text + ", ICL score " + (score === null || score === undefined ? "n/a" : score.toFixed(3)) : text);
      if (r.x[at] === null) return;
      const x = self.X(r.x[at]), y = self.Y(r.y[at]);
      ctx.fillStyle = runColour(r.run); ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(x, y, 7, 0, 2 * Math.PI); ctx.fill(); ctx.stroke();
      ctx.strokeStyle = "#000"; ctx.lineWidth = 1;
      ctx.beginPath(); ctx.arc(x, y, 8.5, 0, 2 * Math.PI); ctx.stroke();
      cursors.push({ x: x - 10, y: y - 10, w: 20, h: 20 });
    });
    moveLabels(self, cursors);
    self.root.trajhookCursors = cursors;
    self.readout.textContent = out.join("   |   ");
    self.root.dataset.cursor = JSON.stringify([xs, ys]);
    self.root.dataset.step = String(step);
  }

  // A label under a cursor moves to the nearest free spot (back home once the cursor has passed), else hides.
  function moveLabels(self, cursors) {
    const labels = self.labels;
    const hits = function (rect) { return cursors.some(function (o) { return rect.x < o.x + o.w && o.x < rect.x + rect.w && rect.y < o.y + o.h && o.y < rect.y + rect.h; }); };
    labels.forEach(function (l) { putLabel(l, hits(l.home) ? undefined : l.home); });
    labels.forEach(function (l) {
      if (l.at || l.home.leader) return;  // a label with a leader stays by it: hidden while the cursor is over it
      const taken = cursors.concat(labels.filter(function (o) { return o.at; }).map(function (o) { return o.at; }));
      const homes = labels.filter(function (o) { return o !== l; }).map(function (o) { return o.home; });
      putLabel(l, place(self.occ, self.room, l.w.x, l.w.y, l.size[0], l.size[1], taken.concat(homes), true) ||
        place(self.occ, self.room, l.w.x, l.w.y, l.size[0], l.size[1], taken, true) || null);
    });
  }

  // -- the page ----------------------------------------------------------------------------------------------------

  function start() {
    const snapNode = document.getElementById("trajhook-snapshot");
    const source = snapNode ? snapshotSource(JSON.parse(snapNode.textContent)) : liveSource();
    const app = newApp(source);
    app.fullRange = function () {
      return app.axis.length ? [app.axis[0], Math.max(app.axis[app.axis.length - 1], app.axis[0] + 1)] : [0, 1];
    };
    app.zoom = function (lo, hi) {
      app.view.zoom = lo === null || lo === undefined ? null : [lo, Math.max(hi, lo + 1)];
      app.ui.zoomReset.style.display = app.view.zoom ? "" : "none";
      app.curvePanels.forEach(function (p) { p.update(); });
    };
    app.setHidden = function (run, hidden) { setHidden(app, run, hidden); };
    document.getElementById("runs").addEventListener("change", function (e) {
      if (e.target.classList.contains("trajhook-run-toggle")) app.setHidden(parseInt(e.target.dataset.run, 10), !e.target.checked);
    });
    wireControls(app);
    wireKeys(app);
    document.addEventListener("visibilitychange", function () { if (!document.hidden && source.live) poll(app).catch(function () {}); });
    window.trajhook = { app: app, show: function (i) { userMove(app, i); }, decodeFrame: decodeFrame, zoom: app.zoom,
      setHidden: app.setHidden, format: { step: fmtStep, label: fmt, tick: fmtTick } };
    loop(app).then(function () { document.body.dataset.ready = "1"; });
  }

  // The page's state: the runs and their step axis, the panels, the view (zoom, smoothing, log y), its controls
  // (ui), and when the curves and PCA panels were last fetched and whether they are due again (jobs).
  function newApp(source) {
    const ui = {
      slider: document.getElementById("step-slider"), label: document.getElementById("step-label"),
      followLabel: document.getElementById("follow-label"), gotoBox: document.getElementById("goto"),
      play: document.getElementById("play"), emaBox: document.getElementById("ema"), logBox: document.getElementById("logy"),
      zoomReset: document.getElementById("zoom-reset"), timer: null,
    };
    const panels = document.getElementById("panels");
    return {
      source: source, runs: [], axis: [], panels: panels, sections: pageSections(panels), hidden: new Set(),
      mazes: new Map(), curvePanels: new Map(), curveData: [], pcas: new Map(), pcaData: [], index: 0,
      following: true, head: null, state: null, view: { zoom: null, ema: 0, logy: false }, ui: ui,
      jobs: { curvesAt: -1e9, pcaAt: -1e9, lastCounts: "", curvesDirty: false, pcaDirty: false },
    };
  }

  function pageSections(panels) {
    const sections = {};
    ["mazes", "curves", "pcas"].forEach(function (name) { // a fixed order: served page and report alike
      const div = document.createElement("div");
      div.className = "section";
      div.id = "section-" + name;
      panels.appendChild(div);
      sections[name] = div;
    });
    return sections;
  }

  function allPanels(app) {
    return Array.from(app.mazes.values()).concat(Array.from(app.curvePanels.values()), Array.from(app.pcas.values()));
  }

  function anyWriting(app) { return app.state ? app.state.runs.some(function (r) { return r.run_status === "writing"; }) : false; }

  function progress(app) {
    if (!app.axis.length) return "";
    const newer = app.axis.length - 1 - app.index;
    app.ui.followLabel.dataset.newer = String(newer);
    if (!app.following && newer > 0) return fmtStep(newer) + " newer record" + (newer === 1 ? "" : "s") + ", End to follow";
    if (!app.source.live) return "";
    return anyWriting(app) ? "\u25cf live" : "at the newest record";
  }

  // Show the i-th step of the axis: the slider, its labels, and every panel drawn at that step.
  function show(app, i) {
    if (!app.axis.length) return;
    const ui = app.ui;
    app.index = Math.max(0, Math.min(app.axis.length - 1, i));
    const step = app.axis[app.index];
    ui.slider.max = String(app.axis.length - 1);
    ui.slider.value = String(app.index);
    ui.slider.dataset.step = String(step);
    ui.label.textContent = "step " + fmtStep(step) + "  (" + fmtStep(app.index + 1) + "/" + fmtStep(app.axis.length) + ")";
    ui.followLabel.textContent = progress(app);
    document.body.dataset.index = String(app.index);
    allPanels(app).forEach(function (panel) { // a hidden panel draws nothing, and counts as drawn
      if (panel.root.style.display !== "none") panel.draw(step); else panel.root.dataset.step = String(step);
    });
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 90) return Math.max(0, Math.round(seconds)) + " s ago";
    if (seconds < 5400) return Math.round(seconds / 60) + " min ago";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h ago";
    return Math.round(seconds / 86400) + " days ago";
  }

  function statusText(app, r) {
    if (r.status !== "live") return r.message || r.status;
    const words = STATUS_WORDS[r.run_status] || r.run_status;
    return app.source.live ? words : "snapshot; the run was " + (r.run_status === "writing" ? "writing" : words);
  }

  // The runs table: one row per run, made once and updated in place (a checkbox or an open "metadata" survives
  // every poll). The row carries data-run and data-run-status.
  function updateRuns(app, state) {
    const node = document.getElementById("runs");
    let table = node.querySelector("table.runs");
    if (!table) {
      node.innerHTML = '<table class="runs"><tr>' + ["run (shown)", "records", "steps", "progress", "probes", "events",
        "created", "status", "metadata"].map(function (h) { return "<th>" + h + "</th>"; }).join("") + "</tr></table>";
      table = node.querySelector("table.runs");
    }
    state.runs.forEach(function (r, i) { fillRunRow(app, runRow(table, i), r, i); });
  }

  function runRow(table, i) {
    let row = table.querySelector('tr[data-run="' + i + '"]');
    if (!row) {
      row = document.createElement("tr");
      row.dataset.run = String(i);
      row.innerHTML = '<td><label><input type="checkbox" class="trajhook-run-toggle" data-run="' + i + '" checked> ' +
        '<span class="swatch" style="background:' + runColour(i) + '"></span><span class="name"></span></label></td>' +
        "<td></td><td></td><td></td><td></td><td></td><td></td><td class=\"trajhook-status\"></td>" +
        "<td><details><summary>metadata</summary><pre></pre></details></td>";
      table.appendChild(row);
    }
    return row;
  }

  // A run's row, each cell written only when its text changed.
  function fillRunRow(app, row, r, i) {
    const live = app.source.live;
    const pace = (r.records_per_min !== null && r.records_per_min !== undefined ? fmt(r.records_per_min) + " records/min" : "") +
      (live && r.newest_age_s !== null && r.newest_age_s !== undefined ? (r.records_per_min ? ", " : "") + "newest " + ago(r.newest_age_s) : "");
    const texts = [fmtStep(r.records || 0), r.records ? fmtStep(r.first_step) + " .. " + fmtStep(r.last_step) : "", pace,
      r.probes.map(function (p) { return p.name + " (" + p.kind + ")"; }).join(", "), String(r.events.length), r.created];
    const cells = row.children;
    row.querySelector(".name").textContent = r.name;
    texts.forEach(function (text, k) { if (cells[k + 1].textContent !== text) cells[k + 1].textContent = text; });
    row.dataset.runStatus = r.run_status || r.status;
    const status = cells[7];
    status.className = "trajhook-status " + r.status + " " + (r.run_status || "");
    if (status.textContent !== statusText(app, r)) status.textContent = statusText(app, r);
    const metadata = JSON.stringify((app.runs[i] && app.runs[i].metadata) || {}, null, 1), pre = row.querySelector("pre");
    if (pre.textContent !== metadata) pre.textContent = metadata;
  }

  function updateCurves(app) {
    const specs = curveSpecs(app.curveData.filter(function (_, i) { return !app.hidden.has(i); }));
    const wanted = new Set(specs.map(function (s) { return s.id; }));
    specs.forEach(function (spec) { if (!app.curvePanels.has(spec.id)) app.curvePanels.set(spec.id, CurvePanel(app, spec)); });
    // a panel's place in the section follows the specs' order, also for panels added later
    specs.forEach(function (spec) { app.sections.curves.appendChild(app.curvePanels.get(spec.id).root); });
    app.curvePanels.forEach(function (p, id) {
      p.root.style.display = wanted.has(id) ? "" : "none";
      if (wanted.has(id)) p.update();
    });
  }

  function updatePca(app) {
    app.pcaData.forEach(function (entry) {
      if (!app.pcas.has(entry.key)) app.pcas.set(entry.key, PcaPanel(app, entry.key));
      app.pcas.get(entry.key).update(entry);
    });
  }

  async function refreshCurves(app) {
    app.curveData = await Promise.all(app.runs.map(function (_, i) { return app.source.curves(i).catch(function () { return null; }); }));
    updateCurves(app);
  }

  async function refreshPca(app) {
    app.pcaData = await app.source.pca().catch(function () { return []; });
    updatePca(app);
    // finished runs' offline turning points still being found on the server: ask again at the next PCA turn
    if (app.pcaData.some(function (entry) { return entry.turns_pending; })) app.jobs.pcaDirty = true;
  }

  function visibleAxis(app) {
    return mergeSorted(app.runs.filter(function (_, i) { return !app.hidden.has(i); }).map(function (r) { return r.steps; }));
  }

  function setHidden(app, run, hidden) {
    if (hidden) app.hidden.add(run); else app.hidden.delete(run);
    const step = app.axis.length ? app.axis[app.index] : null;
    app.axis = visibleAxis(app);
    app.mazes.forEach(function (panel) { panel.root.style.display = app.hidden.has(panel.run) ? "none" : ""; });
    updateCurves(app);
    updatePca(app);
    if (app.axis.length) show(app, app.following || step === null ? app.axis.length - 1 : Math.max(0, atOrBefore(app.axis, step)));
  }

  // One poll: the runs' new steps and state, the table and header; the curves and PCA fetched when due (not
  // awaited); the slider kept at its step, or at the newest when following.
  async function poll(app) {
    if (app.source.live && document.hidden) return;
    const have = app.runs.map(function (r) { return r.epoch + ":" + r.steps.length; });
    const state = await app.source.state(have);
    app.state = state;
    let changed = false;
    state.runs.forEach(function (r, i) { if (mergeRun(app, r, i)) changed = true; });
    updateRuns(app, state);
    updateHeader(app, state);
    app.head = state.head_step;
    app.ui.slider.dataset.headStep = state.head_step === null ? "" : String(state.head_step);
    const step = app.axis.length ? app.axis[app.index] : null;
    if (changed) app.axis = visibleAxis(app);
    const jobs = dueJobs(app);
    if (app.axis.length && changed) {
      if (app.following || step === null) show(app, app.axis.length - 1);
      else show(app, Math.max(0, atOrBefore(app.axis, step)));
    } else app.ui.followLabel.textContent = progress(app);
    // not awaited: a slow PCA must not hold back the next poll, nor the curves; panels these make draw the step too
    jobs.forEach(function (job) { job.then(function () { show(app, app.index); }); });
  }

  // Take one run's state from a poll (a new epoch starts it afresh; steps come whole or as the new ones) and make
  // its new maze panels. Whether its steps or events changed.
  function mergeRun(app, r, i) {
    let run = app.runs[i], changed = false;
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
    if (run.run_status !== r.run_status) { run.run_status = r.run_status; app.jobs.pcaDirty = true; }
    r.mazes.forEach(function (probe) {
      const key = i + "/" + probe;
      if (!app.mazes.has(key)) {
        app.mazes.set(key, MazePanel(app, i, probe));
        if (app.hidden.has(i)) app.mazes.get(key).root.style.display = "none";
      }
    });
    return changed;
  }

  // The title (live or report, and the runs' names), the version, and a snapshot's note.
  function updateHeader(app, state) {
    const live = app.source.live, names = state.runs.map(function (r) { return r.name; }).join(", ");
    const title = "trajhook" + (live ? (anyWriting(app) ? " (live)" : "") : " report") + ": " + names;
    document.getElementById("title").textContent = title;
    document.title = title;
    document.getElementById("version").textContent = "trajhook " + state.version;
    document.getElementById("snapshot-note").textContent = live ? "" :
      "A snapshot of " + state.runs.length + " store" + (state.runs.length === 1 ? "" : "s") + " (" +
      (state.stores || state.runs.map(function (r) { return r.name; })).join(", ") + ") made at " + (state.made || "?") +
      ": it shows the records written by then and does not follow new ones.";
  }

  // The curves and PCA fetches due now (started here): after new records or events, at most every CURVES_EVERY_MS
  // and PCA_EVERY_MS.
  function dueJobs(app) {
    const due = app.jobs, now = performance.now(), jobs = [];
    const counts = app.runs.map(function (r) { return r.epoch + ":" + r.steps.length; }).join(",") +
      JSON.stringify(app.runs.map(function (r) { return r.events; }));
    if (counts !== due.lastCounts) { due.lastCounts = counts; due.curvesDirty = due.pcaDirty = true; }
    if (due.curvesDirty && now - due.curvesAt >= CURVES_EVERY_MS) { due.curvesDirty = false; due.curvesAt = now; jobs.push(refreshCurves(app)); }
    if (due.pcaDirty && now - due.pcaAt >= PCA_EVERY_MS) { due.pcaDirty = false; due.pcaAt = now; jobs.push(refreshPca(app)); }
    return jobs;
  }

  function userMove(app, i) {
    app.following = i >= app.axis.length - 1;
    show(app, i);
  }

  // The slider, the go-to box, the smoothing and log-y switches, the zoom reset and play.
  function wireControls(app) {
    const ui = app.ui;
    ui.slider.addEventListener("input", function () { userMove(app, parseInt(ui.slider.value, 10)); });
    ui.gotoBox.addEventListener("change", function () {
      const want = Number(ui.gotoBox.value);
      if (!app.axis.length || !isFinite(want)) return;
      let i = Math.max(0, atOrBefore(app.axis, want));
      if (i + 1 < app.axis.length && Math.abs(app.axis[i + 1] - want) < Math.abs(app.axis[i] - want)) i += 1;
      userMove(app, i);
    });
    ui.emaBox.addEventListener("input", function () {
      app.view.ema = Math.min(0.999, Math.max(0, Number(ui.emaBox.value) || 0));
      document.getElementById("ema-label").textContent = app.view.ema ? "EMA " + app.view.ema.toFixed(2) : "no smoothing";
      app.curvePanels.forEach(function (p) { p.update(); });
    });
    ui.logBox.addEventListener("change", function () { app.view.logy = ui.logBox.checked; app.curvePanels.forEach(function (p) { p.update(); }); });
    ui.zoomReset.addEventListener("click", function () { app.zoom(null); });
    ui.play.addEventListener("click", function () { togglePlay(app); });
  }

  // Play from the shown step (from the first at the end), a step every 150 ms, until the end or a pause.
  function togglePlay(app) {
    const ui = app.ui;
    if (ui.timer) { clearInterval(ui.timer); ui.timer = null; ui.play.innerHTML = "&#9654; play"; return; }
    if (app.index >= app.axis.length - 1) userMove(app, 0);
    ui.play.innerHTML = "&#10073;&#10073; pause";
    ui.timer = setInterval(function () {
      if (app.index >= app.axis.length - 1) { togglePlay(app); return; }
      userMove(app, app.index + 1);
    }, 150);
  }

  // The keys: arrows a record, Page Up/Down a tenth of the axis, Home/End the ends, space play/pause.
  function wireKeys(app) {
    const ui = app.ui;
    document.addEventListener("keydown", function (e) {
      if (e.target === ui.gotoBox || e.target === ui.emaBox) return;
      if (e.target === ui.slider && e.key !== " ") return; // the slider handles its own keys (and fires "input")
      const page = Math.max(1, Math.round(app.axis.length / 10));
      const moves = { ArrowRight: app.index + 1, ArrowLeft: app.index - 1, PageUp: app.index + page, PageDown: app.index - page,
        Home: 0, End: app.axis.length - 1 };
      if (e.key in moves) { userMove(app, moves[e.key]); e.preventDefault(); }
      else if (e.key === " ") { togglePlay(app); e.preventDefault(); }
    });
  }

  async function loop(app) {
    try { await poll(app); } catch (err) {
      app.ui.followLabel.textContent = app.source.live ? "server unreachable" : "error: " + err;
      window.trajhookError = String(err && err.stack || err);
      if (!app.source.live) throw err;
    }
    if (app.source.live) setTimeout(function () { loop(app); }, POLL_MS);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start); else start();
})();
