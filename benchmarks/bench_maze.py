"""Benchmark: MazeProbe against the per-cell way and a bare forward; the maze example's throughput.

The per-cell way is how earlier maze tools record a vector field: for every cell, create (reset)
a procgen environment, move the mouse there through the serialized state, observe, preprocess,
and run one forward pass on that single observation. MazeProbe renders all cells once at setup
and each record is one batched forward over the cached observations; the floor is that batched
forward alone (``model(cached_inputs)``), without the probe's bookkeeping.

Each figure is a ratio of medians of interleaved runs taken in this one run:
1. one vector field the per-cell way against MazeProbe.run;
2. a MazeProbe record as the training thread pays it (``Recorder.record``) against a bare
   ``no_grad`` forward of the same prepared inputs;
3. training throughput of the maze example (examples/maze_lightning.py: its model, data and
   Trainer) with ``TrajectoryCallback`` at the default cadence against without it.

    python benchmarks/bench_maze.py [--seed 0] [--mode hard] [--repeats 20] [--threads 2] [--train-steps 200]
"""

from __future__ import annotations

import argparse
import inspect
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from timing import Figure, interleaved, machine, print_figures
from torch import nn

from trajhook import Recorder
from trajhook.probes.maze import MazeProbe, float_nchw, make_maze_env
from trajhook.procgen_state import parse_maze_state


def policy() -> nn.Module:
    """A small IMPALA-like policy (conv + pool stacks, 256-unit head, 15 logits), fixed weights."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    channels = 3
    for out in (16, 32, 32):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.MaxPool2d(3, 2, 1), nn.ReLU()]
        layers += [nn.Conv2d(out, out, 3, padding=1), nn.ReLU()]
        channels = out
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 8 * 8, 256), nn.ReLU(), nn.Linear(256, 15)).eval()


def per_cell_vector_field(model: nn.Module, seed: int, mode: str, cells: np.ndarray) -> np.ndarray:
    """The per-cell way: one environment creation and one single-observation forward per cell."""
    vectors = np.empty((len(cells), 2), dtype=np.float32)
    for i, (row, col) in enumerate(cells):
        env = make_maze_env(seed, mode)
        state = parse_maze_state(env.callmethod("get_state")[0])
        env.callmethod("set_state", [state.with_mouse(row, col, reflected=False)])
        _, obs, _ = env.observe()
        p = torch.softmax(model(float_nchw(torch.from_numpy(obs["rgb"]))), dim=-1)[0]
        vectors[i] = (float(p[6:9].sum() - p[0:3].sum()), float(p[5] - p[3]))
    return vectors


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn`` alone (after one warm-up call)."""
    return interleaved({"fn": fn}, repeats)["fn"]


class _Clock:
    """A Lightning callback timing the training loop: from on_train_start to on_train_end."""

    def __init__(self) -> None:
        self.seconds = float("nan")

    def on_train_start(self, trainer: object, pl_module: object) -> None:
        self.start = time.perf_counter()

    def on_train_end(self, trainer: object, pl_module: object) -> None:
        self.seconds = time.perf_counter() - self.start


