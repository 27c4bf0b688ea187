"""Screenshot ``trajhook serve`` on some stores, as the README shows it, in headless Chromium.

    python docs/screenshot_serve.py docs/runs/ppo_procgen_maze.h5 runs/induction_heads.h5 \\
        --fallback runs/maze.h5 --out docs/images/serve_live.png

Starts ``trajhook serve STORE... --host 127.0.0.1 --port 0`` in a subprocess, opens the page in
headless Chromium with the network limited to loopback (``tests/browser.py``; Debian's ``chromium``
and ``chromium-driver``, ``make browser``), waits until every panel has drawn the newest step (the
automation contract of docs/SERVE.md), saves the window as a PNG and stops the server. A STORE that
does not exist is skipped with a message; ``--fallback`` is shown in place of the first one missing.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The page's state by the automation contract: the slider's step and head, each panel's drawn step.
PAGE_STATE = """
const s = document.querySelector('input[type=range]');
return {step: s ? s.dataset.step : null, head: s ? s.dataset.headStep : null,
        panels: Array.from(document.querySelectorAll('.trajhook-panel')).map(p => p.dataset.step || null)};
"""


class Server:
    """``trajhook serve`` on loopback in a subprocess; ``url`` is what it printed once it accepted connections."""

    def __init__(self, stores: list[Path]) -> None:
        command = [sys.executable, "-m", "trajhook.cli", "serve", *map(str, stores), "--host", "127.0.0.1"]
        # its stderr (errors, "Ctrl-C stops it") goes to ours
        self.process = subprocess.Popen([*command, "--port", "0"], stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()  # printed once it accepts connections; "" if it exits
        if not line.startswith("trajhook serve: http://127.0.0.1:"):
            self.stop()
            sys.exit(f"screenshot_serve: trajhook serve did not start (exit code {self.process.returncode}) {line}")
        self.url = line.split(": ", 1)[1].strip()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url.rstrip("/") + path, timeout=60) as response:
            return json.load(response)

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; killed if it has not exited 10 s later."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def existing_stores(stores: list[Path], fallback: Path | None) -> list[Path]:
    """The stores that exist, with ``fallback`` in place of the first one missing."""
    shown = []
    for store in stores:
        if store.is_file():
            shown.append(store)
            continue
        if fallback is not None and fallback.is_file() and fallback not in shown:
            print(f"screenshot_serve: {store} does not exist; showing {fallback} in its place", file=sys.stderr)
            shown.append(fallback)
        else:
            print(f"screenshot_serve: {store} does not exist; skipped", file=sys.stderr)
    if not shown:
        sys.exit("screenshot_serve: none of the stores exists; run the examples that write them first")
    return shown


def expected_panels(server: Server, timeout: float) -> int:
    """One panel per maze probe, one per curve (each scalar, each maze probe's agreement, the targets if any), one per
    PCA entry: what the page draws once complete.

    Asked once the server has read every store (each has records, the counts unchanged between two polls).
    """
    deadline, last = time.monotonic() + timeout, None
    while True:
        state = server.get("/api/state")
        records = [run.get("records") or 0 for run in state["runs"]]
        if all(records) and records == last:
            break
        if time.monotonic() > deadline:
            sys.exit(f"screenshot_serve: the server had not read every store after {timeout:.0f} s: {records}")
        last = records
        time.sleep(0.5)
    mazes = sum(len(run["mazes"]) for run in state["runs"])
    curves = [server.get(f"/api/curves?run={i}") for i in range(len(state["runs"]))]
    scalars = {name for c in curves for name in c["scalars"]}
    agreement = {a["probe"] for c in curves for a in c["agreement"]}
    targets = any(c["targets"] for c in curves)
    return mazes + len(scalars) + len(agreement) + targets + len(server.get("/api/pca"))


def wait_until_drawn(driver: Any, panels: int, timeout: float, settle: float = 2.0) -> dict:
    """Wait until the slider is at the newest step and all ``panels`` have drawn it, unchanged for ``settle`` s."""
    deadline, since, last = time.monotonic() + timeout, None, None
    while time.monotonic() < deadline:
        state = driver.execute_script(PAGE_STATE)
        done = (
            state["step"] not in (None, "")
            and state["step"] == state["head"]
            and len(state["panels"]) >= panels
            and all(p == state["step"] for p in state["panels"])
        )
        if done and state == last:
            if time.monotonic() - since >= settle:
                return state
        else:
            since = time.monotonic()
        last = state if done else None
        time.sleep(0.2)
    sys.exit(f"screenshot_serve: the page had not drawn {panels} panels after {timeout:.0f} s: {state}")


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("stores", nargs="+", type=Path, metavar="STORE", help="trajhook stores, shown in this order")
    parser.add_argument("--fallback", type=Path, default=None, help="shown in place of the first STORE missing")
    parser.add_argument("--out", type=Path, default=Path("docs/images/serve_live.png"), help="the PNG")
    parser.add_argument("--width", type=int, default=1500, help="the PNG's width in pixels (the page's viewport)")
    parser.add_argument("--height", type=int, default=1950, help="the PNG's height in pixels")
    parser.add_argument("--timeout", type=float, default=120, help="seconds to wait for the page to draw")
    args = parser.parse_args(argv)

    import pytest

    sys.path.insert(0, str(ROOT / "tests"))
    from browser import chromium

    stores = existing_stores(args.stores, args.fallback)
    server = Server(stores)
    driver = None
    try:
        panels = expected_panels(server, args.timeout)
        try:
            driver = chromium(args.width, args.height, loopback=True)
        except pytest.skip.Exception as why:  # chromium, chromedriver or selenium missing
            sys.exit(f"screenshot_serve: {why.msg} (or `make browser`)")
        metrics = {"width": args.width, "height": args.height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)  # the PNG's size, exactly
        driver.get(server.url)
        state = wait_until_drawn(driver, panels, args.timeout)
        driver.execute_script("window.scrollTo(0, 0);")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
    names = ", ".join(map(str, stores))
    print(f"wrote {args.out}: trajhook serve on {names}, step {state['step']}, {len(state['panels'])} panels drawn")
    return args.out


if __name__ == "__main__":
    main()
