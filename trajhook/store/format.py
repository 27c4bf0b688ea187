"""The store's format: names, version, table indices, probe kinds, and the schema rules.

Pure functions and constants; nothing here opens a file. The format is documented in
``docs/FORMAT.md``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trajhook.errors import TrajhookError
from trajhook.probes.base import OutputSpec

# 2: each probe group records its kind (attr 'kind'); 3: a crc32 per row (/checksums); 4: /sessions
FORMAT_VERSION = 4
SCALAR_NAME_BYTES = 128
EVENT_LABEL_BYTES = 256
# Indices into the `committed` dataset: four row counts, then the generation, bumped by every
# resume drop, so that a reader can tell that rows it read may have been rewritten meanwhile.
RECORDS, SCALARS, EVENTS, SCALAR_NAMES, GENERATION = range(5)
TABLE_NAMES = {RECORDS: "records", SCALARS: "scalars", EVENTS: "events", SCALAR_NAMES: "scalar_names"}
"""The appendable tables, by their index in ``committed``; ``/checksums/<name>`` holds their row checksums."""
KINDS = ("maze", "prompts", "token_loss", "tensor", "custom")
"""The probe kinds a store records (attr ``kind`` of ``static/<probe>``)."""

SESSION_BYTES = 16384
"""The most bytes of one session's JSON (a row of ``/sessions/info``); longer values are shortened."""
SESSION_CHUNK_ROWS = 8
TABLE_WORDS = {RECORDS: "records", SCALARS: "scalar values", EVENTS: "events", SCALAR_NAMES: "scalar names"}
"""What messages call the rows of each table (``"1400 of 2000 committed records"``)."""

# -- names: every group, dataset and attribute of a store is spelled here, and nowhere else --------
# (docs/FORMAT.md, "Layout"; tests/test_store_format.py checks that the other store modules use these)

FORMAT_ATTR = "trajhook_format"
"""Root attribute: the format version (:data:`FORMAT_VERSION` when written)."""
VERSION_ATTR = "trajhook_version"
"""Root attribute: the trajhook that created the store."""
CREATED_ATTR = "created"
"""Root attribute: when the store was created (ISO 8601, UTC)."""
METADATA_ATTR = "metadata"
"""JSON attribute of the root (the first Recorder's metadata) and of each ``static/<probe>`` group."""
KIND_ATTR = "kind"
"""Attribute of ``static/<probe>``: the probe's kind (one of :data:`KINDS`; format >= 2)."""
COLUMNS_ATTR = "columns"
"""Attribute of ``checksums/<table>``: JSON list of the datasets its columns check (:func:`table_columns`)."""

STEPS = "steps"
WALL_TIME = "wall_time"
COMMITTED = "committed"
"""Whole rows per table (indexed by :data:`RECORDS` ... :data:`SCALAR_NAMES`), then the generation."""
PROBES_GROUP = "probes"
"""``probes/<probe>/<output>``: the records (:func:`output_name`)."""
STATIC_GROUP = "static"
"""``static/<probe>``: each probe's metadata and kind (:func:`static_group`)."""
SCALARS_GROUP = "scalars"
SCALAR_STEP = "scalars/step"
SCALAR_KEY = "scalars/key"
SCALAR_VALUE = "scalars/value"
SCALAR_NAME_LIST = "scalars/names"
"""The scalar names in order of first use; ``scalars/key`` indexes it."""
EVENTS_GROUP = "events"
EVENT_STEP = "events/step"
EVENT_LABEL = "events/label"
SESSIONS_GROUP = "sessions"
SESSION_INFO = "sessions/info"
SESSION_FIRST_STEP = "sessions/first_step"
CHECKSUMS_GROUP = "checksums"
"""``checksums/<table>``: a crc32 per row and dataset of each table (:func:`checksum_name`; format >= 3)."""

Schema = dict[str, dict[str, OutputSpec]]
"""probe name -> output name -> spec."""


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def dump_json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as err:
        raise TrajhookError(
            f"{what} cannot be stored: {err}. HINT: use numpy arrays, numbers, strings, lists and dicts."
        ) from None


