"""The corner curriculum's state patch against real procgen: the cheese is drawn, and eaten, where asked."""

from __future__ import annotations

import numpy as np
import pytest

from trajhook.analysis.maze import moved
from trajhook.errors import TrajhookError
from trajhook.procgen_state import CHEESE, EMPTY, WALL, corner_cells, parse_maze_state

pytest.importorskip("procgen")

from procgen import ProcgenGym3Env

from trajhook.probes.maze import make_maze_env

pytestmark = pytest.mark.maze  # procgen: the maze environment (numpy<2)

# (d_row, d_col) of a move and its procgen action, row 0 at the bottom (NOTES.md)
MOVES = {(0, 1): 7, (0, -1): 1, (1, 0): 5, (-1, 0): 3}


def pixel_box(cell: tuple[int, int], world: int) -> tuple[slice, slice]:
    """The 64x64 frame's pixels of cell ``(row, col)``: row 0 is the bottom row of the image."""
    row, col = cell
    scale = 64 / world
    top = (world - 1 - row) * scale
    return slice(int(np.floor(top)), int(np.ceil(top + scale))), slice(
        int(np.floor(col * scale)), int(np.ceil((col + 1) * scale))
    )


@pytest.mark.parametrize("seed", [201, 205, 234])  # easy levels of maze_dim 15, 11, 15
def test_patched_cheese_is_drawn_and_eaten_where_asked(seed):
    env = make_maze_env(seed, "easy")
    state = parse_maze_state(env.callmethod("get_state")[0])
    _, before, _ = env.observe()
    before = before["rgb"][0].astype(int)
    region = corner_cells(state, 5)
    target = next(tuple(c) for c in region.tolist() if tuple(c) != state.cheese)

    env.callmethod("set_state", [state.with_cheese(*target)])
    patched = parse_maze_state(env.callmethod("get_state")[0])
    _, after, _ = env.observe()
    after = after["rgb"][0].astype(int)
    # the grid procgen now holds: the cheese at the target, the old cell empty, nothing else changed
    assert patched.cheese == target and patched.grid[state.cheese] == EMPTY
    changed = np.argwhere(patched.grid != state.grid)
    assert sorted(map(tuple, changed.tolist())) == sorted([target, state.cheese])
    # the frame changed only inside the pixels of the old and the new cheese cell, and in both
    diff = np.abs(after - before).sum(-1) > 0
    mask = np.zeros_like(diff)
    for cell in (target, state.cheese):
        mask[pixel_box(cell, state.world_dim)] = True
        assert diff[pixel_box(cell, state.world_dim)].any()
    assert diff.any() and not (diff & ~mask).any()

    # the mouse next to the new cheese, one move away, eats it: reward 10 and a new episode
    (d_row, d_col), action = next(
        (move, action)
        for move, action in MOVES.items()
        if patched.grid[target[0] - move[0], target[1] - move[1]] == EMPTY
    )
    neighbour = (target[0] - d_row, target[1] - d_col)
    env.callmethod("set_state", [patched.with_mouse(*neighbour)])
    for _ in range(3):  # the mouse crosses one cell in a step or two
        env.act(np.array([action]))
        reward, _, first = env.observe()
        if first[0]:
            break
    assert first[0] and reward[0] == 10.0


def test_corner_cells_lie_in_the_mazes_top_right_corner():
    for seed in (200, 205, 207, 234):
        state = parse_maze_state(make_maze_env(seed, "easy").callmethod("get_state")[0])
        margin = (state.world_dim - state.maze_dim) // 2
        top = margin + state.maze_dim - 1
        cells = corner_cells(state, 3)
        # an independent count: every free cell within 2 rows and columns of the maze's top-right cell
        expect = {
            (r, c)
            for r in range(state.world_dim)
            for c in range(state.world_dim)
            if top - 2 <= r <= top and top - 2 <= c <= top and state.grid[r, c] != WALL and (r, c) != state.mouse
        }
        assert set(map(tuple, cells.tolist())) == expect
        assert (top, top) in expect  # the maze's top-right room is always free


def test_with_cheese_refuses_walls_and_the_mouse():
    state = parse_maze_state(make_maze_env(234, "easy").callmethod("get_state")[0])
    wall = tuple(np.argwhere(state.grid == WALL)[0])
    with pytest.raises(TrajhookError, match="not an empty cell"):
        state.with_cheese(*wall)
    with pytest.raises(TrajhookError, match="the mouse's cell"):
        state.with_cheese(*state.mouse)
    assert state.with_cheese(*state.cheese) == state.data
    assert (state.grid == CHEESE).sum() == 1


def test_moved_follows_procgens_mouse_move_by_move():
    """The PPO example's shaping follows the mouse with ``moved``; check it against procgen's own state."""
    env = ProcgenGym3Env(
        num=4, env_name="maze", start_level=10_000, num_levels=0, distribution_mode="easy", num_threads=1
    )
    try:
        rng = np.random.default_rng(0)
        states = [parse_maze_state(s) for s in env.callmethod("get_state")]
        cells, grids, compared, blocked = [s.mouse for s in states], [s.grid for s in states], 0, 0
        for _ in range(600):
            moves = rng.integers(4, size=4)
            env.act(np.array([1, 7, 5, 3])[moves])  # procgen's left, right, up, down
            first = env.observe()[2]
            states = [parse_maze_state(s) for s in env.callmethod("get_state")]
            for i, state in enumerate(states):
                if not first[i]:
                    expect = moved(grids[i], cells[i], moves[i])
                    assert state.mouse == expect
                    compared, blocked = compared + 1, blocked + (expect == cells[i])
                cells[i], grids[i] = state.mouse, state.grid
        assert compared > 2_000 and 300 < blocked < compared - 300  # both kinds of move were seen
    finally:
        env.close()
