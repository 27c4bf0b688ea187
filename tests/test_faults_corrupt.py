"""Damaged stores, opened by a real process under a watchdog: every case ends in bounded time, with the
right rows or a TrajhookError that names the file and what can be recovered, and ``trajhook repair``
saves the committed rows that still read back, with their exact values.

Before: flipped bytes in the chunk index made ``load()`` hang forever (HDF5 retries a bad metadata
checksum 100 times with a doubling wait); a flipped global heap gave a raw RuntimeError; a truncated
store gave a raw OSError on resume and left a ``.rebuild`` file.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from trajhook import TrajhookError, load
from trajhook.probes.base import OutputSpec
from trajhook.store import StoreWriter, WriterLock

SHAPE = (70, 15)
RECORDS = 1200
BOUND_S = 5.0  # the longest any one operation on a damaged store may take


def write_store(path, crashed):
    """Records whose every value is their step; ``crashed`` leaves the file as a killed writer does."""
    schema = {"p": {"output": OutputSpec("output", SHAPE, np.dtype("float32"))}}
    writer = StoreWriter(path, schema, {"p": {"seed": 3}}, metadata={"run": "faults"}, overwrite=True)
    for step in range(RECORDS):
        writer.add_record(step, float(step), {"p": {"output": np.full(SHAPE, step, np.float32)}})
        writer.add_scalar(step, "loss", float(step))
        if step % 37 == 0:
            writer.flush()
    writer.flush()
    if crashed:
        writer.abandon()  # the same state as SIGKILL: flagged open for write, never closed
    else:
        writer.close()


def flip(data, start, length=32):
    out = bytearray(data)
    for i in range(start, min(len(out), start + length)):
        out[i] ^= 0xFF
    return bytes(out)


def damaged_variants(data):
    """name -> damaged bytes. Structures are found by their HDF5 signatures, so the cases stay put."""
    signatures = {sig: [m.start() for m in re.finditer(sig, data)] for sig in (b"OHDR", b"EAHD", b"EAIB", b"GCOL")}
    return {
        "file signature": flip(data, 0, 8),
        "superblock": flip(data, 12, 24),
        "root group header": flip(data, signatures[b"OHDR"][0] + 8),
        "last object header": flip(data, signatures[b"OHDR"][-1] + 8),
        "global heap (run metadata)": flip(data, signatures[b"GCOL"][0] + 16),
        "first chunk index header": flip(data, signatures[b"EAHD"][0] + 8),
        "last chunk index block (middle of the file)": flip(data, signatures[b"EAIB"][-1] + 8),
        "truncated to half": data[: len(data) // 2],
        "truncated by 100 bytes": data[:-100],
    }


CHILD = textwrap.dedent(
    """
    import contextlib, faulthandler, json, os, sys, time
    import numpy as np, torch
    from trajhook import Recorder, TensorProbe, TrajhookError, load
    from trajhook.cli import main as cli
    for path in sys.argv[1:]:
        faulthandler.dump_traceback_later(30, exit=True)  # a hang ends this process, with a traceback
        result = {"path": path}
        start = time.monotonic()
        try:
            log = load(path)
            rows = log["p"]["output"]
            result["load"] = "ok"
            result["correct"] = bool(all((r == s).all() for r, s in zip(rows, log.steps)))
            result["steps"] = log.steps.tolist()
        except TrajhookError as err:
            result["load"] = "TrajhookError"
            result["message"] = str(err)
        except BaseException as err:
            result["load"] = f"{type(err).__name__}: {err}"
        result["load_s"] = time.monotonic() - start
        copy = path + ".resume.h5"
        with open(path, "rb") as src, open(copy, "wb") as dst:
            dst.write(src.read())
        start = time.monotonic()
        try:
            Recorder(copy, [TensorProbe("p", torch.zeros(70, 15))], wandb=False).close()
            rec = Recorder(copy, [TensorProbe("p", torch.zeros(70, 15))], every_n_steps=1, wandb=False)
            rec.setup(torch.nn.Identity())
            rec.close()
            result["resume"] = "ok"
            log = load(copy)
            result["resume_correct"] = log.steps.tolist() == list(range({records})) and bool(
                all((r == s).all() for r, s in zip(log["p"]["output"], log.steps))
            )
        except TrajhookError as err:
            result["resume"] = "TrajhookError"
            result["resume_message"] = str(err)
        except BaseException as err:
            result["resume"] = f"{type(err).__name__}: {err}"
        result["resume_s"] = time.monotonic() - start
        result["leftovers"] = sorted(f for f in os.listdir(os.path.dirname(copy)) if f.endswith((".rebuild", ".lock")))
        start = time.monotonic()
        with contextlib.redirect_stdout(sys.stderr):
            result["repair_rc"] = cli(["repair", path, "--out", path + ".repaired.h5"])
        result["repair_s"] = time.monotonic() - start
        print(json.dumps(result), flush=True)
    faulthandler.cancel_dump_traceback_later()
    """
).replace("{records}", str(RECORDS))


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every damaged variant of a closed and of a crashed store through one watched process."""
    folder = tmp_path_factory.mktemp("damaged")
    paths, names = [], {}
    for kind in ("closed", "crashed"):
        original = folder / f"{kind}.h5"
        write_store(original, crashed=kind == "crashed")
        for i, (case, data) in enumerate(damaged_variants(original.read_bytes()).items()):
            path = folder / f"{kind}_{i}.h5"
            path.write_bytes(data)
            paths.append(str(path))
            names[str(path)] = (kind, case)
    proc = subprocess.run([sys.executable, "-c", CHILD, *paths], capture_output=True, text=True, timeout=400)
    results = {}
    for line in proc.stdout.splitlines():
        result = json.loads(line)
        results[names[result["path"]]] = result
    missing = [names[p] for p in paths if names[p] not in results]
    assert not missing, f"the process stopped at {missing[0]} (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
    return results


