"""Read and patch procgen's serialized maze state, without procgen.

``env.callmethod("get_state")`` returns one byte string per environment. Its layout follows
procgen's ``Game::serialize``, ``BasicAbstractGame::serialize`` and ``MazeGame::serialize``
(``src/game.cpp``, ``src/basic-abstract-game.cpp``, ``src/games/maze.cpp``), then the
``0xCAFECAFE`` end marker written by ``vecgame.cpp``'s ``get_state``. Values are native
(little-endian) 32-bit ints and floats; strings are an int length followed by the bytes.
Random-generator states are text strings of varying length, so byte offsets differ per
level: :func:`parse_maze_state` walks the whole buffer once, checks every length, and keeps
the offsets of the mouse's ``x``, ``y`` and ``is_reflected`` fields and of the grid, so that
:meth:`MazeState.with_mouse` and :meth:`MazeState.with_cheese` can patch a copy in place.
:func:`corner_cells` lists the free cells of the maze's top-right corner, where a corner
curriculum (Langosco et al.'s ``rand_region``) puts the cheese.

procgen calls ``exit()`` on a malformed buffer, which kills the Python process. Everything
that :meth:`MazeState.with_mouse` returns has been parsed and validated here first.

procgen's integer codes for grid cells are :data:`EMPTY` (100), :data:`WALL` (51) and
:data:`CHEESE` (2). ``grid[row, col]`` has row 0 at the *bottom* of the rendered image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from trajhook.errors import TrajhookError

EMPTY = 100
WALL = 51
CHEESE = 2
PLAYER = 0  # procgen's entity type of the agent (object-ids.h)

SERIALIZE_VERSION = 0
END_OF_BUFFER = 0xCAFECAFE
GAME_NAME = "maze"
WORLD_DIMS = {0: 15, 1: 25, 3: 31}  # distribution_mode (easy, hard, memory) -> world_dim
ENTITY_FIELDS = "ffffffiiiiiifffiiiiiifiiiffffff"  # Entity::serialize, 31 fields
_ENTITY_SIZE = 4 * len(ENTITY_FIELDS)
_REFLECTED_FIELD = 15  # index of is_reflected in ENTITY_FIELDS
_TYPE_FIELD = 6
_MAX_STRING = 100_000


def _refuse(problem: str, value: object) -> TrajhookError:
    return TrajhookError(
        f"MazeState: {problem} (got {value!r}); refusing to hand this buffer to procgen, which would "
        "exit() the process. HINT: pass the bytes from env.callmethod('get_state')[0] of a procgen "
        "'maze' environment (procgen 0.10.x, upstream openai/procgen), unmodified."
    )


class _Reader:
    """A cursor over the buffer that refuses to read past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.offset + size > len(self.data):
            raise _refuse(f"buffer ends early at byte {self.offset} of {len(self.data)}", len(self.data))
        values = struct.unpack_from("<" + fmt, self.data, self.offset)
        self.offset += size
        return values

    def int(self) -> int:
        return self.take("i")[0]

    def string(self) -> bytes:
        length = self.int()
        if not 0 <= length <= _MAX_STRING:
            raise _refuse(f"string length at byte {self.offset - 4} is out of range", length)
        (raw,) = self.take(f"{length}s")
        return raw

    def randgen(self) -> None:
        self.int()  # is_seeded
        self.string()  # std::mt19937 state as text


