"""Micro-batched language-model forwards that keep only the log-probs they need.

Shared by :class:`~trajhook.probes.prompts.PromptProbe` and
:class:`~trajhook.probes.token_loss.TokenLossProbe`. Rows of token ids are packed, longest
first, into micro-batches of at most ``max_tokens`` padded tokens (a longer row gets a
micro-batch of its own). Each micro-batch is one forward; from its logits only the positions
named in the gather tables are read, in chunks of at most :data:`CHUNK_BYTES` of float32, so
the memory of a record is one micro-batch's logits in the model's dtype plus one chunk, never
``(rows, length, vocab)``. Logits are upcast to float32 chunk by chunk (bf16 and fp16 models).

>>> batches = plan_micro_batches([[1, 2, 3], [4], [5, 6], [7, 8, 9, 10]], max_tokens=6, side="right", pad_id=0)
>>> [b.rows for b in batches], [tuple(b.input_ids.shape) for b in batches]
([[3], [0, 2], [1]], [(1, 4), (2, 3), (1, 1)])
>>> batches[1].input_ids.tolist(), batches[1].offsets
([[1, 2, 3], [5, 6, 0]], [0, 0])
>>> logits = torch.tensor([[[0.0, 0.0], [1.0, 3.0]]])
>>> round(gather_logprobs(logits, *[torch.tensor([v]) for v in (0, 1, 1)]).item(), 6)  # log softmax([1, 3])[1]
-0.126928
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch

from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe

LogitsFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Any]
"""``logits_fn(model, input_ids, attention_mask) -> logits``, for a model whose call does not return them."""

LOGITS_BUDGET_BYTES = 128 * 2**20
"""The default micro-batch holds as many tokens as keep its logits, in float32, under this."""

CHUNK_BYTES = 32 * 2**20
"""Gathered logits are upcast and reduced in chunks of at most this many float32 bytes."""


def default_max_tokens(vocab_size: int, longest_row: int) -> int:
    """Tokens per micro-batch whose float32 logits fit :data:`LOGITS_BUDGET_BYTES` (at least one row).

    >>> default_max_tokens(50_257, 256), default_max_tokens(64, 256)
    (667, 524288)
    """
    return max(int(longest_row), LOGITS_BUDGET_BYTES // (4 * max(1, int(vocab_size))))


@dataclass
class MicroBatch:
    """One padded forward: which rows it holds, their inputs, and where each real token sits."""

    rows: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    offsets: list[int]
    gathers: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    runs: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)

    def to(self, device: torch.device) -> MicroBatch:
        self.input_ids = self.input_ids.to(device)
        self.attention_mask = self.attention_mask.to(device)
        self.position_ids = self.position_ids.to(device)
        self.gathers = {k: [t.to(device) for t in v] for k, v in self.gathers.items()}
        return self

    def set_gather(self, name: str, table: Sequence[tuple[int, ...]], n_columns: int) -> None:
        """Store a gather table ``[(local row, position, ...), ...]`` as one long tensor per column.

        Runs of consecutive positions in one row are noted too (``runs[name]``: ``(row, first
        position, length, start in the table)``), so that they can be read as views of the
        logits instead of gathered copies.
        """
        columns = list(zip(*table, strict=True)) if table else [() for _ in range(n_columns)]
        self.gathers[name] = [torch.tensor(c, dtype=torch.long) for c in columns]
        runs: list[list[int]] = []
        for i, (row, pos, *_) in enumerate(table):
            last = runs[-1] if runs else None
            if last is not None and last[0] == row and last[1] + last[2] == pos:
                last[2] += 1
            else:
                runs.append([row, pos, 1, i])
        self.runs[name] = [tuple(r) for r in runs]


def plan_micro_batches(rows: Sequence[Sequence[int]], max_tokens: int, side: str, pad_id: int) -> list[MicroBatch]:
    """Pack rows, longest first, into padded micro-batches of at most ``max_tokens`` tokens (padding included).

    ``pad_id`` fills the padding; it is masked (or after a causal row's end), so any id the
    embedding accepts will do. Positions count from each row's first real token.
    """
    order = sorted(range(len(rows)), key=lambda r: -len(rows[r]))
    groups: list[list[int]] = []
    for r in order:
        if groups and (len(groups[-1]) + 1) * len(rows[groups[-1][0]]) <= max_tokens:
            groups[-1].append(r)
        else:
            groups.append([r])
    batches = []
    for group in groups:
        width = len(rows[group[0]])
        ids = torch.full((len(group), width), int(pad_id), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        offsets = []
        for j, r in enumerate(group):
            start = width - len(rows[r]) if side == "left" else 0
            ids[j, start : start + len(rows[r])] = torch.tensor(list(rows[r]), dtype=torch.long)
            mask[j, start : start + len(rows[r])] = 1
            offsets.append(start)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        batches.append(MicroBatch(group, ids, mask, positions, offsets))
    return batches


def forward_arguments(model: Any) -> set[str]:
    """Which of ``attention_mask``, ``position_ids``, ``use_cache`` the model's forward takes."""
    try:
        params = inspect.signature(model.forward if hasattr(model, "forward") else model).parameters
    except (TypeError, ValueError):
        return set()
    inner = getattr(model, "module", None)  # a wrapper forwarding (*args, **kwargs), e.g. an FSDP1 root
    if (
        isinstance(inner, torch.nn.Module)
        and inner is not model
        and all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
    ):
        return forward_arguments(inner)
    return {p for p in ("attention_mask", "position_ids", "use_cache") if p in params}


def call_model(
    model: Any,
    batch: MicroBatch,
    takes: set[str],
    logits_fn: Callable[[Any, torch.Tensor, torch.Tensor], Any] | None,
) -> Any:
    """The model's raw output on one micro-batch (``logits_fn`` replaces the call when given)."""
    if logits_fn is not None:
        return logits_fn(model, batch.input_ids, batch.attention_mask)
    kwargs: dict[str, Any] = {}
    if "attention_mask" in takes:
        kwargs["attention_mask"] = batch.attention_mask
    if "position_ids" in takes:
        kwargs["position_ids"] = batch.position_ids
    if "use_cache" in takes:
        kwargs["use_cache"] = False  # no key/value cache to build and throw away
    return model(batch.input_ids, **kwargs)


def as_logits(out: Any) -> Any:
    """Logits from a model output: a tensor, an object with ``.logits``, or a tuple led by logits."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return out


def chunk_rows(vocab_size: int) -> int:
    """How many vocabulary rows one float32 chunk of :data:`CHUNK_BYTES` holds."""
    return max(1, CHUNK_BYTES // (4 * max(1, int(vocab_size))))


def gather_logprobs(
    logits: torch.Tensor,
    rows: torch.Tensor,
    pos: torch.Tensor,
    tokens: torch.Tensor,
    runs: Sequence[tuple[int, ...]] | None = None,
) -> torch.Tensor:
    """``log softmax(logits[rows, pos])[tokens]`` in float32, reading a chunk of positions at a time.

    With ``runs`` (from :meth:`MicroBatch.set_gather`), a run of consecutive positions in one row
    is read as a view of the logits rather than gathered into a copy.
    """
    step = chunk_rows(logits.shape[-1])
    if runs is None:
        runs = [(None, None, len(rows), 0)]
    parts = []
    for row, first, length, start in runs:
        for offset in range(0, length, step):
            n = min(step, length - offset)
            at = start + offset
            if row is None:
                picked = logits[rows[at : at + n], pos[at : at + n]]
            else:
                picked = logits[row, first + offset : first + offset + n]
            picked = picked.float()
            target = picked.gather(-1, tokens[at : at + n, None])[:, 0]
            parts.append(target - picked.logsumexp(-1))
    if not parts:
        return torch.zeros(0, device=logits.device)
    return torch.cat(parts)


class MicroBatchedProbe(Probe):
    """A probe whose work is the micro-batches it planned at setup (``self._micro_batches``), one forward each.

    :meth:`split` gives one part per micro-batch, the same on every rank, and ``run`` is every part
    merged (:meth:`Probe.run`); a subclass gives ``run_part`` (what one micro-batch contributes, at
    the record positions its gather tables name) and declares how each output merges. :meth:`_logits`
    calls the model (or ``logits_fn``) and checks what came back.
    """

    logits_fn: LogitsFn | None = None
    _takes: set[str]
    _micro_batches: list[MicroBatch]

    def _fail(self, problem: str, hint: str) -> NoReturn:
        raise TrajhookError(f"{type(self).__name__} {self.name!r}: {problem}. HINT: {hint}")

    def split(self, ranks: int) -> int:
        """One part per micro-batch (they are planned at setup, the same on every rank)."""
        if not getattr(self, "_micro_batches", None):
            self._fail("run() was called before setup()", "call probe.setup(model, device) first (the Recorder does).")
        return len(self._micro_batches)

    def _logits(self, model: torch.nn.Module, batch: MicroBatch) -> torch.Tensor:
        """The model's logits for ``batch``: ``(batch, sequence, vocab)``, else an error naming the probe."""
        out = as_logits(call_model(model, batch, self._takes, self.logits_fn))
        shape = tuple(batch.input_ids.shape)
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            self._fail(
                f"the model returned {got} for input_ids of shape {shape}, expected logits of shape "
                "(batch, sequence, vocab)",
                "the model must return logits (or an object with .logits); otherwise pass "
                "logits_fn=lambda model, input_ids, attention_mask: ...",
            )
        return out
