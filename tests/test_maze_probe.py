"""MazeProbe against real procgen: grid and cells, rendered observations, recorded vectors, safety."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import deque
from pathlib import Path

import numpy as np
import pytest
import torch

from trajhook.errors import TrajhookError
from trajhook.procgen_state import CHEESE, EMPTY, WALL, parse_maze_state

pytest.importorskip("procgen")

from trajhook.probes.maze import MazeProbe, load_maze_level, make_maze_env

pytestmark = pytest.mark.maze  # procgen: the maze environment (numpy<2)

LEVELS = [("easy", 0), ("easy", 1), ("easy", 7), ("hard", 0), ("hard", 2), ("hard", 5)]
REPO = Path(__file__).resolve().parents[1]
# procgen actions for a move, and (d_row, d_col) with row 0 at the bottom: checked against NOTES.md.
ACTION = {"left": 1, "right": 7, "up": 5, "down": 3}
STEP = {"left": (0, -1), "right": (0, 1), "up": (1, 0), "down": (-1, 0)}


@pytest.fixture(scope="module")
def levels():
    return {(mode, seed): load_maze_level(seed, mode) for mode, seed in LEVELS}


@pytest.mark.parametrize(("mode", "seed"), LEVELS)
def test_cells_and_grid_agree(levels, mode, seed):
    level = levels[mode, seed]
    state, cells, grid = level.state, level.cells, level.state.grid
    world = {"easy": 15, "hard": 25}[mode]
    assert grid.shape == (world, world) == (state.world_dim, state.world_dim)
    # every listed cell is free, the cheese is not listed, and nothing free is missing
    assert (grid[cells[:, 0], cells[:, 1]] == EMPTY).all()
    assert set(map(tuple, cells.tolist())) == set(zip(*np.nonzero(grid == EMPTY), strict=True))
    assert len(set(map(tuple, cells.tolist()))) == len(cells)
    assert (grid == CHEESE).sum() == 1 and tuple(state.cheese) not in set(map(tuple, cells.tolist()))
    # a perfect maze of maze_dim = 2k-1 has 2k^2 - 1 free cells (cheese included), all inside the
    # centred maze_dim square; its k x k "rooms" (even offsets from the corner) are all free
    k = (state.maze_dim + 1) // 2
    assert len(cells) + 1 == 2 * k * k - 1
    margin = (world - state.maze_dim) // 2
    inside = np.zeros_like(grid, dtype=bool)
    inside[margin : margin + state.maze_dim, margin : margin + state.maze_dim] = True
    assert (grid[~inside] == WALL).all()
    rooms = grid[margin : margin + state.maze_dim : 2, margin : margin + state.maze_dim : 2]
    assert rooms.shape == (k, k) and (rooms != WALL).all()
    # the mouse starts in the maze's bottom-left room (maze.cpp: x = y = margin + 0.5)
    assert state.mouse == (margin, margin)
    assert level.observations.shape == (len(cells), 64, 64, 3) and level.observations.dtype == np.uint8


def _walk_targets(grid: np.ndarray, start: tuple[int, int], cheese: tuple[int, int]):
    """BFS tree from the start avoiding the cheese: for each reachable cell, the moves leading there."""
    paths = {start: []}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        for name, (dr, dc) in STEP.items():
            nxt = (cell[0] + dr, cell[1] + dc)
            inside = 0 <= nxt[0] < grid.shape[0] and 0 <= nxt[1] < grid.shape[1]
            if inside and nxt not in paths and nxt != cheese and grid[nxt] != WALL:
                paths[nxt] = [*paths[cell], name]
                queue.append(nxt)
    return paths


@pytest.mark.parametrize(("mode", "seed"), LEVELS)
def test_cached_observations_equal_procgens_render_after_walking_there(levels, mode, seed):
    """Independent path: a fresh env, stepped with real actions along a BFS path to each cell."""
    level = levels[mode, seed]
    index = {tuple(c): i for i, c in enumerate(level.cells.tolist())}
    env = make_maze_env(seed, mode)
    fresh_state = env.callmethod("get_state")
    paths = _walk_targets(level.state.grid, level.state.mouse, level.state.cheese)
    rng = np.random.default_rng(seed)
    targets = sorted(paths, key=lambda c: len(paths[c]))
    pick = rng.choice(len(targets) - 1, size=min(25, len(targets) - 1), replace=False)
    targets = [targets[0]] + [targets[1 + i] for i in pick]
    compared_left_facing = compared_right_facing = 0
    for target in targets:
        env.callmethod("set_state", fresh_state)  # procgen's own untouched state of the new level
        _, obs, _ = env.observe()
        for move in paths[target]:
            env.act(np.array([ACTION[move]], dtype=np.int32))
            _, obs, first = env.observe()
            assert not first[0], "the walk must not end the episode"
        horizontal = [m for m in paths[target] if m in ("left", "right")]
        if horizontal and horizontal[-1] == "right":
            # the sprite faces right since its last horizontal move (is_reflected): compare with a
            # right-facing render of ours, then turn it left by pushing against a wall if possible
            env2 = make_maze_env(seed, mode)
            env2.callmethod("set_state", [level.state.with_mouse(*target, reflected=True)])
            np.testing.assert_array_equal(env2.observe()[1]["rgb"][0], obs["rgb"][0])
            env2.close()
            compared_right_facing += 1
            if target[1] > 0 and level.state.grid[target[0], target[1] - 1] != WALL:
                continue
            env.act(np.array([ACTION["left"]], dtype=np.int32))  # blocked: turns without moving
            _, obs, _ = env.observe()
        np.testing.assert_array_equal(level.observations[index[target]], obs["rgb"][0])
        compared_left_facing += 1
    assert compared_left_facing >= min(10, len(targets) // 2) and compared_left_facing + compared_right_facing >= 1


def _mouse_cells_from_pixels(observations: np.ndarray, world_dim: int) -> np.ndarray:
    """Where the mouse is drawn: centroid of the pixels that differ from the per-pixel median frame."""
    background = np.median(observations, axis=0)
    changed = np.abs(observations.astype(float) - background).sum(axis=-1) > 30  # (n, 64, 64)
    cells = []
    for mask in changed:
        ys, xs = np.nonzero(mask)
        px = 64 / world_dim
        image_row, col = round((ys.mean() + 0.5) / px - 0.5), round((xs.mean() + 0.5) / px - 0.5)
        cells.append((world_dim - 1 - image_row, col))  # image row 0 is the top; grid row 0 the bottom
    return np.array(cells)


@pytest.mark.parametrize(("mode", "seed"), [("easy", 1), ("hard", 0)])
def test_each_observation_shows_the_mouse_on_its_own_cell(levels, mode, seed):
    level = levels[mode, seed]
    np.testing.assert_array_equal(_mouse_cells_from_pixels(level.observations, level.state.world_dim), level.cells)


PLAIN = {"use_monochrome_assets": True, "restrict_themes": True, "use_backgrounds": False}


def test_plain_render_options_draw_the_mouse_as_a_green_square_on_its_own_cell():
    """procgen's plain drawing, as the PPO example trains on: the probe's frames are drawn the same way."""
    level = load_maze_level(234, "easy", render_options=PLAIN)
    textured = load_maze_level(234, "easy")
    np.testing.assert_array_equal(level.cells, textured.cells)  # the same level, drawn differently
    assert not np.array_equal(level.observations, textured.observations)
    green = (level.observations[..., 1] > 200) & (level.observations[..., 0] < 150)  # the plain mouse
    px = 64 / level.state.world_dim
    for mask, (row, col) in zip(green, level.cells, strict=True):
        ys, xs = np.nonzero(mask)
        assert len(ys) >= 9  # a square of about a cell (4.3 px), not a few stray pixels
        image_row, image_col = round((ys.mean() + 0.5) / px - 0.5), round((xs.mean() + 0.5) / px - 0.5)
        assert (level.state.world_dim - 1 - image_row, image_col) == (row, col)
    probe = MazeProbe(seed=234, distribution_mode="easy", render_options=PLAIN)
    _record(probe, ConstantPolicy(torch.zeros(15)))
    np.testing.assert_array_equal(probe.observations, level.observations)
    assert probe.metadata["render_options"] == PLAIN


class ConstantPolicy(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias", logits.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(len(x), 15)


def _record(probe: MazeProbe, model: torch.nn.Module) -> dict[str, np.ndarray]:
    probe.setup(model, torch.device("cpu"))
    model.eval()
    with torch.no_grad():
        return {k: v.numpy() for k, v in probe.run(model).items()}


def test_constant_policy_vectors_match_hand_computation():
    logits = torch.tensor([0.3, -1.0, 0.5, 2.0, 0.0, -0.7, 1.1, 0.2, -2.0, 0.1, 0.0, -0.3, 0.4, 0.9, -1.5])
    record = _record(MazeProbe(seed=3, distribution_mode="easy"), ConstantPolicy(logits))
    p = np.exp(logits.numpy().astype(float))
    p /= p.sum()
    left, right, up, down = p[0] + p[1] + p[2], p[6] + p[7] + p[8], p[5], p[3]
    noop = p[4] + p[9:].sum()
    n = len(record["vectors"])
    np.testing.assert_allclose(record["action_probs"], np.tile(p, (n, 1)), rtol=1e-5)
    np.testing.assert_allclose(record["direction_probs"], np.tile([left, right, up, down, noop], (n, 1)), rtol=1e-5)
    np.testing.assert_allclose(record["vectors"], np.tile([right - left, up - down], (n, 1)), rtol=1e-5, atol=1e-6)
    assert {k: v.dtype for k, v in record.items()} == dict.fromkeys(record, np.dtype("float32"))


@pytest.mark.parametrize(("action", "expected"), [(7, (1, 0)), (1, (-1, 0)), (5, (0, 1)), (3, (0, -1)), (4, (0, 0))])
def test_single_action_policies_point_the_right_way(action, expected):
    logits = torch.full((15,), -30.0)
    logits[action] = 30.0
    record = _record(MazeProbe(seed=3, distribution_mode="easy"), ConstantPolicy(logits))
    np.testing.assert_allclose(record["vectors"], np.tile(expected, (len(record["vectors"]), 1)), atol=1e-6)


class MouseColumnPolicy(torch.nn.Module):
    """Finds the mouse in the frame (pixels unlike the median frame) and goes right on even
    columns, up on odd ones: an output that depends on the mouse's position alone."""

    def __init__(self, background: torch.Tensor, world_dim: int) -> None:
        super().__init__()
        self.register_buffer("background", background)
        self.world_dim = world_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        changed = ((x - self.background).abs().sum(dim=1) > 30 / 255).float()  # (n, 64, 64)
        xs = torch.arange(64, dtype=torch.float32)
        x_mean = (changed.sum(1) * xs).sum(1) / changed.sum((1, 2))
        col = torch.round((x_mean + 0.5) / (64 / self.world_dim) - 0.5).long()
        logits = torch.full((len(x), 15), -30.0)
        logits[col % 2 == 0, 7] = 30.0
        logits[col % 2 == 1, 5] = 30.0
        return logits


