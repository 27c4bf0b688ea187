"""The page a researcher keeps open (issue 25), in real headless Chromium over loopback, on real stores.

Every value checked here is computed independently from the HDF5 store (``trajhook.load`` and numpy):
the scalars each panel draws, the maze agreement per step and its chance, the EMA and the log y, the
run states (writing, finished, writer gone), the runs side by side (colours, "ended at", hiding a run),
and the PCA labels, which must not overlap each other, a line or a cursor (on the drawn boxes).
"""

from __future__ import annotations

import itertools
import json
import re
import time

import numpy as np
import pytest
from browser import chromium
from fake_maze import GridProbe, policy, prompt_store, train_toward_right
from test_serve import Server, Writer, page, wait_until

from trajhook import Recorder, load

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
SCALE = 1000  # steps in thousands, so that labels need separators


def rl_store(path, steps: int = 40) -> None:
    """An RL-like store: a maze probe, no targets, three scalars, an event; steps 0, 1,000, ..., closed cleanly."""
    model = policy()
    with Recorder(path, [GridProbe()], every_n_steps=1, wandb=False) as rec:
        rec.record(model, 0)
        for step, loss in train_toward_right(model, steps):
            at = (step + 1) * SCALE
            if step + 1 == 15:
                rec.mark(at, "lr drop")
            rec.maybe_record(
                model, at, loss=loss, episodic_return=float(np.sin(step / 5) + step / 10), entropy=2.0 / (1 + step)
            )


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page")
    rl_store(folder / "rl.h5")
    prompt_store(folder / "lm.h5", seed=1, steps=20, every=2, maze=True)  # steps 0..20: ends long before rl
    return folder


def expected_agreement(log, probe: str = "maze", goal: str = "cheese") -> tuple[np.ndarray, float]:
    """Shortest-path agreement per record and its chance, by BFS here (not trajhook.analysis), to the cheese or
    to the maze's top-right cell (the highest row and column with a free cell)."""
    meta = log[probe].metadata
    grid, cells, cheese = np.asarray(meta["grid"]), np.asarray(meta["cells"]), tuple(meta["cheese"])
    free = grid != 51
    if goal == "corner":
        cheese = (int(np.nonzero(free)[0].max()), int(np.nonzero(free)[1].max()))
    dist = np.full(grid.shape, -1)
    dist[cheese] = 0
    frontier = [cheese]
    while frontier:
        nxt = []
        for r, c in frontier:
            for dr, dc in ((0, -1), (0, 1), (1, 0), (-1, 0)):
                rr, cc = r + dr, c + dc
                if 0 <= rr < grid.shape[0] and 0 <= cc < grid.shape[1] and free[rr, cc] and dist[rr, cc] < 0:
                    dist[rr, cc] = dist[r, c] + 1
                    nxt.append((rr, cc))
        frontier = nxt
    good = np.zeros((len(cells), 4), bool)  # left, right, up (row + 1), down
    for i, (r, c) in enumerate(cells):
        for k, (dr, dc) in enumerate(((0, -1), (0, 1), (1, 0), (-1, 0))):
            rr, cc = r + dr, c + dc
            inside = 0 <= rr < grid.shape[0] and 0 <= cc < grid.shape[1]
            good[i, k] = inside and dist[r, c] > 0 and dist[rr, cc] == dist[r, c] - 1
    probs = log[probe]["direction_probs"][:, :, :4]
    strongest = probs.argmax(-1)
    agreement = good[np.arange(len(cells))[None, :], strongest].mean(1)
    return agreement, good.sum(1).mean() / 4


CURVES = """
const out = {};
document.querySelectorAll('.curve-panel').forEach(function (root) {
  if (root.style.display === 'none') return;
  const p = Array.from(window.trajhook.app.curvePanels.values()).find(q => q.root === root);
  const key = root.dataset.scalar ? 'scalar:' + root.dataset.scalar
    : root.dataset.agreement ? 'agreement:' + root.dataset.agreement : 'targets';
  out[key] = {xr: JSON.parse(root.dataset.xRange), step: root.dataset.step, logy: root.dataset.logY,
       series: p.drawn.map(d => ({run: d.run, label: d.label, steps: d.steps, values: d.values, chance: d.chance}))};
});
return out;
"""


