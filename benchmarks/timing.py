"""What every benchmark shares: the machine's name, and medians of interleaved runs.

Interleaving (a, b, a, b, ... with the order flipped every round) puts background load on all
contenders alike, so that a ratio taken in one run means something on a busy machine too.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


def machine() -> str:
    """One line naming the machine: CPU, cores, memory, OS, Python, torch threads, load."""
    import h5py
    import numpy as np
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = "RAM unknown"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"{cpu}, {os.cpu_count()} logical cores, {memory}, {gpu}; {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"numpy {np.__version__}, h5py {h5py.__version__}; load average {load} at start"
    )


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call of each contender, called in turn ``rounds`` times.

    >>> medians = interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, rounds=5)
    >>> sorted(medians) == ["a", "b"] and all(m >= 0 for m in medians.values())
    True
    """
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders.items())
    for i in range(rounds):
        for name, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


@dataclass
class Figure:
    """One benchmark figure: what was measured, its value, what it is set beside, and their ratio."""

    what: str
    measured: str
    beside: str
    ratio: float | None = None

    def row(self) -> str:
        ratio = f"{self.ratio:.2f}x" if self.ratio is not None else ""
        return f"| {self.what} | {self.measured} | {self.beside} | {ratio} |"


def print_figures(title: str, figures: list[Figure]) -> None:
    """A markdown table, ready for the README."""
    print(f"\n{title}\n")
    print("| what | measured | beside it | ratio |")
    print("|---|---|---|---|")
    for figure in figures:
        print(figure.row())