def test_position_dependent_policy_puts_each_arrow_on_its_own_cell(levels):
    level = levels["hard", 0]
    frames = torch.from_numpy(level.observations).permute(0, 3, 1, 2).float() / 255
    model = MouseColumnPolicy(frames.median(dim=0).values, level.state.world_dim)
    record = _record(MazeProbe(seed=0, distribution_mode="hard"), model)
    even = level.cells[:, 1] % 2 == 0
    expected = np.where(even[:, None], [1.0, 0.0], [0.0, 1.0])
    assert 0 < even.sum() < len(even)
    np.testing.assert_allclose(record["vectors"], expected, atol=1e-6)


def test_policy_adapters_tuple_categorical_policy_fn_and_uint8_preprocess():
    logits = torch.linspace(-1, 1, 15)
    expected = torch.softmax(logits, 0).numpy()

    class TupleModel(ConstantPolicy):
        def forward(self, x):
            return super().forward(x), torch.zeros(len(x))

    class CategoricalModel(ConstantPolicy):
        def forward(self, x):
            return torch.distributions.Categorical(logits=super().forward(x))

    class CleanRLAgent(torch.nn.Module):  # no forward; takes uint8 NHWC
        def __init__(self):
            super().__init__()
            self.seen = None

        def get_action_and_value(self, x):
            self.seen = x
            return None, None, None, None, logits.expand(len(x), 15)

    for model in (TupleModel(logits), CategoricalModel(logits)):
        record = _record(MazeProbe(seed=3, distribution_mode="easy"), model)
        np.testing.assert_allclose(record["action_probs"][0], expected, rtol=1e-5)
    agent = CleanRLAgent()
    probe = MazeProbe(
        seed=3,
        distribution_mode="easy",
        preprocess="uint8_nhwc",
        policy_fn=lambda m, obs: m.get_action_and_value(obs)[4],
    )
    record = _record(probe, agent)
    np.testing.assert_allclose(record["action_probs"][-1], expected, rtol=1e-5)
    assert agent.seen.dtype == torch.uint8 and tuple(agent.seen.shape[1:]) == (64, 64, 3)
    np.testing.assert_array_equal(agent.seen.numpy(), probe.observations)