def ready(driver, panels: int = 5) -> bool:
    state = page(driver)
    return (
        state["step"] is not None
        and len(state["panels"]) >= panels
        and all(p == state["step"] for p in state["panels"])
        and driver.execute_script("return document.querySelectorAll('.pca-label, .trajhook-panel[data-key]').length")
        > 0
    )


@pytest.mark.timeout(180)
def test_every_scalar_is_drawn_with_smoothing_log_y_a_shared_zoom_and_the_agreement_against_chance(stores):
    from selenium.webdriver.common.action_chains import ActionChains

    log = load(stores / "rl.h5")
    server = Server(str(stores / "rl.h5"), "--port", "0")
    driver = chromium(1400, 1600, loopback=True)
    try:
        driver.get(server.local())
        wait_until(lambda: ready(driver), timeout=40)
        curves = driver.execute_script(CURVES)
        status = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr[data-run-status]')).map(r => r.dataset.runStatus)"
        )
        title = driver.title
        step_label = driver.find_element("id", "step-label").text
        scalars = sorted(e.get_attribute("data-scalar") for e in driver.find_elements("css selector", "[data-scalar]"))
        colour_bars = len(driver.find_elements("css selector", ".trajhook-panel[data-probe] .colour-bar"))
        # smoothing and log y redraw every curve panel
        box = driver.find_element("id", "ema")
        box.clear()
        box.send_keys("0.6")
        driver.find_element("id", "logy").click()
        smoothed = wait_until(lambda: (c := driver.execute_script(CURVES))["scalar:loss"]["logy"] == "1" and c)
        # drag across the loss panel: every curve panel zooms to the same x range; a double-click resets it
        overlay = driver.find_element("css selector", "[data-scalar=loss] canvas + canvas")
        width = overlay.size["width"]
        ActionChains(driver).move_to_element_with_offset(overlay, -width // 2 + 120, 0).click_and_hold().move_by_offset(
            180, 0
        ).release().perform()
        zoomed = wait_until(
            lambda: (c := driver.execute_script(CURVES))["scalar:loss"]["xr"] != curves["scalar:loss"]["xr"] and c
        )
        ActionChains(driver).double_click(overlay).perform()
        reset = wait_until(
            lambda: (c := driver.execute_script(CURVES))["scalar:loss"]["xr"] == curves["scalar:loss"]["xr"] and c
        )
        # Home: the slider moved back says how many newer records there are
        driver.find_element("css selector", "input[type=range]").send_keys("\ue011")  # Home
        follow = wait_until(lambda: "newer" in (t := driver.find_element("id", "follow-label").text) and t)
        # the hover names the row as drawn: from the bottom
        frame = driver.execute_script(
            "const p = document.querySelector('.trajhook-panel[data-probe=maze]'); return p.trajhookCellPixel(0)"
        )
        canvas = driver.find_element("css selector", ".trajhook-panel[data-probe=maze] canvas")
        size = canvas.size
        ActionChains(driver).move_to_element_with_offset(
            canvas, int(frame["x"] - size["width"] / 2), int(frame["y"] - size["height"] / 2)
        ).perform()
        hover = wait_until(
            lambda: driver.execute_script(
                "const t = document.querySelector('.trajhook-hover');"
                "return t.style.display === 'block' && t.textContent"
            )
        )
        formats = driver.execute_script(
            "const f = window.trajhook.format;"
            "return [f.step(1400832), f.label(1400832.5), f.tick(50000), f.tick(1.4e6), f.tick(0.25), f.tick(-2),"
            " f.tick(0.0005)]"
        )
        console = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        server.stop()
    assert console == []
    # one number format: thousands separators in labels, compact SI on the axes (the functions every panel calls)
    assert formats == ["1,400,832", "1,401,000", "50k", "1.4M", "0.25", "-2", "500\u00b5"]
    # every scalar, and no empty target panel for a run without targets
    assert scalars == ["entropy", "episodic_return", "loss"] and "targets" not in curves
    assert colour_bars == 1
    for name in scalars:
        (series,) = curves[f"scalar:{name}"]["series"]
        expected = log.scalars[name]
        assert series["steps"] == expected.steps.tolist()
        np.testing.assert_allclose(series["values"], expected.values, rtol=1e-5, atol=1e-5)
    # the agreement per step, and chance, from the store by BFS here
    agreement, chance = expected_agreement(log)
    drawn, dashed, corner = curves["agreement:maze"]["series"]
    assert drawn["steps"] == log.steps.tolist()
    np.testing.assert_allclose(drawn["values"], agreement, atol=1e-5)
    assert dashed["chance"] == pytest.approx(chance, abs=1e-5)
    assert corner["label"].endswith("to the top-right corner") and corner["steps"] == log.steps.tolist()
    np.testing.assert_allclose(corner["values"], expected_agreement(log, goal="corner")[0], atol=1e-5)
    # EMA 0.6 (debiased), then log10
    values, s, out = log.scalars["loss"].values, 0.0, []
    for k, v in enumerate(values, 1):
        s = 0.6 * s + 0.4 * v
        out.append(np.log10(s / (1 - 0.6**k)))
    np.testing.assert_allclose(smoothed["scalar:loss"]["series"][0]["values"], out, rtol=1e-4)
    # one x range for all curve panels, narrower when zoomed, back when reset
    ranges = {key: tuple(c["xr"]) for key, c in zoomed.items()}
    assert len(set(ranges.values())) == 1
    lo, hi = next(iter(ranges.values()))
    assert curves["scalar:loss"]["xr"][0] < lo < hi < curves["scalar:loss"]["xr"][1]
    assert {tuple(c["xr"]) for c in reset.values()} == {tuple(curves["scalar:loss"]["xr"])}
    # states and formats
    assert status == ["finished"] and "(live)" not in title
    assert step_label.startswith("step 40,000 ")
    assert follow == f"{len(log.steps) - 1} newer records, End to follow"
    cell = log["maze"].metadata["cells"][0]
    assert f"cell (row {cell[0]} from the bottom, col {cell[1]} from the left)  step 0" in hover


