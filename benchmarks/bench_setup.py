"""What the first record costs, and what following the model's device costs, measured side by side.

    python benchmarks/bench_setup.py [--rounds 5] [--calls 20000]

1. Setup to first record in a fresh process (``Recorder(...)``, ``setup(model)``, ``record(model, 0)``;
   torch and trajhook imported before the clock starts), against the same with the imports the first
   record made before trajhook stopped importing them in a single process (``torch.distributed.fsdp``
   and ``torch.distributed.tensor``, which ``distributed.engine`` imported at every first record).
   Each contender runs in its own fresh process, interleaved, so that nothing is imported already.
2. The device check a due record makes (``moved_to(model_device(model), ...)``: do the probes need
   setting up again on the model's device?) against ``maybe_record`` on a step that is not due, which
   makes no check (the per-step cost, unchanged), and against the record it precedes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap

import torch
from bench_core import cnn
from timing import Figure, interleaved, machine, print_figures

from trajhook import Recorder, TensorProbe
from trajhook.recording.probing import model_device, moved_to

FIRST_RECORD = """
import sys, tempfile, time
import torch
sys.path.insert(0, {benchmarks!r})
from bench_core import cnn
from trajhook import Recorder, TensorProbe

torch.set_num_threads({threads})
model, x = cnn(), torch.rand(8, 3, 64, 64)
path = tempfile.mkdtemp() + "/run.h5"
start = time.perf_counter()
if {before}:  # what distributed.engine imported at the first record before
    import torch.distributed.fsdp, torch.distributed.tensor
with Recorder(path, [TensorProbe("p", x)], every_n_steps=10, wandb=False) as rec:
    rec.setup(model)
    rec.record(model, 0)
    print(time.perf_counter() - start)
"""


def first_record_s(before: bool) -> float:
    """Seconds from creating the Recorder to its first record queued, in a fresh process."""
    code = FIRST_RECORD.format(
        benchmarks=os.path.dirname(os.path.abspath(__file__)), threads=torch.get_num_threads(), before=before
    )
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per contender, interleaved")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per timing of the device check")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    figures = []

    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.rounds):  # interleaved, the order flipped every round
        for before in (False, True) if i % 2 == 0 else (True, False):
            times[before].append(first_record_s(before))
    now, old = statistics.median(times[False]), statistics.median(times[True])
    figures.append(
        Figure(
            "setup to first record, fresh process (CNN, 8 images)",
            f"{now:.2f} s",
            f"with the FSDP/DTensor imports the first record made before: {old:.2f} s",
            now / old,
        )
    )

    model = cnn()
    probes_on = model_device(model)
    rec = Recorder(f"{tempfile.mkdtemp()}/setup.h5", [TensorProbe("p", torch.rand(8, 3, 64, 64))], 10**9, wandb=False)
    rec.setup(model)
    rec.record(model, 0)  # so that no later step is due
    counter = iter(range(1, 10**9))

    def check() -> None:
        for _ in range(args.calls):
            moved_to(model_device(model), probes_on)

    def not_due() -> None:
        for _ in range(args.calls):
            rec.maybe_record(model, next(counter))

    steps = iter(range(10**9, 2 * 10**9))

    def record() -> None:
        rec.record(model, next(steps))

    medians = interleaved({"check": check, "not_due": not_due}, 15)
    record_s = interleaved({"record": record}, 15, warmup=3)["record"]
    rec.close()
    check_s, not_due_s = medians["check"] / args.calls, medians["not_due"] / args.calls
    figures.append(
        Figure(
            "device check, made at a due record only (`moved_to(model_device(model), ...)`)",
            f"{check_s * 1e6:.2f} µs",
            f"`maybe_record` on a step that is not due, which makes none: {not_due_s * 1e6:.2f} µs",
            check_s / not_due_s,
        )
    )
    figures.append(
        Figure(
            "  the same check",
            f"{check_s * 1e6:.2f} µs",
            f"the record it precedes (that CNN, 8 images): {record_s * 1e3:.2f} ms",
            check_s / record_s,
        )
    )
    print_figures("bench_setup", figures)
    return figures


if __name__ == "__main__":
    print(machine())
    main()
