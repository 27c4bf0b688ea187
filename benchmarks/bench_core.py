"""What the Recorder costs the training thread, measured side by side in one run.

    python benchmarks/bench_core.py [--device cpu|cuda] [--rounds 30] [--no-wandb]

Every figure is a ratio of medians of interleaved runs (a, b, a, b, ..., the order flipped every
round), so that background load falls on both sides alike:

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

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
import warnings

import torch
from timing import Figure, interleaved, machine, print_figures
from torch import nn

from trajhook import MazeProbe, Recorder, TensorProbe


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


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda")
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds per figure")
    parser.add_argument("--train-steps", type=int, default=200, help="steps of each training loop (a multiple of 10)")
    parser.add_argument("--train-rounds", type=int, default=5, help="training loops per contender, interleaved")
    parser.add_argument("--no-wandb", action="store_true", help="skip the W&B figures (also when wandb is missing)")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    device = torch.device(args.device)
    out = tempfile.mkdtemp()
    figures = []

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model = cnn().to(device)
    x = torch.rand(96, 3, 64, 64, device=device)
    rec = Recorder(f"{out}/core.h5", [TensorProbe("p", x)], every_n_steps=10**9, wandb=False)
    rec.setup(model)
    rec.record(model, 0)  # so that no later step is due

    def empty(model: nn.Module, step: int) -> None:
        return None

    calls = 20_000
    counter = iter(range(1, 10**9))

    def not_due() -> None:
        for _ in range(calls):
            rec.maybe_record(model, next(counter))

    def empty_calls() -> None:
        for _ in range(calls):
            empty(model, next(counter))

    medians = interleaved({"not_due": not_due, "empty": empty_calls}, 15)
    not_due_s, call_s = medians["not_due"] / calls, medians["empty"] / calls
    figures.append(
        Figure(
            "maybe_record on a step that is not due",
            f"{not_due_s * 1e6:.2f} µs",
            f"an empty Python call {call_s * 1e6:.2f} µs",
            not_due_s / call_s,
        )
    )

    step = iter(range(1, 10**9))

    def record() -> None:
        rec.record(model, next(step))
        sync()

    def bare() -> None:
        with torch.no_grad():
            model(x)
        sync()

    model.eval()
    medians = interleaved({"record": record, "bare": bare}, args.rounds, warmup=3)
    rec.close()
    figures.append(
        Figure(
            f"record: a CNN on 96 images ({device.type}, training thread)",
            f"{medians['record'] * 1e3:.2f} ms",
            f"bare no_grad forward of the same prepared inputs {medians['bare'] * 1e3:.2f} ms",
            medians["record"] / medians["bare"],
        )
    )

    first_step = iter(range(0, 10**9, 1000))  # steps never decrease within a Recorder's session

    def train(mode: str, recorder: Recorder, steps: int = args.train_steps) -> None:
        """Training steps; every 10th, nothing ("plain"), a bare no_grad forward ("bare") or a record."""
        first = next(first_step)
        torch.manual_seed(0)
        net = cnn().to(device)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        batch = torch.rand(32, 3, 64, 64, device=device)
        target = torch.randint(0, 15, (32,), device=device)
        for s in range(steps):
            loss = nn.functional.cross_entropy(net(batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mode == "probed":
                recorder.maybe_record(net, first + s, loss=loss.detach())
            elif mode == "bare" and s % 10 == 0:
                net.eval()
                with torch.no_grad():
                    net(x)
                net.train()
        sync()

    with Recorder(f"{out}/train.h5", [TensorProbe("p", x)], every_n_steps=10, wandb=False, overwrite=True) as r:

        def probed_loop() -> None:
            train("probed", r)
            r.flush()  # the writer's work counts too

        loops = interleaved(
            {"plain": lambda: train("plain", r), "bare": lambda: train("bare", r), "probed": probed_loop},
            args.train_rounds,
        )
    plain, bare_loop, probed = loops["plain"], loops["bare"], loops["probed"]
    records = args.train_steps // 10
    figures.append(
        Figure(
            f"{args.train_steps} training steps of that CNN, recording every 10",
            f"{probed:.2f} s",
            f"without trajhook {plain:.2f} s",
            probed / plain,
        )
    )
    figures.append(
        Figure(
            "  cost per record, whole loop",
            f"{(probed - plain) / records * 1e3:.1f} ms",
            f"a bare forward at the same places {(bare_loop - plain) / records * 1e3:.1f} ms",
            (probed - plain) / (bare_loop - plain) if bare_loop > plain else None,
        )
    )
    if args.no_wandb or importlib.util.find_spec("wandb") is None or importlib.util.find_spec("procgen") is None:
        print_figures("bench_core (W&B figures skipped: --no-wandb, or wandb or procgen missing)", figures)
        return figures
    figures += wandb_figures(out, args.train_rounds, max(1, args.train_steps // 10))
    print_figures("bench_core", figures)
    return figures


def wandb_figures(out: str, rounds: int, records: int) -> list[Figure]:
    """A training loop recording the MazeProbe every 10 steps, W&B off against W&B on (offline run)."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from trajhook.sinks.wandb import WandbSink

    def maze_training(recorder: Recorder, steps_between: int = 10) -> float:
        """Train, recording every ``steps_between`` steps; returns the training thread's CPU time in records."""
        torch.manual_seed(0)
        opt = torch.optim.Adam(maze_model.parameters(), 1e-3)
        batch = torch.rand(32, 3, 64, 64)
        target = torch.randint(0, 15, (32,))
        in_records = 0.0
        first = next(first_step)
        for s in range(first, first + records * steps_between):
            loss = nn.functional.cross_entropy(maze_model(batch), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            start = time.thread_time()
            if recorder.maybe_record(maze_model, s):
                in_records += time.thread_time() - start
        return in_records

    first_step = iter(range(0, 10**9, 1000))  # steps never decrease within a Recorder's session
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
        loop_time: dict[str, list[float]] = {label: [] for label in sinks}
        thread_time: dict[str, list[float]] = {label: [] for label in sinks}
        order = list(recorders.items())
        for i in range(rounds):  # interleaved, the order flipped every round
            for label, recorder in order if i % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                thread_time[label].append(maze_training(recorder) / records)
                recorder.flush()
                loop_time[label].append((time.perf_counter() - start) / records)
        for recorder in recorders.values():
            recorder.close()
    run.finish()
    loop = {k: statistics.median(v) for k, v in loop_time.items()}
    own = {k: statistics.median(v) for k, v in thread_time.items()}
    figures = [
        Figure(
            "W&B sink, MazeProbe every 10 steps: training thread's CPU time in record(), an image every record",
            f"{own['every'] * 1e3:.1f} ms",
            f"W&B off {own['off'] * 1e3:.1f} ms",
            own["every"] / own["off"],
        ),
        Figure(
            "  the same, W&B default (an image at most every 5 s)",
            f"{own['default'] * 1e3:.1f} ms",
            f"W&B off {own['off'] * 1e3:.1f} ms",
            own["default"] / own["off"],
        ),
    ]
    for label, text in (("default", "default image rate"), ("every", "an image at every record")):
        figures.append(
            Figure(
                f"  whole loop per 10 steps + record, W&B {text}",
                f"{loop[label] * 1e3:.0f} ms",
                f"W&B off {loop['off'] * 1e3:.0f} ms",
                loop[label] / loop["off"],
            )
        )
    return figures


if __name__ == "__main__":
    print(machine())
    main()
