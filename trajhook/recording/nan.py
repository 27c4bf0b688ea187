"""The NaN policy, in one place: a probe's NaN or inf is stored as is and warned about once per probe.

At setup, an output declared ``nan_marks_missing`` notes where it is NaN by design (expected there at every
later record too); NaN or inf anywhere else warns before training. Later, on the writer thread, a record
with NaN or inf where the setup run was finite warns once per probe. Nothing is refused: a diverged
policy is data to look at, not an error (a probe may still refuse its own first run, as MazeProbe does).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

from trajhook.probes.base import Probe


def nonfinite_at_setup(probe: Probe, record: Mapping[str, torch.Tensor]) -> tuple[dict[str, np.ndarray], list[str]]:
    """Where the setup run's outputs are NaN or inf: the masks of outputs declared ``nan_marks_missing``
    (expected there later too), and the names of the other outputs that have any (a warning).

    >>> from trajhook import TensorProbe
    >>> probe = TensorProbe("p", torch.ones(1, 2))
    >>> probe.add_output("output", (1, 2))
    >>> nonfinite_at_setup(probe, {"output": torch.tensor([[1.0, float("nan")]])})
    ({}, ['output'])
    """
    nonfinite = {k: ~np.isfinite(t.detach().float().cpu().numpy()) for k, t in record.items() if t.is_floating_point()}
    missing = {k for k, spec in probe.outputs.items() if spec.nan_marks_missing}
    expected = {k: a for k, a in nonfinite.items() if k in missing}
    return expected, [k for k, a in nonfinite.items() if k not in missing and a.any()]


def new_nonfinite(array: np.ndarray, at_setup: np.ndarray | None) -> bool:
    """Whether ``array`` is NaN or inf anywhere the probe's setup run was finite.

    >>> new_nonfinite(np.array([np.nan, 1.0]), np.array([True, False])), new_nonfinite(np.array([1.0, np.nan]), None)
    (False, True)
    """
    nonfinite = ~np.isfinite(array)
    if at_setup is not None:
        nonfinite &= ~at_setup
    return bool(nonfinite.any())


class NonfiniteWatch:
    """Warns once per probe about NaN or inf it was not told to expect: :meth:`at_setup` on the training thread
    before the writer starts, :meth:`at_step` on the writer thread after."""

    def __init__(self) -> None:
        self.expected: dict[str, dict[str, np.ndarray]] = {}  # probe -> output -> NaN by design (setup's mask)
        self.warned: set[str] = set()

    def at_setup(self, probe: Probe, record: Mapping[str, torch.Tensor], warn: bool = True) -> None:
        """Note the setup run's expected NaN; warn (where ``warn``: the rank that writes) about any other."""
        self.expected[probe.name], bad = nonfinite_at_setup(probe, record)
        if bad and warn:
            self.warned.add(probe.name)
            warnings.warn(
                f"Recorder: probe {probe.name!r} produced NaN or inf in {bad} at setup, before training; stored "
                "as is (warned once per probe). HINT: check the model's weights and the probe's inputs; if NaN "
                "marks missing values by design, declare the output with nan_marks_missing=True.",
                stacklevel=3,
            )

    def at_step(self, step: int, arrays: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """Warn once per probe whose outputs at ``step`` are NaN or inf where its setup run was finite."""
        for probe, outputs in arrays.items():
            if probe in self.warned:
                continue
            expected = self.expected.get(probe, {})
            bad = [k for k, a in outputs.items() if a.dtype.kind == "f" and new_nonfinite(a, expected.get(k))]
            if bad:
                self.warned.add(probe)
                warnings.warn(
                    f"Recorder: probe {probe!r} produced NaN or inf in {bad} at step {step}; stored as is "
                    "(warned once per probe).",
                    stacklevel=1,
                )
