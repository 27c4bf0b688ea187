"""Sinks receive every record, scalar and event on the writer thread, after the store has them.

A sink is best effort: the HDF5 store is the record of truth. :class:`SinkSet` isolates
failures, so a sink that raises is warned about once and then skipped; training and the store
go on. :func:`trajhook.sinks.resolve.resolve_sinks` builds the sinks from a Recorder's arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from trajhook.probes.base import Probe


class Sink:
    """Override any of these; all are called on the writer thread, never the training thread."""

    def open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        """Called once, after the probes are set up."""

    def record(self, step: int, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """One record: probe name -> output name -> array."""

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Scalars logged at ``step``."""

    def event(self, step: int, label: str) -> None:
        """An event mark."""

    def close(self) -> None:
        """Flush and release resources."""


class SinkSet:
    """The sinks of one Recorder, each call guarded: a failing sink is warned about once, then dropped.

    Sinks that call an outside service (:class:`~trajhook.sinks.service.ServiceSink`) never raise
    here: they queue and return, and say what they missed at close.
    """

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = list(sinks)

    def open(self, probes: Sequence[Probe], metadata: Mapping[str, Any]) -> None:
        self._call("open", probes, metadata)

    def record(self, step: int, outputs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        self._call("record", step, outputs)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._call("scalars", step, values)

    def event(self, step: int, label: str) -> None:
        self._call("event", step, label)

    def close(self) -> None:
        self._call("close")

    def _call(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as err:
                self.sinks.remove(sink)
                warnings.warn(
                    f"{type(sink).__name__}.{method} failed ({type(err).__name__}: {err}); this sink is off for "
                    "the rest of the run. Training and the HDF5 store go on.",
                    stacklevel=2,
                )