CASES = [(kind, case) for kind in ("closed", "crashed") for case in damaged_variants(b"OHDR EAHD EAIB GCOL " * 4)]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("kind, case", CASES, ids=[f"{k}: {c}" for k, c in CASES])
def test_a_damaged_store_fails_fast_and_clearly_and_repair_saves_what_reads_back(outcomes, kind, case):
    result = outcomes[kind, case]
    path = result["path"]
    assert result["load_s"] < BOUND_S and result["resume_s"] < 2 * BOUND_S and result["repair_s"] < 2 * BOUND_S
    if result["load"] == "ok":  # damage that load does not need to read: then every committed row is right
        assert result["correct"] and result["steps"] == list(range(RECORDS)), result
    else:
        assert result["load"] == "TrajhookError", result
        message = result["message"]
        assert path in message and ("corrupt" in message or "not an HDF5 file" in message), message
        assert "trajhook repair" in message, message
        if "is corrupt" in message:  # the file opens: the message counts what can be saved
            assert re.search(r"Recoverable: (\d+ of \d+ committed records|nothing)", message), message
    if result["resume"] == "ok":  # a resume that goes ahead must have found every committed row intact
        assert result["resume_correct"], result
    else:
        assert result["resume"] == "TrajhookError", result
        message = result["resume_message"]
        assert ".resume.h5' " in message and ("corrupt" in message or "not an HDF5" in message), message
    assert result["leftovers"] == [], result  # no .rebuild and no lock file left behind
    repaired = path + ".repaired.h5"
    if result["repair_rc"] == 0:  # the saved rows are the committed rows with their exact values
        log = load(repaired)
        assert set(log.steps.tolist()) <= set(range(RECORDS))
        for step, row in zip(log.steps, log["p"]["output"] if "p" in log else [], strict=False):
            assert (row == step).all()
        scalars = log.scalars.get("loss")
        if scalars is not None:
            np.testing.assert_array_equal(scalars.values, scalars.steps.astype(float))
    else:
        assert result["repair_rc"] == 2 and not os.path.exists(repaired)