def test_bad_policy_output_raises_an_error_naming_probe_value_and_fix():
    probe = MazeProbe(seed=3, distribution_mode="easy", name="maze_eval")
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 4))
    probe.setup(model, torch.device("cpu"))
    with torch.no_grad(), pytest.raises(TrajhookError) as err:
        probe.run(model)
    message = str(err.value)
    assert "'maze_eval'" in message and f"({len(probe.cells)}, 4)" in message and "HINT:" in message
    probe = MazeProbe(seed=3, distribution_mode="easy", name="maze_eval", policy_fn=lambda m, x: "left")
    probe.setup(model, torch.device("cpu"))
    with torch.no_grad(), pytest.raises(TrajhookError, match=r"'maze_eval'.*str 'left'.*HINT:"):
        probe.run(model)


def test_bad_arguments_are_refused():
    with pytest.raises(TrajhookError, match=r"'medium'.*HINT"):
        MazeProbe(seed=0, distribution_mode="medium")
    with pytest.raises(TrajhookError, match=r"-1.*HINT"):
        MazeProbe(seed=-1)
    with pytest.raises(TrajhookError, match=r"'nchw'.*HINT"):
        MazeProbe(seed=0, preprocess="nchw")


def test_metadata_is_static_and_serializable(levels):
    probe = MazeProbe(seed=1, distribution_mode="easy")
    probe.setup(ConstantPolicy(torch.zeros(15)), torch.device("cpu"))
    level, meta = levels["easy", 1], probe.metadata
    np.testing.assert_array_equal(meta["cells"], level.cells)
    np.testing.assert_array_equal(meta["grid"], level.state.grid)
    assert meta["cheese"] == list(level.state.cheese) and meta["start"] == list(level.state.mouse)
    assert (meta["seed"], meta["distribution_mode"], meta["world_dim"]) == (1, "easy", 15)
    assert meta["maze_dim"] == level.state.maze_dim and meta["procgen_version"].startswith("0.10")
    assert probe.outputs["vectors"].shape == (len(level.cells), 2)


