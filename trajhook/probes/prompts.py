"""PromptProbe: per-token losses and target log-probs of a language model on fixed prompts.

Every record runs all prompts, and every prompt + target continuation, through the model in
padded micro-batches and records:

``token_loss`` ``(n_prompts, max_len - 1)`` float32
    cross-entropy of token ``t + 1`` given tokens ``0..t`` of the prompt; NaN past the
    prompt's end. These are Olsson et al.'s per-token loss vectors.
``target_logprob`` ``(n_prompts, max_targets)`` float32
    total log-probability of each target continuation after its prompt; NaN where a prompt
    has fewer targets.
``target_first_logit`` ``(n_prompts, max_targets)`` float32
    the raw logit of each target's first token at the prompt's last position.
``topk_ids`` ``(n_prompts, top_k)`` int64 and ``topk_logprob`` ``(n_prompts, top_k)`` float32
    the most likely next tokens after each prompt.
``logits`` ``(n_prompts, vocab)`` float16, only with ``full_logits=True``
    the full next-token logits at each prompt's last position.

**Memory.** Rows are packed, longest first, into micro-batches of at most
``max_tokens_per_batch`` padded tokens (a longer row gets one of its own). The default keeps
one micro-batch's logits under 128 MiB in float32 (667 tokens at GPT-2's 50,257 vocabulary;
everything in one forward for small vocabularies). From each micro-batch's logits only the
positions recorded are read, upcast to float32 (bf16 and fp16 models) and reduced in chunks of
32 MiB, so a record holds one micro-batch of logits plus one chunk, never ``(rows, length,
vocab)``. Raise it on a GPU for fewer, larger forwards.

When no prompt has a target, the two ``target_*`` outputs are not declared at all (a dataset
with a zero-length axis cannot be chunked in HDF5); ``metadata["target_texts"]`` is then a
list of empty lists.

**Tokenization.** A Hugging Face tokenizer (anything with ``encode``) is called as
``encode(prompt)`` for prompts, so special tokens such as a BOS are added as the tokenizer
would add them, and ``encode(target, add_special_tokens=False)`` for targets. Targets are
tokenized *on their own* and their ids appended to the prompt's ids: the prompt's tokens stay
exactly those recorded in ``token_loss`` and the boundary cannot merge into one token. Write
a target as it continues the text, usually with its leading space (``" Paris"``). Any other
callable ``text -> ids`` (a list, a 1-D tensor, or a dict with ``"input_ids"``), or an
``encode`` that takes no ``add_special_tokens`` (tiktoken), is used as is for both.

**Padding.** Rows are padded to one length by the probe itself. A model whose ``forward``
takes ``attention_mask`` (Hugging Face models) gets the mask and, if it takes
``position_ids``, positions counted from each row's first real token (``cumsum(mask) - 1``),
so left and right padding give the same numbers as unpadded inputs. A plain module that
takes only ``input_ids`` is always right-padded: for a *causal* model no real token can
attend to a pad that comes after it and positions start at 0 in every row, so the result
equals the unpadded one. (A bidirectional model needs ``logits_fn``.) ``logits_fn(model,
input_ids, attention_mask)`` replaces the call entirely; the probe then pads on the side you
ask for (``padding_side``, else the tokenizer's, else right).

>>> class ByteTokenizer:
...     def __call__(self, text):
...         return list(text.encode())
...     def decode(self, ids):
...         return bytes(ids).decode(errors="replace")
>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Embedding(256, 8), torch.nn.Linear(8, 256))
>>> probe = PromptProbe({"abc": "abcabc", "hi": "hi"}, ByteTokenizer(), targets={"abc": ["abc", "x"]})
>>> probe.setup(model, torch.device("cpu"))
>>> record = probe.run(model)
>>> record["token_loss"].shape, record["target_logprob"].shape, record["topk_ids"].shape
(torch.Size([2, 5]), torch.Size([2, 2]), torch.Size([2, 5]))
>>> bool(record["token_loss"][1, 1:].isnan().all()), bool(record["target_logprob"][1].isnan().all())
(True, True)
>>> probe.metadata["prompt_tokens"][1]
['h', 'i']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from trajhook.errors import TrajhookError
from trajhook.probes.base import check_name, stage_tracker
from trajhook.probes.microbatch import (
    LogitsFn,
    MicroBatch,
    MicroBatchedProbe,
    default_max_tokens,
    forward_arguments,
    gather_logprobs,
    plan_micro_batches,
)

if TYPE_CHECKING:  # imported where it is used: import trajhook imports no analysis module
    from trajhook.analysis.online import StageTracker


class PromptProbe(MicroBatchedProbe):
    """Record token losses, target log-probs and top-k next tokens on fixed prompts.

    ``prompts`` is a dict name → text or a list of texts (named ``"0"``, ``"1"``, ...).
    ``targets`` gives each prompt a list of continuation strings: a dict keyed by prompt
    name (prompts left out have none) or a list aligned with the prompts. See the module
    docstring for tokenization, padding and memory. ``track_stages=True`` (or a
    :class:`~trajhook.analysis.online.StageTracker`, e.g. ``StageTracker("token_loss", icl=(50,
    10))``) follows the records on the writer thread and adds an event at each confirmed stage
    boundary of the ``token_loss`` trajectory.
    """

    kind = "prompts"

    def __init__(
        self,
        prompts: Mapping[str, str] | Sequence[str],
        tokenizer: Any,
        targets: Mapping[str, Sequence[str]] | Sequence[Sequence[str]] | None = None,
        name: str = "prompts",
        top_k: int = 5,
        logits_fn: LogitsFn | None = None,
        full_logits: bool = False,
        padding_side: str | None = None,
        max_tokens_per_batch: int | None = None,
        track_stages: bool | StageTracker = False,
    ) -> None:
        super().__init__(name)
        self.prompt_names, self.prompt_texts = self._parse_prompts(prompts)
        self.target_texts = self._parse_targets(targets)
        if not callable(tokenizer) and not hasattr(tokenizer, "encode"):
            self._fail(
                f"tokenizer {tokenizer!r} is neither callable nor has an encode method",
                "pass a Hugging Face tokenizer or a function text -> list of token ids.",
            )
        self.tokenizer = tokenizer
        if not isinstance(top_k, int) or top_k < 1:
            self._fail(f"top_k={top_k!r} is not a positive int", "pass top_k=5.")
        self.top_k = top_k
        self.logits_fn = logits_fn
        self.full_logits = bool(full_logits)
        if padding_side not in (None, "left", "right"):
            self._fail(f"padding_side={padding_side!r} is not 'left' or 'right'", "pass padding_side='right'.")
        self.requested_padding_side = padding_side
        tokens = max_tokens_per_batch
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            self._fail(
                f"max_tokens_per_batch={max_tokens_per_batch!r} is not a positive int",
                "pass e.g. max_tokens_per_batch=4096, or leave it out for the memory-bounded default.",
            )
        self.max_tokens_per_batch = max_tokens_per_batch
        self.stage_tracker: StageTracker | None = stage_tracker(track_stages, f"PromptProbe {name!r}")
        self.prompt_ids = [self._encode(text, f"prompt {n!r}", True) for n, text in self._named_prompts()]
        self.target_ids = [
            [self._encode(t, f"target {t!r} of prompt {n!r}", False) for t in texts]
            for n, texts in zip(self.prompt_names, self.target_texts, strict=True)
        ]
        self.max_targets = max(len(t) for t in self.target_texts)

    # ----------------------------------------------------------------------------- input parsing
    def _named_prompts(self) -> list[tuple[str, str]]:
        return list(zip(self.prompt_names, self.prompt_texts, strict=True))

    def _parse_prompts(self, prompts: Any) -> tuple[list[str], list[str]]:
        if isinstance(prompts, str):
            self._fail(f"prompts is a single string {prompts[:40]!r}", "pass a list: prompts=[text].")
        if isinstance(prompts, Mapping):
            names, texts = [str(k) for k in prompts], list(prompts.values())
        elif isinstance(prompts, Sequence):
            names, texts = [str(i) for i in range(len(prompts))], list(prompts)
        else:
            self._fail(f"prompts of type {type(prompts).__name__} are not supported", "pass a dict or a list.")
        if not texts:
            self._fail("prompts is empty", "pass at least one prompt, e.g. prompts=['The capital of France is'].")
        for n in names:
            try:
                check_name("prompt", n)
            except TrajhookError:
                self._fail(
                    f"prompt name {n!r} is not valid",
                    "use letters, digits, '_', '.', '-', e.g. 'capital_fr'.",
                )
        for n, t in zip(names, texts, strict=True):
            if not isinstance(t, str) or not t:
                self._fail(f"prompt {n!r} is {t!r}, not a non-empty string", "give every prompt some text.")
        return names, texts

    def _parse_targets(self, targets: Any) -> list[list[str]]:
        n = len(self.prompt_names)
        if targets is None:
            per_prompt: list[Any] = [[] for _ in range(n)]
        elif isinstance(targets, Mapping):
            unknown = [k for k in targets if k not in self.prompt_names]
            if unknown:
                self._fail(
                    f"targets has key {unknown[0]!r}, which is not a prompt name",
                    f"key targets by the prompt names {self.prompt_names[:5]}.",
                )
            per_prompt = [targets.get(name, []) for name in self.prompt_names]
        elif isinstance(targets, Sequence) and not isinstance(targets, str):
            if len(targets) != n:
                self._fail(
                    f"targets has {len(targets)} entries for {n} prompts",
                    "give one list of targets per prompt (an empty list for none), or a dict by prompt name.",
                )
            per_prompt = list(targets)
        else:
            self._fail(f"targets={targets!r} is not a dict or a list", "pass targets={'prompt name': [' Paris']}.")
        result = []
        for name, texts in zip(self.prompt_names, per_prompt, strict=True):
            texts = [texts] if isinstance(texts, str) else list(texts)
            for t in texts:
                if not isinstance(t, str) or not t:
                    self._fail(f"target {t!r} of prompt {name!r} is not a non-empty string", "e.g. [' Paris'].")
            result.append(texts)
        return result

    def _encode(self, text: str, what: str, is_prompt: bool) -> list[int]:
        tok = self.tokenizer
        try:
            if hasattr(tok, "encode") and not isinstance(tok, type):
                try:
                    ids = tok.encode(text) if is_prompt else tok.encode(text, add_special_tokens=False)
                except TypeError:  # an encode without add_special_tokens (e.g. tiktoken)
                    ids = tok.encode(text)
            else:
                ids = tok(text)
        except TrajhookError:
            raise
        except Exception as err:
            self._fail(f"the tokenizer failed on {what}: {err!r}", "check that it maps a string to token ids.")
        if isinstance(ids, Mapping):
            ids = ids.get("input_ids")
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        if hasattr(ids, "tolist"):  # numpy
            ids = ids.tolist()
        if isinstance(ids, list) and len(ids) == 1 and isinstance(ids[0], list):
            ids = ids[0]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            self._fail(
                f"the tokenizer returned {ids!r:.80} for {what}, not a list of ints",
                "the tokenizer must map text to a list (or 1-D tensor) of token ids.",
            )
        if not ids:
            self._fail(
                f"the tokenizer returned no tokens for {what}",
                "use text that tokenizes to at least one token.",
            )
        return ids

    def _decode_token(self, token_id: int) -> str:
        decode = getattr(self.tokenizer, "decode", None)
        if decode is None:
            return str(token_id)
        try:
            return str(decode([token_id]))
        except Exception:
            return str(token_id)

    # ----------------------------------------------------------------------------- model calls
    def _padding_side(self, takes: set[str]) -> str:
        if self.logits_fn is None and "attention_mask" not in takes:
            if self.requested_padding_side == "left":
                self._fail(
                    "padding_side='left' was asked for, but the model's forward takes no attention_mask",
                    "leave padding_side unset (right padding is exact for a causal model) or pass logits_fn.",
                )
            return "right"
        side = self.requested_padding_side or getattr(self.tokenizer, "padding_side", None) or "right"
        return side if side in ("left", "right") else "right"

    # ----------------------------------------------------------------------------- probe contract
    def _row_name(self, r: int) -> str:
        """Which prompt (and target) row ``r`` of setup's rows holds, for messages."""
        if r < len(self.prompt_ids):
            return f"prompt {self.prompt_names[r]!r}"
        p, k = self._target_of_row[r - len(self.prompt_ids)]
        return f"prompt {self.prompt_names[p]!r} + target {self.target_texts[p][k]!r}"

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Plan the micro-batches on ``device``, precompute gather indices, declare outputs."""
        self._takes = forward_arguments(model) if self.logits_fn is None else set()
        side = self._padding_side(self._takes)
        rows: list[list[int]] = list(self.prompt_ids)  # one row per prompt, then one per target
        target_slots: list[tuple[int, int, int, int]] = []  # (row, prompt, target index, prompt len)
        self._target_of_row = []
        for p, (prompt, targets) in enumerate(zip(self.prompt_ids, self.target_ids, strict=True)):
            for k, target in enumerate(targets):
                target_slots.append((len(rows), p, k, len(prompt)))
                self._target_of_row.append((p, k))
                rows.append(prompt + target)
        check_fits_model(model, rows, self._fail, self._row_name)
        vocab = first_forward_vocab(model, rows, lambda batch: self._logits(model, batch), self._fail, self._row_name)
        check_ids(rows, vocab, f"vocabulary of {vocab}", self._fail, self._row_name)
        max_tokens = self.max_tokens_per_batch or default_max_tokens(vocab, max(len(r) for r in rows))
        # Padding is masked (or past a causal row's end), so its value never matters: a real token of
        # the prompts keeps it inside the embedding even when the tokenizer's pad id is not.
        self._micro_batches = plan_micro_batches(rows, max_tokens, side, pad_id=rows[0][0])
        self.padding_side = side
        self._max_len = max(len(p) for p in self.prompt_ids)
        n, width = len(self.prompt_ids), self._max_len - 1
        targets_of_row = {row: (p, k, plen) for row, p, k, plen in target_slots}
        for batch in self._micro_batches:
            loss, last, target, first = [], [], [], []
            for j, (r, offset) in enumerate(zip(batch.rows, batch.offsets, strict=True)):
                if r < n:
                    # token_loss[r, t] = -log p(prompt[t + 1] | prompt[:t + 1]), read at position offset + t
                    loss += [(j, offset + t, rows[r][t + 1], r * width + t) for t in range(len(rows[r]) - 1)]
                    last.append((j, offset + len(rows[r]) - 1, r))
                else:  # target_logprob: the sum over the target's tokens, each predicted from the one before
                    p, k, plen = targets_of_row[r]
                    slot = p * self.max_targets + k
                    target += [(j, offset + plen - 1 + m, rows[r][plen + m], slot) for m in range(len(rows[r]) - plen)]
                    first.append((j, offset + plen - 1, rows[r][plen], slot))
            batch.set_gather("loss", loss, 4)
            batch.set_gather("last", last, 3)
            batch.set_gather("target", target, 4)
            batch.set_gather("first", first, 4)
            batch.to(device)
        self.merge_device = device
        self.max_tokens = max_tokens
        self.vocab_size = vocab
        self._k = min(self.top_k, vocab)
        # run_part gives each micro-batch's numbers with their record positions (its gather tables' last
        # column); a target's log-prob is the sum of its tokens', added in micro-batch order.
        nan = float("nan")  # past a prompt's end, or where a prompt has fewer targets
        self.add_output("token_loss", (n, width), "float32", nan_marks_missing=True, merge="scatter", fill=nan)
        if self.max_targets:
            shape = (n, self.max_targets)
            self.add_output("target_logprob", shape, "float32", nan_marks_missing=True, merge="sum", fill=nan)
            self.add_output("target_first_logit", shape, "float32", nan_marks_missing=True, merge="scatter", fill=nan)
        self.add_output("topk_ids", (n, self._k), "int64", merge="scatter")
        self.add_output("topk_logprob", (n, self._k), "float32", merge="scatter")
        if self.full_logits:
            self.add_output("logits", (n, vocab), "float16", merge="scatter")
        self.metadata = {
            "prompt_names": list(self.prompt_names),
            "prompt_texts": list(self.prompt_texts),
            "prompt_token_ids": [list(p) for p in self.prompt_ids],
            "prompt_tokens": [[self._decode_token(i) for i in p] for p in self.prompt_ids],
            "target_texts": [list(t) for t in self.target_texts],
            "target_token_ids": [[list(t) for t in ts] for ts in self.target_ids],
            "padding_side": side,
            "vocab_size": vocab,
            "top_k": self._k,
            "max_tokens_per_batch": max_tokens,
        }
        if self.stage_tracker is not None and self.stage_tracker.output not in self.outputs:
            self._fail(
                f"its StageTracker follows {self.stage_tracker.output!r}, not an output",
                f"follow one of {sorted(self.outputs)}, e.g. StageTracker('token_loss').",
            )

    def run_part(self, model: torch.nn.Module, part: int, parts: int) -> dict[str, Any]:
        """The numbers micro-batch ``part`` contributes, each with the record positions it goes to."""
        batch = self._micro_batches[part]
        logits = self._logits(model, batch)
        out: dict[str, Any] = {}
        row, pos, tok, at = batch.gathers["loss"]
        if len(row):
            out["token_loss"] = at, -gather_logprobs(logits, row, pos, tok, batch.runs["loss"])
        row, pos, prompt = batch.gathers["last"]
        if len(row):
            last = logits[row, pos].float()
            topk_logprob, topk_ids = last.log_softmax(-1).topk(self._k, dim=-1)
            out["topk_logprob"], out["topk_ids"] = (prompt, topk_logprob), (prompt, topk_ids)
            if self.full_logits:
                out["logits"] = prompt, last.half()
        row, pos, tok, at = batch.gathers["target"]
        if len(row):
            out["target_logprob"] = at, gather_logprobs(logits, row, pos, tok, batch.runs["target"])
        row, pos, tok, at = batch.gathers["first"]
        if len(row):
            out["target_first_logit"] = at, logits[row, pos, tok].float()
        return out


# --------------------------------------------------------------------------------- checks shared with TokenLossProbe
Fail = Callable[[str, str], Any]
RowName = Callable[[int], str]


def check_ids(rows: Sequence[Sequence[int]], size: int, what: str, fail: Fail, row_name: RowName) -> None:
    """Every token id must lie in ``[0, size)``; ``what`` names that bound in the error."""
    for r, row in enumerate(rows):
        for i in row:
            if i < 0:
                fail(
                    f"{row_name(r)} has the negative token id {i}",
                    "token ids count from 0; check what the tokenizer returns (e.g. -1 or -100 used as padding).",
                )
            if i >= size:
                fail(
                    f"token id {i} is outside the model's {what} ({row_name(r)})",
                    "use the tokenizer the model was trained with, or a model with a larger vocabulary.",
                )


def model_context(model: Any) -> tuple[int, str] | None:
    """The longest input a Hugging Face model takes, and the config field that says so; None if unknown."""
    config = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, f"config.{key}"
    return None


def check_fits_model(model: Any, rows: Sequence[Sequence[int]], fail: Fail, row_name: RowName) -> None:
    """Before any forward: ids >= 0, below the input embedding's size, rows within the context (where known)."""
    check_ids(rows, 2**63, "id range", fail, row_name)  # negative ids first: their own message
    embeddings = getattr(model, "get_input_embeddings", None)
    try:
        size = getattr(embeddings() if callable(embeddings) else None, "num_embeddings", None)
    except Exception:  # a model whose get_input_embeddings is not implemented
        size = None
    if isinstance(size, int):  # else a plain module: the first forward tells
        check_ids(rows, size, f"input embedding of {size} tokens", fail, row_name)
    context = model_context(model)
    if context is not None:
        longest = max(range(len(rows)), key=lambda r: len(rows[r]))
        if len(rows[longest]) > context[0]:
            fail(
                f"{row_name(longest)} is {len(rows[longest])} tokens long, longer than the model's context of "
                f"{context[0]} positions ({context[1]})",
                "shorten it, or give a long text to TokenLossProbe, which cuts it into context-sized windows.",
            )