@pytest.mark.timeout(60)
def test_a_reader_retries_while_a_live_writer_reopens_the_store(store_path, tmp_path):
    """The reopen window: the file looks corrupt for a moment while its writer holds the lock."""
    good = tmp_path / "good.h5"
    write_store(good, crashed=False)
    lock = WriterLock.acquire(store_path)  # a live writer (this process) is reopening the store
    try:
        store_path.write_bytes(b"\0" * 4096)  # mid-reopen: not yet a valid HDF5 file
        reader = "import sys, trajhook; print('reading', flush=True); print(len(trajhook.load(sys.argv[1]).steps))"
        proc = subprocess.Popen(
            [sys.executable, "-c", reader, store_path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert proc.stdout.readline().strip() == "reading"
        time.sleep(0.5)  # the reader finds a broken file and retries, since the writer is alive
        os.replace(good, store_path)
        out, err = proc.communicate(timeout=30)
    finally:
        lock.release()
    assert proc.returncode == 0 and out.strip() == str(RECORDS), err
    store_path.write_bytes(b"\0" * 4096)  # with no writer alive, the same bytes are an error at once
    start = time.monotonic()
    with pytest.raises(TrajhookError, match="not an HDF5 file, or it is corrupt"):
        load(store_path)
    assert time.monotonic() - start < 1.0


def flip_value_byte(path, dataset, row, byte_in_row):
    """Flip one byte of a stored value in the file itself: its offset from h5py's chunk index."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        rows = ds.chunks[0]
        info = ds.id.get_chunk_info_by_coord((row // rows * rows,) + (0,) * (ds.ndim - 1))
        row_bytes = int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize
        offset = info.byte_offset + (row % rows) * row_bytes + byte_in_row
    with open(path, "r+b") as raw:
        raw.seek(offset)
        byte = raw.read(1)[0]
        raw.seek(offset)
        raw.write(bytes([byte ^ 0x10]))


DAMAGED_STEPS, DAMAGED_SCALAR_STEP = [30, 31, 900], 500


@pytest.fixture(scope="module")
def bit_flipped(tmp_path_factory):
    """A closed store with one flipped byte in the values of records 30, 31 and 900 and of scalar 500."""
    path = tmp_path_factory.mktemp("flipped") / "run.h5"
    write_store(path, crashed=False)
    for step, where in zip(DAMAGED_STEPS, (7, 4 * 70 * 15 - 1, 1001), strict=True):
        flip_value_byte(path, "probes/p/output", step, where)
    flip_value_byte(path, "scalars/value", DAMAGED_SCALAR_STEP, 3)
    return path


def cli(*argv):
    return subprocess.run([sys.executable, "-m", "trajhook.cli", *map(str, argv)], capture_output=True, text=True)


@pytest.mark.timeout(120)
def test_a_flipped_byte_in_a_value_is_detected_naming_the_steps(bit_flipped):
    plain = load(bit_flipped)  # the default load does not verify (see benchmarks/bench_store.py): wrong values
    wrong = [int(s) for s, r in zip(plain.steps, plain["p"]["output"], strict=True) if not (r == s).all()]
    assert wrong == DAMAGED_STEPS
    with pytest.raises(
        TrajhookError,
        match=r"fails its checksums: damaged records at steps \[30, 31, 900\]; "
        r"damaged scalar values at steps \[500\].*HINT: run `trajhook repair",
    ):
        load(bit_flipped, verify=True)
    proc = cli("verify", bit_flipped)  # a real process: exit 1, one line naming the steps
    assert proc.returncode == 1, proc
    assert proc.stderr.count("\n") == 1 and "damaged records at steps [30, 31, 900]" in proc.stderr, proc.stderr
    assert "damaged scalar values at steps [500]" in proc.stderr


@pytest.mark.timeout(120)
def test_verify_passes_an_intact_store_and_refuses_bad_input(tmp_path):
    path = tmp_path / "run.h5"
    write_store(path, crashed=True)  # as a killed writer leaves it: still verifiable
    proc = cli("verify", path)
    assert proc.returncode == 0 and "every committed value matches its checksum" in proc.stdout, proc
    proc = cli("verify", tmp_path / "none.h5")
    assert (
        proc.returncode == 2 and proc.stderr.startswith("trajhook: load: no file at") and proc.stderr.count("\n") == 1
    )


@pytest.mark.timeout(120)
def test_repair_leaves_out_exactly_the_damaged_records(bit_flipped, tmp_path):
    out = tmp_path / "fixed.h5"
    proc = cli("repair", bit_flipped, "-o", out)
    assert proc.returncode == 0, proc
    assert "3 records fail their checksums (steps [30, 31, 900]) and are left out" in proc.stdout, proc.stdout
    log = load(out, verify=True)  # the new store has checksums of its own, and they hold
    kept = [s for s in range(RECORDS) if s not in DAMAGED_STEPS]
    assert log.steps.tolist() == kept
    for step, row in zip(log.steps, log["p"]["output"], strict=True):
        assert (row == step).all()
    loss = log.scalars["loss"]
    assert loss.steps.tolist() == [s for s in range(RECORDS) if s != DAMAGED_SCALAR_STEP]
    np.testing.assert_array_equal(loss.values, loss.steps.astype(float))
