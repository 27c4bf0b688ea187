"""A probe that tells the cheese from the corner: MazeProbe(cheese=...) against procgen's own drawing, and the
two agreements against an independent BFS."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from trajhook.analysis.maze import baseline_agreements, corner_cell, goal_agreements, way_overlap, where_greedy_errs
from trajhook.errors import TrajhookError
from trajhook.procgen_state import WALL

pytest.importorskip("procgen")

from trajhook.probes.maze import MazeProbe

pytestmark = pytest.mark.maze  # procgen: the maze environment (numpy<2)

FAR = (207, (13, 1))  # easy level 207 (96 cells), the cheese moved to the maze's top-left cell
STEP = ((0, -1), (0, 1), (1, 0), (-1, 0))  # left, right, up, down; row 0 at the bottom


class Still(torch.nn.Module):
    def forward(self, obs):
        return torch.zeros(len(obs), 15)


def set_up(probe: MazeProbe) -> MazeProbe:
    probe.setup(Still(), torch.device("cpu"))
    return probe


def pixel_box(cell, world):
    scale = 64 / world
    top = (world - 1 - cell[0]) * scale
    return slice(int(np.floor(top)), int(np.ceil(top + scale))), slice(
        int(np.floor(cell[1] * scale)), int(np.ceil((cell[1] + 1) * scale))
    )


def test_moved_cheese_is_drawn_by_procgen_where_asked_and_nowhere_else():
    seed, cheese = FAR
    plain = set_up(MazeProbe(seed, "easy", name="plain"))
    moved = set_up(MazeProbe(seed, "easy", name="far", cheese=cheese))
    old = plain.cheese
    assert moved.cheese == cheese and old != cheese
    cells = {tuple(c) for c in moved.cells.tolist()}
    assert old in cells and cheese not in cells and len(cells) == len(plain.cells)
    assert moved.metadata["cheese"] == list(cheese) and moved.metadata["cheese_moved"] is True
    world = moved.level.state.world_dim
    mask = np.zeros((64, 64), bool)
    for cell in (old, cheese):
        mask[pixel_box(cell, world)] = True
    index = {tuple(c): i for i, c in enumerate(plain.cells.tolist())}
    compared = 0
    for j, cell in enumerate(moved.cells.tolist()):
        if tuple(cell) not in index:
            continue  # the old cheese cell: no mouse there in the plain probe
        diff = np.abs(moved.observations[j].astype(int) - plain.observations[index[tuple(cell)]].astype(int)).sum(-1)
        assert diff[mask].any() and not diff[~mask].any()  # the cheese left one cell for the other, nothing else
        assert diff[pixel_box(cheese, world)].any() and diff[pixel_box(old, world)].any()
        compared += 1
    assert compared == len(moved.cells) - 1


def bfs(grid, goal):
    """Steps to ``goal`` from every free cell (an independent BFS, written for this test)."""
    dist = {tuple(goal): 0}
    queue = deque([tuple(goal)])
    while queue:
        r, c = queue.popleft()
        for dr, dc in STEP:
            nxt = (r + dr, c + dc)
            if 0 <= nxt[0] < grid.shape[0] and 0 <= nxt[1] < grid.shape[1] and grid[nxt] != WALL and nxt not in dist:
                dist[nxt] = dist[(r, c)] + 1
                queue.append(nxt)
    return dist


def heading_for(grid, cells, goal):
    """``(n, 5)`` direction probabilities of a policy that always takes a shortest-path move to ``goal``."""
    dist, probs = bfs(grid, goal), np.zeros((len(cells), 5))
    for i, (r, c) in enumerate(cells.tolist()):
        best = [k for k, (dr, dc) in enumerate(STEP) if dist.get((r + dr, c + dc), 10**9) == dist[(r, c)] - 1]
        probs[i, best[0] if best else 4] = 1.0
    return probs


@pytest.mark.parametrize(("seed", "cheese", "most_differ"), [(234, None, False), (*FAR, True)])
def test_cheese_and_corner_agreements_against_an_independent_bfs(seed, cheese, most_differ):
    probe = set_up(MazeProbe(seed, "easy", cheese=cheese))
    grid, cells = probe.grid, probe.cells
    corner = corner_cell(grid)
    free = np.argwhere(grid != WALL)
    assert corner == (free[:, 0].max(), free[:, 1].max()) and grid[corner] != WALL
    to_corner = heading_for(grid, cells, corner)
    to_cheese = heading_for(grid, cells, probe.cheese)
    corner_policy, cheese_policy = probe.agreements(to_corner), probe.agreements(to_cheese)
    assert cheese_policy["cheese"] == 1.0 and corner_policy["corner"] >= (len(cells) - 1) / len(cells)
    # a corner-seeker is right about the cheese exactly where the two ways share their move
    same = np.mean([np.array_equal(a, b) for a, b in zip(to_corner, to_cheese, strict=True)])
    assert corner_policy["cheese"] == pytest.approx(same)
    overlap = way_overlap(grid, cells, probe.cheese)
    assert abs(overlap - same) <= 1 / len(cells) + 1e-9  # way_overlap leaves the corner cell out
    if most_differ:
        assert 1 - overlap >= 0.3  # the bar: the ways differ on at least 30% of the cells
    else:
        assert overlap >= 0.95  # why level 234 alone cannot tell the two apart
    stack = goal_agreements(np.stack([to_corner, to_cheese]), grid, cells, probe.cheese)
    assert stack["cheese"].tolist() == [corner_policy["cheese"], 1.0]


def test_bad_cheese_is_refused_naming_the_probe():
    with pytest.raises(TrajhookError, match=r"MazeProbe 'far': cheese \(1, 2, 3\) is not a \(row, col\) cell"):
        MazeProbe(207, "easy", name="far", cheese=(1, 2, 3))
    with pytest.raises(TrajhookError, match="is not a"):
        MazeProbe(207, "easy", cheese=(True, 1))
    wall = MazeProbe(207, "easy", name="walled", cheese=(0, 0))  # the world's edge is wall
    with pytest.raises(TrajhookError, match=r"MazeProbe 'walled' \(level 207\): .*not an empty cell"):
        set_up(wall)
    start = MazeProbe(207, "easy", name="start", cheese=(1, 1))  # the mouse's start cell
    with pytest.raises(TrajhookError, match="the mouse's cell"):
        set_up(start)


def one_step_moves(grid, cell, goal):
    """The open moves from ``cell`` (no wall, inside the grid) and those landing nearest ``goal`` in a straight line,
    written here from the grid alone."""
    r, c = cell
    opened = [
        k
        for k, (dr, dc) in enumerate(STEP)
        if 0 <= r + dr < grid.shape[0] and 0 <= c + dc < grid.shape[1] and grid[r + dr, c + dc] != WALL
    ]
    line = {k: (r + STEP[k][0] - goal[0]) ** 2 + (c + STEP[k][1] - goal[1]) ** 2 for k in opened}
    return opened, [k for k in opened if line[k] == min(line.values())]


@pytest.mark.parametrize(("seed", "cheese"), [(234, None), FAR])
def test_one_step_baselines_and_the_cells_where_greedy_errs_against_an_independent_bfs(seed, cheese):
    probe = set_up(MazeProbe(seed, "easy", cheese=cheese))
    grid, cells, goal = probe.grid, probe.cells, probe.cheese
    dist = bfs(grid, goal)
    uniform, preference, greedy, errs = [], [], [], []
    for i, (r, c) in enumerate(cells.tolist()):
        good = {k for k, (dr, dc) in enumerate(STEP) if dist.get((r + dr, c + dc), 10**9) == dist[(r, c)] - 1}
        opened, nearest = one_step_moves(grid, (r, c), goal)
        uniform.append(len(good & set(opened)) / len(opened))
        preference.append(float(next(k for k in (2, 1, 3, 0) if k in opened) in good))  # up, right, down, left
        greedy.append(len(good & set(nearest)) / len(nearest))
        if good and not good & set(nearest):
            errs.append(i)
    expected = {"uniform": np.mean(uniform), "preference": np.mean(preference), "greedy": np.mean(greedy)}
    assert baseline_agreements(grid, cells, goal) == pytest.approx(expected)
    assert len(errs) >= 5  # the heuristic is wrong somewhere on both levels, so beating it means something
    # a field heading down every shortest path is right on all of them; one heading the greedy way on none
    path = heading_for(grid, cells, goal)
    line = np.eye(5)[[one_step_moves(grid, tuple(cell), goal)[1][0] for cell in cells.tolist()]]
    assert where_greedy_errs(path, grid, cells, goal) == {"cells": len(errs), "agreement": 1.0}
    assert where_greedy_errs(line, grid, cells, goal) == {"cells": len(errs), "agreement": 0.0}
    mixed = path.copy()
    mixed[errs[::2]] = line[errs[::2]]
    stack = where_greedy_errs(np.stack([path, mixed]), grid, cells, goal)["agreement"]
    assert stack.tolist() == pytest.approx([1.0, 1 - len(errs[::2]) / len(errs)])
