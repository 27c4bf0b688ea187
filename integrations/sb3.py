"""Stable-Baselines3: ``TrajectoryCallback`` records the probes every N environment timesteps.

>>> import tempfile
>>> from trajhook import MazeProbe
>>> from trajhook.integrations.sb3 import TrajectoryCallback
>>> cb = TrajectoryCallback(tempfile.mkdtemp() + "/run.h5", [MazeProbe(seed=0)], every_n_steps=2048)
>>> cb.every_n_steps
2048
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

from trajhook.errors import TrajhookError
from trajhook.extras import require
from trajhook.probes.base import Probe
from trajhook.recorder import Recorder, check_recorder_args

require("stable_baselines3", "sb3", "trajhook.integrations.sb3")
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402


class TrajectoryCallback(BaseCallback):
    """Record ``probes`` on ``model.policy`` every ``every_n_steps`` environment timesteps.

    ``model.learn(total_timesteps, callback=TrajectoryCallback("runs/log.h5", [MazeProbe(seed=7)], 10_000))``.

    The step is SB3's ``num_timesteps`` (it grows by ``n_envs`` per vec-env step), the x-axis of
    SB3's own logger. The callback records the policy learning starts from (step 0, or
    ``num_timesteps`` when ``learn(reset_num_timesteps=False)`` continues), then at each due step
    as the Recorder decides. A :class:`~trajhook.MazeProbe` needs no ``policy_fn`` here: it uses
    SB3's own preprocessing and action distribution. Each ``learn()`` closes the store at its end;
    a later ``learn()`` resumes it. Further keyword arguments go to :class:`trajhook.Recorder`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        probes: Sequence[Probe],
        every_n_steps: int = 10_000,
        *,
        verbose: int = 0,
        **recorder_kwargs: Any,
    ) -> None:
        super().__init__(verbose)
        check_recorder_args(path, probes, every_n_steps)
        self.path = os.fspath(path)
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Recorder | None = None
        self._state: dict[str, Any] = {}

    # -- hooks: one line each ---------------------------------------------------------------------

    def _on_training_start(self) -> None:
        self._record_start()

    def _on_step(self) -> bool:
        return self._record_if_due()

    def _on_training_end(self) -> None:
        self._close()

    def mark(self, label: str, step: int | None = None) -> None:
        """Mark an event at ``step`` (default: the current ``num_timesteps``)."""
        if self.recorder is None:
            raise TrajhookError("TrajectoryCallback.mark: no learn() is running. HINT: mark from inside training.")
        self.recorder.mark(self.num_timesteps if step is None else step, label)

    # -- helpers ----------------------------------------------------------------------------------

    def _record_start(self) -> None:
        """Open a Recorder for this learn() and record the policy it starts from."""
        _warn_on_other_distribution_mode(self.training_env, self.probes)
        self.recorder = Recorder(self.path, self.probes, self.every_n_steps, **self.recorder_kwargs)
        self.recorder.load_state_dict(self._state)
        self.recorder_kwargs["overwrite"] = False  # a later learn() continues the store
        self.recorder.setup(self.model.policy)  # runs every probe once: bad inputs fail before the first step
        self.recorder.record(self.model.policy, self.model.num_timesteps)

    def _record_if_due(self) -> bool:
        if self.recorder is not None:
            self.recorder.maybe_record(self.model.policy, self.model.num_timesteps)
        return True

    def _close(self) -> None:
        if self.recorder is not None:
            self._state = self.recorder.state_dict()
            self.recorder, recorder = None, self.recorder
            recorder.close()


def _warn_on_other_distribution_mode(env: Any, probes: Sequence[Probe]) -> None:
    """Warn when a MazeProbe's ``distribution_mode`` differs from the training maze env's (e.g. easy vs hard)."""
    try:
        training = set(env.get_attr("distribution_mode"))
    except Exception:
        return  # not trajhook's maze env: nothing to compare
    for probe in probes:
        mode = getattr(probe, "distribution_mode", None)
        if mode is not None and training and mode not in training:
            warnings.warn(
                f"MazeProbe {probe.name!r}: distribution_mode={mode!r}, but the policy trains on "
                f"{sorted(training)}: the probe shows it a world size it never sees in training. "
                f"HINT: pass MazeProbe(..., distribution_mode={sorted(training)[0]!r}) unless that is the point.",
                stacklevel=3,
            )