LABELS = """
const out = [];
document.querySelectorAll('.trajhook-panel[data-key]').forEach(function (root) {
  const canvas = root.querySelector('canvas').getBoundingClientRect();
  const labels = Array.from(root.querySelectorAll('.pca-label')).filter(e => e.style.visibility !== 'hidden')
    .map(e => { const r = e.getBoundingClientRect();
                return {x: r.left - canvas.left, y: r.top - canvas.top, w: r.width, h: r.height,
                        text: e.textContent}; });
  out.push({key: root.dataset.key, labels: labels, lines: root.trajhookPolylines.concat(root.trajhookLeaders),
            cursors: root.trajhookCursors,
            missing: root.querySelector('.unplaced').textContent});
});
return out;
"""


def overlapping(a: dict, b: dict) -> bool:
    return (
        a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]
    )


def check_labels(panel: dict) -> int:
    """No label overlaps another label, a cursor (its 20 x 20 px box) or a line (sampled every 0.5 px)."""
    labels = panel["labels"]
    for i, a in enumerate(labels):
        for b in labels[i + 1 :]:
            assert not overlapping(a, b), (a, b)
        for c in panel["cursors"]:
            assert not overlapping(a, c), (a, c)
    for line in panel["lines"]:
        pts = [p for p in line if p is not None]
        for (x0, y0), (x1, y1) in itertools.pairwise(pts):
            n = max(1, int(np.hypot(x1 - x0, y1 - y0) * 2))
            t = np.linspace(0, 1, n + 1)
            xs, ys = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
            for a in labels:
                inside = (xs > a["x"]) & (xs < a["x"] + a["w"]) & (ys > a["y"]) & (ys < a["y"] + a["h"])
                assert not inside.any(), (a, panel["key"])
    return len(labels)


