"""The HDF5 store, measured side by side in one run, for each compression choice.

    python benchmarks/bench_store.py [--records 10000] [--codecs none,lzf,gzip,...]

Maze-shaped records (337 cells x (15 action + 5 direction probabilities + 2 vector) float32, 29.7 KB
a record, softmax outputs like a real policy's), written through ``StoreWriter`` as the Recorder's
writer thread does:

1. append throughput (records/s, a flush every 50 records) and the closed file's size per record;
2. the largest size the file reaches while it is written with a flush every 5 records (a short
   run), against its size after ``close()``: the store must stay within 2x at every moment;
3. reading all records (``trajhook.load``, then ``np.asarray`` of each output: ``load`` alone reads
   them lazily, see bench_lazy.py) against ``np.load`` of the same three arrays from raw .npy
   files, both from a warm page cache (median of repeats). Goal: <= 1.2x raw .npy.
   For the default (no compression) also ``trajhook.load(verify=True)``, which checks every row's
   crc32, in the same alternation: it decides whether verifying can be the default (<= 1.2x).

``none`` is trajhook's choice (``trajhook.store.h5.COMPRESSION``). ``blosc-lz4`` and ``zstd`` need the
``hdf5plugin`` package, to write and to read; they are skipped when it is not installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable

import numpy as np

import trajhook
from trajhook.probes.base import OutputSpec
from trajhook.store import StoreWriter
from trajhook.store import h5 as store_module

CELLS = 337
OUTPUTS = {"action_probs": (CELLS, 15), "direction_probs": (CELLS, 5), "vectors": (CELLS, 2)}


def codecs() -> dict[str, dict]:
    """h5py filter arguments by name; the plugin ones only when hdf5plugin is installed."""
    out = {
        "none": {},
        "lzf": {"compression": "lzf", "shuffle": True},
        "gzip-1": {"compression": "gzip", "compression_opts": 1, "shuffle": True},
        "gzip-4": {"compression": "gzip", "compression_opts": 4, "shuffle": True},  # trajhook before
    }
    try:
        import hdf5plugin
    except ImportError:
        return out
    out["blosc-lz4"] = dict(hdf5plugin.Blosc(cname="lz4", clevel=5, shuffle=hdf5plugin.Blosc.SHUFFLE))
    out["zstd"] = dict(hdf5plugin.Zstd(clevel=1))
    return out


def maze_records(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Policy-like outputs: softmax over 15 actions per cell, growing more confident over the run."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(0.2, 4.0, n, dtype=np.float32)[:, None, None]
    logits = rng.standard_normal((n, CELLS, 15), dtype=np.float32) * scale
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    groups = [[0, 1, 2], [6, 7, 8], [5], [3], [4, 9, 10, 11, 12, 13, 14]]
    directions = np.stack([probs[..., g].sum(-1) for g in groups], -1)
    vectors = np.stack([directions[..., 1] - directions[..., 0], directions[..., 2] - directions[..., 3]], -1)
    return {"action_probs": probs, "direction_probs": directions, "vectors": vectors.astype(np.float32)}


def read_all(path: str) -> dict[str, np.ndarray]:
    """Every record of a store's maze probe: ``trajhook.load``, then each output read whole."""
    with trajhook.load(path) as log:
        return {key: np.asarray(value) for key, value in log["maze"].items()}


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write(path: str, data: dict[str, np.ndarray], flush_every: int, sizes: list[int] | None = None) -> float:
    """Write every record through StoreWriter; returns seconds. ``sizes`` gets the file size after each flush."""
    schema = {"maze": {k: OutputSpec(k, shape, np.dtype("float32")) for k, shape in OUTPUTS.items()}}
    n = len(data["vectors"])
    start = time.perf_counter()
    writer = StoreWriter(path, schema, {"maze": {}}, overwrite=True)
    for i in range(n):
        writer.add_record(i, float(i), {"maze": {k: v[i] for k, v in data.items()}})
        writer.add_scalar(i, "loss", 1.0 / (i + 1))
        if (i + 1) % flush_every == 0:
            writer.flush()
            if sizes is not None:
                sizes.append(os.path.getsize(path))
    writer.close()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--growth-records", type=int, default=2_000)
    parser.add_argument("--codecs", default=",".join(codecs()))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    out = tempfile.mkdtemp(prefix="bench_store_")
    data = maze_records(args.records)
    raw_bytes = sum(v.nbytes for v in data.values())
    npy = {}
    for key, array in data.items():
        npy[key] = f"{out}/{key}.npy"
        np.save(npy[key], array)

    def read_npy() -> None:
        for path in npy.values():
            np.load(path)

    read_npy()  # warm the page cache, as for every store below
    available = codecs()
    results: dict[str, dict[str, float]] = {}
    default = dict(store_module.COMPRESSION)
    default_chunk = store_module._CHUNK_BYTES
    try:
        for name in args.codecs.split(","):
            if name not in available:
                print(f"{name}: skipped (pip install hdf5plugin)")
                continue
            store_module.COMPRESSION = available[name]
            # A compressed chunk is rewritten whole at every flush, and the freed space is never reused:
            # compressed stores keep the small chunks trajhook used with gzip; uncompressed ones use 4 MiB.
            chunk_bytes = default_chunk if name == "none" else 64 * 1024
            store_module._CHUNK_BYTES = store_module._MAX_CHUNK_BYTES = chunk_bytes
            path = f"{out}/{name}.h5"
            write_s = write(path, data, flush_every=50)
            size = os.path.getsize(path)
            read_all(path)  # warm
            verify = name == "none"
            pairs = [  # alternated with raw .npy reads, so that background load falls on all alike
                (
                    median_seconds(lambda path=path: read_all(path), 1),
                    median_seconds(read_npy, 1),
                    median_seconds(lambda path=path: trajhook.load(path, verify=True), 1) if verify else np.nan,
                )
                for _ in range(args.repeats)
            ]
            load_s = statistics.median(p[0] for p in pairs)
            npy_pair_s = statistics.median(p[1] for p in pairs)
            assert np.array_equal(read_all(path)["action_probs"], data["action_probs"]), name
            sizes: list[int] = []
            growth = f"{out}/{name}_growth.h5"
            write(growth, {k: v[: args.growth_records] for k, v in data.items()}, flush_every=5, sizes=sizes)
            results[name] = {
                "chunk_kib": chunk_bytes / 1024,
                "records_per_s": args.records / write_s,
                "bytes_per_record": size / args.records,
                "size_ratio": size / raw_bytes,
                "load_s": load_s,
                "npy_s": npy_pair_s,
                "load_vs_npy": statistics.median(a / b for a, b, _ in pairs),
                "verify_s": statistics.median(p[2] for p in pairs),
                "verify_vs_npy": statistics.median(c / b for _, b, c in pairs),
                "peak_vs_closed": max(sizes) / os.path.getsize(growth),
            }
            os.remove(path)
            os.remove(growth)
    finally:
        store_module.COMPRESSION = default
        store_module._CHUNK_BYTES = store_module._MAX_CHUNK_BYTES = default_chunk
        shutil.rmtree(out, ignore_errors=True)

    print(
        f"{args.records} maze records ({CELLS} cells x 22 float32, {raw_bytes / args.records / 1e3:.1f} KB each, "
        f"{raw_bytes / 1e6:.0f} MB); warm page cache; "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    header = f"{'compression':12s} {'chunk':>7s} {'append rec/s':>12s} {'KB/record':>10s} {'vs raw':>7s} "
    header += f"{'load ms':>8s} {'.npy ms':>8s} {'load/.npy':>10s} {'verify ms':>10s} {'verify/.npy':>12s} "
    header += f"{'peak/closed':>12s}"
    print(header)
    for name, r in results.items():
        print(
            f"{name:12s} {r['chunk_kib']:4.0f} KiB {r['records_per_s']:12.0f} "
            f"{r['bytes_per_record'] / 1e3:10.1f} {r['size_ratio']:7.2f} "
            f"{r['load_s'] * 1e3:8.0f} {r['npy_s'] * 1e3:8.0f} {r['load_vs_npy']:9.2f}x "
            f"{r['verify_s'] * 1e3:10.0f} {r['verify_vs_npy']:11.2f}x {r['peak_vs_closed']:11.2f}x"
        )
    print("load/.npy, verify/.npy: medians of the ratios of alternated runs (load: load + np.asarray of each")
    print("output; verify: load(verify=True));")
    print("peak/closed: the largest file size while written with a flush every 5 records, over its size after close()")
    return results


if __name__ == "__main__":
    main()
