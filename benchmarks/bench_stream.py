"""Memory and writer-side time per record against the number of records: both must stay flat.

    python benchmarks/bench_stream.py [--records 10000] [--at 1000,2000,5000,10000] [--probe prompt|token_loss]

A tiny language model (embedding + linear, 64 characters) trains one SGD step per step, and a
Recorder records at every step: a PromptProbe (8 prompts of 64 characters) or a TokenLossProbe
(a 1,024-token stream), each with ``track_stages=True``, and a TensorBoard sink (default
settings: the PCA-trajectory image every 10 records, at most one image per panel every 5 s).
Every live part that could keep history runs: the stage tracker and the panels on the writer
thread, the TensorBoard service thread, the store.

At each checkpoint (records so far) it prints, over the records since the previous checkpoint:

- ``RSS``: the process's resident memory (``VmRSS``) at the checkpoint;
- ``writer ms/rec``: CPU time of the Recorder's writer thread per record (store append, stage
  tracker, sinks' share), from the thread's own CPU clock;
- ``sink ms/rec``: CPU time of the TensorBoard sink's thread per record (panels, images, event file);
- ``process CPU ms/rec``: CPU time of the whole process per record (training, probe forward, every
  thread, numpy's BLAS threads too, which do part of the writer's matrix work);
- ``loop ms/rec``: wall time of the training loop per record (training, probe forward, and any
  wait on a full writer queue: what a slow writer costs training).

Before the bounded tracker (kept every record and an N x N Gram matrix), a 6,000-record run of
this kind took over 10 minutes and passed 950 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time

import numpy as np
import torch
from timing import machine
from torch import nn

from trajhook import PromptProbe, Recorder, TokenLossProbe
from trajhook.sinks.tensorboard import TensorBoardSink

ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ."


class TinyLM(nn.Module):
    def __init__(self, vocab: int = len(ALPHABET), dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(input_ids))


def rss_mb() -> float:
    """The process's resident memory in MB (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def thread_cpu_s(prefix: str) -> float:
    """CPU seconds used so far by the live threads whose name starts with ``prefix``."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread.ident is not None:
            with contextlib.suppress(OSError):  # the thread ended between enumerate() and here
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def make_probe(kind: str, rng: np.random.Generator):
    if kind == "prompt":
        prompts = {f"p{i}": "".join(rng.choice(list(ALPHABET), 64)) for i in range(8)}
        return PromptProbe(prompts, lambda text: [ALPHABET.index(c) for c in text], track_stages=True)
    return TokenLossProbe(rng.integers(len(ALPHABET), size=1_024).tolist(), context=64, track_stages=True)


def run(records: int, checkpoints: list[int], kind: str) -> list[dict[str, float]]:
    """Train and record ``records`` steps; the figures at each checkpoint."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    data = torch.from_numpy(rng.integers(len(ALPHABET), size=(4_096, 33)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sink = TensorBoardSink(os.path.join(tmp, "tb"))
        rec = Recorder(os.path.join(tmp, "run.h5"), [make_probe(kind, rng)], every_n_steps=1, wandb=False, sinks=[sink])
        rec.setup(model)
        last = {"writer": 0.0, "sink": 0.0, "cpu": time.process_time(), "wall": time.perf_counter(), "records": 0}
        for step in range(records):
            batch = data[torch.randint(len(data), (16,))]
            loss = nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.maybe_record(model, step)
            if step + 1 in checkpoints:
                rec.flush()  # the writer has taken every record so far
                writer, sink_cpu = thread_cpu_s("trajhook-writer"), thread_cpu_s("trajhook-TensorBoard")
                cpu, wall = time.process_time(), time.perf_counter()
                n = step + 1 - last["records"]
                rows.append(
                    {
                        "records": step + 1,
                        "rss_mb": rss_mb(),
                        "writer_ms": 1e3 * (writer - last["writer"]) / n,
                        "sink_ms": 1e3 * (sink_cpu - last["sink"]) / n,
                        "cpu_ms": 1e3 * (cpu - last["cpu"]) / n,
                        "loop_ms": 1e3 * (wall - last["wall"]) / n,
                    }
                )
                print(
                    f"| {step + 1:>7,} | {rows[-1]['rss_mb']:8.0f} | {rows[-1]['writer_ms']:13.2f} | "
                    f"{rows[-1]['sink_ms']:11.2f} | {rows[-1]['cpu_ms']:18.2f} | {rows[-1]['loop_ms']:11.2f} |",
                    flush=True,
                )
                last = {"writer": writer, "sink": sink_cpu, "cpu": time.process_time(), "wall": time.perf_counter()}
                last["records"] = step + 1
        rec.close()
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--at", default="1000,2000,5000,10000", help="checkpoints, in records")
    parser.add_argument("--probe", choices=["prompt", "token_loss"], default="prompt")
    args = parser.parse_args(argv)
    checkpoints = sorted({int(a) for a in args.at.split(",") if int(a) <= args.records} | {args.records})
    torch.set_num_threads(1)
    import trajhook

    print(f"trajhook from {os.path.dirname(trajhook.__file__)}; {args.probe} probe, track_stages=True, TensorBoard")
    print("| records | RSS (MB) | writer ms/rec | sink ms/rec | process CPU ms/rec | loop ms/rec |")
    print("|---:|---:|---:|---:|---:|---:|")
    start = time.perf_counter()
    rows = run(args.records, checkpoints, args.probe)
    print(f"{args.records:,} records in {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    print(machine())
    main()