@pytest.mark.timeout(240)
def test_runs_side_by_side_have_one_colour_end_grey_can_be_hidden_and_labels_never_overlap(stores):
    logs = [load(stores / "rl.h5"), load(stores / "lm.h5")]
    server = Server(str(stores / "rl.h5"), str(stores / "lm.h5"), "--port", "0")
    driver = chromium(1400, 1600, loopback=True)
    try:
        driver.get(server.local())
        wait_until(lambda: ready(driver, panels=8), timeout=60)
        ended = driver.execute_script(
            "return Array.from(document.querySelectorAll('.trajhook-panel[data-probe]')).map(p => ({run: p.dataset.run,"
            " ended: p.dataset.endedAt || null, grey: p.classList.contains('ended'),"
            " colour: getComputedStyle(p).borderTopColor,"
            " note: p.querySelector('.ended-note').textContent}))"
        )
        swatches = driver.execute_script(
            "return Array.from(document.querySelectorAll('tr[data-run] .swatch'))"
            ".map(s => getComputedStyle(s).backgroundColor)"
        )
        axis = driver.execute_script("return window.trajhook.app.axis")
        curves = driver.execute_script(CURVES)
        # labels: at many steps (the cursor moves over them), none overlaps another, a line or a cursor
        placed = 0
        for i in np.linspace(0, len(axis) - 1, 25).astype(int).tolist():
            driver.execute_script(f"window.trajhook.show({i})")
            wait_until(lambda i=i: ready(driver, panels=8) and page(driver)["step"] == str(axis[i]))
            for panel in driver.execute_script(LABELS):
                placed += check_labels(panel)
        texts = [label["text"] for panel in driver.execute_script(LABELS) for label in panel["labels"]]
        missing = [panel["missing"] for panel in driver.execute_script(LABELS)]
        # hide the second run: its panels go, the axis is the first run's steps; show it again
        driver.find_element("css selector", "input.trajhook-run-toggle[data-run='1']").click()
        hidden = wait_until(lambda: (a := driver.execute_script("return window.trajhook.app.axis")) != axis and a)
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('.trajhook-panel[data-probe]'))"
            ".filter(p => p.style.display !== 'none').map(p => p.dataset.run)"
        )
        hidden_curves = driver.execute_script(CURVES)
        wait_until(lambda: ready(driver, panels=8))  # hidden panels count as drawn: the contract's check still holds
        driver.find_element("css selector", "input.trajhook-run-toggle[data-run='1']").click()
        back = wait_until(lambda: (a := driver.execute_script("return window.trajhook.app.axis")) == axis and a)
        console = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    finally:
        driver.quit()
        server.stop()
    assert console == []
    # the union of the steps, one x range for every curve panel
    assert axis == sorted(set(logs[0].steps.tolist()) | set(logs[1].steps.tolist())) and back == axis
    assert {tuple(c["xr"]) for c in curves.values()} == {(axis[0], axis[-1])}
    # at the newest step (40,000) the second run (last step 20) has ended: greyed, says so, data-ended-at
    by_run = {e["run"]: e for e in ended}
    assert by_run["0"]["ended"] is None and not by_run["0"]["grey"]
    assert by_run["1"]["ended"] == "20" and by_run["1"]["grey"] and "ended at step 20" in by_run["1"]["note"]
    # one colour per run: its panel frame, its table swatch, its curves
    assert [by_run["0"]["colour"], by_run["1"]["colour"]] == swatches and swatches[0] != swatches[1]
    loss_colours = {s["run"] for s in curves["scalar:loss"]["series"]}
    assert loss_colours == {0, 1}
    # labels: the event and the finished runs' offline turns, every one placed
    assert placed > 0 and any("lr drop @ 15,000" in t for t in texts)
    assert any(re.search(r"offline turn @ [\d,]+ \(finished run\)", t) for t in texts)
    assert all(m == "" for m in missing), missing
    # hidden: only the first run
    assert hidden == logs[0].steps.tolist() and set(shown) == {"0"}
    assert {s["run"] for s in hidden_curves["scalar:loss"]["series"]} == {0}


