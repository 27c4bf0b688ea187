"""MazeProbe: the policy's action distribution with the mouse on every free cell of one maze.

At setup the probe builds one procgen maze level, reads its grid from the serialized state
(:mod:`trajhook.procgen_state`), and renders the 64x64 observation with the mouse on each free
cell (all but the cheese) by patching the mouse position into the state and calling
``set_state``. Each record is then one batched forward pass over those cached observations.

Directions are ``left, right, up, down, no-op`` (:data:`DIRECTIONS`), with y pointing up (row 0
is the bottom of the maze). The arrow at a cell is ``(P_right - P_left, P_up - P_down)``.
"""

from __future__ import annotations

import gc
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trajhook.errors import TrajhookError
from trajhook.extras import require
from trajhook.probes.base import Probe
from trajhook.procgen_state import MazeState, parse_maze_state

N_ACTIONS = 15
DIRECTIONS = ("left", "right", "up", "down", "no-op")
# procgen's 15 actions: 0 LEFT+DOWN, 1 LEFT, 2 LEFT+UP, 3 DOWN, 4 none, 5 UP, 6 RIGHT+DOWN, 7 RIGHT,
# 8 RIGHT+UP, 9-14 keys that do nothing in the maze. The maze drops vy when vx != 0.
ACTION_DIRECTION = (0, 0, 0, 3, 4, 2, 1, 1, 1, 4, 4, 4, 4, 4, 4)
DISTRIBUTION_MODES = ("easy", "hard")

if TYPE_CHECKING:
    from trajhook.analysis.online import StageTracker

Preprocess = Callable[[torch.Tensor], Any]
PolicyFn = Callable[[torch.nn.Module, Any], Any]


def direction_matrix() -> np.ndarray:
    """The ``(15, 5)`` 0/1 matrix that sums action probabilities into :data:`DIRECTIONS`.

    >>> m = direction_matrix()
    >>> m.sum(axis=0).tolist()  # left, right, up, down, no-op
    [3.0, 3.0, 1.0, 1.0, 7.0]
    >>> [DIRECTIONS[i] for i in m[[1, 7, 5, 3]].argmax(axis=1)]
    ['left', 'right', 'up', 'down']
    """
    matrix = np.zeros((N_ACTIONS, len(DIRECTIONS)), dtype=np.float32)
    matrix[np.arange(N_ACTIONS), ACTION_DIRECTION] = 1.0
    return matrix


def directions_to_vectors(direction_probs: Any) -> Any:
    """``(..., 5)`` direction probabilities to ``(..., 2)`` arrows ``(P_right - P_left, P_up - P_down)``.

    Works on numpy arrays and on torch tensors (on any device) alike.

    >>> directions_to_vectors(np.array([[0.0, 1.0, 0.0, 0.0, 0.0], [0.1, 0.1, 0.0, 0.5, 0.3]]))
    array([[ 1. ,  0. ],
           [ 0. , -0.5]])
    """
    return direction_probs[..., [1, 2]] - direction_probs[..., [0, 3]]


def float_nchw(obs: torch.Tensor) -> torch.Tensor:
    """Default preprocessing: uint8 ``(n, 64, 64, 3)`` to float32 ``(n, 3, 64, 64)`` in [0, 1].

    >>> float_nchw(torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)).shape
    torch.Size([1, 3, 64, 64])
    """
    return obs.permute(0, 3, 1, 2).float().div(255.0).contiguous()


def uint8_nhwc(obs: torch.Tensor) -> torch.Tensor:
    """Preprocessing for agents that take raw frames (e.g. cleanrl's ``ppo_procgen``): unchanged."""
    return obs


PREPROCESSORS: dict[str, Preprocess] = {"float_nchw": float_nchw, "uint8_nhwc": uint8_nhwc}