def guess_kind(outputs: Sequence[str], metadata: Mapping[str, Any]) -> str:
    """The probe kind of a group in a format-1 store, which did not record it (format 2 does).

    >>> guess_kind(["action_probs", "direction_probs", "vectors"], {"grid": 0, "cells": 0})
    'maze'
    >>> guess_kind(["token_loss"], {}), guess_kind(["token_loss", "target_logprob"], {}), guess_kind(["x"], {})
    ('token_loss', 'prompts', 'custom')
    """
    if "vectors" in outputs and {"grid", "cells"} <= metadata.keys():
        return "maze"
    if "target_logprob" in outputs or "topk_ids" in outputs:
        return "prompts"
    if "token_loss" in outputs:
        return "token_loss"
    return "custom"


def schema_difference(stored: Schema, current: Schema) -> str | None:
    """Describe how two schemas differ, or None if they are the same.

    >>> f32 = np.dtype("float32")
    >>> a = {"maze": {"vectors": OutputSpec("vectors", (96, 2), f32)}}
    >>> b = {"maze": {"vectors": OutputSpec("vectors", (80, 2), f32)}}
    >>> schema_difference(a, b)
    "probe 'maze' output 'vectors': stored vectors(96, 2) float32, now vectors(80, 2) float32"
    """
    problems = []
    for name in sorted(stored.keys() - current.keys()):
        problems.append(f"probe {name!r} is in the store but not among the probes")
    for name in sorted(current.keys() - stored.keys()):
        problems.append(f"probe {name!r} is new (not in the store)")
    for name in sorted(stored.keys() & current.keys()):
        old, new = stored[name], current[name]
        for key in sorted(old.keys() | new.keys()):
            if key not in new:
                problems.append(f"probe {name!r} no longer records {key!r}")
            elif key not in old:
                problems.append(f"probe {name!r} now records {key!r}, the store has no such dataset")
            elif (old[key].shape, old[key].dtype) != (new[key].shape, new[key].dtype):
                problems.append(
                    f"probe {name!r} output {key!r}: stored {old[key].describe()}, now {new[key].describe()}"
                )
    return "; ".join(problems) or None


def probe_group(probe: str) -> str:
    """The group that holds one probe's records, a dataset per output.

    >>> probe_group("maze")
    'probes/maze'
    """
    return f"{PROBES_GROUP}/{probe}"


def output_name(probe: str, output: str) -> str:
    """The dataset that holds one probe output's records.

    >>> output_name("maze", "vectors")
    'probes/maze/vectors'
    """
    return f"{probe_group(probe)}/{output}"


def static_group(probe: str) -> str:
    """The group that holds one probe's metadata: attributes ``metadata`` and ``kind``, a dataset per array.

    >>> static_group("maze")
    'static/maze'
    """
    return f"{STATIC_GROUP}/{probe}"


def checksum_name(table: int) -> str:
    """The dataset of one table's row checksums.

    >>> checksum_name(RECORDS), checksum_name(SCALAR_NAMES)
    ('checksums/records', 'checksums/scalar_names')
    """
    return f"{CHECKSUMS_GROUP}/{TABLE_NAMES[table]}"


def table_columns(probe_outputs: Mapping[str, Sequence[str]]) -> dict[int, list[str]]:
    """The datasets of each appendable table, in the order of the columns of ``/checksums/<table>``.

    >>> table_columns({"maze": ["vectors"]})[RECORDS]
    ['steps', 'wall_time', 'probes/maze/vectors']
    >>> table_columns({})[SCALARS]
    ['scalars/step', 'scalars/key', 'scalars/value']
    """
    return {
        RECORDS: [STEPS, WALL_TIME] + [output_name(p, o) for p, outs in probe_outputs.items() for o in outs],
        SCALARS: [SCALAR_STEP, SCALAR_KEY, SCALAR_VALUE],
        EVENTS: [EVENT_STEP, EVENT_LABEL],
        SCALAR_NAMES: [SCALAR_NAME_LIST],
    }


