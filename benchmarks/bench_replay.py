"""Benchmark: replaying a checkpoint series against recording live, and against the per-cell way.

One maze run (bench_maze's IMPALA-like policy, its weights moved a little between checkpoints) is kept two
ways at the same steps: train-procgen-pytorch checkpoints (``torch.save`` of the model's and the Adam
optimizer's state dicts) and a live ``Recorder`` with a MazeProbe. Figures, each from this one run:

1. replay throughput: checkpoints per second with 1 and 2 worker processes (interleaved runs), and the share
   of one checkpoint's time spent loading it (read + ``load_state_dict``) against probing it;
2. the disk: the checkpoints' bytes against the store's;
3. the training-time cost per kept step: ``torch.save`` of a checkpoint against ``Recorder.record`` (what
   the training thread pays; interleaved);
4. the time until the picture exists after training: the replay's against none for live recording;
5. replay against the per-cell way (procgen-tools' loop: per cell, one environment reset and one forward),
   per checkpoint.

    python benchmarks/bench_replay.py [--checkpoints 16] [--mode hard] [--seed 0] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_maze import per_cell_vector_field, policy
from timing import Figure, interleaved, machine, print_figures

import trajhook
from trajhook.probes.maze import MazeProbe, make_maze_env
from trajhook.replay.model import load_into
from trajhook.replay.sources import TorchFile


def make_policy() -> torch.nn.Module:
    """What replay builds in each worker (module level: spawned workers import this file)."""
    return policy()


def train_two_ways(folder: Path, store: Path, n: int, every: int, mode: str, seed: int) -> dict[str, float]:
    """Move the weights ``n`` times; at each kept step save a checkpoint AND record live, interleaved."""
    model = policy().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    frames = torch.rand(32, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    save_s, record_s = [], []
    with trajhook.Recorder(store, [MazeProbe(seed, mode)], every_n_steps=every, overwrite=True, wandb=False) as rec:
        rec.setup(model)
        for i in range(n):
            step = i * every
            state = {"model_state_dict": model.state_dict(), "optimizer_state_dict": optimizer.state_dict()}
            calls = [
                (save_s, lambda s=step, st=state: torch.save(st, folder / f"model_{s}.pth")),
                (record_s, lambda s=step: rec.record(model, s)),
            ]
            for times, fn in calls if i % 2 == 0 else calls[::-1]:  # interleaved, the order flipped each step
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            loss = model(frames).logsumexp(1).mean()  # one update between kept steps: the weights change
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        start = time.perf_counter()
    close_s = time.perf_counter() - start  # the writer drains and closes: the live picture is complete
    return {"save": statistics.median(save_s), "record": statistics.median(record_s), "close": close_s}


def load_and_probe_share(paths: list[Path], mode: str, seed: int) -> tuple[float, float]:
    """Median seconds per checkpoint to load it (read + load_state_dict) and to probe it, one after the other."""
    model, probe, source = policy(), MazeProbe(seed, mode), TorchFile()
    probe.setup(model, torch.device("cpu"))
    load_s, probe_s = [], []
    for path in paths:
        start = time.perf_counter()
        load_into(model, source.read(path), "")
        load_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        with torch.no_grad():
            probe.run(model)
        probe_s.append(time.perf_counter() - start)
    return statistics.median(load_s), statistics.median(probe_s)


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", type=int, default=16)
    parser.add_argument("--every", type=int, default=10_000, help="steps between kept steps (labels only)")
    parser.add_argument("--mode", default="hard", choices=["easy", "hard"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="replays per worker count, interleaved")
    parser.add_argument("--per-cell", type=int, default=2, help="checkpoints taken the per-cell way")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    folder, live = work / "ckpts", work / "live.h5"
    folder.mkdir()
    make_maze_env(args.seed, args.mode)  # procgen's one-off global init, not counted

    cost = train_two_ways(folder, live, args.checkpoints, args.every, args.mode, args.seed)
    paths = sorted(folder.glob("model_*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    n = len(paths)

    def replay(workers: int) -> trajhook.replay.ReplayResult:
        probes = [MazeProbe(args.seed, args.mode)]
        out = work / f"replay{workers}.h5"
        return trajhook.replay(folder, probes, out, model=make_policy, workers=workers, overwrite=True, wandb=False)

    medians = interleaved({"1": lambda: replay(1), "2": lambda: replay(2)}, args.rounds, warmup=0)
    a, b = trajhook.load(live), trajhook.load(work / "replay1.h5")
    same = all(np.array_equal(a["maze"][k], b["maze"][k]) for k in a["maze"]) and bool(np.array_equal(a.steps, b.steps))
    load_s, probe_s = load_and_probe_share(paths, args.mode, args.seed)

    model, cells = policy(), MazeProbe(args.seed, args.mode)
    cells.setup(model, torch.device("cpu"))
    start = time.perf_counter()
    with torch.no_grad():
        for path in paths[: args.per_cell]:
            load_into(model, TorchFile().read(path), "")
            per_cell_vector_field(model, args.seed, args.mode, cells.cells)
    per_cell_s = (time.perf_counter() - start) / args.per_cell

    ckpt_bytes = sum(p.stat().st_size for p in paths)
    store_bytes = live.stat().st_size  # mostly chunks allocated ahead for a short run
    record_bytes = sum(v[0].nbytes for v in a["maze"].values()) + 16  # what each record adds (+ step, wall time)
    one, two = medians["1"], medians["2"]
    print(f"{n} checkpoints, maze {args.mode} seed {args.seed} ({len(cells.cells)} cells), threads {args.threads}")
    print(f"replayed store equals the live store exactly: {same}")
    figures = [
        Figure(
            f"replay of {n} checkpoints, 1 worker (in-process, prefetch thread)",
            f"{n / one:.2f} ckpt/s ({one:.1f} s)",
            f"2 worker processes: {n / two:.2f} ckpt/s ({two:.1f} s)",
            one / two,
        ),
        Figure(
            "  one checkpoint: loading (read + load_state_dict) against probing (MazeProbe.run)",
            f"load {load_s * 1e3:.0f} ms ({load_s / (load_s + probe_s):.0%})",
            f"probe {probe_s * 1e3:.0f} ms ({probe_s / (load_s + probe_s):.0%})",
            load_s / probe_s,
        ),
        Figure(
            f"disk: {n} checkpoints (model + Adam state) against the live store file",
            f"{ckpt_bytes / 1e6:.1f} MB",
            f"store {store_bytes / 1e6:.2f} MB",
            ckpt_bytes / store_bytes,
        ),
        Figure(
            "  per kept step: one checkpoint against the data one record adds to the store",
            f"{ckpt_bytes / n / 1e6:.2f} MB",
            f"record {record_bytes / 1e3:.1f} kB",
            ckpt_bytes / n / record_bytes,
        ),
        Figure(
            "training-thread cost per kept step: torch.save of a checkpoint against Recorder.record",
            f"save {cost['save'] * 1e3:.0f} ms",
            f"record {cost['record'] * 1e3:.0f} ms",
            cost["save"] / cost["record"],
        ),
        Figure(
            "time until the picture exists after training: replay (1 worker) against live",
            f"{one:.1f} s",
            f"live: the store's close, {cost['close']:.2f} s",
        ),
        Figure(
            "one checkpoint the per-cell way (env reset + forward per cell) against replay (1 worker)",
            f"{per_cell_s:.2f} s",
            f"replay {one / n:.2f} s",
            per_cell_s / (one / n),
        ),
    ]
    print_figures(f"bench_replay. Machine: {machine()}", figures)
    return figures


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