@dataclass(frozen=True)
class MazeState:
    """A parsed, validated maze state: the level's grid plus where to patch the mouse.

    ``grid`` is ``(world_dim, world_dim)`` with ``grid[row, col]``, row 0 at the bottom.
    ``mouse`` is the mouse's current ``(row, col)``.
    """

    data: bytes
    grid: np.ndarray
    maze_dim: int
    world_dim: int
    distribution_mode: int
    level_seed: int
    mouse: tuple[int, int]
    mouse_x_offset: int
    mouse_reflected_offset: int
    grid_offset: int = -1  # byte offset of grid[0, 0]

    @property
    def cheese(self) -> tuple[int, int]:
        """``(row, col)`` of the cheese."""
        rows, cols = np.nonzero(self.grid == CHEESE)
        if len(rows) != 1:
            raise TrajhookError(
                f"MazeState: expected exactly one cheese cell, found {len(rows)}. "
                "HINT: read the state before the mouse reaches the cheese (right after creating the env)."
            )
        return int(rows[0]), int(cols[0])

    def free_cells(self, include_cheese: bool = False) -> np.ndarray:
        """``(n, 2)`` int64 ``(row, col)`` of every empty cell (and the cheese if asked), row-major."""
        free = self.grid == EMPTY
        if include_cheese:
            free |= self.grid == CHEESE
        return np.argwhere(free).astype(np.int64)

    def with_mouse(self, row: int, col: int, reflected: bool | None = None) -> bytes:
        """A copy of the state with the mouse centred on cell ``(row, col)``.

        ``reflected`` sets the sprite's facing (``True`` = facing right, as after a move right);
        ``None`` keeps the current one. The cell must be free (empty or cheese).
        """
        row, col = int(row), int(col)
        if not (0 <= row < self.world_dim and 0 <= col < self.world_dim):
            raise TrajhookError(
                f"MazeState.with_mouse: cell {(row, col)!r} is outside the {self.world_dim}x{self.world_dim} "
                "world. HINT: pass (row, col) from MazeState.free_cells()."
            )
        if self.grid[row, col] not in (EMPTY, CHEESE):
            raise TrajhookError(
                f"MazeState.with_mouse: cell {(row, col)!r} holds {int(self.grid[row, col])}, "
                "not a free cell. "
                "HINT: pass (row, col) from MazeState.free_cells()."
            )
        patched = bytearray(self.data)
        struct.pack_into("<ff", patched, self.mouse_x_offset, col + 0.5, row + 0.5)
        if reflected is not None:
            struct.pack_into("<i", patched, self.mouse_reflected_offset, int(bool(reflected)))
        return bytes(patched)

    def with_cheese(self, row: int, col: int) -> bytes:
        """A copy of the state with the cheese moved to the empty cell ``(row, col)`` (the old cell emptied).

        After ``set_state`` procgen draws the cheese there and ends the episode (reward 10) when the mouse
        reaches it. The cell must be empty and not the mouse's; moving the cheese onto itself is a no-op.
        """
        row, col = int(row), int(col)
        if (row, col) == self.cheese:
            return self.data
        inside = 0 <= row < self.world_dim and 0 <= col < self.world_dim
        if not inside or self.grid[row, col] != EMPTY or (row, col) == self.mouse:
            what = "outside the world" if not inside else f"holds {int(self.grid[row, col])}, not an empty cell"
            if inside and (row, col) == self.mouse:
                what = "is the mouse's cell"
            raise TrajhookError(
                f"MazeState.with_cheese: cell {(row, col)!r} {what}. "
                "HINT: pass (row, col) from MazeState.free_cells() or corner_cells(), other than the mouse's."
            )
        if self.grid_offset < 0:
            raise TrajhookError(
                "MazeState.with_cheese: this state does not know where its grid lies in the buffer. "
                "HINT: get the state from parse_maze_state(env.callmethod('get_state')[i])."
            )
        patched = bytearray(self.data)
        old_row, old_col = self.cheese
        struct.pack_into("<i", patched, self.grid_offset + 4 * (old_row * self.world_dim + old_col), EMPTY)
        struct.pack_into("<i", patched, self.grid_offset + 4 * (row * self.world_dim + col), CHEESE)
        return bytes(patched)