def make_maze_env(
    seed: int,
    distribution_mode: str = "hard",
    num_levels: int = 1,
    rand_seed: int | None = None,
    render_options: dict[str, bool] | None = None,
) -> Any:
    """A one-environment procgen maze on levels ``seed .. seed + num_levels - 1`` (procgen imported here).

    ``render_options`` are procgen's drawing switches (see :data:`RENDER_OPTIONS`), e.g.
    ``{"use_monochrome_assets": True}``.
    """
    procgen = require("procgen", "maze", "the maze probe")
    extra = {} if rand_seed is None else {"rand_seed": int(rand_seed)}
    extra.update(render_options or {})
    # No garbage collection while cffi builds the env: a collected, unclosed gym3 env's __del__ would
    # re-enter cffi's lock here and deadlock the process (seen in the test suite). Close envs you make.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return procgen.ProcgenGym3Env(
            num=1,
            env_name="maze",
            start_level=int(seed),
            num_levels=int(num_levels),
            distribution_mode=distribution_mode,
            num_threads=1,
            **extra,
        )
    finally:
        if collecting:
            gc.enable()


def procgen_version() -> str:
    """The installed procgen version, e.g. ``'0.10.7'``."""
    procgen = require("procgen", "maze", "the maze probe")

    return str(getattr(procgen, "__version__", "unknown")).strip()


@dataclass(frozen=True)
class MazeLevel:
    """One rendered level: the parsed state, the probed cells and their observations."""

    seed: int
    distribution_mode: str
    state: MazeState
    cells: np.ndarray  # (n, 2) int64 (row, col), every free cell except the cheese
    observations: np.ndarray  # (n, 64, 64, 3) uint8, mouse on each cell, facing left


def render_cells(env: Any, state: MazeState, cells: np.ndarray) -> np.ndarray:
    """Observations ``(n, 64, 64, 3)`` uint8 with the mouse on each ``(row, col)``, facing left."""
    frames = np.empty((len(cells), 64, 64, 3), dtype=np.uint8)
    for i, (row, col) in enumerate(cells):
        env.callmethod("set_state", [state.with_mouse(row, col, reflected=False)])
        _, obs, _ = env.observe()
        frames[i] = obs["rgb"][0]
    env.callmethod("set_state", [state.data])  # leave the env as it was
    return frames


def check_distribution_mode(owner: str, distribution_mode: str) -> str:
    """Return ``distribution_mode`` if the maze probe supports it, else raise.

    >>> check_distribution_mode("MazeProbe", "easy")
    'easy'
    """
    if distribution_mode not in DISTRIBUTION_MODES:
        raise TrajhookError(
            f"{owner}: distribution_mode {distribution_mode!r} is not supported. "
            f"HINT: use one of {list(DISTRIBUTION_MODES)} (the modes that draw the whole maze)."
        )
    return distribution_mode


# procgen's switches that change only how a level is drawn, not the level (procgen's ``ProcgenGym3Env``)
RENDER_OPTIONS = ("use_backgrounds", "restrict_themes", "use_monochrome_assets")


def check_render_options(owner: str, options: Any) -> dict[str, bool]:
    """Return ``options`` as a plain dict of procgen drawing switches, else raise.

    >>> check_render_options("MazeProbe", {"use_monochrome_assets": True})
    {'use_monochrome_assets': True}
    >>> check_render_options("MazeProbe", {"monochrome": True})
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: MazeProbe: render_options key 'monochrome' is not one of procgen's ... switches ...
    """
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise TrajhookError(
            f"{owner}: render_options {options!r} is not a dict. "
            "HINT: pass e.g. render_options={'use_monochrome_assets': True}, as given to the training env."
        )
    for key, value in options.items():
        if key not in RENDER_OPTIONS:
            raise TrajhookError(
                f"{owner}: render_options key {key!r} is not one of procgen's drawing switches {RENDER_OPTIONS}. "
                "HINT: pass the same switches as the training environment's ProcgenGym3Env."
            )
        if not isinstance(value, bool | np.bool_):
            raise TrajhookError(
                f"{owner}: render_options[{key!r}] = {value!r} is not a bool. HINT: pass True or False."
            )
    return {key: bool(value) for key, value in options.items()}