@pytest.mark.timeout(180)
def test_three_run_states_each_with_its_own_words_and_the_title_live_only_while_writing(tmp_path):
    live, done = tmp_path / "live.h5", tmp_path / "done.h5"
    writer = Writer(live, "--steps", "0", "--interval", "0.2")
    writer.wait_for(3)
    server = Server(str(live), str(done), "--port", "0", "--wait")
    finishing = Writer(done, "--steps", "12", "--interval", "0.3")  # it finishes while the page follows it
    driver = chromium(1400, 1400, loopback=True)
    statuses = """return Array.from(document.querySelectorAll('tr[data-run-status]')).map(r =>
        [r.dataset.runStatus, r.querySelector('.trajhook-status').textContent,
         getComputedStyle(r.querySelector('.trajhook-status')).color])"""
    try:
        driver.get(server.local())
        both = wait_until(lambda: (s := driver.execute_script(statuses)) and [r[0] for r in s] == ["writing"] * 2 and s)
        live_title = driver.title
        assert finishing.process.wait(60) == 0
        writing = wait_until(lambda: (s := driver.execute_script(statuses))[1][0] == "finished" and s)
        progress = driver.execute_script("return document.querySelector('tr[data-run=\"0\"]').textContent")
        writer.kill()
        gone = wait_until(lambda: (s := driver.execute_script(statuses))[0][0] == "writer-gone" and s)
        gone_title = wait_until(lambda: "(live)" not in driver.title and driver.title)
    finally:
        driver.quit()
        server.stop()
        writer.kill()
    assert both[1][:2] == ["writing", "\u25cf writing"]
    assert writing[0][:2] == ["writing", "\u25cf writing"] and writing[1][:2] == [
        "finished",
        "finished (closed cleanly)",
    ]
    assert gone[0][1].startswith("writer gone (no clean close)") and gone[1][0] == "finished"
    assert len({writing[0][2], writing[1][2], gone[0][2]}) == 3  # three colours
    assert live_title.startswith("trajhook (live): ") and gone_title.startswith("trajhook: ")
    assert re.search(r"[\d,.]+ records/min, newest \d+ s ago", progress), progress


def test_the_pca_basis_is_refitted_only_when_the_records_double_and_once_the_runs_stop(tmp_path):
    """The refit policy of payloads.pca, on followers' snapshots cut to growing lengths."""
    import dataclasses

    from trajhook.analysis import trajectory_pca
    from trajhook.serve import payloads
    from trajhook.serve.follow import Follower

    store = tmp_path / "lm.h5"
    prompt_store(store, seed=2, steps=40, every=1)
    follower = Follower(store, start=False)
    follower.refresh()
    full = follower.snapshot()
    follower.stop()
    key = "prompts/token_loss"
    index, rows = full.samples[key]

    def cut(n: int, status: str = "writing"):
        return dataclasses.replace(full, steps=full.steps[:n], run_status=status, samples={key: (index[:n], rows[:n])})

    bases: dict = {}
    fitted_on, coords = [], {}
    for n in range(4, 42):
        panels = payloads.pca(["lm"], [cut(n)], bases)
        if not panels:
            fitted_on.append(None)
            continue
        fitted_on.append(panels[0]["basis_records"])
        coords[n] = np.stack([panels[0]["runs"][0]["x"], panels[0]["runs"][0]["y"]], 1)
    assert fitted_on[: 8 - 4] == [None] * 4  # fewer than MIN_PCA_RECORDS: no basis yet
    assert sorted(set(fitted_on[4:])) == [8, 16, 32]  # then refitted only when the count doubles
    for n in range(9, 16):  # between refits, the records drawn so far do not move
        np.testing.assert_allclose(coords[n][: n - 1], coords[n - 1], atol=1e-9)
    final = payloads.pca(["lm"], [cut(41, "finished")], bases)[0]
    assert final["basis_records"] == 41 and final["basis_final"]
    expected = trajectory_pca(rows[:41].astype(np.float64), n_components=2).coords
    shown = np.stack([final["runs"][0]["x"], final["runs"][0]["y"]], 1)
    np.testing.assert_allclose(np.abs(shown), np.abs(expected), atol=1e-4)
    assert final["runs"][0]["turns"]  # a finished run gets its offline turning point