def training_throughput(steps: int, rounds: int, out_dir: str) -> list[Figure]:
    """The maze example (examples/maze_lightning.py: its model, data and Trainer settings) trained
    with and without ``TrajectoryCallback`` at the default cadence, runs interleaved."""
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, WeightedRandomSampler

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    from maze_lightning import MazeImitation, build_dataset

    from trajhook.integrations.lightning import TrajectoryCallback

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):  # no banners between figures
        logging.getLogger(name).setLevel(logging.ERROR)
    clock_type = type("Clock", (_Clock, pl.Callback), {})
    dataset, weights = build_dataset(range(1000, 1008))  # 8 training levels, as in --fast
    fits = {"with": [], "without": []}

    def fit(with_callback: bool) -> float:
        pl.seed_everything(0, verbose=False)
        model = MazeImitation((8, 16, 16), 2e-3)
        clock = clock_type()
        callbacks = [clock]
        if with_callback:  # the example's callback, at TrajectoryCallback's default every_n_steps
            probe = MazeProbe(seed=1, distribution_mode="easy", name="maze")
            callbacks.append(TrajectoryCallback(f"{out_dir}/maze_fit.h5", [probe], overwrite=True, wandb=False))
        trainer = pl.Trainer(
            max_steps=steps,
            accelerator="cpu",
            callbacks=callbacks,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=False,
            num_sanity_val_steps=0,
        )
        generator = torch.Generator().manual_seed(0)
        sampler = WeightedRandomSampler(weights, num_samples=steps * 64, replacement=True, generator=generator)
        start = time.perf_counter()
        trainer.fit(model, DataLoader(dataset, batch_size=64, sampler=sampler, drop_last=True))
        fits["with" if with_callback else "without"].append(time.perf_counter() - start)
        return clock.seconds

    loops = {"with": [], "without": []}
    for i in range(rounds):  # alternate, flipping the order every round
        for label in ("with", "without") if i % 2 == 0 else ("without", "with"):
            loops[label].append(fit(label == "with"))
    loop = {k: statistics.median(v) for k, v in loops.items()}
    whole = {k: statistics.median(v) for k, v in fits.items()}
    every = inspect.signature(TrajectoryCallback.__init__).parameters["every_n_steps"].default
    records = steps // every + 1
    return [
        Figure(
            f"maze example, {steps} training steps, TrajectoryCallback every {every} (default, {records} records)",
            f"{steps / loop['with']:.2f} steps/s",
            f"without trajhook {steps / loop['without']:.2f} steps/s",
            loop["without"] / loop["with"],
        ),
        Figure(
            "  the same, whole trainer.fit (with probe setup and close)",
            f"{whole['with']:.2f} s",
            f"without trajhook {whole['without']:.2f} s",
            whole["with"] / whole["without"],
        ),
    ]


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mode", default="hard", choices=["easy", "hard"])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--per-cell-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=200, help="steps of each maze example fit")
    parser.add_argument("--train-rounds", type=int, default=3, help="fits with and without, interleaved")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out_dir = tempfile.mkdtemp()

    model = policy()
    probe = MazeProbe(seed=args.seed, distribution_mode=args.mode)
    make_maze_env(args.seed, args.mode)  # procgen's one-off global init (asset loading), not counted
    with torch.no_grad():
        start = time.perf_counter()
        probe.setup(model, torch.device("cpu"))
        setup_s = time.perf_counter() - start
        cached = float_nchw(torch.from_numpy(probe.observations))  # the inputs the probe prepared once
        medians = interleaved(
            {"run": lambda: probe.run(model), "floor": lambda: model(cached)},
            args.repeats,
        )
        probe_s, floor_s = medians["run"], medians["floor"]
        per_cell_s = median_seconds(
            lambda: per_cell_vector_field(model, args.seed, args.mode, probe.cells), args.per_cell_repeats
        )
        same = np.allclose(
            per_cell_vector_field(model, args.seed, args.mode, probe.cells),
            probe.run(model)["vectors"].numpy(),
            atol=1e-5,
        )

    # A whole record as the training thread pays it (Recorder.record: modes, RNG, probe, copy, queue)
    # against a bare no_grad forward of the same prepared inputs, interleaved.
    recorder_probe = MazeProbe(seed=args.seed, distribution_mode=args.mode)
    steps = iter(range(10**9))
    with Recorder(f"{out_dir}/maze.h5", [recorder_probe], every_n_steps=1, wandb=False) as rec:
        rec.setup(model)

        def bare() -> None:
            with torch.no_grad():
                model(cached)

        record = interleaved({"record": lambda: rec.record(model, next(steps)), "bare": bare}, args.repeats)

    n = len(probe.cells)
    print(f"maze vector field, {args.mode} seed {args.seed}: {n} cells, torch threads {args.threads}")
    print(f"{'method':40s} {'ms / field':>12s} {'x MazeProbe':>12s}")
    for name, seconds, ratio in (
        ("per-cell (env + forward per cell)", per_cell_s, per_cell_s / probe_s),
        ("MazeProbe.run (one batched forward)", probe_s, 1.0),
        ("bare batched forward (floor)", floor_s, floor_s / probe_s),
        ("MazeProbe.setup (once: render cells)", setup_s, setup_s / probe_s),
    ):
        print(f"{name:40s} {seconds * 1e3:12.1f} {ratio:12.2f}")
    print(f"same vectors per cell and batched: {same}")

    figures = [
        Figure(
            f"one maze vector field ({args.mode}, {n} cells), the per-cell way",
            f"{per_cell_s * 1e3:.0f} ms",
            f"MazeProbe.run {probe_s * 1e3:.1f} ms",
            per_cell_s / probe_s,
        ),
        Figure(
            "MazeProbe record (training thread, Recorder.record)",
            f"{record['record'] * 1e3:.1f} ms",
            f"bare no_grad forward of the same prepared inputs {record['bare'] * 1e3:.1f} ms",
            record["record"] / record["bare"],
        ),
        Figure("MazeProbe setup, once: render every cell", f"{setup_s * 1e3:.0f} ms", "", None),
    ]
    if args.train_rounds > 0:
        figures += training_throughput(args.train_steps, args.train_rounds, out_dir)
    print_figures("bench_maze", figures)
    return figures


if __name__ == "__main__":
    print(machine())
    main()
