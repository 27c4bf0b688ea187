"""The HTML report (the live page's static snapshot), opened in a real headless Chromium with the network off.

Two real stores (a maze-and-prompts run with an event, and a prompts-only run on other steps)
share one slider. Moving the slider to the first and the last step must change the vector field
and the PCA cursor together; the values the page shows are checked against an independent
computation from the HDF5 stores; the console stays clean and no request leaves the file.
"""

from __future__ import annotations

import json
import re
import time

import imageio.v3 as iio
import numpy as np
import pytest
from browser import chromium, requested_urls
from fake_maze import prompt_store

import trajhook
from trajhook import load
from trajhook.analysis import icl_score, trajectory_pca
from trajhook.report import thin_indices, write_report


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    prompt_store(folder / "maze_lm.h5", seed=0, steps=60, every=3, maze=True, events=[(30, "lr drop")])
    prompt_store(folder / "lm_only.h5", seed=1, steps=60, every=5)
    return folder


def press(driver, key):
    from selenium.webdriver.common.keys import Keys

    driver.find_element("css selector", "input[type=range]").send_keys(getattr(Keys, key))
    time.sleep(0.3)


def element_pixels(driver, selector, screenshot):
    """The part of a screenshot covered by an element."""
    rect = driver.find_element("css selector", selector).rect
    ratio = driver.execute_script("return window.devicePixelRatio")
    image = iio.imread(screenshot)
    x0, y0 = int(rect["x"] * ratio), int(rect["y"] * ratio)
    return image[y0 : y0 + int(rect["height"] * ratio), x0 : x0 + int(rect["width"] * ratio), :3]


