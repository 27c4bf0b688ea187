"""What the Recorder costs the training thread, measured side by side in one run.

    python benchmarks/bench_core.py

1. ``maybe_record`` on a step that is not due, against an empty Python call.
2. ``record`` (the training thread's share: probe forward, mode/RNG bookkeeping, queueing)
   against a bare ``no_grad`` forward of the same inputs, the floor.
3. A whole training loop: plain, with a bare forward every 10 steps, and with a Recorder
   recording every 10 steps.
4. A training loop that records the MazeProbe every 10 steps, W&B off against W&B on (an offline
   run; default image rate, and an image at every record): the training thread's own CPU time
   in ``record``, and the whole loop's time per record, beside the probe forward.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings

import torch
from bench_maze import median_seconds  # the same timer for every benchmark
from torch import nn

from trajhook import MazeProbe, Recorder, TensorProbe
from trajhook.probes.maze import float_nchw


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 16 * 16, 15),
    )


def main() -> None:
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    out = tempfile.mkdtemp()
    rows = []

    model = cnn()
    x = torch.rand(96, 3, 64, 64)
    rec = Recorder(f"{out}/core.h5", [TensorProbe("p", x)], every_n_steps=10**9, wandb=False)
    rec.setup(model)

    def empty(model, step):
        return None

    n = 100_000
    start = time.perf_counter()
    for step in range(1, n + 1):
        rec.maybe_record(model, step)
    not_due = (time.perf_counter() - start) / n
    start = time.perf_counter()
    for step in range(1, n + 1):
        empty(model, step)
    call = (time.perf_counter() - start) / n
    rows.append(("maybe_record, step not due", f"{not_due * 1e6:.2f} µs", f"empty call {call * 1e6:.2f} µs"))

    step = iter(range(10**9))
    per_record = median_seconds(lambda: rec.record(model, next(step)), 30)
    model.eval()

    def bare():
        with torch.no_grad():
            model(x)

    floor = median_seconds(bare, 30)
    rec.close()
    rows.append(("record: 96 images through a CNN", f"{per_record * 1e3:.1f} ms", f"bare forward {floor * 1e3:.1f} ms"))
    rows.append(("  ratio record / bare forward", f"{per_record / floor:.2f}x", ""))

    def train(mode: str, recorder: Recorder, steps: int = 200) -> None:
        """200 steps; every 10th, nothing ("plain"), a bare no_grad forward ("bare") or a record."""
        torch.manual_seed(0)
        net = cnn()
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        batch = torch.rand(32, 3, 64, 64)
        target = torch.randint(0, 15, (32,))
        for s in range(steps):
            loss = nn.functional.cross_entropy(net(batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mode == "probed":
                recorder.maybe_record(net, s, loss=loss.detach())
            elif mode == "bare" and s % 10 == 0:
                net.eval()
                with torch.no_grad():
                    net(x)
                net.train()

    times: dict[str, list[float]] = {"plain": [], "bare": [], "probed": []}
    with Recorder(f"{out}/train.h5", [TensorProbe("p", x)], every_n_steps=10, wandb=False, overwrite=True) as r:
        train("probed", r)  # warm-up
        for _ in range(5):  # alternate, so that background noise falls on all alike
            for mode in times:
                start = time.perf_counter()
                train(mode, r)
                r.flush()
                times[mode].append(time.perf_counter() - start)
    plain, bare, probed = (statistics.median(times[m]) for m in ("plain", "bare", "probed"))
    rows.append(("200 training steps, record every 10", f"{probed:.2f} s", f"without trajhook {plain:.2f} s"))
    rows.append(
        (
            "  cost per record, whole loop",
            f"{(probed - plain) / 20 * 1e3:.1f} ms",
            f"a bare forward in the same loop {(bare - plain) / 20 * 1e3:.1f} ms",
        )
    )

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from trajhook.sinks.wandb import WandbSink

    def maze_training(recorder: Recorder, records: int = 20, steps_between: int = 10) -> float:
        """Train, recording every ``steps_between`` steps; returns the training thread's CPU time in records."""
        torch.manual_seed(0)
        opt = torch.optim.Adam(maze_model.parameters(), 1e-3)
        batch = torch.rand(32, 3, 64, 64)
        target = torch.randint(0, 15, (32,))
        in_records = 0.0
        for s in range(records * steps_between):
            loss = nn.functional.cross_entropy(maze_model(batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            start = time.thread_time()
            if recorder.maybe_record(maze_model, s):
                in_records += time.thread_time() - start
        return in_records

    maze_model = cnn()
    run = wandb.init(dir=out, project="trajhook-bench")
    sinks = {
        "off": False,
        "default": WandbSink(run),  # an image at most every 5 s
        "every": WandbSink(run, image_every_s=0),  # an image at every record: the worst case
    }
    recorders = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for label, sink in sinks.items():
            probe = MazeProbe(seed=0, distribution_mode="hard")
            recorders[label] = Recorder(f"{out}/wandb_{label}.h5", [probe], every_n_steps=10, wandb=sink)
            recorders[label].setup(maze_model)
        loop_time = {label: [] for label in sinks}
        thread_time = {label: [] for label in sinks}
        for _ in range(5):  # alternate, so that background noise falls on all alike
            for label, recorder in recorders.items():
                start = time.perf_counter()
                thread_time[label].append(maze_training(recorder) / 20)
                recorder.flush()
                loop_time[label].append((time.perf_counter() - start) / 20)
        for recorder in recorders.values():
            recorder.close()
    run.finish()
    loop = {k: statistics.median(v) for k, v in loop_time.items()}
    own = {k: statistics.median(v) for k, v in thread_time.items()}
    maze_model.eval()
    obs = float_nchw(torch.from_numpy(probe.observations))

    def maze_forward():
        with torch.no_grad():
            maze_model(obs)

    maze_floor = median_seconds(maze_forward, 20)
    rows.append(("MazeProbe (hard), every 10 steps:", "", f"probe forward alone {maze_floor * 1e3:.1f} ms"))
    rows.append(
        (
            "  training thread in record(), W&B on",
            f"{own['every'] * 1e3:.1f} ms",
            f"W&B off {own['off'] * 1e3:.1f} ms (thread CPU time)",
        )
    )
    for label, text in (("default", "W&B default (image <= every 5 s)"), ("every", "W&B image at every record")):
        rows.append(
            (
                f"  loop time per record, {text}",
                f"{(loop[label] - loop['off']) * 1e3:+.1f} ms",
                f"vs W&B off ({loop['off'] * 1e3:.0f} ms per 10 steps + record)",
            )
        )

    width = max(len(r[0]) for r in rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>10}  {note}")


if __name__ == "__main__":
    main()
