"""Lazy reading of a large store: opening it and reading one record, reading it all, raw .npy.

    python benchmarks/bench_lazy.py [--records 20000] [--dir DIR] [--rounds 5]

The store holds ``--records`` maze-shaped records (bench_store's: 337 cells x 22 float32, 29.7 KB a
record; 60,000 make the 1.8 GB store of issue 22), written through ``StoreWriter`` a block at a time,
with the same three arrays saved beside it as raw .npy files. ``--dir`` keeps both there, and a later
run with the same ``--records`` reuses them (building 1.8 GB takes minutes); without it they go in a
temporary folder, removed at the end. Then, from a warm page cache:

1. in a fresh process for each run, so that its peak RSS is the operation's own (``VmHWM`` reset
   after the imports), rounds of three, in alternating order:
   - open + one record: ``trajhook.load``, then the middle record of each output;
   - read all: ``trajhook.load``, then ``np.asarray`` of each output;
   - raw .npy: ``np.load`` of the three files;
2. in this process, read all against raw .npy, medians of interleaved runs (``timing.interleaved``).

Goals (issue 22): open + one record under a second, its memory bounded (a few MB, whatever the
store's size); read all within 1.2x raw .npy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from bench_store import OUTPUTS, maze_records
from timing import Figure, interleaved, print_figures

import trajhook
from trajhook.probes.base import OutputSpec
from trajhook.store import StoreWriter

BLOCK = 2_000  # records generated and written at a time: building never holds the whole store

CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import trajhook

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))

    mode, folder, outputs = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    try:  # the peak from here on, not the imports'
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = status("VmRSS")
    start = time.perf_counter()
    if mode == "npy":
        arrays = [np.load(f"{folder}/{key}.npy") for key in outputs]
    else:
        log = trajhook.load(f"{folder}/store.h5")
        probe = log["maze"]
        middle = len(log.steps) // 2
        arrays = [probe[key][middle] if mode == "one" else np.asarray(probe[key]) for key in outputs]
    seconds = time.perf_counter() - start
    print(json.dumps({"s": seconds, "peak_bytes": status("VmHWM") - before, "bytes": sum(a.nbytes for a in arrays)}))
    """
)
MODES = {"one": "open + one record", "all": "read all", "npy": "raw .npy"}


def build(folder: Path, records: int) -> None:
    """The store and its .npy twins, a block of records at a time; kept when they already match."""
    store, done = folder / "store.h5", folder / "built.json"
    if done.exists() and json.loads(done.read_text()) == {"records": records} and store.exists():
        print(f"reusing {store} ({store.stat().st_size / 1e9:.2f} GB)")
        return
    start = time.perf_counter()
    schema = {"maze": {k: OutputSpec(k, shape, np.dtype("float32")) for k, shape in OUTPUTS.items()}}
    npy = {
        k: np.lib.format.open_memmap(folder / f"{k}.npy", "w+", np.float32, (records, *shape))
        for k, shape in OUTPUTS.items()
    }
    writer = StoreWriter(store, schema, {"maze": {}}, overwrite=True)
    for first in range(0, records, BLOCK):
        data = maze_records(min(BLOCK, records - first), seed=first)
        for i in range(len(data["vectors"])):
            writer.add_record(first + i, float(first + i), {"maze": {k: v[i] for k, v in data.items()}})
        for key, array in data.items():
            npy[key][first : first + len(array)] = array
    writer.close()
    for array in npy.values():
        array.flush()
    del npy
    done.write_text(json.dumps({"records": records}))
    print(f"built {store} ({store.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - start:.0f} s")


def child(mode: str, folder: Path) -> dict[str, float]:
    run = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(folder), ",".join(OUTPUTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{mode}: {run.stderr[-2000:]}")
    return json.loads(run.stdout)


def main(argv: list[str] | None = None) -> list[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--dir", type=Path, default=None, help="keep the store here and reuse it")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench_lazy_"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        build(folder, args.records)
        store = folder / "store.h5"
        size = store.stat().st_size
        raw = sum((folder / f"{k}.npy").stat().st_size for k in OUTPUTS)
        for mode in ("npy", "all"):  # warm the page cache for both
            child(mode, folder)
        runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
        for i in range(args.rounds):
            for mode in list(MODES) if i % 2 == 0 else list(MODES)[::-1]:
                runs[mode].append(child(mode, folder))
        median = {m: {k: statistics.median(r[k] for r in rs) for k in ("s", "peak_bytes")} for m, rs in runs.items()}

        def read_all() -> None:
            with trajhook.load(store) as log:
                for value in log["maze"].values():
                    np.asarray(value)

        def read_npy() -> None:
            for key in OUTPUTS:
                np.load(folder / f"{key}.npy")

        with trajhook.load(store) as log:  # the values read back are the ones saved as .npy
            middle = len(log.steps) // 2
            for key in OUTPUTS:
                saved = np.load(folder / f"{key}.npy", mmap_mode="r")
                assert np.array_equal(log["maze"][key][middle], saved[middle]), key
        in_process = interleaved({"read all": read_all, "raw .npy": read_npy}, rounds=args.rounds)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)

    print(
        f"{args.records:,} maze records: store {size / 1e9:.2f} GB, raw .npy {raw / 1e9:.2f} GB; warm page cache; "
        f"fresh process per run, medians of {args.rounds} interleaved rounds"
    )
    print(f"{'':20s} {'seconds':>9s} {'peak RSS growth':>16s}")
    for mode, name in MODES.items():
        print(f"{name:20s} {median[mode]['s']:9.3f} {median[mode]['peak_bytes'] / 1e6:13.1f} MB")
    ratio = in_process["read all"] / in_process["raw .npy"]
    print(
        f"in this process: read all {in_process['read all'] * 1e3:.0f} ms, raw .npy "
        f"{in_process['raw .npy'] * 1e3:.0f} ms: {ratio:.2f}x (goal <= 1.2x)"
    )
    one, whole = median["one"], median["all"]
    return [
        Figure(
            f"`load` + one record of a {size / 1e9:.2f} GB store ({args.records:,} maze records), fresh process",
            f"{one['s'] * 1e3:.0f} ms, peak RSS +{one['peak_bytes'] / 1e6:.1f} MB",
            f"read all: {whole['s'] * 1e3:.0f} ms, +{whole['peak_bytes'] / 1e6:.0f} MB",
            one["s"] / whole["s"],
        ),
        Figure(
            f"`load` + `np.asarray` of every output ({size / 1e9:.2f} GB, warm page cache)",
            f"{in_process['read all'] * 1e3:.0f} ms",
            f"the same arrays from raw `.npy`: {in_process['raw .npy'] * 1e3:.0f} ms",
            ratio,
        ),
    ]


if __name__ == "__main__":
    print_figures("bench_lazy", main())