def first_forward_vocab(
    model: Any,
    rows: Sequence[Sequence[int]],
    logits: Callable[[MicroBatch], torch.Tensor],
    fail: Fail,
    row_name: RowName,
) -> int:
    """The vocabulary size, from one forward of the longest row alone; a failure is diagnosed.

    A plain module says nothing of its context or embedding size: when the forward raises, a
    forward of each id alone and one of a good id repeated to the same length tell which it is.
    """
    longest = max(range(len(rows)), key=lambda r: len(rows[r]))
    row = list(rows[longest])
    device = _first_device(model)

    def forward(ids: list[list[int]]) -> torch.Tensor:
        batch = plan_micro_batches(ids, max_tokens=2**62, side="right", pad_id=ids[0][0])[0]
        return logits(batch.to(device))

    def runs(ids: list[list[int]]) -> bool:
        try:
            forward(ids)
        except TrajhookError:
            raise
        except Exception:
            return False
        return True

    with torch.no_grad():
        try:
            return int(forward([row]).shape[-1])
        except (IndexError, RuntimeError) as err:
            error = f"{type(err).__name__}: {str(err)[:200]}"
            if not runs([[i] for i in sorted(set(row))]):  # every id alone, at position 0
                fail(
                    f"the first forward failed ({error}); the largest token id is {max(row)} in {row_name(longest)}",
                    "if that is outside the model's vocabulary, use the tokenizer the model was trained with.",
                )
            if not runs([[row[0]] * len(row)]):  # good ids, the same length
                fail(
                    f"the first forward failed ({error}) on {row_name(longest)}, {len(row)} tokens long, while "
                    "each of its tokens alone runs: it is longer than the model's context",
                    "shorten it, or give a long text to TokenLossProbe, which cuts it into context-sized windows.",
                )
            raise


def _first_device(model: Any) -> torch.device:
    for tensor in getattr(model, "parameters", lambda: iter(()))():
        return tensor.device
    return torch.device("cpu")
