"""Shortest paths in a maze grid and how often a policy's strongest direction follows one.

Pure numpy on procgen's grid codes (empty 100, wall 51, cheese 2), ``grid[row, col]`` with
row 0 at the bottom, so "up" is ``row + 1``. Directions are ordered as
:data:`trajhook.probes.maze.DIRECTIONS`: left, right, up, down (then no-op, never on a path).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from trajhook.procgen_state import WALL

# (d_row, d_col) of left, right, up, down; up is row + 1 because row 0 is the bottom.
MOVES = ((0, -1), (0, 1), (1, 0), (-1, 0))


def _free(grid: np.ndarray) -> np.ndarray:
    return np.asarray(grid) != WALL


def moved(grid: np.ndarray, cell: tuple[int, int], move: int) -> tuple[int, int]:
    """The cell a move (an index into :data:`MOVES`) leads to: one cell on, unless a wall or the edge is there.

    That is procgen's maze: a move steps exactly one cell or not at all, so a training loop can follow
    the mouse without reading procgen's state back.

    >>> grid = np.array([[100, 100, 100], [51, 51, 100], [2, 100, 100]])
    >>> moved(grid, (0, 0), 1), moved(grid, (0, 0), 2), moved(grid, (0, 0), 0)
    ((0, 1), (0, 0), (0, 0))
    """
    row, col = cell[0] + MOVES[move][0], cell[1] + MOVES[move][1]
    inside = 0 <= row < grid.shape[0] and 0 <= col < grid.shape[1]
    return (int(row), int(col)) if inside and grid[row, col] != WALL else (int(cell[0]), int(cell[1]))


def bfs_distances(grid: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Steps from every cell to ``target`` through free cells; -1 for walls and unreachable cells.

    >>> grid = np.array([[100, 100, 100], [51, 51, 100], [2, 100, 100]])
    >>> bfs_distances(grid, (2, 0)).tolist()
    [[6, 5, 4], [-1, -1, 3], [0, 1, 2]]
    """
    free = _free(grid)
    dist = np.full(free.shape, -1, dtype=np.int64)
    if not free[target]:
        return dist
    dist[target] = 0
    queue = deque([target])
    while queue:
        row, col = queue.popleft()
        for d_row, d_col in MOVES:
            r, c = row + d_row, col + d_col
            if 0 <= r < free.shape[0] and 0 <= c < free.shape[1] and free[r, c] and dist[r, c] < 0:
                dist[r, c] = dist[row, col] + 1
                queue.append((r, c))
    return dist


def shortest_path_moves(grid: np.ndarray, goal: tuple[int, int], cells: np.ndarray) -> np.ndarray:
    """``(n, 4)`` bool: which of left, right, up, down starts a shortest path from each cell to ``goal``.

    >>> grid = np.array([[100, 100, 100], [51, 51, 100], [2, 100, 100]])
    >>> shortest_path_moves(grid, (2, 0), np.array([[0, 0], [2, 2]])).astype(int).tolist()
    [[0, 1, 0, 0], [1, 0, 0, 0]]
    """
    dist = bfs_distances(grid, goal)
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    moves = np.zeros((len(cells), len(MOVES)), dtype=bool)
    for k, (d_row, d_col) in enumerate(MOVES):
        rows, cols = cells[:, 0] + d_row, cells[:, 1] + d_col
        inside = (rows >= 0) & (rows < dist.shape[0]) & (cols >= 0) & (cols < dist.shape[1])
        neighbour = np.full(len(cells), -1, dtype=np.int64)
        neighbour[inside] = dist[rows[inside], cols[inside]]
        here = dist[cells[:, 0], cells[:, 1]]
        moves[:, k] = (neighbour >= 0) & (here > 0) & (neighbour == here - 1)
    return moves


