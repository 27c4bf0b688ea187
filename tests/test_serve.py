"""``trajhook serve`` with real processes: a training process writes, the server follows, headless Chromium
(network limited to loopback) shows it. Every request goes to 127.0.0.1, also when the server binds 0.0.0.0.

The values the page draws are checked against ``trajhook.load`` of the same store; the store's
lifecycle (appears late, rebuilt, resumed with dropped rows, writer killed, deleted) against the
follower's own account of it.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from browser import chromium
from serve_writer import write

from trajhook import load

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
HERE = Path(__file__).parent
PYTHON = sys.executable


class Server:
    """``trajhook serve`` in a subprocess; ``url`` is what it printed once it accepted connections."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-m", "trajhook.cli", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()
        assert line.startswith("trajhook serve: http://"), (line, self.process.stderr.read())
        self.url = line.split(": ", 1)[1].strip()
        self.port = int(re.search(r":(\d+)/", self.url).group(1))
        self.token = self.url.split("token=")[1] if "token=" in self.url else None

    def local(self, path: str = "/") -> str:
        """The same URL, reached over loopback."""
        query = f"{'&' if '?' in path else '?'}token={self.token}" if self.token else ""
        return f"http://127.0.0.1:{self.port}{path}{query}"

    def get(self, path: str) -> tuple[int, bytes]:
        """A raw request: the path goes out exactly as written (no client-side normalising)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        connection.close()
        return response.status, body

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Writer:
    """``serve_writer.py`` in a subprocess; ``committed`` maps each committed step to its commit time."""

    def __init__(self, path: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [PYTHON, str(HERE / "serve_writer.py"), str(path), *args], stdout=subprocess.PIPE, text=True
        )
        self.committed: dict[int, float] = {}
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            _, step, at = line.split()
            self.committed[int(step)] = float(at)

    def wait_for(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while len(self.committed) < count:
            assert time.monotonic() < deadline and self.process.poll() is None, "the writer stopped"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def wait_until(condition, timeout: float = 20.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(every)


PAGE_STATE = """
const s = document.querySelector('input[type=range]');
return {step: s.dataset.step, head: s.dataset.headStep, count: document.querySelectorAll('input[type=range]').length,
        panels: Array.from(document.querySelectorAll('.trajhook-panel')).map(p => p.dataset.step),
        status: Array.from(document.querySelectorAll('.trajhook-status')).map(e => e.className + ': ' + e.textContent)};
