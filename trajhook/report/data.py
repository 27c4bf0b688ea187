"""Which records the static report carries: thinned evenly, keeping the first, the last and the events.

The report is a snapshot of the live page (:mod:`trajhook.serve`): its panels, curves and PCA come
from :mod:`trajhook.serve.payloads`; only the maze frames are thinned, to keep the file small.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def thin_indices(steps: np.ndarray, max_frames: int, keep_steps: Sequence[int] = ()) -> np.ndarray:
    """Indices of at most about ``max_frames`` records, evenly spread, always with the first, the
    last, and the record nearest each of ``keep_steps`` (events).

    >>> thin_indices(np.arange(0, 1000, 10), 5, keep_steps=[333]).tolist()
    [0, 25, 33, 50, 74, 99]
    >>> thin_indices(np.array([0, 5]), 100).tolist()
    [0, 1]
    """
    steps = np.asarray(steps)
    n = len(steps)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    chosen = set(np.rint(np.linspace(0, n - 1, min(n, max(2, int(max_frames))))).astype(int).tolist())
    for step in keep_steps:
        chosen.add(int(np.argmin(np.abs(steps - step))))
    return np.array(sorted(chosen), dtype=np.int64)


def run_names(logs: Sequence[Any]) -> list[str]:
    """Short unique names for the runs (objects with a ``path``): the file stems, numbered where they repeat.

    >>> from types import SimpleNamespace
    >>> from pathlib import Path
    >>> run_names([SimpleNamespace(path=Path("a/run.h5")), SimpleNamespace(path=Path("b/run.h5"))])
    ['run', 'run (2)']
    """
    from trajhook.serve.payloads import run_names as names_of_paths

    return names_of_paths([log.path for log in logs])
