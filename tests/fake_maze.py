"""Maze-like stores without procgen: a real Recorder and a probe with a maze's outputs and metadata.

``GridProbe`` records what a MazeProbe records (``action_probs``, ``direction_probs``,
``vectors``) for every free cell of a hand-made grid, from a small policy over fixed per-cell
features. Its metadata has the MazeProbe's keys (``grid``, ``cells``, ``cheese``, ``start``),
and its ``kind`` is ``"maze"``, so plots, sinks, the CLI and the report treat it as a maze probe, on the LM
side too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from trajhook import Recorder
from trajhook.probes.base import Probe
from trajhook.probes.maze import DIRECTIONS, N_ACTIONS, direction_matrix, directions_to_vectors
from trajhook.procgen_state import CHEESE, EMPTY, WALL


def small_maze(size: int = 9) -> np.ndarray:
    """A ``size`` x ``size`` world: corridors on even rows/columns, walls between, cheese top right."""
    grid = np.full((size, size), WALL)
    grid[0::2, :] = EMPTY
    grid[:, 0::2] = EMPTY
    grid[1::2, 1::2] = WALL
    grid[size - 1, size - 1] = CHEESE
    return grid


class GridProbe(Probe):
    """The policy's direction probabilities on every free cell of ``grid``; the model maps
    ``(n_cells, 2)`` cell coordinates in [0, 1] to 15 action logits."""

    kind = "maze"  # stands in for a MazeProbe: readers dispatch on the stored kind

    def __init__(self, name: str = "maze", grid: np.ndarray | None = None, policy_fn=None) -> None:
        super().__init__(name)
        self.policy_fn = policy_fn or (lambda model, x: model(x))
        self.grid = small_maze() if grid is None else grid
        self.cells = np.argwhere(self.grid == EMPTY)
        n = len(self.cells)
        self.add_output("action_probs", (n, N_ACTIONS), "float32")
        self.add_output("direction_probs", (n, len(DIRECTIONS)), "float32")
        self.add_output("vectors", (n, 2), "float32")
        cheese = np.argwhere(self.grid == CHEESE)[0]
        self.metadata.update(
            grid=self.grid,
            cells=self.cells,
            cheese=[int(c) for c in cheese],
            start=[int(c) for c in self.cells[0]],
            seed=-1,
            directions=list(DIRECTIONS),
        )
        self.inputs = torch.tensor(self.cells / (len(self.grid) - 1), dtype=torch.float32)
        self.directions = torch.from_numpy(direction_matrix())

    def run(self, model: nn.Module) -> dict[str, torch.Tensor]:
        action_probs = self.policy_fn(model, self.inputs).softmax(-1)
        direction_probs = action_probs @ self.directions
        return {
            "action_probs": action_probs,
            "direction_probs": direction_probs,
            "vectors": directions_to_vectors(direction_probs),
        }


def policy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, N_ACTIONS))


def train_toward_right(model: nn.Module, steps: int, lr: float = 0.05):
    """Yield after each optimizer step of teaching the policy "go right" (action 7): arrows grow and turn."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(1))
    target = torch.full((64,), 7)
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step, float(loss.detach())


def maze_store(path, steps: int = 30, every: int = 5, events=((15, "lr drop"),), **recorder_kwargs) -> None:
    """A real store of a GridProbe over a short training run, with the loss and events."""
    model = policy()
    recorder_kwargs.setdefault("wandb", False)
    with Recorder(path, [GridProbe()], every_n_steps=every, **recorder_kwargs) as rec:
        rec.record(model, 0)
        for step, loss in train_toward_right(model, steps):
            for at, label in events:
                if step + 1 == at:
                    rec.mark(at, label)
            rec.maybe_record(model, step + 1, loss=loss)


VOCAB = 16


def tokenize(text: str) -> list[int]:
    return [ord(c) % VOCAB for c in text]


class TinyLM(nn.Module):
    """A one-layer causal attention model over a 16-token vocabulary: enough to learn to copy."""

    def __init__(self, d: int = 32, length: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(length, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.out = nn.Linear(d, VOCAB)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[1]
        x = self.embed(ids) + self.pos(torch.arange(n))
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        return self.out(x + self.attn(x, x, x, attn_mask=mask, need_weights=False)[0])


def prompt_probe():
    from trajhook import PromptProbe

    return PromptProbe(
        {"repeat": "abcdefgh" * 2, "punct": "a,b,c,d,a,b,c,"},
        tokenize,
        targets={"repeat": ["a", "z"], "punct": ["d", ","]},
        logits_fn=lambda model, ids, mask: model.lm(ids) if hasattr(model, "lm") else model(ids),
    )


def prompt_store(path, seed: int = 0, steps: int = 40, every: int = 4, maze: bool = False, events=()) -> None:
    """A real store of a TinyLM learning to repeat random sequences (plus a GridProbe policy if ``maze``)."""
    torch.manual_seed(seed)
    model = nn.Module()
    model.lm, model.policy = TinyLM(), policy(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    probes = [prompt_probe()] + ([GridProbe(policy_fn=lambda m, x: m.policy(x))] if maze else [])
    right = torch.full((16,), 7)
    with Recorder(path, probes, every_n_steps=every, wandb=False) as rec:
        rec.record(model, 0)
        for step in range(1, steps + 1):
            half = torch.randint(0, VOCAB, (16, 12), generator=g)
            ids = torch.cat([half, half], 1)
            logits = model.lm(ids[:, :-1])
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), ids[:, 1:].reshape(-1))
            if maze:
                loss = loss + nn.functional.cross_entropy(model.policy(torch.rand(16, 2, generator=g)), right)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for at, label in events:
                if step == at:
                    rec.mark(at, label)
            rec.maybe_record(model, step, loss=float(loss.detach()))