"""


def page(driver) -> dict:
    return driver.execute_script(PAGE_STATE)


def press(driver, key: str) -> None:
    from selenium.webdriver.common.keys import Keys

    driver.find_element("css selector", "input[type=range]").send_keys(getattr(Keys, key))


def drawn(driver, step: int) -> bool:
    """Every panel (maze, curves, PCA: at least three) has drawn ``step``, and the slider shows it."""
    state = page(driver)
    return state["step"] == str(step) and len(state["panels"]) >= 3 and all(p == str(step) for p in state["panels"])


@pytest.mark.timeout(180)
def test_the_page_follows_a_writer_scrubs_every_panel_and_shows_the_stores_values(tmp_path):
    store = tmp_path / "live.h5"
    server = Server(str(store), "--port", "0", "--wait")  # before the store exists
    writer = None
    driver = chromium(1400, 1400, loopback=True)
    try:
        driver.get(server.local())
        wait_until(lambda: "waiting" in " ".join(page(driver)["status"]))
        writer = Writer(store, "--steps", "0", "--interval", "0.3", "--mark", "4")
        # it appears, and the page follows: the head and the shown step track the newest record
        writer.wait_for(8)
        for step in sorted(writer.committed)[-3:]:
            seen = wait_until(lambda step=step: int(page(driver)["head"] or -1) >= step and time.time(), timeout=10)
            assert seen - writer.committed[step] < 3.0  # the benchmark measures this: p95 under 1 s
        wait_until(lambda: drawn(driver, int(page(driver)["head"])))
        # moved back, the slider stays put while the head advances
        press(driver, "HOME")
        wait_until(lambda: drawn(driver, 0))
        head = int(page(driver)["head"])
        wait_until(lambda: int(page(driver)["head"]) > head + 1)
        assert page(driver)["step"] == "0" and page(driver)["count"] == 1
        # scrub: two keys right, every panel draws that step
        press(driver, "ARROW_RIGHT")
        press(driver, "ARROW_RIGHT")
        wait_until(lambda: drawn(driver, 2))
        # follow again: End goes to the head and stays with it
        press(driver, "END")
        head = int(page(driver)["head"])
        wait_until(lambda: int(page(driver)["step"]) > head + 1)
        # the writer dies: the page keeps the last committed state and says the writer is gone
        writer.kill()
        last = max(writer.committed)
        wait_until(lambda: "writer gone" in " ".join(page(driver)["status"]) and page(driver)["head"] == str(last))
        # the go-to box: step 5 (once the PCA basis is refitted on every record: the page asks every 5 s)
        time.sleep(5.5)
        press(driver, "END")
        wait_until(lambda: drawn(driver, last))
        box = driver.find_element("id", "goto")
        box.send_keys("5\n")
        wait_until(lambda: drawn(driver, 5))
        # the vector field drawn at step 5 is the store's record at step 5; its hover shows the probabilities
        frame = driver.execute_script(
            "const p = document.querySelector('.trajhook-panel[data-probe=maze]');"
            "return {step: p.dataset.recordStep, vectors: Array.from(p.trajhookFrame.vectors),"
            " pixel: p.trajhookCellPixel(10)};"
        )
        canvas = driver.find_element("css selector", ".trajhook-panel[data-probe=maze] canvas")
        from selenium.webdriver.common.action_chains import ActionChains

        size = canvas.size
        ActionChains(driver).move_to_element_with_offset(
            canvas, int(frame["pixel"]["x"] - size["width"] / 2), int(frame["pixel"]["y"] - size["height"] / 2)
        ).perform()
        hover = wait_until(
            lambda: driver.execute_script("const t = document.querySelector('.trajhook-hover');"
                                          "return t.style.display === 'block' && t.textContent")
        )  # fmt: skip
        # the PCA cursor and the curves' cursor are at step 5 too
        cursor = json.loads(driver.execute_script("return document.querySelector('.icl').parentNode.dataset.cursor"))
        icl = driver.execute_script("return document.querySelector('.icl').textContent")
        # the store is deleted: the page says so and keeps what it showed
        log = load(store)
        # read now: the writer goes on writing to the deleted file, and the killed writer leaves it unreadable
        stored = {(p, k): np.asarray(log[p][k]) for p in log for k in log[p]}
        store.unlink()
        wait_until(lambda: "deleted" in " ".join(page(driver)["status"]))
        assert page(driver)["head"] == str(last) and drawn(driver, 5)
        console = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        # Ctrl-C with the page open and polling: the server stops promptly
        began = time.monotonic()
        server.stop()
        stopped_in = time.monotonic() - began
    finally:
        driver.quit()
        if writer:
            writer.kill()
        server.stop()
    assert console == []
    assert server.process.returncode == 0 and stopped_in < 5, stopped_in

    i = int(np.flatnonzero(log.steps == 5)[0])
    assert frame["step"] == "5"
    np.testing.assert_allclose(
        np.array(frame["vectors"]).reshape(-1, 2), stored["maze", "vectors"][i], rtol=0, atol=1e-6
    )
    cells = log["maze"].metadata["cells"]
    assert f"cell (row {cells[10][0]} from the bottom, col {cells[10][1]} from the left)  step 5" in hover
    shown = [float(v) for v in re.findall(r"^\S+  ([0-9.]+)$", hover, re.M)]
    np.testing.assert_allclose(shown, stored["maze", "direction_probs"][i, 10], atol=1 / 510 + 5e-4)
    # the PCA cursor: the record at step 5 in one basis fitted on every record, computed here independently
    from trajhook.analysis import icl_score, trajectory_pca

    loss = stored["prompts", "token_loss"]
    expected = trajectory_pca(loss, n_components=2).coords[i]
    np.testing.assert_allclose(np.abs(np.array(cursor, dtype=float).ravel()), np.abs(expected), atol=1e-3)
    assert f"live: step 5, ICL score {icl_score(loss[i], late=500, early=loss.shape[-1] // 4):.3f}" in icl


def raw_ok(status: int, body: bytes) -> bool:
    return status == 200 and b"trajhook" in body


@pytest.mark.timeout(60)
def test_a_server_bound_to_every_address_needs_its_token_and_no_path_reaches_another_file(tmp_path):
    (tmp_path / "secret.txt").write_text("SECRET-CONTENT")
    store = tmp_path / "run.h5"
    write(store, steps=3)
    server = Server(str(store), "--host", "0.0.0.0", "--port", "0")
    try:
        assert server.token and len(server.token) >= 20
        token = f"token={server.token}"
        for path in ("/", "/api/state", "/api/frame?run=0&probe=maze&step=0", "/static/trajhook.js", "/?token=wrong"):
            assert server.get(path)[0] == 403, path
        assert raw_ok(*server.get(f"/?{token}"))
        status, body = server.get(f"/api/frame?run=0&probe=maze&step=0&{token}")
        assert status == 200 and body[:4] == b"THF1"
        attempts = [
            "/static/../secret.txt", "/static/%2e%2e/secret.txt", "/static/..%2f..%2fsecret.txt",
            "/../../secret.txt", "/%2e%2e/%2e%2e/secret.txt", f"/{tmp_path}/secret.txt",
            "/static/%2e%2e%2f%2e%2e%2fcli.py", "/static//etc/passwd", "/etc/passwd", "/static/page.html",
        ]  # fmt: skip
        for path in attempts:
            status, body = server.get(path + ("&" if "?" in path else "?") + token)
            assert status in (400, 404) and b"SECRET" not in body and b"root:" not in body, (path, status)
        for query in ("run=1", "run=-1", "run=..%2Fsecret.txt", f"run={tmp_path}/secret.txt", "run=0%00"):
            for api in ("frame", "maze", "curves"):
                status, body = server.get(f"/api/{api}?{query}&probe=maze&step=0&{token}")
                assert status in (400, 404) and b"SECRET" not in body, (api, query, status)
        status, body = server.get(f"/api/maze?run=0&probe=..%2F..%2Fsecret.txt&{token}")
        assert status == 404
    finally:
        server.stop()
    # Ctrl-C stopped it promptly (Server.stop waits at most 10 s, then kills)
    assert server.process.returncode == 0


@pytest.mark.timeout(60)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    import h5py

    from trajhook.cli import main

    h5py.File(tmp_path / "other.h5", "w").close()
    (tmp_path / "text.h5").write_text("not hdf5")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    store = tmp_path / "run.h5"
    write(store, steps=1)
    cases = {
        "no file at": [str(tmp_path / "missing.h5")],
        "not a trajhook store": [str(tmp_path / "other.h5")],
        "not an HDF5 file": [str(tmp_path / "text.h5")],
        "is in use": [str(store), "--port", str(busy.getsockname()[1])],
    }
    try:
        for expected, args in cases.items():
            assert main(["serve", *args]) == 2, args
            lines = capsys.readouterr().err.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0] and "HINT" in lines[0], (args, lines)
    finally:
        busy.close()


@pytest.mark.timeout(90)
def test_the_follower_survives_a_rebuild_and_a_resume_that_drops_rows(tmp_path):
    from trajhook.serve.follow import Follower

    store = tmp_path / "run.h5"
    write(store, steps=6)
    follower = Follower(store, poll_s=0.05)
    try:
        wait_until(lambda: len(follower.snapshot().steps) == 6)
        epoch = follower.snapshot().epoch
        # a resume from step 3 drops steps 3..5 and writes 3..4 again
        with pytest.warns(UserWarning, match="dropped 3 record"):
            write(store, steps=2, start=3)
        wait_until(lambda: follower.snapshot().steps.tolist() == [0, 1, 2, 3, 4])
        snap = follower.snapshot()
        assert snap.epoch > epoch
        assert follower.call(lambda: follower.frame("maze", 4))[:4] == b"THF1"
        # overwrite=True rebuilds the file under a new inode: read afresh
        epoch = snap.epoch
        write(store, steps=2, start=100, overwrite=True)
        wait_until(lambda: follower.snapshot().steps.tolist() == [100, 101])
        assert follower.snapshot().epoch > epoch
        log = load(store)
        blob = follower.call(lambda: follower.frame("maze", 101))
        from trajhook.serve.frames import decode_frame

        step, vectors, probs = decode_frame(blob)
        assert step == 101
        np.testing.assert_array_equal(vectors, log["maze"]["vectors"][1])
        np.testing.assert_allclose(probs, log["maze"]["direction_probs"][1], atol=1 / 510 + 1e-6)
        os.unlink(store)
        wait_until(lambda: follower.snapshot().status == "deleted")
        assert follower.snapshot().steps.tolist() == [100, 101]
    finally:
        follower.stop()


@pytest.mark.timeout(60)
def test_pca_panels_put_every_run_in_one_basis_also_for_a_maze_field(tmp_path):
    from trajhook.analysis import trajectory_pca
    from trajhook.serve import payloads
    from trajhook.serve.follow import Follower

    assert ("vectors", ("maze",)) in [(dataset, kinds) for dataset, kinds, _ in payloads.PCA_SOURCES]
    paths = [tmp_path / "a.h5", tmp_path / "b.h5"]
    write(paths[0], steps=7)
    write(paths[1], steps=5, start=50)
    followers = [Follower(p, start=False) for p in paths]
    try:
        for follower in followers:
            follower.refresh()
        panels = {p["key"]: p for p in payloads.pca(["a", "b"], [f.snapshot() for f in followers])}
    finally:
        for follower in followers:
            follower.stop()
    logs = [load(p) for p in paths]
    for key, dataset in (("token_loss:prompts", "token_loss"), ("vectors:maze", "vectors")):
        panel = panels[key]
        probe = key.split(":")[1]
        joint = trajectory_pca([log[probe][dataset] for log in logs], n_components=2)
        for run, log, coords in zip(panel["runs"], logs, joint.coords, strict=True):
            assert run["steps"] == log.steps.tolist()
            shown = np.stack([run["x"], run["y"]], 1)
            np.testing.assert_allclose(np.abs(shown), np.abs(coords), atol=1e-4)
    assert panels["vectors:maze"]["icl_tokens"] is None and panels["token_loss:prompts"]["icl_tokens"]


def test_the_page_draws_arrows_with_the_pngs_constants():
    import re as regex

    from trajhook.plots import maze
    from trajhook.serve.app import page_html

    served = json.loads(regex.search(r'id="trajhook-constants"[^>]*>(.*?)</script>', page_html()).group(1))
    assert served["min_length"] == maze.MIN_ARROW_LENGTH and served["max_length"] == maze.MAX_ARROW_LENGTH
    assert served["min_strength"] == maze.MIN_STRENGTH
    rgb = [[int(h[i : i + 2], 16) / 255 for i in (1, 3, 5)] for h in served["arrow_colours"]]
    np.testing.assert_allclose(maze.ARROW_CMAP([0.0, 0.5, 1.0])[:, :3], rgb, atol=1 / 255)
    script = (Path(maze.__file__).parents[1] / "serve" / "static" / "trajhook.js").read_text()
    assert "#fdae6b" not in script and "0xfd" not in script  # no copy of the colours in the script


def test_a_followers_sample_keeps_at_most_max_samples_evenly_spaced_records_and_the_newest(monkeypatch):
    from trajhook.analysis.thinned import Thinned
    from trajhook.serve import follow

    monkeypatch.setattr(follow, "MAX_SAMPLES", 8)
    sample = follow.Sample()
    data = np.arange(100.0)[:, None] * np.ones((1, 3))  # row i holds i
    one_by_one = Thinned(8)  # the same records fed one at a time, as the live panels feed theirs
    kept = []
    for start, stop in ((0, 37), (37, 38), (38, 41), (41, 100)):  # a catch-up, then live rows, then another
        sample.add(*sample.read(data, start, stop, block=16))
        index, rows = sample.arrays()
        np.testing.assert_array_equal(rows, data[index])  # each kept row is its record's
        kept.append(index.tolist())
        for i in range(start, stop):
            _ = one_by_one.add(i, data[i]) if one_by_one.due() else one_by_one.skip()
        expected = one_by_one.kept_steps().tolist()
        assert index.tolist() == expected + ([stop - 1] if expected[-1] != stop - 1 else [])
    assert kept[0] == [0, 8, 16, 24, 32, 36] and kept[2] == [0, 8, 16, 24, 32, 40]
    assert kept[-1] == [0, 16, 32, 48, 64, 80, 96, 99]


@pytest.mark.timeout(120)
def test_a_followers_samples_of_a_growing_store_are_its_evenly_spaced_records_and_the_newest(tmp_path, monkeypatch):
    """Read in three polls of a real store: each PCA sample holds the stored rows of every stride-th record (the
    smallest power of two that keeps at most MAX_SAMPLES) and of the newest, whatever the polls' sizes."""
    from trajhook.serve import follow

    monkeypatch.setattr(follow, "MAX_SAMPLES", 4)
    store = tmp_path / "run.h5"
    follower = follow.Follower(store, start=False)
    try:
        for start, stop in ((0, 13), (13, 14), (14, 30)):  # a catch-up, one live record, another catch-up
            write(store, steps=stop - start, start=start)
            follower.refresh()
            snap, log = follower.snapshot(), load(store)
            stride = next(s for s in (1, 2, 4, 8, 16) if len(range(0, stop, s)) <= 4)
            expected = sorted({*range(0, stop, stride), stop - 1})
            assert sorted(snap.samples) == ["maze/vectors", "prompts/token_loss"]
            for key, (index, rows) in snap.samples.items():
                probe, dataset = key.split("/")
                assert index.tolist() == expected, key
                np.testing.assert_array_equal(rows, log[probe][dataset][expected].astype(np.float32))
    finally:
        follower.stop()