def test_run_status_comes_from_the_hdf5_open_flag_and_the_lock(tmp_path):
    """HDF5 flags a file open for writing in its superblock and clears the flag at a clean close.

    (In one process HDF5 shares one open file between handles, so the reader is closed here before
    the writer closes; the server reads from another process.)
    """
    from trajhook.serve.follow import Follower
    from trajhook.store import open_for_writing_flag

    store = tmp_path / "run.h5"
    rec = Recorder(store, [GridProbe()], every_n_steps=1, wandb=False)
    rec.record(policy(), 0)
    rec.flush()
    assert open_for_writing_flag(store) is True
    follower = Follower(store, start=False)
    follower.refresh()
    assert follower.snapshot().run_status == "writing"
    follower.stop()
    rec.close()
    assert open_for_writing_flag(store) is False
    follower = Follower(store, start=False)
    follower.refresh()
    assert follower.snapshot().run_status == "finished"
    follower.stop()
    assert open_for_writing_flag(tmp_path / "missing.h5") is None


@pytest.mark.timeout(180)
def test_a_folder_of_runs_serves_every_store_under_it_adds_new_ones_and_keeps_to_the_folder(tmp_path):
    import h5py

    folder, outside = tmp_path / "runs", tmp_path / "outside"
    (folder / "seed1").mkdir(parents=True)
    outside.mkdir()
    prompt_store(folder / "a.h5", seed=0, steps=6, every=2)
    prompt_store(folder / "seed1" / "b.h5", seed=1, steps=6, every=3)
    prompt_store(outside / "secret.h5", seed=2, steps=4, every=2)
    (folder / "notes.h5").write_text("not hdf5")
    h5py.File(folder / "other.h5", "w").close()
    (folder / "link_out.h5").symlink_to(outside / "secret.h5")  # leads outside: not followed
    (folder / "link_in.h5").symlink_to(folder / "a.h5")  # the same store again: one run
    (folder / "outdir").symlink_to(outside, target_is_directory=True)  # a symlinked directory: not entered
    server = Server(str(folder), "--port", "0")
    driver = chromium(1400, 1400, loopback=True)
    rows = (
        "return Array.from(document.querySelectorAll('tr[data-run]'))"
        ".map(r => r.querySelector('label').textContent.trim())"
    )
    try:
        driver.get(server.local())
        first = wait_until(lambda: (r := driver.execute_script(rows)) and len(r) >= 2 and r)
        time.sleep(2.5)  # more scans: nothing else is added
        settled = driver.execute_script(rows)
        (folder / "seed2").mkdir()
        writer = Writer(folder / "seed2" / "c.h5", "--steps", "0", "--interval", "0.3")
        writer.wait_for(1)
        created = min(writer.committed.values())
        wait_until(lambda: len(driver.execute_script(rows)) == 3, timeout=20)
        seen_after = time.time() - created
        named = driver.execute_script(rows)
        writer.kill()
        by_index = [server.get(f"/api/curves?run={i}")[0] for i in range(4)]
        state = json.loads(server.get("/api/state")[1])
    finally:
        driver.quit()
        server.stop()
    errors = server.process.stderr.read().splitlines()
    assert first == settled == ["a", "seed1/b"]
    assert named == ["a", "seed1/b", "seed2/c"] and seen_after < 5.0, seen_after  # the benchmark times it: <= 2 s
    assert by_index == [200, 200, 200, 400]
    counts = [len(load(folder / "a.h5").steps), len(load(folder / "seed1" / "b.h5").steps)]
    assert [r["records"] for r in state["runs"][:2]] == counts
    skipped = [line for line in errors if "skipped" in line]
    assert len(skipped) == 2 and all(line.count("\n") == 0 for line in skipped), errors
    assert any("notes.h5" in line for line in skipped) and any("other.h5" in line for line in skipped)
    assert not any("secret" in line or "outside" in line for line in errors), errors
    assert "secret" not in json.dumps(state)


@pytest.mark.timeout(120)
def test_show_accepts_a_folder(tmp_path):
    from trajhook.serve.notebook import start_server, stop_all

    prompt_store(tmp_path / "a.h5", seed=0, steps=4, every=2)
    url = start_server([tmp_path])
    try:
        import urllib.request

        with urllib.request.urlopen(url + "api/state", timeout=30) as response:
            state = json.load(response)
    finally:
        stop_all()
    assert [r["name"] for r in state["runs"]] == ["a"] and state["runs"][0]["run_status"] == "finished"