def test_import_trajhook_does_not_import_procgen():
    code = "import sys, trajhook, trajhook.probes.maze, trajhook.procgen_state; print('procgen' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


MALFORMED_SCRIPT = textwrap.dedent(
    """
    import struct
    from trajhook.errors import TrajhookError
    from trajhook.procgen_state import parse_maze_state
    from trajhook.probes.maze import make_maze_env

    env = make_maze_env(0, "hard")
    good = env.callmethod("get_state")[0]
    state = parse_maze_state(good)
    x = state.mouse_x_offset
    bad = {
        "name": good.replace(b"maze", b"mazf", 1),
        "version": struct.pack("<i", 1) + good[4:],
        "truncated": good[:-9],
        "end marker": good[:-4] + struct.pack("<I", 0xCAFEBABE),
        "trailing": good + b"\\0\\0\\0\\0",
        "no mouse": good[: x + 24] + struct.pack("<i", 7) + good[x + 28 :],
        "string length": good[:4] + struct.pack("<i", 10**9) + good[8:],
        "not bytes": "maze",
    }
    for name, data in bad.items():
        try:
            parse_maze_state(data)
        except TrajhookError as err:
            assert "HINT:" in str(err), name
        else:
            raise SystemExit(f"accepted malformed state: {name}")
    try:
        state.with_mouse(0, 0)  # a wall cell
    except TrajhookError:
        pass
    else:
        raise SystemExit("accepted a wall cell")
    env.callmethod("set_state", [state.with_mouse(*state.free_cells()[3])])  # a valid patch loads
    print("OK", len(bad))
    """
)


