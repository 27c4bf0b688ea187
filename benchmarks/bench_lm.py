"""Language models at GPT-2-small size: a 10,000-token probe set in bounded memory, at near-forward cost.

    python benchmarks/bench_lm.py                  # CPU, GPT-2 small (12 x 768, 50,257 vocab), 10,000 tokens
    python benchmarks/bench_lm.py --device cuda    # the same on a GPU
    python benchmarks/bench_lm.py --quick          # 2 layers, 2,000 tokens: a smoke run in about a minute

All figures are taken side by side in one run, on random-initialized weights (no download):

1. **TokenLossProbe record vs bare forward.** The probe's windows (``context`` tokens each),
   in the probe's own micro-batches, through a bare ``model(input_ids, attention_mask=...)``
   under ``no_grad``: the floor. Against it, ``Recorder.record`` (the training thread's share:
   eval mode, RNG, the forward, log-softmax and gather, the copy off the device), and
   ``record`` + ``flush`` (the writer thread's HDF5 write as well). Medians of ``--repeats``
   rounds, each timing the three one after the other.
2. **Peak extra memory during a record**, against the bare forward's: on CPU the process's RSS
   sampled every millisecond by a thread (tracemalloc does not see torch's allocations), on
   CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before. One micro-batch's
   logits (tokens x vocab x 4 bytes) are shown for scale.
3. **Store bytes per record**, float32 and float16 ``token_loss``: the growth of a closed store
   per record, replaying the records just taken (the first record's fixed overhead left out).
4. **PromptProbe, 64 prompts x 256 tokens, a 1-layer GPT-2 at a 50,257 vocabulary**: extra
   memory for setup plus one record with the defaults (9.8 GB before micro-batching).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from trajhook import Probe, PromptProbe, Recorder, TokenLossProbe, load
from trajhook.probes import microbatch
from trajhook.probes.microbatch import call_model


def rss_bytes() -> int:
    """Resident set size of this process, from /proc (Linux) or psutil."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