@pytest.mark.timeout(240)
def test_one_slider_drives_every_panel_in_a_real_browser_offline(stores, tmp_path):
    out = write_report([stores / "maze_lm.h5", stores / "lm_only.h5"], tmp_path / "report.html", progress=False)
    page = out.read_text()
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page)  # nothing to fetch: all inlined
    logs = [load(stores / "maze_lm.h5"), load(stores / "lm_only.h5")]
    steps = sorted(set(logs[0].steps.tolist()) | set(logs[1].steps.tolist()))  # the slider's steps
    driver = chromium()
    try:
        driver.get("about:blank")
        driver.get_log("performance")  # only the report's own requests from here on
        driver.get(out.as_uri())
        for _ in range(100):  # every panel has drawn the last step
            if driver.execute_script(
                "const p = document.querySelectorAll('.trajhook-panel'); return p.length >= 3 && "
                "Array.from(p).every(e => e.dataset.step === document.querySelector('input[type=range]').dataset.step)"
            ):
                break
            time.sleep(0.1)
        shots = {}
        state = {}
        for key in ("HOME", "END"):
            press(driver, key)
            shots[key] = tmp_path / f"report_{key.lower()}.png"
            driver.save_screenshot(str(shots[key]))
            state[key] = driver.execute_script(
                "const m = document.querySelector('.trajhook-panel[data-probe=maze]'),"
                " p = document.querySelector('.icl').parentNode;"
                "return {index: +document.body.dataset.index, label: document.getElementById('step-label').textContent,"
                " step: m.dataset.step, probs: Array.from(m.trajhookFrame.probs).map(v => v / 255),"
                " cursor: JSON.parse(p.dataset.cursor), icl: p.querySelector('.icl').textContent,"
                " version: document.getElementById('version').textContent,"
                " note: document.getElementById('snapshot-note').textContent, title: document.title,"
                " order: Array.from(document.querySelectorAll('.trajhook-panel'))"
                "   .filter(e => e.style.display !== 'none')"
                "   .map(e => e.dataset.scalar || e.dataset.agreement || e.dataset.curves || e.dataset.key"
                "        || e.dataset.run + '/' + e.dataset.probe),"
                " metadata: Array.from(document.querySelectorAll('#runs details pre')).map(e => e.textContent)}"
            )
        index = "return +document.body.dataset.index"
        press(driver, "HOME")
        press(driver, "ARROW_RIGHT")  # the arrow keys step one frame
        stepped = driver.execute_script(index)
        press(driver, "END")
        for _ in range(3):
            press(driver, "ARROW_LEFT")
        play = driver.find_element("id", "play")
        play.click()  # play runs on its own from 3 frames before the end to the last step, and stops there
        for _ in range(300):
            if "play" in play.text and driver.execute_script(index) == len(steps) - 1:
                break
            time.sleep(0.1)
        played_to = driver.execute_script(index)
        play.click()  # from the end, play starts again at the first step; pause stops it
        play.click()
        paused_at = driver.execute_script(index)
        time.sleep(0.5)
        still = driver.execute_script(index)
        console = driver.get_log("browser")
        urls = requested_urls(driver)
        maze, pca = ".trajhook-panel[data-probe=maze] canvas", ".trajhook-panel[data-key] .layers"
        maze_first = element_pixels(driver, maze, shots["HOME"])
        maze_last = element_pixels(driver, maze, shots["END"])
        pca_first = element_pixels(driver, pca, shots["HOME"])
        pca_last = element_pixels(driver, pca, shots["END"])
    finally:
        driver.quit()

    assert [e for e in console if e["level"] == "SEVERE"] == [], console
    leaving = [u for u in urls if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert leaving == [], leaving

    # the page states the trajhook version, that it is a snapshot of which stores at what time, and each run's metadata
    assert state["END"]["version"] == f"trajhook {trajhook.__version__}"
    paths = f"{stores / 'maze_lm.h5'}, {stores / 'lm_only.h5'}"
    assert re.fullmatch(
        rf"A snapshot of 2 stores \({re.escape(paths)}\) made at \d{{4}}-\d\d-\d\d \d\d:\d\d UTC: it shows the "
        "records written by then and does not follow new ones.",
        state["END"]["note"],
    ), state["END"]["note"]
    assert state["END"]["title"] == "trajhook report: maze_lm, lm_only"
    # the panels in the served page's order: fields, curves (loss, agreement, targets), PCA
    assert state["END"]["order"] == served_order(stores) == [
        "0/maze", "loss", "maze", "targets", "token_loss:prompts", "vectors:maze",
    ]  # fmt: skip
    assert [json.loads(text) for text in state["END"]["metadata"]] == [log.metadata for log in logs]
    # the slider spans the union of both runs' steps; first and last step shown
    assert state["HOME"]["index"] == 0 and state["END"]["index"] == len(steps) - 1
    assert state["HOME"]["label"].startswith("step 0 ") and state["END"]["label"].startswith("step 60 ")

    assert stepped == 1 and played_to == len(steps) - 1 and still == paused_at < len(steps) - 1
    # the vector field and the PCA cursor both changed on screen between the two steps
    assert maze_first.shape == maze_last.shape and np.abs(maze_first.astype(int) - maze_last).mean() > 1
    assert pca_first.shape == pca_last.shape and np.abs(pca_first.astype(int) - pca_last).mean() > 0.1

    # hover data at the first and last step: the five direction probabilities of those records (to 1/510)
    probs = logs[0]["maze"]["direction_probs"]
    shown = {key: np.array(state[key]["probs"]).reshape(probs.shape[1:]) for key in state}
    np.testing.assert_allclose(shown["HOME"], probs[0], atol=1 / 510 + 1e-6)
    np.testing.assert_allclose(shown["END"], probs[-1], atol=1 / 510 + 1e-6)

    # the PCA cursors: each run's record in ONE basis fitted on both runs, computed independently here
    joint = trajectory_pca([log["prompts"]["token_loss"] for log in logs], n_components=2)
    for key, row in (("HOME", 0), ("END", -1)):
        xs, ys = np.array(state[key]["cursor"], dtype=float)[:, :, 0]
        expected = np.array([coords[row] for coords in joint.coords])
        shown = np.stack([xs, ys], 1)
        np.testing.assert_allclose(np.abs(shown), np.abs(expected), atol=1e-3)  # an SVD's sign is arbitrary
    # and the ICL score beside it
    early = min(50, logs[0]["prompts"]["token_loss"].shape[-1] // 4)
    score = icl_score(logs[1]["prompts"]["token_loss"][-1], late=500, early=early)
    assert f"lm_only: step 60, ICL score {score:.3f}" in state["END"]["icl"]


def served_order(stores) -> list[str]:
    """The panels of ``trajhook serve`` on the same stores, in page order, once every panel has drawn."""
    from test_serve import Server, page, wait_until

    server = Server(str(stores / "maze_lm.h5"), str(stores / "lm_only.h5"), "--port", "0")
    driver = chromium(loopback=True)
    try:
        driver.get(server.local())
        wait_until(lambda: (s := page(driver))["step"] and len(s["panels"]) >= 6 and set(s["panels"]) == {s["step"]})
        return driver.execute_script(
            "return Array.from(document.querySelectorAll('.trajhook-panel')).filter(e => e.style.display !== 'none')"
            ".map(e => e.dataset.scalar || e.dataset.agreement || e.dataset.curves || e.dataset.key"
            " || e.dataset.run + '/' + e.dataset.probe)"
        )
    finally:
        driver.quit()
        server.stop()


def test_big_stores_are_thinned_evenly_keeping_first_last_and_events():
    steps = np.arange(10_000) * 50
    keep = thin_indices(steps, 120, keep_steps=[12_345, 250_025])
    assert keep[0] == 0 and keep[-1] == 9_999 and len(keep) <= 122
    assert {int(np.argmin(np.abs(steps - 12_345))), int(np.argmin(np.abs(steps - 250_025)))} <= set(keep.tolist())
    gaps = np.diff(keep)
    assert gaps.max() <= 2 * np.median(gaps)  # evenly spread