def check_seed(owner: str, seed: Any) -> int:
    """Return ``seed`` as an int if it can be a procgen level seed, else raise.

    >>> check_seed("MazeProbe", np.int64(3))
    3
    """
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or not 0 <= seed < 2**31:
        raise TrajhookError(
            f"{owner}: seed {seed!r} is not a procgen level seed, an int in 0..2**31-1 (procgen's seeds are "
            "31-bit). HINT: pass e.g. seed=0."
        )
    return int(seed)


def check_cheese(owner: str, cheese: Any) -> tuple[int, int] | None:
    """Return ``cheese`` as a ``(row, col)`` tuple of ints (or None), else raise.

    >>> check_cheese("MazeProbe", [1, np.int64(3)])
    (1, 3)
    """
    if cheese is None:
        return None
    ok = isinstance(cheese, tuple | list) and len(cheese) == 2
    if not ok or not all(isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 0 for v in cheese):
        raise TrajhookError(
            f"{owner}: cheese {cheese!r} is not a (row, col) cell. "
            "HINT: pass two non-negative ints, row 0 at the bottom, e.g. cheese=(1, 1) for the maze's bottom-left "
            "cell of a 15x15 easy world."
        )
    return int(cheese[0]), int(cheese[1])


def load_maze_level(
    seed: int,
    distribution_mode: str = "hard",
    env: Any = None,
    render_options: dict[str, bool] | None = None,
    cheese: tuple[int, int] | None = None,
) -> MazeLevel:
    """Build level ``seed`` with procgen and render the mouse on every free non-cheese cell.

    ``cheese=(row, col)`` first moves the cheese to that empty cell (:meth:`MazeState.with_cheese`), so
    procgen draws it there and the probed cells are the level's other free cells.
    """
    check_distribution_mode("load_maze_level", distribution_mode)
    check_seed("load_maze_level", seed)
    render_options = check_render_options("load_maze_level", render_options)
    cheese = check_cheese("load_maze_level", cheese)
    own = env is None
    env = make_maze_env(int(seed), distribution_mode, render_options=render_options) if own else env
    try:
        state = parse_maze_state(env.callmethod("get_state")[0])
        if cheese is not None:
            env.callmethod("set_state", [state.with_cheese(*cheese)])
            state = parse_maze_state(env.callmethod("get_state")[0])
        cells = state.free_cells(include_cheese=False)
        return MazeLevel(int(seed), distribution_mode, state, cells, render_cells(env, state, cells))
    finally:
        if own:  # procgen envs left open pile up threads: a later env in the process can stall
            env.close()


