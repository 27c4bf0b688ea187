"""A small reader for W&B's offline ``run-*.wandb`` files (wandb 0.31 ships none).

The file is a leveldb-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of records, each with a 7-byte header (crc32, length, type: full, first, middle,
last) carrying a ``wandb_internal_pb2.Record`` protobuf.
"""

import json
import struct
import time
import zlib
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, "not a W&B log"
    pos, parts = 7, []
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        if pos + 7 + length > len(data):
            break  # a record still being written
        chunk = data[pos + 7 : pos + 7 + length]
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad checksum at {pos}"
        pos += 7 + length
        parts.append(chunk)
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            parts = []
            yield record


def finished_records(run_dir, timeout_s=30.0):
    """The records of a finished offline run. wandb 0.31's ``run.finish()`` can return before the
    file is written out (seen here: a 7-byte file that grew to 8.6 KB a moment later), so wait
    for the run's ``exit`` record."""
    (log,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        found = list(records(log))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def read_run(run_dir):
    """``(history rows as dicts, {metric name: step_metric}, run files dir)`` of an offline run."""
    history, metrics = [], {}
    for record in finished_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
        elif kind == "metric" and record.metric.name:
            metrics[record.metric.name] = record.metric.step_metric
    return history, metrics, Path(run_dir) / "files"


def read_config(run_dir):
    """The run config's updates, ``{key: value}``, of an offline run."""
    config = {}
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
