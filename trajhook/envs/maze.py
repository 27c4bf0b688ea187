"""A Gymnasium environment for procgen's maze: one level or a range of levels, easy or hard.

For Stable-Baselines3 and anyone else who wants the maze behind the Gymnasium API. It shares its
level helpers with :class:`~trajhook.MazeProbe` (the same ``start_level``, ``distribution_mode``
and state parsing), so a probe on a held-out level sees exactly the frames training sees.

>>> env = ProcgenMazeEnv(start_level=0, num_levels=1, distribution_mode="easy")
>>> obs, info = env.reset(seed=0)
>>> obs.shape, obs.dtype, info["level_seed"]
((64, 64, 3), dtype('uint8'), 0)
>>> obs, reward, terminated, truncated, info = env.step(7)  # RIGHT
>>> env.state.world_dim
15
>>> env.close()
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from trajhook.errors import TrajhookError
from trajhook.extras import require
from trajhook.probes.maze import (
    N_ACTIONS,
    check_distribution_mode,
    check_render_options,
    check_seed,
    make_maze_env,
)
from trajhook.procgen_state import MazeState, parse_maze_state

gymnasium = require("gymnasium", "maze", "trajhook.envs.maze")
from gymnasium import spaces  # noqa: E402


class ProcgenMazeEnv(gymnasium.Env):
    """procgen's maze on levels ``start_level .. start_level + num_levels - 1``.

    Observations are procgen's 64x64x3 uint8 frames (channels last; SB3 transposes them itself),
    actions procgen's 15 (:data:`trajhook.probes.maze.ACTION_DIRECTION`). Reaching the cheese
    terminates an episode (reward 10); procgen's own time limit truncates it. As in procgen, the
    observation returned with the end of an episode is already the first frame of the next one,
    which :meth:`reset` then returns. ``reset(seed=s)`` makes the sequence of levels reproducible.

    Args:
        start_level: the first level seed.
        num_levels: how many consecutive levels episodes are drawn from (1: always the same maze).
        distribution_mode: ``"easy"`` (15x15 world) or ``"hard"`` (25x25), as for the MazeProbe.
        render_mode: ``None`` or ``"rgb_array"``.
        render_options: procgen's drawing switches (:data:`trajhook.probes.maze.RENDER_OPTIONS`), e.g.
            ``{"use_monochrome_assets": True}``; give the MazeProbe the same ones.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        start_level: int = 0,
        num_levels: int = 1,
        distribution_mode: str = "hard",
        render_mode: str | None = None,
        render_options: dict[str, bool] | None = None,
    ) -> None:
        self.start_level = check_seed("ProcgenMazeEnv", start_level)
        self.render_options = check_render_options("ProcgenMazeEnv", render_options)
        if isinstance(num_levels, bool) or not isinstance(num_levels, int | np.integer) or num_levels < 1:
            raise TrajhookError(
                f"ProcgenMazeEnv: num_levels={num_levels!r} is not a positive int. HINT: 1 for one fixed maze, "
                "e.g. 200 for a training range."
            )
        self.num_levels = int(num_levels)
        self.distribution_mode = check_distribution_mode("ProcgenMazeEnv", distribution_mode)
        if render_mode not in (None, "rgb_array"):
            raise TrajhookError(f"ProcgenMazeEnv: render_mode={render_mode!r}. HINT: use None or 'rgb_array'.")
        self.render_mode = render_mode
        self.observation_space = spaces.Box(0, 255, (64, 64, 3), dtype=np.uint8)
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._env: Any = None
        self._obs: np.ndarray | None = None
        self._at_start = False  # the current frame is the first of an episode

    def _new_env(self, rand_seed: int) -> None:
        # Close the old env here, not in the garbage collector: gym3's CEnv.__del__ run by a GC pass in
        # the middle of another env's creation re-enters cffi and deadlocks the process.
        self.close()
        self._env = make_maze_env(
            self.start_level, self.distribution_mode, self.num_levels, rand_seed=rand_seed,
            render_options=self.render_options,
        )  # fmt: skip
        _, obs, _ = self._env.observe()
        self._obs, self._at_start = obs["rgb"][0].copy(), True

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        if seed is not None or self._env is None or not self._at_start:
            self._new_env(int(self.np_random.integers(2**31 - 1)))
        return self._obs.copy(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._env is None:
            raise TrajhookError("ProcgenMazeEnv: step before reset. HINT: call env.reset() first.")
        self._env.act(np.array([int(action)]))
        reward, obs, first = self._env.observe()
        self._obs, self._at_start = obs["rgb"][0].copy(), bool(first[0])
        info = self._info()
        terminated = self._at_start and bool(info.get("prev_level_complete", 0))
        truncated = self._at_start and not terminated
        return self._obs.copy(), float(reward[0]), terminated, truncated, info

    def render(self) -> np.ndarray | None:
        return None if self.render_mode is None or self._obs is None else self._obs.copy()

    @property
    def state(self) -> MazeState:
        """The current level's parsed procgen state: grid, mouse and cheese cells, world size."""
        if self._env is None:
            raise TrajhookError("ProcgenMazeEnv: no level yet. HINT: call env.reset() first.")
        return parse_maze_state(self._env.callmethod("get_state")[0])

    def _info(self) -> dict:
        info = dict(self._env.get_info()[0])
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in info.items() if k != "rgb"}

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
        self._env = None
