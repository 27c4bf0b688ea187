"""The Recorder that writes a replay: records computed elsewhere (a worker process, another rank) go through the
same checks, writer thread and store as a live run's.

>>> import tempfile
>>> import numpy as np
>>> from trajhook import TensorProbe, load
>>> probe = TensorProbe("lin", torch.ones(1, 2))
>>> probe.setup(torch.nn.Linear(2, 1), torch.device("cpu"))
>>> path = tempfile.mkdtemp() + "/run.h5"
>>> with Committer(path, [probe], wandb=False) as rec:
...     rec.commit(10, {"lin": {"output": torch.full((1, 1), 0.5)}})
>>> load(path).steps.tolist(), np.asarray(load(path)["lin"]["output"]).ravel().tolist()
([10], [0.5])
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from trajhook.recording.recorder import Recorder


class Computed:
    """Records computed elsewhere, handed to :meth:`Recorder.record` in the place of a model."""

    def __init__(self, records: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.records = records


class Committer(Recorder):
    """A :class:`~trajhook.Recorder` whose probes ran elsewhere: :meth:`commit` writes one step's records.

    Everything after the probe run is the Recorder's own: the output checks (the first record is checked
    as a setup record), the resume drop, the writer thread, checksums, sinks and stage trackers. The probes
    must be set up (their outputs declared) in this process too: they give the schema.
    """

    def __init__(self, path: Any, probes: Any, *, scalars_through: int = -1, **kwargs: Any) -> None:
        super().__init__(path, probes, 1, **kwargs)
        self.scalars_through = scalars_through  # scalars at or before this step are in the store already

    def commit(
        self,
        step: int,
        records: Mapping[str, Mapping[str, torch.Tensor]],
        scalars: Mapping[int, Mapping[str, float]] | None = None,
    ) -> None:
        """Write ``records`` (probe name -> output name -> CPU tensor) at ``step``, then the ``scalars``
        (step -> name -> value) the checkpoint carries from after the last ones written up to ``step - 1``:
        a loss logged at the step whose weights computed it, as the live callbacks log it."""
        self.record(Computed(records), step)  # first: a resumed store's first write is this record, never before
        for at in sorted(s for s in (scalars or {}) if self.scalars_through < s < step):
            self.log_scalars(at, **scalars[at])  # type: ignore[index]
        self.scalars_through = max(self.scalars_through, step - 1)

    def _probe(self, model: Any, attempt: Any, check: Any, setup: bool = False) -> dict[str, dict] | None:
        return {p.name: check(p, attempt(p, lambda p=p: dict(model.records[p.name]))) for p in self.probes}