@contextmanager
def peak_extra_memory(device: torch.device, result: dict) -> None:
    """``result["bytes"]``: the peak memory above the level at entry, while inside."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        result["bytes"] = torch.cuda.max_memory_allocated() - before
        return
    before = rss_bytes()
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield
    finally:
        stop.set()
        sampler.join()
        result["bytes"] = max(peak[0], rss_bytes()) - before


def median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gpt2(n_layer: int, device: torch.device, n_embd: int = 768) -> torch.nn.Module:
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=12, vocab_size=50_257, n_positions=1024, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).to(device).eval()


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--quick", action="store_true", help="2 layers and 2,000 tokens: a smoke run")
    parser.add_argument("--tokens", type=int, default=None, help="probe tokens (default 10,000; 2,000 with --quick)")
    parser.add_argument("--layers", type=int, default=None, help="GPT-2 layers (default 12; 2 with --quick)")
    parser.add_argument("--context", type=int, default=1024, help="window length of the probe")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3 on CPU, 10 on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--chunk-mib", type=int, default=None, help="override microbatch.CHUNK_BYTES, in MiB")
    parser.add_argument("--skip-prompts", action="store_true", help="skip the 64 x 256 PromptProbe memory check")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_lm: --device cuda, but torch sees no GPU here.")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.chunk_mib:
        microbatch.CHUNK_BYTES = args.chunk_mib * 2**20
    tokens = args.tokens or (2_000 if args.quick else 10_000)
    layers = args.layers or (2 if args.quick else 12)
    repeats = args.repeats or (10 if device.type == "cuda" else 3)
    out = Path(tempfile.mkdtemp())
    rows: list[tuple[str, str, str]] = []
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"bench_lm: GPT-2 {layers} x 768, vocab 50,257, {tokens:,} probe tokens, context {args.context}, on {name}")

    rows += bench_token_loss(gpt2(layers, device), tokens, args.context, repeats, device, out)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not args.skip_prompts:
        rows += bench_prompts(device, args.quick, out)

    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>{value_width}}  {note}")


def bench_token_loss(
    model: torch.nn.Module, tokens: int, context: int, repeats: int, device: torch.device, out: Path
) -> list[tuple[str, str, str]]:
    """TokenLossProbe: record vs the bare forward of the same micro-batches; memory; store size."""
    rows = []
    ids = np.random.default_rng(0).integers(50_257, size=tokens)
    probe = TokenLossProbe(ids, context=context)
    rec = Recorder(out / "lm.h5", [probe], every_n_steps=1, wandb=False, overwrite=True)
    rec.setup(model)  # runs the probe once: a warm-up
    batches = probe._micro_batches
    takes = probe._takes

    def bare() -> None:
        with torch.no_grad():
            for batch in batches:
                logits = call_model(model, batch, takes, None).logits
                del logits

    bare()  # warm-up (the model is in eval mode already)
    steps = iter(range(10**9))

    def record() -> None:
        rec.record(model, next(steps))

    def record_and_write() -> None:
        rec.record(model, next(steps))
        rec.flush()

    times: dict[str, list[float]] = {"bare": [], "record": [], "write": []}
    for _ in range(repeats):  # alternate, so that background noise falls on all three alike
        for key, fn in (("bare", bare), ("record", record), ("write", record_and_write)):
            times[key].append(median_time(fn, 1, device))
    floor, per_record, with_write = (statistics.median(times[k]) for k in ("bare", "record", "write"))
    logits_bytes = max(b.input_ids.numel() for b in batches) * 50_257 * 4
    memory_bare: dict = {}
    memory_record: dict = {}
    with peak_extra_memory(device, memory_bare):
        bare()
    with peak_extra_memory(device, memory_record):
        rec.record(model, next(steps))
        rec.flush()
    rec.close()

    shape = f"{len(batches)} micro-batches of <= {probe.max_tokens} tokens"
    rows.append((f"bare forward, {tokens:,} tokens ({shape})", f"{floor * 1e3:,.0f} ms", "the floor"))
    rows.append(("Recorder.record (training thread)", f"{per_record * 1e3:,.0f} ms", f"{per_record / floor:.3f}x bare"))
    rows.append(("record + flush (HDF5 write too)", f"{with_write * 1e3:,.0f} ms", f"{with_write / floor:.3f}x bare"))
    rows.append(
        (
            "peak extra memory, record",
            mb(memory_record["bytes"]),
            f"bare forward {mb(memory_bare['bytes'])}; one micro-batch's float32 logits {mb(logits_bytes)}",
        )
    )
    recorded = np.asarray(load(out / "lm.h5")["token_loss"]["token_loss"])
    sizes = {dtype: store_bytes_per_record(recorded.astype(dtype), out) for dtype in ("float32", "float16")}
    n_losses = recorded.shape[1]
    raw = f"raw {n_losses * 4 / 1e3:,.1f} / {n_losses * 2 / 1e3:,.1f} kB"
    rows.append(
        (
            "store bytes per record, float32 / float16",
            f"{sizes['float32'] / 1e3:,.1f} kB",
            f"{sizes['float16'] / 1e3:,.1f} kB ({n_losses:,} losses; {raw}; gzip-4 + shuffle)",
        )
    )
    return rows


class Replay(Probe):
    """Returns the given records one after the other: store sizes without running a model."""

    def __init__(self, records: np.ndarray) -> None:
        super().__init__("token_loss")
        self.records = torch.from_numpy(records)
        self.index = 0
        self.add_output("token_loss", records.shape[1:], records.dtype)

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        self.index += 1
        return {"token_loss": self.records[(self.index - 1) % len(self.records)]}


def store_bytes_per_record(records: np.ndarray, out: Path, count: int = 200) -> float:
    """The file's growth per record: closed stores of 1 and of 1 + ``count`` records (the records cycled)."""
    sizes = []
    for n in (1, 1 + count):
        path = out / f"replay_{records.dtype}_{n}.h5"
        with Recorder(path, [Replay(records)], every_n_steps=1, wandb=False, overwrite=True) as rec:
            for step in range(n):
                rec.record(torch.nn.Linear(1, 1), step)
        sizes.append(path.stat().st_size)
    return (sizes[1] - sizes[0]) / count


def bench_prompts(device: torch.device, quick: bool, out: Path) -> list[tuple[str, str, str]]:
    """PromptProbe: 64 prompts x 256 tokens, 1-layer GPT-2, defaults: extra memory of setup + one record."""
    n_prompts, length = (16, 128) if quick else (64, 256)
    small = gpt2(1, device)
    prompt_ids = np.random.default_rng(1).integers(50_257, size=(n_prompts, length))
    prompts = [" ".join(map(str, row)) for row in prompt_ids]
    prompt_probe = PromptProbe(prompts, lambda text: [int(t) for t in text.split()])
    memory: dict = {}
    path = out / "prompts.h5"
    with peak_extra_memory(device, memory), Recorder(path, [prompt_probe], every_n_steps=1, wandb=False) as r:
        r.setup(small)
        r.record(small, 0)
    full = n_prompts * length * 50_257 * 4
    return [
        (
            f"PromptProbe {n_prompts} x {length} tokens, setup + 1 record",
            mb(memory["bytes"]),
            f"micro-batches of <= {prompt_probe.max_tokens} tokens; all logits at once would be {mb(full)}",
        )
    ]


if __name__ == "__main__":
    main()