def test_malformed_states_are_refused_without_killing_the_process():
    out = subprocess.run([sys.executable, "-c", MALFORMED_SCRIPT], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip().endswith("OK 8")


def test_parse_maze_state_reads_mouse_and_round_trips(levels):
    level = levels["hard", 2]
    state = level.state
    patched = parse_maze_state(state.with_mouse(*level.cells[5], reflected=True))
    assert patched.mouse == tuple(level.cells[5])
    np.testing.assert_array_equal(patched.grid, state.grid)
    assert len(patched.data) == len(state.data) and patched.data != state.data
    assert parse_maze_state(state.with_mouse(*state.mouse)).data == state.data


def test_example_smoke_run_writes_store_animation_and_a_curve_from_the_store(tmp_path):
    """examples/maze_lightning.py --small: the printed curve equals one recomputed from the store."""
    from trajhook import load
    from trajhook.analysis.maze import shortest_path_moves

    out = subprocess.run(
        [sys.executable, "examples/maze_lightning.py", "--small", "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    for name in ("maze.h5", "maze.gif", "maze.mp4", "maze_vector_field.png", "maze_agreement.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    log = load(tmp_path / "maze.h5")
    assert log.steps.tolist() == [0, 10, 20, 30]
    probs = log["maze"]["direction_probs"]  # (4, n, 5)
    meta = log["maze"].metadata
    on_path = shortest_path_moves(np.asarray(meta["grid"]), tuple(meta["cheese"]), np.asarray(meta["cells"]))
    hand = [np.mean([on_path[i, np.argmax(p[i, :4])] for i in range(len(p))]) for p in probs]
    printed = [float(line.split()[1]) for line in out.stdout.splitlines() if line[:5].strip().isdigit()]
    np.testing.assert_allclose(printed, hand, atol=0.006)
    vectors = np.stack([probs[..., 1] - probs[..., 0], probs[..., 2] - probs[..., 3]], axis=-1)
    np.testing.assert_allclose(log["maze"]["vectors"], vectors, atol=1e-6)
    assert meta["seed"] == 1 and meta["distribution_mode"] == "easy"


def test_recorder_round_trip_stores_hand_computed_vectors_and_metadata(tmp_path):
    from trajhook import Recorder, load

    logits = torch.tensor([0.0] * 6 + [2.0, 1.0, 0.0] + [0.0] * 6)  # favours RIGHT+DOWN, RIGHT
    model = ConstantPolicy(logits)
    probe = MazeProbe(seed=2, distribution_mode="easy")
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=5, wandb=False) as rec:
        rec.setup(model)
        for step in range(11):
            rec.maybe_record(model, step, loss=1.0)
    log = load(tmp_path / "run.h5")
    p = np.exp(logits.numpy().astype(float))
    p /= p.sum()
    expected = [p[6:9].sum() - p[0:3].sum(), p[5] - p[3]]
    assert log.steps.tolist() == [0, 5, 10]
    np.testing.assert_allclose(log["maze"]["vectors"], np.tile(expected, (3, len(probe.cells), 1)), rtol=1e-5)
    np.testing.assert_array_equal(log["maze"].metadata["cells"], probe.cells)
    np.testing.assert_array_equal(log["maze"].metadata["grid"], probe.grid)
    assert model.training  # the Recorder restored the mode it found


def test_a_policy_that_diverges_during_training_is_stored_not_fatal(tmp_path):
    from trajhook import Recorder, load

    policy = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 15))
    torch.nn.init.zeros_(policy[1].weight)
    torch.nn.init.zeros_(policy[1].bias)
    probe = MazeProbe(seed=2, distribution_mode="easy")
    with (
        pytest.warns(UserWarning, match=r"'maze' produced NaN or inf .* at step 2"),
        Recorder(tmp_path / "run.h5", [probe], every_n_steps=1, wandb=False) as rec,
    ):
        for step in range(4):
            if step == 2:
                policy[1].bias.data.fill_(float("nan"))
            rec.record(policy, step)
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 1, 2, 3]
    np.testing.assert_allclose(log["maze"]["action_probs"][:2], 1 / 15, rtol=1e-6)  # zero logits: uniform
    assert np.isnan(log["maze"]["action_probs"][2:]).all()


def test_a_reused_probe_checks_its_first_run_again_at_each_setup():
    probe = MazeProbe(seed=2, distribution_mode="easy")
    healthy = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 15))
    probe.setup(healthy, torch.device("cpu"))
    with torch.no_grad():
        probe.run(healthy)
    broken = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 15))
    broken[1].bias.data.fill_(float("nan"))
    probe.setup(broken, torch.device("cpu"))  # e.g. a second Recorder, or Lightning's second fit()
    with pytest.raises(TrajhookError, match="non-finite"), torch.no_grad():
        probe.run(broken)