def corner_cells(state: MazeState, size: int) -> np.ndarray:
    """``(n, 2)`` ``(row, col)`` of the empty cells in the top-right ``size x size`` cells of the maze.

    The maze is ``maze_dim`` square, centred in the world with a wall margin, and the mouse starts at
    its bottom-left; the region counts from the maze's own top-right cell. The mouse's cell is left
    out, and the cheese's cell is included (moving it there is a no-op), so the list is never empty
    for a maze of at least 3 cells when ``size >= 1`` holds the top-right cell, which is always free.

    >>> grid = np.full((5, 5), WALL); grid[1:4, 1:4] = EMPTY; grid[2, 2] = WALL; grid[1, 3] = CHEESE
    >>> state = MazeState(b"", grid, 3, 5, 0, 0, (1, 1), 0, 0)
    >>> corner_cells(state, 2).tolist()
    [[2, 3], [3, 2], [3, 3]]
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise TrajhookError(
            f"corner_cells: size={size!r} is not a positive int. HINT: e.g. 5 for the top-right 5x5 cells."
        )
    top = (state.world_dim + state.maze_dim) // 2 - 1  # the maze's top row and rightmost column
    low = top - int(size) + 1
    region = np.zeros_like(state.grid, dtype=bool)
    region[max(low, 0) : top + 1, max(low, 0) : top + 1] = True
    region &= (state.grid == EMPTY) | (state.grid == CHEESE)
    region[state.mouse] = False
    return np.argwhere(region).astype(np.int64)


def parse_maze_state(data: bytes) -> MazeState:
    """Parse and validate one procgen maze state buffer; raise :class:`TrajhookError` if malformed.

    >>> parse_maze_state(b"\\x00\\x00\\x00\\x00\\x05\\x00\\x00\\x00heist")
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: MazeState: game name is not 'maze' (got b'heist'); ...
    """
    if not isinstance(data, bytes | bytearray):
        raise _refuse("state is not bytes", type(data).__name__)
    data = bytes(data)
    r = _Reader(data)

    # Game::serialize
    version = r.int()
    if version != SERIALIZE_VERSION:
        raise _refuse(f"serialize version is not {SERIALIZE_VERSION}", version)
    name = r.string()
    if name != GAME_NAME.encode():
        raise _refuse(f"game name is not {GAME_NAME!r}", name)
    options = r.take("12i")
    use_generated_assets, distribution_mode = options[1], options[7]
    if use_generated_assets:
        raise _refuse("use_generated_assets is set, which procgen cannot deserialize", use_generated_assets)
    if distribution_mode not in WORLD_DIMS:
        raise _refuse("distribution_mode is not easy (0), hard (1) or memory (3)", distribution_mode)
    r.take("5i")  # grid_step, level_seed_low, level_seed_high, game_type, game_n
    r.randgen()  # level_seed_rand_gen
    r.randgen()  # rand_gen
    r.take("fiiii")  # reward, done, level_complete, action, timeout
    (level_seed,) = r.take("i")
    r.take("iiiifiiii")  # prev seed .. is_waiting_for_step

    # BasicAbstractGame::serialize
    grid_size = r.int()
    n_entities = r.int()
    if not 1 <= n_entities <= 10_000:
        raise _refuse("entity count is out of range", n_entities)
    entities_offset = r.offset
    entities = [r.take(ENTITY_FIELDS) for _ in range(n_entities)]
    players = [i for i, e in enumerate(entities) if e[_TYPE_FIELD] == PLAYER]
    if len(players) != 1:
        raise _refuse("expected exactly one mouse entity (type 0)", len(players))
    mouse_index = players[0]
    r.take("iifffiiiffffffffiii")  # background .. step_rand_int
    r.randgen()  # asset_rand_gen
    main_width, main_height, _out_of_bounds = r.take("iii")
    r.take("ffffff")  # unit .. min_visibility
    grid_w, grid_h, grid_len = r.take("iii")
    if not (grid_w == main_width and grid_h == main_height and grid_len == grid_w * grid_h == grid_size):
        raise _refuse(
            "grid sizes disagree (w, h, length, grid_size, main_width, main_height)",
            (grid_w, grid_h, grid_len, grid_size, main_width, main_height),
        )
    grid_offset = r.offset
    grid = np.array(r.take(f"{grid_len}i"), dtype=np.int64).reshape(grid_h, grid_w)

    # MazeGame::serialize, then the end marker
    maze_dim, world_dim = r.take("ii")
    (end,) = r.take("I")
    if end != END_OF_BUFFER:
        raise _refuse("end marker 0xCAFECAFE is missing", hex(end))
    if r.offset != len(data):
        raise _refuse("trailing bytes after the end marker", len(data) - r.offset)
    if world_dim != WORLD_DIMS[distribution_mode] or grid_w != world_dim:
        raise _refuse("world_dim does not match the distribution mode and grid", (world_dim, grid_w))
    if not (3 <= maze_dim <= world_dim and maze_dim % 2 == 1):
        raise _refuse("maze_dim is not odd and within [3, world_dim]", maze_dim)
    if not np.isin(grid, (EMPTY, WALL, CHEESE)).all():
        raise _refuse("grid holds values other than 100, 51, 2", sorted(set(np.unique(grid).tolist())))

    mouse_x_offset = entities_offset + mouse_index * _ENTITY_SIZE
    mouse_x, mouse_y = entities[mouse_index][0], entities[mouse_index][1]
    return MazeState(
        data=data,
        grid=grid,
        maze_dim=int(maze_dim),
        world_dim=int(world_dim),
        distribution_mode=int(distribution_mode),
        level_seed=int(level_seed),
        mouse=(int(np.floor(mouse_y)), int(np.floor(mouse_x))),
        mouse_x_offset=mouse_x_offset,
        mouse_reflected_offset=mouse_x_offset + 4 * _REFLECTED_FIELD,
        grid_offset=grid_offset,
    )
