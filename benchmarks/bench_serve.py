"""How fast ``trajhook serve`` is, in headless Chromium on this machine, at 10,000 records.

Two stores of 10,000 records each are written through the real Recorder: a maze probe (a 337-cell
hard-mode-sized maze, as in bench_report.py) with a prompt probe (token losses 4 x 64, 4 x 2 targets),
and a prompts-only run on other steps. A third store is written live by a writer process. Measured:

- first paint: page load until every panel has drawn the newest step (and Chromium's first contentful paint);
- a slider move until every panel has drawn the new step (random steps, mostly uncached frames): p50, p95;
- a new record visible in the page (the slider's ``data-head-step``) after its commit: p50, p95;
- the server's resident memory after all that, and over stores a tenth as long (it must not grow with records);
- the writer's ``Recorder.flush()`` time with and without a server and a page attached, interleaved rounds;
- a folder of 20 stores x 1,000 records (maze + prompts) served as ``trajhook serve FOLDER``: first paint, the
  server's memory, and one more store written into the folder: seconds from its first commit to its row on the page.

Run: ``python benchmarks/bench_serve.py [--records 10000] [--moves 100] [--live 40] [--rounds 3] [--folder DIR]
[--runs 20] [--run-records 1000]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_report import SyntheticMaze, spanning_tree_maze  # noqa: E402
from timing import machine  # noqa: E402

from trajhook import Recorder, load  # noqa: E402
from trajhook.probes.base import Probe  # noqa: E402


class SyntheticPrompts(Probe):
    """Token losses that fall over training, and target log-probs that rise."""

    kind = "prompts"

    def __init__(self, prompts: int = 4, tokens: int = 64) -> None:
        super().__init__("prompts")
        self.add_output("token_loss", (prompts, tokens), "float32")
        self.add_output("target_logprob", (prompts, 2), "float32")
        self.metadata.update(
            prompt_names=[f"p{i}" for i in range(prompts)], target_texts=[["a", "b"] for _ in range(prompts)]
        )
        self.noise = torch.Generator().manual_seed(0)
        self.shape = (prompts, tokens)

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        t = float(model.weight)
        positions = torch.arange(self.shape[1], dtype=torch.float32)
        loss = 3.0 - t * torch.log1p(positions) / 2 + 0.05 * torch.randn(self.shape, generator=self.noise)
        return {"token_loss": loss, "target_logprob": torch.full((self.shape[0], 2), -3.0 + 2.5 * t)}


def write_store(
    path: Path, records: int, every: int, maze: bool, start: int = 0, interval: float = 0.0, overwrite: bool = False
) -> list:
    """Record ``records`` steps; with ``interval``, flush each record and return per-record
    ``(step, commit unix time, flush seconds)``."""
    model = torch.nn.Linear(1, 1, bias=False)
    probes = [SyntheticPrompts()] + ([SyntheticMaze(spanning_tree_maze())] if maze else [])
    timings = []
    options = {"wandb": False, "max_queue": 64, "flush_every_s": 0.05, "overwrite": overwrite}
    with Recorder(path, probes, every_n_steps=every, **options) as rec:
        for k in range(records):
            step = start + k * every
            with torch.no_grad():
                model.weight.fill_(k / max(1, records - 1))
            if k in (records // 5, records * 7 // 10):
                rec.mark(step, f"event at {step}")
            rec.maybe_record(model, step, loss=1.0 / (1 + k))
            if interval:
                began = time.perf_counter()
                rec.flush()
                timings.append((step, time.time(), time.perf_counter() - began))
                time.sleep(interval)
    return timings


def start_server(paths: list[Path]) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "trajhook.cli", "serve", *map(str, paths), "--port", "0", "--wait"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("trajhook serve: "):
        raise SystemExit(f"the server did not start: {line!r}")
    return process, line.split(": ", 1)[1].strip()


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


ALL_DRAWN = """
const s = document.querySelector('input[type=range]'), panels = document.querySelectorAll('.trajhook-panel');
return panels.length >= arguments[0] && Array.from(panels).every(p => p.dataset.step === s.dataset.step);
"""

MOVE = """
const [index, expected, done] = arguments;
const slider = document.querySelector('input[type=range]');
const panels = Array.from(document.querySelectorAll('.trajhook-panel'));
const began = performance.now();
slider.value = String(index);
slider.dispatchEvent(new Event('input'));
const step = slider.dataset.step;
function check() {
  if (panels.every(p => p.dataset.step === step)) done(performance.now() - began);
  else requestAnimationFrame(check);  // rAF: a step is 'drawn' when the browser can paint it
}
check();
"""

WATCH_HEAD = """
window.headSeen = {};
const slider = document.querySelector('input[type=range]');
new MutationObserver(() => {
  const h = slider.dataset.headStep;
  if (!(h in window.headSeen)) window.headSeen[h] = Date.now() / 1000;
}).observe(slider, {attributes: true, attributeFilter: ['data-head-step']});
"""


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--moves", type=int, default=100)
    parser.add_argument("--live", type=int, default=40, help="records the live writer commits")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the flush comparison")
    parser.add_argument("--folder", default=None, help="keep the stores here, and reuse them if they are there")
    parser.add_argument("--runs", type=int, default=20, help="stores in the served folder")
    parser.add_argument("--run-records", type=int, default=1000, help="records of each store in the folder")
    parser.add_argument("--only-folder", action="store_true", help="measure the folder only")
    args = parser.parse_args(argv)
    from browser import chromium

    print(machine())
    folder = Path(args.folder) if args.folder else Path(tempfile.mkdtemp(prefix="trajhook-bench-serve-"))
    folder.mkdir(parents=True, exist_ok=True)
    if not args.only_folder:
        two_stores(args, folder, chromium)
    many_stores(args, folder / "many", chromium)


def many_stores(args: argparse.Namespace, runs: Path, chromium) -> None:
    """A folder of ``args.runs`` stores: first paint, the server's memory, and a new store's arrival."""
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "new").mkdir(exist_ok=True)
    (runs / "new" / "late.h5").unlink(missing_ok=True)
    began = time.perf_counter()
    for k in range(args.runs):
        path = runs / f"seed{k:02d}.h5"
        if not (path.exists() and len(load(path).steps) == args.run_records):
            write_store(path, args.run_records, 10, maze=True, start=k, overwrite=True)
    print(f"folder: {args.runs} stores x {args.run_records:,} records, ready in {time.perf_counter() - began:.0f} s")
    server, url = start_server([runs])
    time.sleep(2)
    rss_start = rss_mb(server.pid)
    driver = chromium(1500, 1800, loopback=True)
    try:
        began = time.perf_counter()
        driver.get(url)
        while not driver.execute_script(ALL_DRAWN, args.runs + 5):  # 20 fields, 3 curve panels, 2 PCA panels
            if time.perf_counter() - began > 120:
                break
            time.sleep(0.02)
        first_draw = time.perf_counter() - began
        panels = driver.execute_script("return document.querySelectorAll('.trajhook-panel').length")
        rss_painted = rss_mb(server.pid)
        rows = "return document.querySelectorAll('tr[data-run]').length"
        timings = []
        import threading

        writer = threading.Thread(
            target=lambda: timings.extend(
                write_store(runs / "new" / "late.h5", 12, 1, maze=True, start=0, interval=0.25, overwrite=True)
            )
        )
        writer.start()
        while driver.execute_script(rows) < args.runs + 1 and writer.is_alive():
            time.sleep(0.02)
        seen = time.time()
        writer.join()
        arrival = seen - timings[0][1] if timings else float("nan")
        rss_end = rss_mb(server.pid)
    finally:
        driver.quit()
        stop(server)
    print(f"folder of {args.runs} x {args.run_records:,}: every panel drawn {first_draw:.2f} s after the request "
          f"({panels} panels); server memory {rss_start:.0f} MB at start, {rss_painted:.0f} MB after first paint, "
          f"{rss_end:.0f} MB with one more store; a new store's row on the page {arrival:.2f} s after its first "
          "commit")  # fmt: skip


def two_stores(args: argparse.Namespace, folder: Path, chromium) -> None:
    """Two 10,000-record stores and a live writer: first paint, slider moves, new records, memory, flush."""
    for old in [folder / "live.h5", *folder.glob("flush-*.h5")]:
        old.unlink(missing_ok=True)
    began = time.perf_counter()
    if not ((folder / "maze.h5").exists() and len(load(folder / "maze.h5").steps) == args.records):
        write_store(folder / "maze.h5", args.records, 10, maze=True, overwrite=True)
        write_store(folder / "lm.h5", args.records, 7, maze=False, overwrite=True)
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in (folder / "maze.h5", folder / "lm.h5"))
    print(f"stores: 2 x {args.records:,} records ({sizes}), written in {time.perf_counter() - began:.0f} s")

    live = folder / "live.h5"
    server, url = start_server([folder / "maze.h5", folder / "lm.h5", live])
    time.sleep(2)
    rss_start = rss_mb(server.pid)
    driver = chromium(1500, 1800, loopback=True)
    try:
        began = time.perf_counter()
        driver.get(url)
        while not driver.execute_script(ALL_DRAWN, 3):  # the maze, the curves, the PCA of both runs
            if time.perf_counter() - began > 60:
                break
            time.sleep(0.02)
        first_draw = time.perf_counter() - began
        fcp = driver.execute_script(
            "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null"
        )
        panels = driver.execute_script("return document.querySelectorAll('.trajhook-panel').length")
        length = driver.execute_script("return document.querySelector('input[type=range]').max") or "0"
        print(f"first paint: every panel drawn {first_draw:.2f} s after the request "
              f"(first contentful paint {fcp / 1000 if fcp else float('nan'):.2f} s); {panels} panels, "
              f"slider over {int(length) + 1:,} steps")  # fmt: skip

        rng = np.random.default_rng(0)
        driver.set_script_timeout(30)
        moves = [driver.execute_async_script(MOVE, int(i), None) for i in rng.integers(0, int(length) + 1, args.moves)]
        print(
            f"slider move until every panel drew the step ({args.moves} random steps): "
            f"p50 {percentile(moves, 50):.0f} ms, p95 {percentile(moves, 95):.0f} ms, max {max(moves):.0f} ms"
        )

        driver.execute_script("window.trajhook.show(window.trajhook.app.axis.length - 1)")  # follow the head again
        driver.execute_script(WATCH_HEAD)
        start = args.records * 10 + 1000  # above both stores' steps: each live record is the new head
        timings = write_store(live, args.live, 1, maze=True, start=start, interval=0.25)
        time.sleep(1.5)
        seen = sorted((int(h), t) for h, t in driver.execute_script("return window.headSeen").items() if h)
        # a record is visible once the head shown is at or past it (two may arrive between polls)
        delays = [next(t for h, t in seen if h >= step) - at for step, at, _ in timings if seen[-1][0] >= step]
        print(f"new record visible after its commit ({len(delays)}/{len(timings)} records, 1 every 0.25 s, page "
              f"polls every 0.5 s): p50 {percentile(delays, 50):.2f} s, p95 {percentile(delays, 95):.2f} s, "
              f"max {max(delays):.2f} s")  # fmt: skip
        print(f"server memory (RSS): {rss_start:.0f} MB at start (Python, torch, h5py, numpy imported), "
              f"{rss_mb(server.pid):.0f} MB after all that")  # fmt: skip
    finally:
        driver.quit()
        stop(server)

    # the server's memory does not grow with the records: the same page over stores a tenth as long
    small = folder / "small"
    small.mkdir(exist_ok=True)
    if not (small / "maze.h5").exists():
        write_store(small / "maze.h5", args.records // 10, 10, maze=True, overwrite=True)
        write_store(small / "lm.h5", args.records // 10, 7, maze=False, overwrite=True)
    memory = {}
    for name, where in (("1/10", small), ("full", folder)):
        server, url = start_server([where / "maze.h5", where / "lm.h5"])
        driver = chromium(1500, 1800, loopback=True)
        try:
            driver.get(url)
            while not driver.execute_script(ALL_DRAWN, 3):
                time.sleep(0.05)
            length = int(driver.execute_script("return document.querySelector('input[type=range]').max"))
            for i in rng.integers(0, length + 1, args.moves):
                driver.execute_async_script(MOVE, int(i), None)
            memory[name] = rss_mb(server.pid)
        finally:
            driver.quit()
            stop(server)
    print(f"server memory after first paint and {args.moves} slider moves: {memory['1/10']:.0f} MB over "
          f"2 x {args.records // 10:,} records, {memory['full']:.0f} MB over 2 x {args.records:,}")  # fmt: skip

    # the writer's flush time, alone and with a server and a page following its store; interleaved
    alone, watched = [], []
    for r in range(args.rounds):
        for attached in (False, True) if r % 2 == 0 else (True, False):
            path = folder / f"flush-{r}-{attached}.h5"
            if not attached:
                alone += [t for _, _, t in write_store(path, args.live, 1, maze=True, interval=0.25)]
                continue
            server, url = start_server([path])
            driver = chromium(1500, 1800, loopback=True)
            try:
                driver.get(url)
                watched += [t for _, _, t in write_store(path, args.live, 1, maze=True, interval=0.25)]
            finally:
                driver.quit()
                stop(server)
    print(f"writer flush ({args.rounds} interleaved rounds x {args.live} records): alone median "
          f"{statistics.median(alone) * 1e3:.1f} ms (p95 {percentile(alone, 95) * 1e3:.1f}), with a server and a "
          f"page attached median {statistics.median(watched) * 1e3:.1f} ms (p95 {percentile(watched, 95) * 1e3:.1f}); "
          f"ratio of medians {statistics.median(watched) / statistics.median(alone):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
