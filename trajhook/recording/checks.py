"""Checks of what the user hands trajhook: the arguments before training (shared by the
:class:`~trajhook.Recorder`, every integration and replay), then each step, scalar and probe record as it
arrives (:func:`checked_step`, :func:`checked_scalar`, :func:`checked_record`).

Each raises a :class:`~trajhook.TrajhookError` naming the argument, the value and the fix (``HINT:``),
before training starts.
"""

from __future__ import annotations

import math
import numbers
import operator
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trajhook import distributed
from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe, numpy_dtype
from trajhook.schedule import as_schedule
from trajhook.store import check_store, dump_json

MAX_STEP = 2**63 - 1  # steps are stored as int64
ON_ERROR = ("raise", "warn")


def check_recorder_args(path: str | os.PathLike, probes: Sequence[Probe], every_n_steps: Any) -> Path:
    """Checks that need no model and no run; shared by the Recorder and the integrations."""
    as_schedule(every_n_steps)  # an int, log_spaced(...), a list of steps or a callable (see trajhook.schedule)
    if isinstance(probes, Probe) or not isinstance(probes, Sequence) or not probes:
        raise TrajhookError(
            f"Recorder: probes={probes!r} is not a non-empty list of probes. HINT: pass e.g. [TensorProbe(...)]."
        )
    names = [getattr(p, "name", None) for p in probes]
    for probe in probes:
        if not isinstance(probe, Probe):
            raise TrajhookError(
                f"Recorder: {probe!r} is not a trajhook Probe. HINT: subclass trajhook.Probe, or wrap "
                "fixed inputs in TensorProbe(name, inputs)."
            )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise TrajhookError(
            f"Recorder: probe names {duplicates} are used more than once. "
            "HINT: give each probe its own name=, e.g. MazeProbe(seed=1, name='maze_seed1')."
        )
    if not isinstance(path, str | os.PathLike) or "\0" in os.fspath(path):
        raise TrajhookError(
            f"Recorder: path={path!r} is not a file path. HINT: pass a str or pathlib.Path, e.g. 'runs/log.h5'."
        )
    path = Path(path)
    if not distributed.is_writer():
        return path  # another rank writes the store: this one never touches the file
    if path.is_dir():
        raise TrajhookError(f"Recorder: path {str(path)!r} is a directory. HINT: pass a file path, e.g. 'runs/log.h5'.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise TrajhookError(
            f"Recorder: cannot create the folder {str(path.parent)!r} ({err.strerror}). "
            "HINT: choose a path in a writable folder."
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrajhookError(f"Recorder: path {str(path)!r} is not writable. HINT: choose a path in a writable folder.")
    if path.exists() and path.stat().st_size > 0:
        check_store(path)  # raises if it is not a trajhook store
    return path


def check_options(metadata: Any, overwrite: Any, flush_every_s: Any, max_queue: Any, forward_context: Any) -> None:
    """The Recorder's keyword arguments, checked once at construction."""
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise TrajhookError(
                f"Recorder: metadata={metadata!r:.80} is not a dict with str keys. "
                "HINT: pass e.g. metadata={'lr': 3e-4}."
            )
        dump_json(dict(metadata), "Recorder metadata")
    if not isinstance(overwrite, bool | np.bool_):
        raise TrajhookError(f"Recorder: overwrite={overwrite!r} is not a bool. HINT: pass overwrite=True or False.")
    if (
        isinstance(flush_every_s, bool)
        or not isinstance(flush_every_s, numbers.Real)
        or not math.isfinite(flush_every_s)
        or flush_every_s <= 0
    ):
        raise TrajhookError(
            f"Recorder: flush_every_s={flush_every_s!r} is not a positive number of seconds. "
            "HINT: pass e.g. flush_every_s=5.0."
        )
    if isinstance(max_queue, bool) or not isinstance(max_queue, int | np.integer) or max_queue <= 0:
        raise TrajhookError(f"Recorder: max_queue={max_queue!r} is not a positive integer. HINT: e.g. max_queue=8.")
    if forward_context is not None and not callable(forward_context):
        raise TrajhookError(
            f"Recorder: forward_context={forward_context!r} is not callable. HINT: pass a function that returns a "
            "context manager, e.g. forward_context=lambda: torch.autocast('cpu'), or leave it out."
        )


def check_on_error(on_error: Any) -> str:
    """``on_error`` is ``"raise"`` or ``"warn"``.

    >>> check_on_error("warn")
    'warn'
    """
    if not isinstance(on_error, str) or on_error not in ON_ERROR:
        raise TrajhookError(
            f"Recorder: on_error={on_error!r} is not 'raise' or 'warn'. HINT: 'raise' stops training at a "
            "write error (e.g. a full disk); 'warn' warns once and lets training go on without the store."
        )
    return on_error


def check_forward_context(forward_context: Callable[[], Any]) -> None:
    """``forward_context()`` must return a context manager; asked once, at setup."""
    context = forward_context()
    if not (hasattr(context, "__enter__") and hasattr(context, "__exit__")):
        raise TrajhookError(
            f"Recorder: forward_context() returned {type(context).__name__}, not a context manager. "
            "HINT: pass a callable that returns one, e.g. forward_context=lambda: torch.autocast('cpu')."
        )


def check_text(who: str, text: Any, max_bytes: int) -> None:
    """A scalar name or event label: a non-empty str of at most ``max_bytes`` UTF-8 bytes, with no NUL."""
    problem = None
    if not isinstance(text, str) or not text:
        problem = "is not a non-empty string"
    elif "\0" in text:
        problem = "contains a NUL character, which the store cannot hold"
    else:
        try:
            if len(text.encode()) > max_bytes:
                problem = f"is over {max_bytes} bytes"
        except UnicodeEncodeError:
            problem = "is not valid Unicode (a lone surrogate)"
    if problem:
        raise TrajhookError(f"{who} {text!r:.80} {problem}. HINT: pass a short readable text, e.g. 'LR drop'.")


def checked_scalar(name: str, value: Any) -> float | torch.Tensor:
    """A real number as a float, or a one-element tensor detached and copied (read off the device later)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TrajhookError(
                f"Recorder.log_scalars: scalar {name!r} has shape {tuple(value.shape)}. "
                "HINT: pass one number, e.g. loss=loss.detach()."
            )
        if value.is_complex() or value.layout != torch.strided:
            raise TrajhookError(
                f"Recorder.log_scalars: scalar {name!r} is a {value.dtype} {value.layout} tensor; the store holds "
                "real numbers. HINT: pass e.g. value.abs() or value.real."
            )
        return value.detach().clone()  # a running total updated in place must log its value now
    if isinstance(value, complex | np.complexfloating):
        raise TrajhookError(
            f"Recorder.log_scalars: scalar {name}={value!r} is complex; the store holds real numbers. "
            "HINT: pass e.g. abs(value) or value.real."
        )
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise TrajhookError(f"Recorder.log_scalars: scalar {name}={value!r:.80} is not a number. HINT: pass a float.")
    try:
        return float(value)
    except OverflowError:
        raise TrajhookError(
            f"Recorder.log_scalars: scalar {name}={value} is too large for a float64. HINT: pass a float."
        ) from None


def checked_step(step: Any, method: str, last: int = 0, table: str = "record") -> int:
    """``step`` as an int in [0, 2**63), not below ``last``, the last step this session wrote to ``table``.

    >>> checked_step(np.int64(7), "record")
    7
    >>> checked_step(3, "mark", last=5, table="event")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: Recorder.mark: step 3 is below step 5, which this session already wrote ...
    """
    if type(step) is not int:
        try:
            if isinstance(step, bool | np.bool_):
                raise TypeError
            step = operator.index(step)  # numpy ints and integer 0-d tensors too
        except TypeError:
            raise TrajhookError(
                f"Recorder.{method}: step={step!r} is not an integer. "
                "HINT: pass the optimizer step as an int, e.g. trainer.global_step."
            ) from None
    if not 0 <= step <= MAX_STEP:
        raise TrajhookError(
            f"Recorder.{method}: step={step} is outside 0..2**63-1, the range the store holds. "
            "HINT: pass the optimizer step, counted from 0."
        )
    if step < last:
        raise TrajhookError(
            f"Recorder.{method}: step {step} is below step {last}, which this session already "
            f"wrote to its {table}s. "
            "HINT: pass steps that never decrease (e.g. the optimizer step); to go back to an earlier "
            "checkpoint, create a new Recorder on the same path: it resumes the store and drops the rows "
            "from the first step it writes on."
        )
    return step


def checked_record(
    probe: Probe, record: Any, step: int | None, setup_dtypes: Mapping[str, torch.dtype] | None = None
) -> dict[str, torch.Tensor]:
    """What ``probe.run`` returned, checked against the outputs it declared (and, after setup, the dtypes it had then).

    ``step`` is None at setup. Returns the record as a dict.
    """
    when = "at setup" if step is None else f"at step {step}"
    where = f"{type(probe).__name__} {probe.name!r}"
    if not isinstance(record, Mapping):
        raise TrajhookError(
            f"{where}.run returned {type(record).__name__} {when}; it must return a dict of tensors. "
            "HINT: return {output name: tensor} for every output declared with add_output."
        )
    declared = probe.outputs
    if set(record) != set(declared):
        raise TrajhookError(
            f"{where}.run returned {sorted(record)} {when}, but declares {sorted(declared)}. "
            "HINT: return exactly the outputs declared with add_output."
        )
    setup_dtypes = setup_dtypes or {}
    for key, spec in declared.items():
        value = record[key]
        if isinstance(value, torch.Tensor) and value.layout != torch.strided:
            raise TrajhookError(
                f"{where} output {key!r} is a {value.layout} tensor {when}; the store holds dense arrays. "
                "HINT: return value.to_dense()."
            )
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != spec.shape:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TrajhookError(
                f"{where} output {key!r} is {got} {when}, declared {spec.describe()}. "
                "HINT: every record must have the declared shape."
            )
        if step is not None and value.dtype != setup_dtypes.get(key, value.dtype):
            raise TrajhookError(
                f"{where} output {key!r} is {value.dtype} {when}, but was {setup_dtypes[key]} at setup. "
                f"HINT: return the same dtype at every record, e.g. value.to({setup_dtypes[key]})."
            )
        if step is None and not np.can_cast(numpy_dtype(value.dtype), spec.dtype, "same_kind"):
            raise TrajhookError(
                f"{where} output {key!r} is {value.dtype} {when}, declared {spec.describe()}: storing it would "
                f"change its values. HINT: return {spec.dtype} values, or declare the dtype the output has."
            )
    return dict(record)