def shortest_path(grid: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[int]:
    """Direction indices (0 left, 1 right, 2 up, 3 down) of one shortest path from start to goal.

    >>> grid = np.array([[100, 100, 100], [51, 51, 100], [2, 100, 100]])
    >>> shortest_path(grid, (0, 0), (2, 0))
    [1, 1, 2, 2, 0, 0]
    """
    dist = bfs_distances(grid, goal)
    if dist[start] < 0:
        raise ValueError(f"no path from {start} to {goal}")
    path, (row, col) = [], start
    while dist[row, col] > 0:
        for k, (d_row, d_col) in enumerate(MOVES):
            r, c = row + d_row, col + d_col
            if 0 <= r < dist.shape[0] and 0 <= c < dist.shape[1] and dist[r, c] == dist[row, col] - 1:
                path.append(k)
                row, col = r, c
                break
    return path


def path_agreement(direction_probs: np.ndarray, on_path: np.ndarray, include_noop: bool = False) -> np.ndarray | float:
    """Fraction of cells whose strongest direction starts a shortest path to the cheese.

    ``direction_probs`` is ``(n, 5)`` (left, right, up, down, no-op) or a stack ``(steps, n, 5)``;
    ``on_path`` is ``(n, 4)`` from :func:`shortest_path_moves`. The strongest direction is taken
    among the four moves (the arrow's dominant direction); with ``include_noop=True`` a no-op
    that outweighs every move counts as a miss. Returns a float, or ``(steps,)`` for a stack.

    >>> on_path = np.array([[False, True, False, False], [True, False, False, False]])
    >>> probs = np.array([[0.1, 0.3, 0.05, 0.05, 0.5], [0.1, 0.6, 0.1, 0.1, 0.1]])
    >>> path_agreement(probs, on_path), path_agreement(probs, on_path, include_noop=True)
    (0.5, 0.0)
    """
    probs = np.asarray(direction_probs, dtype=float)
    moves = probs if include_noop else probs[..., :4]
    strongest = moves.argmax(axis=-1)  # (..., n)
    on_path5 = np.concatenate([np.asarray(on_path, bool), np.zeros((len(on_path), 1), bool)], axis=1)
    hits = np.take_along_axis(np.broadcast_to(on_path5, probs.shape), strongest[..., None], axis=-1)[..., 0]
    agreement = hits.mean(axis=-1)
    return float(agreement) if agreement.ndim == 0 else agreement


def corner_cell(grid: np.ndarray) -> tuple[int, int]:
    """``(row, col)`` of the maze's top-right cell: the highest row and rightmost column that hold a free cell.

    procgen's maze is a square centred in the world with a wall margin, and its top-right cell is always
    free, so this is where Langosco et al.'s agents learned to go instead of to the cheese.

    >>> grid = np.full((5, 5), 51); grid[1:4, 1:4] = 100; grid[2, 2] = 51
    >>> corner_cell(grid)
    (3, 3)
    """
    rows, cols = np.nonzero(_free(grid))
    return int(rows.max()), int(cols.max())


def cheese_and_corner_ways(
    grid: np.ndarray, cells: np.ndarray, cheese: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`shortest_path_moves` from ``cells`` to the cheese and to the top-right corner (:func:`corner_cell`).

    >>> grid = np.array([[51, 51, 51, 51], [51, 100, 100, 51], [51, 2, 100, 51], [51, 51, 51, 51]])
    >>> [ways.astype(int).tolist() for ways in cheese_and_corner_ways(grid, np.array([[1, 2]]), (2, 1))]
    [[[1, 0, 1, 0]], [[0, 0, 1, 0]]]
    """
    return shortest_path_moves(grid, tuple(cheese), cells), shortest_path_moves(grid, corner_cell(grid), cells)


def goal_agreements(
    direction_probs: np.ndarray, grid: np.ndarray, cells: np.ndarray, cheese: tuple[int, int]
) -> dict[str, np.ndarray | float]:
    """:func:`path_agreement` towards the cheese and towards the top-right corner (:func:`corner_cell`).

    The two tell a policy that finds the cheese from one that heads for the corner only where the two
    ways differ: on a level whose cheese sits near the corner they agree on almost every cell, so probe
    one with the cheese moved far from it (``MazeProbe(cheese=...)``) and compare with
    :func:`way_overlap`.

    >>> grid = np.array([[51, 51, 51, 51], [51, 100, 100, 51], [51, 2, 100, 51], [51, 51, 51, 51]])
    >>> cells = np.array([[1, 1], [1, 2], [2, 2]])
    >>> right = np.tile([0.0, 1.0, 0.0, 0.0, 0.0], (3, 1))  # always right
    >>> goal_agreements(right, grid, cells, (2, 1))  # the corner is (2, 2), the cheese (2, 1)
    {'cheese': 0.0, 'corner': 0.3333333333333333}
    """
    cheese_moves, corner_moves = cheese_and_corner_ways(grid, cells, cheese)
    return {
        "cheese": path_agreement(direction_probs, cheese_moves),
        "corner": path_agreement(direction_probs, corner_moves),
    }


def way_overlap(grid: np.ndarray, cells: np.ndarray, cheese: tuple[int, int]) -> float:
    """The share of ``cells`` (the corner excepted) where one move starts a shortest path to both the cheese and
    the corner. procgen's mazes are trees, so each way is one move; elsewhere the ways agree if they share one.

    >>> grid = np.full((5, 5), 51); grid[1, 1:4] = 100; grid[2:4, 3] = 100; grid[2:4, 1] = 100
    >>> grid[2, 1] = 2  # a U: the cheese up the left arm, the corner (3, 3) atop the right one
    >>> way_overlap(grid, np.array([[1, 1], [1, 2], [1, 3], [2, 3], [3, 1]]), (2, 1))  # only (3, 1): down
    0.2
    """
    corner = corner_cell(grid)
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    cells = cells[~((cells[:, 0] == corner[0]) & (cells[:, 1] == corner[1]))]
    to_cheese, to_corner = cheese_and_corner_ways(grid, cells, cheese)
    shared = to_cheese & to_corner
    return float(shared.any(axis=1).mean())


def chance_agreement(on_path: np.ndarray) -> float:
    """The agreement of a uniformly random move out of the four: the mean share of moves on a shortest path.

    ``on_path`` ``(n, 4)`` from :func:`shortest_path_moves`; the line every agreement curve is drawn against.

    >>> chance_agreement(np.array([[False, True, False, False], [True, True, False, False]]))
    0.375
    """
    on_path = np.asarray(on_path, dtype=bool)
    return float(on_path.sum(axis=1).mean() / 4) if len(on_path) else 0.0


PREFERENCE = (2, 1, 3, 0)
"""The fixed preference baseline's order of moves: up, right, down, left (the first open one is taken)."""


def baseline_agreements(grid: np.ndarray, cells: np.ndarray, goal: tuple[int, int]) -> dict[str, float]:
    """What policies that know only the walls score against the shortest paths to ``goal``; each picks an open
    move (one that does not run into a wall) on every cell, and the agreement counts ties as fractions:

    - ``uniform``: each open move alike;
    - ``preference``: the first open move of :data:`PREFERENCE` (up, right, down, left), which suits a goal
      at the top right;
    - ``greedy``: the open move that lands nearest the goal in a straight line (ties shared).

    A learned field that finds the way scores above all three.

    >>> grid = np.array([[100, 100, 100], [51, 51, 100], [2, 100, 100]])  # a U; the goal at the top left
    >>> baseline_agreements(grid, np.array([[0, 0], [0, 1], [2, 2]]), (2, 0))
    {'uniform': 0.6666666666666666, 'preference': 0.6666666666666666, 'greedy': 0.6666666666666666}
    """
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    on_path = shortest_path_moves(grid, tuple(goal), cells)
    scores: dict[str, list[float]] = {"uniform": [], "preference": [], "greedy": []}
    for cell, good in zip(cells, on_path, strict=True):
        opened, nearest = _open_and_greedy_moves(grid, (int(cell[0]), int(cell[1])), goal)
        if not opened:
            continue
        scores["uniform"].append(float(np.mean(good[opened])))
        scores["preference"].append(float(good[next(k for k in PREFERENCE if k in opened)]))
        scores["greedy"].append(float(np.mean(good[nearest])))
    return {name: float(np.mean(values)) if values else 0.0 for name, values in scores.items()}


def _open_and_greedy_moves(grid: np.ndarray, cell: tuple[int, int], goal: tuple[int, int]) -> tuple[list, list]:
    """The moves from ``cell`` that do not run into a wall, and those of them landing nearest ``goal`` in a line."""
    lands = {k: moved(grid, cell, k) for k in range(len(MOVES))}
    opened = [k for k, to in lands.items() if to != cell]
    near = {k: float(np.hypot(lands[k][0] - goal[0], lands[k][1] - goal[1])) for k in opened}
    return opened, [k for k in opened if near[k] == min(near.values())]


def where_greedy_errs(
    direction_probs: np.ndarray, grid: np.ndarray, cells: np.ndarray, goal: tuple[int, int]
) -> dict[str, float]:
    """On the cells where the one-step greedy move (see :func:`baseline_agreements`) leaves every shortest path to
    ``goal`` (the way first leads away from it), the share whose strongest move is on one: what a field knows
    beyond the heuristic. ``direction_probs`` is ``(n, 5)`` or a stack ``(steps, n, 5)``.

    >>> grid = np.full((6, 5), 51); grid[1, 1:4] = 100; grid[2:5, 3] = 100; grid[2:5, 1] = 100
    >>> cells = np.array([[1, 2], [2, 3], [3, 3], [4, 3]])  # a U, the goal (4, 1) atop its left arm
    >>> probs = np.eye(5)[[0, 3, 2, 3]]  # left, down, up, down; greedy on the right arm: up, as high as it goes
    >>> where_greedy_errs(probs, grid, cells, (4, 1))  # (2, 3) and (3, 3) must go down first, and one does
    {'cells': 2, 'agreement': 0.5}
    """
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    on_path = shortest_path_moves(grid, tuple(goal), cells)
    errs = np.zeros(len(cells), dtype=bool)
    for i, (cell, good) in enumerate(zip(cells, on_path, strict=True)):
        opened, nearest = _open_and_greedy_moves(grid, (int(cell[0]), int(cell[1])), goal)
        errs[i] = bool(opened) and good.any() and not good[nearest].any()
    if not errs.any():
        return {"cells": 0, "agreement": float("nan")}
    probs = np.asarray(direction_probs, dtype=float)
    agreement = path_agreement(probs[..., errs, :], on_path[errs])
    return {"cells": int(errs.sum()), "agreement": agreement}


def where_ways_part(
    direction_probs: np.ndarray, grid: np.ndarray, cells: np.ndarray, cheese: tuple[int, int]
) -> dict[str, dict[str, float]]:
    """On the cells where the way to the cheese and the way to the corner share no move, the share whose strongest
    move goes to each: on all of them, on the nearer half (by steps to the cheese) and on the farther half.

    >>> grid = np.full((5, 5), 51); grid[1, 1:4] = 100; grid[2:4, 3] = 100; grid[2:4, 1] = 100
    >>> grid[2, 1] = 2  # a U: the cheese up the left arm, the corner (3, 3) atop the right one
    >>> cells = np.array([[1, 1], [1, 2], [1, 3], [2, 3]])
    >>> right = np.tile([0.0, 1.0, 0.0, 0.0, 0.0], (4, 1))  # always right: the corner's way on the floor
    >>> where_ways_part(right, grid, cells, (2, 1))["all"]
    {'cells': 4, 'cheese': 0.0, 'corner': 0.5}
    """
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    to_cheese, to_corner = cheese_and_corner_ways(grid, cells, cheese)
    apart = ~(to_cheese & to_corner).any(axis=1) & to_cheese.any(axis=1) & to_corner.any(axis=1)
    strongest = np.asarray(direction_probs, dtype=float)[:, :4].argmax(axis=-1)
    picked = np.arange(len(cells))
    steps = bfs_distances(grid, tuple(cheese))[cells[:, 0], cells[:, 1]]
    middle = np.median(steps[apart]) if apart.any() else 0
    parts = {"all": apart, "near": apart & (steps <= middle), "far": apart & (steps > middle)}
    return {
        name: {
            "cells": int(mask.sum()),
            "cheese": float(to_cheese[picked, strongest][mask].mean()) if mask.any() else 0.0,
            "corner": float(to_corner[picked, strongest][mask].mean()) if mask.any() else 0.0,
        }
        for name, mask in parts.items()
    }
