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
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trajhook.extras import require
from trajhook.integrations.base import EveryNSteps, RecordingCallback
from trajhook.probes.base import Probe
from trajhook.probes.maze import MazeProbe

require("stable_baselines3", "sb3", "trajhook.integrations.sb3")
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402


class TrajectoryCallback(BaseCallback, RecordingCallback):
    """Record ``probes`` on ``model.policy`` every ``every_n_steps`` environment timesteps.

    ``model.learn(total_timesteps, callback=TrajectoryCallback("runs/log.h5", [MazeProbe(seed=7)], 10_000))``.

    The step is SB3's ``num_timesteps`` (it grows by ``n_envs`` per vec-env step), the x-axis of
    SB3's own logger. The callback records the policy learning starts from (step 0, or
    ``num_timesteps`` when ``learn(reset_num_timesteps=False)`` continues), then at each due step
    as the Recorder decides. A :class:`~trajhook.MazeProbe` needs no ``policy_fn`` here: the callback
    hands it SB3's own preprocessing and action distribution (:meth:`MazeProbe.adapt`).
    ``callback.mark("curriculum step")`` marks the current step (or pass ``step=``). Each ``learn()``
    closes the store at its end; a later ``learn()`` resumes it. Further keyword arguments go to
    :class:`trajhook.Recorder`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        probes: Sequence[Probe],
        every_n_steps: EveryNSteps = 10_000,
        *,
        verbose: int = 0,
        **recorder_kwargs: Any,
    ) -> None:
        super().__init__(verbose)
        self._init_recording(path, probes, every_n_steps, recorder_kwargs)

    # -- hooks: one line each ---------------------------------------------------------------------

    def _on_training_start(self) -> None:
        self._record_start(self._adapted(self.model.policy), self.model.num_timesteps)

    def _on_step(self) -> bool:
        self._record_if_due(self.model.policy, self.model.num_timesteps)
        return True  # never stops training

    def _on_training_end(self) -> None:
        self._close()

    # -- helpers ----------------------------------------------------------------------------------

    def _adapted(self, policy: Any) -> Any:
        """Hand each MazeProbe SB3's way to call the policy (unless the user gave one); warn on a mode mismatch."""
        _warn_on_other_distribution_mode(self.training_env, self.probes)
        for probe in self.probes:
            if isinstance(probe, MazeProbe):
                probe.adapt(policy_fn=sb3_action_distribution, preprocess=sb3_preprocess(policy))
        return policy


def sb3_action_distribution(policy: Any, obs: torch.Tensor) -> torch.distributions.Categorical:
    """The policy's action distribution for a batch of observations, as SB3 samples actions from it."""
    return policy.get_distribution(obs).distribution


def sb3_preprocess(policy: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """SB3's own preprocessing: ``policy.obs_to_tensor`` (channels first, on the policy's device; the policy
    scales images in its forward)."""

    def preprocess(obs: torch.Tensor) -> torch.Tensor:
        return policy.obs_to_tensor(obs.cpu().numpy())[0]

    return preprocess


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