def row_checksums(rows: np.ndarray) -> np.ndarray:
    """The zlib crc32 of each row's bytes (C order, as stored: little-endian), as uint32.

    >>> row_checksums(np.array([1, 2], "<i8")).tolist() == [zlib.crc32(n.to_bytes(8, "little")) for n in (1, 2)]
    True
    >>> row_checksums(np.zeros((0, 3), "<f4")).shape
    (0,)
    """
    rows = np.ascontiguousarray(rows)
    if len(rows) == 0:
        return np.zeros(0, np.uint32)
    flat = rows.reshape(len(rows), -1).view(np.uint8).reshape(len(rows), -1)
    return np.fromiter((zlib.crc32(row) for row in flat), np.uint32, len(rows))


def damaged_rows(columns: Sequence[np.ndarray], stored: np.ndarray) -> np.ndarray:
    """Indices of the rows whose checksums, over ``columns`` (one array per dataset), differ from ``stored``.

    >>> values = np.arange(6, dtype="<f4").reshape(3, 2)
    >>> stored = row_checksums(values)[:, None]
    >>> values[1, 0] = -1.0
    >>> damaged_rows([values], stored).tolist()
    [1]
    """
    n = len(stored)
    if n == 0:
        return np.zeros(0, np.int64)
    computed = np.stack([row_checksums(c[:n]) for c in columns], axis=1)
    return np.flatnonzero((computed != np.asarray(stored).reshape(n, -1)).any(axis=1))


def session_row(info: Mapping[str, Any], limit: int = SESSION_BYTES) -> bytes:
    """One session's facts as the JSON bytes of a ``/sessions/info`` row, at most ``limit`` bytes.

    Too long (a command line of thousands of arguments, large metadata), the longest strings are
    cut to make it fit, each ending in ``"..."``; the keys always stay.

    >>> session_row({"argv": ["train.py", "--lr", "0.1"], "torch_threads": 2})
    b'{"argv": ["train.py", "--lr", "0.1"], "torch_threads": 2}'
    >>> row = session_row({"argv": ["train.py"] + ["x" * 1000] * 40, "host": "vm"}, limit=2000)
    >>> len(row) <= 2000, json.loads(row)["host"], json.loads(row)["argv"][1][-3:]
    (True, 'vm', '...')
    """
    text = dump_json(dict(info), "Recorder session")
    cap = max(len(text), 16)
    while len(text.encode()) > limit and cap > 16:
        cap //= 2
        text = dump_json(_shorten(json.loads(text), cap), "Recorder session")
    if len(text.encode()) > limit:  # still too long: the bare facts only
        text = dump_json({k: v for k, v in info.items() if isinstance(v, int | float | bool | None)}, "session")
    return text.encode()


def _shorten(value: Any, cap: int) -> Any:
    if isinstance(value, str):
        return value if len(value) <= cap else value[: cap - 3] + "..."
    if isinstance(value, list):
        return [_shorten(v, cap) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v, cap) for k, v in value.items()}
    return value


def parse_sessions(info: Sequence[bytes], first_step: Sequence[int]) -> list[dict[str, Any]]:
    """The sessions from the rows of ``/sessions/info`` and ``/sessions/first_step``.

    Each is the session's dict plus ``first_step``: the step of its first write, or None for a
    session that wrote nothing. A row a crash left unwritten (empty) is skipped.

    >>> parse_sessions([b'{"host": "vm"}', b"", b'{"host": "gpu1"}'], [0, -1, -1])
    [{'host': 'vm', 'first_step': 0}, {'host': 'gpu1', 'first_step': None}]
    """
    sessions = []
    for row, step in zip(info, first_step, strict=True):
        text = bytes(row).rstrip(b"\0")
        try:
            session = json.loads(text) if text else None
        except ValueError:
            session = None
        if isinstance(session, dict):
            session["first_step"] = int(step) if int(step) >= 0 else None
            sessions.append(session)
    return sessions