def _check_callable_with_obs(model: Any, probe: str) -> None:
    """Raise, naming ``policy_fn``, when ``model(obs)`` cannot be the policy: no forward, or one needing more."""
    forward = getattr(type(model), "forward", None)
    name = type(model).__name__
    if isinstance(model, torch.nn.Module) and forward is torch.nn.Module.forward:
        raise TrajhookError(
            f"MazeProbe {probe!r}: {name} has no forward(), so the probe cannot call model(obs). "
            "HINT: pass policy_fn=lambda model, obs: <action logits (n, 15)>, e.g. for a cleanrl agent "
            "policy_fn=lambda agent, obs: agent.actor(agent.network(obs.permute(0, 3, 1, 2) / 255.0)) with "
            "preprocess='uint8_nhwc'."
        )
    try:
        params = list(inspect.signature(model.forward if forward is not None else model).parameters.values())
    except (TypeError, ValueError):
        return
    required = [p for p in params if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        args = ", ".join(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        raise TrajhookError(
            f"MazeProbe {probe!r}: {name}.forward({args}) needs more than the observation batch. "
            f"HINT: pass policy_fn=lambda model, obs: ... calling it with the other arguments and returning "
            "action logits (n, 15), a tuple led by them, or a Categorical."
        )


def _as_probs(out: Any, probe: str) -> torch.Tensor:
    """Policy output (logits, a tuple led by logits, a Categorical) to probabilities."""
    if isinstance(out, torch.distributions.Categorical):
        return out.probs.float()
    if isinstance(out, tuple | list) and out:
        out = out[0]
        if isinstance(out, torch.distributions.Categorical):
            return out.probs.float()
    if not isinstance(out, torch.Tensor):
        raise TrajhookError(
            f"MazeProbe {probe!r}: the policy returned {type(out).__name__} {out!r:.80}, "
            "not action logits. "
            "HINT: make the model return logits of shape (batch, 15), a tuple whose first item is those "
            "logits, or a torch.distributions.Categorical; or pass policy_fn=lambda model, obs: logits."
        )
    return torch.softmax(out.float(), dim=-1)


class MazeProbe(Probe):
    """Record a maze policy's action distribution with the mouse on every free cell of one level.

    Args:
        seed: procgen level seed (``start_level``) of the probed maze.
        distribution_mode: ``"hard"`` (25x25 world) or ``"easy"`` (15x15).
        name: probe name, the HDF5 group and W&B key part.
        preprocess: turns the uint8 ``(n, 64, 64, 3)`` observation tensor (on the model's device)
            into the model's input: a callable, ``"float_nchw"`` (default; float32 in [0, 1],
            ``(n, 3, 64, 64)``) or ``"uint8_nhwc"`` (raw frames, e.g. for cleanrl agents).
            Applied once at setup; the result is cached on the device.
        policy_fn: ``policy_fn(model, obs_batch) -> logits`` (or a tuple led by logits, or a
            ``Categorical``) when ``model(obs_batch)`` is not the policy: a model without
            ``forward`` (a cleanrl agent) or whose ``forward`` needs more than the batch.
        track_stages: ``True`` or a :class:`~trajhook.analysis.online.StageTracker`: follow the
            PCA trajectory of the field (``vectors``, flattened) on the writer thread and add an
            event at each confirmed sharp turn, as :class:`~trajhook.TokenLossProbe` does (same
            tracker, delay rules and labels; no ICL score). ``StageTracker("direction_probs")``
            follows the five direction probabilities per cell instead.
        render_options: procgen's drawing switches of the training environment
            (:data:`RENDER_OPTIONS`), e.g. ``{"use_monochrome_assets": True}``: the probe draws its
            frames as the policy was trained to see them. Stored in the probe's metadata.
        cheese: ``(row, col)`` (row 0 at the bottom) of an empty cell to move the level's cheese to
            before rendering, e.g. far from the top-right corner, so that the way to the cheese and the
            way to the corner differ (:func:`trajhook.analysis.maze.goal_agreements`). procgen draws
            it there; the cell the cheese left is probed like any other.

    A framework's callback may supply both (:meth:`adapt`): with
    :class:`trajhook.integrations.sb3.TrajectoryCallback`, a Stable-Baselines3 policy needs neither.
    Match ``distribution_mode`` to the training environment's (cleanrl trains on ``"easy"``).

    Records ``action_probs`` ``(n, 15)``, ``direction_probs`` ``(n, 5)`` over
    :data:`DIRECTIONS` and ``vectors`` ``(n, 2)`` = ``(P_right - P_left, P_up - P_down)``.
    After :meth:`setup`: :attr:`cells` ``(n, 2)`` ``(row, col)`` with row 0 at the bottom,
    :attr:`observations`, :attr:`grid` (procgen codes: empty 100, wall 51, cheese 2),
    :attr:`cheese` and :attr:`start` as ``(row, col)``.
    """

    kind = "maze"

    def __init__(
        self,
        seed: int,
        distribution_mode: str = "hard",
        name: str = "maze",
        preprocess: Preprocess | str | None = None,
        policy_fn: PolicyFn | None = None,
        track_stages: bool | StageTracker = False,
        render_options: dict[str, bool] | None = None,
        cheese: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(name)
        self._preprocess_given = preprocess is not None
        self.seed = check_seed(f"MazeProbe {name!r}", seed)
        self.distribution_mode = check_distribution_mode(f"MazeProbe {name!r}", distribution_mode)
        self.render_options = check_render_options(f"MazeProbe {name!r}", render_options)
        self.moved_cheese = check_cheese(f"MazeProbe {name!r}", cheese)
        if preprocess is None:
            preprocess = "float_nchw"
        if isinstance(preprocess, str):
            if preprocess not in PREPROCESSORS:
                raise TrajhookError(
                    f"MazeProbe {name!r}: preprocess {preprocess!r} is unknown. "
                    f"HINT: use one of {sorted(PREPROCESSORS)} "
                    "or a callable taking a uint8 (n, 64, 64, 3) tensor."
                )
            preprocess = PREPROCESSORS[preprocess]
        if not callable(preprocess):
            raise TrajhookError(
                f"MazeProbe {name!r}: preprocess {preprocess!r} is not callable. "
                "HINT: pass a function of the uint8 (n, 64, 64, 3) observation tensor, or 'float_nchw'."
            )
        if policy_fn is not None and not callable(policy_fn):
            raise TrajhookError(
                f"MazeProbe {name!r}: policy_fn {policy_fn!r} is not callable. "
                "HINT: pass policy_fn=lambda model, obs: model.actor(obs), returning (n, 15) logits."
            )
        self.preprocess: Preprocess = preprocess
        self.policy_fn = policy_fn
        self.level: MazeLevel | None = None
        self._inputs: Any = None
        self._directions: torch.Tensor | None = None
        self._checked_finite = False  # non-finite policy output is an error on the first (setup) run only
        self.stage_tracker = None
        if track_stages is not None and track_stages is not False:  # analysis is imported only when asked for
            from trajhook.analysis.online import as_tracker

            self.stage_tracker = as_tracker(track_stages, f"MazeProbe {name!r}", output="vectors")

    def adapt(self, policy_fn: PolicyFn | None = None, preprocess: Preprocess | None = None) -> None:
        """A framework's own way to call its policy and prepare observations, set by its callback before setup.

        What the user passed to the constructor wins: each is used only where none was given.
        """
        if self.policy_fn is None and policy_fn is not None:
            self.policy_fn = policy_fn
        if not self._preprocess_given and preprocess is not None:
            self.preprocess = preprocess

    # -- level facts, available after setup ---------------------------------------------------
    def _level(self) -> MazeLevel:
        if self.level is None:
            raise TrajhookError(
                f"MazeProbe {self.name!r}: the level is not built yet. "
                "HINT: call probe.setup(model, device) (the Recorder does this) before reading it."
            )
        return self.level

    @property
    def cells(self) -> np.ndarray:
        return self._level().cells

    @property
    def observations(self) -> np.ndarray:
        return self._level().observations

    @property
    def grid(self) -> np.ndarray:
        return self._level().state.grid

    @property
    def cheese(self) -> tuple[int, int]:
        return self._level().state.cheese

    @property
    def start(self) -> tuple[int, int]:
        return self._level().state.mouse

    # -- the probe contract -------------------------------------------------------------------
    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Render the level once (kept across setups) and cache the preprocessed batch on ``device``."""
        self._checked_finite = False  # each setup's first run checks again (a probe may be reused)
        if self.level is None:
            try:
                self.level = load_maze_level(
                    self.seed, self.distribution_mode, render_options=self.render_options, cheese=self.moved_cheese
                )
            except TrajhookError as err:
                raise TrajhookError(f"MazeProbe {self.name!r} (level {self.seed}): {err}") from err
        level = self.level
        n = len(level.cells)
        if self.policy_fn is None:
            _check_callable_with_obs(model, self.name)
        self._inputs = self.preprocess(torch.from_numpy(level.observations).to(device))
        self._directions = torch.from_numpy(direction_matrix()).to(device)
        self.merge_device = device
        self.add_output("action_probs", (n, N_ACTIONS), "float32", merge="cat")  # split: blocks of cells, in order
        self.add_output("direction_probs", (n, len(DIRECTIONS)), "float32", merge="cat")
        self.add_output("vectors", (n, 2), "float32", merge="cat")
        state = level.state
        self.metadata.update(
            cells=level.cells.copy(),
            grid=state.grid.copy(),
            cheese=list(state.cheese),
            start=list(state.mouse),
            seed=self.seed,
            distribution_mode=self.distribution_mode,
            render_options=dict(self.render_options),
            cheese_moved=self.moved_cheese is not None,
            maze_dim=state.maze_dim,
            world_dim=state.world_dim,
            procgen_version=procgen_version(),
            directions=list(DIRECTIONS),
        )
        tracker = self.stage_tracker
        if tracker is not None and (tracker.output not in self.outputs or tracker.icl is not None):
            raise TrajhookError(
                f"MazeProbe {self.name!r}: its StageTracker follows {tracker.output!r}"
                + (f" with icl={tracker.icl}" if tracker.icl is not None else "")
                + f", but a maze probe records {sorted(self.outputs)} and has no in-context-learning score. "
                "HINT: use StageTracker('vectors') (the field), or StageTracker('direction_probs')."
            )

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """One batched forward over all cells; returns action, direction probabilities and arrows."""
        return self._forward(model, self._inputs, len(self.cells) if self.level is not None else 0)

    def split(self, ranks: int) -> int:
        """Cells split into one contiguous block per rank (when the cached inputs are one batched tensor)."""
        return min(ranks, len(self.cells)) if ranks > 1 and isinstance(self._inputs, torch.Tensor) else 0

    def run_part(self, model: torch.nn.Module, part: int, parts: int) -> dict[str, torch.Tensor]:
        """One forward over block ``part`` of the cells."""
        block = np.array_split(np.arange(len(self.cells)), parts)[part]
        return self._forward(model, self._inputs[int(block[0]) : int(block[-1]) + 1], len(block))

    def _forward(self, model: torch.nn.Module, inputs: Any, n: int) -> dict[str, torch.Tensor]:
        if self._inputs is None or self._directions is None:
            self._level()
            raise TrajhookError(f"MazeProbe {self.name!r}: run before setup. HINT: call setup(model, device) first.")
        out = model(inputs) if self.policy_fn is None else self.policy_fn(model, inputs)
        action_probs = _as_probs(out, self.name)
        if tuple(action_probs.shape) != (n, N_ACTIONS):
            raise TrajhookError(
                f"MazeProbe {self.name!r}: the policy output has shape {tuple(action_probs.shape)}, expected "
                f"({n}, {N_ACTIONS}) (one row of {N_ACTIONS} procgen action logits per probed cell). "
                "HINT: give the model's head 15 outputs, or pass policy_fn mapping (model, obs) to "
                "(batch, 15) logits; check preprocess if the batch size is wrong."
            )
        if not self._checked_finite and not torch.isfinite(action_probs).all():
            raise TrajhookError(
                f"MazeProbe {self.name!r}: the policy output has non-finite values "
                f"({action_probs.flatten()[:4]!r}...). "
                "HINT: check the model for NaN weights or pass logits rather than log of zero probabilities."
            )
        self._checked_finite = True  # later, a diverged policy is stored as is (the Recorder warns once)
        action_probs = action_probs.to(self._directions.device)
        direction_probs = action_probs @ self._directions
        vectors = directions_to_vectors(direction_probs)
        return {"action_probs": action_probs, "direction_probs": direction_probs, "vectors": vectors}

    def agreements(self, direction_probs: Any) -> dict[str, float]:
        """The share of cells whose strongest move heads for the cheese, and for the maze's top-right corner.

        ``direction_probs`` is one record's ``(n, 5)`` (a tensor or an array); see
        :func:`trajhook.analysis.maze.goal_agreements`.
        """
        from trajhook.analysis.maze import goal_agreements

        probs = direction_probs.detach().float().cpu().numpy() if torch.is_tensor(direction_probs) else direction_probs
        return goal_agreements(probs, self.grid, self.cells, self.cheese)

    def __repr__(self) -> str:
        cheese = f", cheese={self.moved_cheese}" if self.moved_cheese is not None else ""
        return f"MazeProbe(seed={self.seed}, distribution_mode={self.distribution_mode!r}, name={self.name!r}{cheese})"
