"""PromptProbe: per-token losses and target log-probs of a language model on fixed prompts.

Every record runs all prompts, and every prompt + target continuation, through the model in
ONE padded forward pass and records:

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

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe, check_name

LogitsFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], Any]


class PromptProbe(Probe):
    """Record token losses, target log-probs and top-k next tokens on fixed prompts.

    ``prompts`` is a dict name → text or a list of texts (named ``"0"``, ``"1"``, ...).
    ``targets`` gives each prompt a list of continuation strings: a dict keyed by prompt
    name (prompts left out have none) or a list aligned with the prompts. See the module
    docstring for tokenization and padding.
    """

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
        self.prompt_ids = [self._encode(text, f"prompt {n!r}", True) for n, text in self._named_prompts()]
        self.target_ids = [
            [self._encode(t, f"target {t!r} of prompt {n!r}", False) for t in texts]
            for n, texts in zip(self.prompt_names, self.target_texts, strict=True)
        ]
        self.max_targets = max(len(t) for t in self.target_texts)
        self._batch: dict[str, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- input parsing
    def _fail(self, problem: str, hint: str) -> None:
        raise TrajhookError(f"PromptProbe {self.name!r}: {problem}. HINT: {hint}")

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
    def _forward_arguments(self, model: torch.nn.Module) -> set[str]:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return set()
        return {p for p in ("attention_mask", "position_ids", "use_cache") if p in params}

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

    def _logits(self, model: torch.nn.Module) -> torch.Tensor:
        ids, mask = self._batch["input_ids"], self._batch["attention_mask"]
        if self.logits_fn is not None:
            out = self.logits_fn(model, ids, mask)
        else:
            kwargs = {}
            if "attention_mask" in self._takes:
                kwargs["attention_mask"] = mask
            if "position_ids" in self._takes:
                kwargs["position_ids"] = self._batch["position_ids"]
            if "use_cache" in self._takes:
                kwargs["use_cache"] = False  # no key/value cache to build and throw away
            out = model(ids, **kwargs)
        if not isinstance(out, torch.Tensor):
            if hasattr(out, "logits"):
                out = out.logits
            elif isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
                out = out[0]
        if not isinstance(out, torch.Tensor) or out.ndim != 3 or tuple(out.shape[:2]) != tuple(ids.shape):
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            self._fail(
                f"the model returned {got} for input_ids of shape {tuple(ids.shape)}, "
                "expected logits of shape (batch, sequence, vocab)",
                "the model must return logits (or an object with .logits); otherwise pass "
                "logits_fn=lambda model, input_ids, attention_mask: ...",
            )
        return out

    # ----------------------------------------------------------------------------- probe contract
    def _check_ids(self, rows: list[list[int]], size: int, what: str, hint: str) -> None:
        """Every token id must be below ``size``; ``what`` names that bound in the error."""
        too_big = [i for row in rows for i in row if not 0 <= i < size]
        if too_big:
            self._fail(f"token id {too_big[0]} is outside the model's {what}", hint)

    def _check_embedding(self, model: torch.nn.Module, rows: list[list[int]]) -> None:
        """Before any forward: every id must fit the input embedding, when the model says its size."""
        embeddings = getattr(model, "get_input_embeddings", None)
        size = getattr(embeddings() if callable(embeddings) else None, "num_embeddings", None)
        if isinstance(size, int):  # else a plain module: the first forward tells (see setup)
            hint = "use the tokenizer the model was trained with, or resize the model's embeddings."
            self._check_ids(rows, size, f"input embedding of {size} tokens", hint)

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Pad all rows into one batch on ``device``, precompute gather indices, declare outputs."""
        self._takes = self._forward_arguments(model) if self.logits_fn is None else set()
        side = self._padding_side(self._takes)
        rows: list[list[int]] = list(self.prompt_ids)  # one row per prompt, then one per target
        target_slots: list[tuple[int, int, int, int]] = []  # (row, prompt, target index, prompt len)
        for p, (prompt, targets) in enumerate(zip(self.prompt_ids, self.target_ids, strict=True)):
            for k, target in enumerate(targets):
                target_slots.append((len(rows), p, k, len(prompt)))
                rows.append(prompt + target)
        width = max(len(r) for r in rows)
        self._check_embedding(model, rows)
        # Padding is masked (or past a causal row's end), so its value never matters: a real token of
        # the prompts keeps it inside the embedding even when the tokenizer's pad id is not.
        ids = torch.full((len(rows), width), rows[0][0], dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        offsets = []
        for r, row in enumerate(rows):
            start = width - len(row) if side == "left" else 0
            ids[r, start : start + len(row)] = torch.tensor(row)
            mask[r, start : start + len(row)] = 1
            offsets.append(start)
        self.padding_side = side

        # token_loss[p, t] = -log p(prompt[t + 1] | prompt[:t + 1]), read at row p, position start + t.
        loss_idx = [
            (p, offsets[p] + t, self.prompt_ids[p][t + 1], t)
            for p in range(len(self.prompt_ids))
            for t in range(len(self.prompt_ids[p]) - 1)
        ]
        # target_logprob: the sum over the target's tokens, each predicted from the position before it.
        tgt_idx = [
            (row, offsets[row] + plen - 1 + m, rows[row][plen + m], p * self.max_targets + k)
            for row, p, k, plen in target_slots
            for m in range(len(rows[row]) - plen)
        ]
        first_idx = [
            (row, offsets[row] + plen - 1, rows[row][plen], p * self.max_targets + k)
            for row, p, k, plen in target_slots
        ]
        last_pos = [offsets[p] + len(self.prompt_ids[p]) - 1 for p in range(len(self.prompt_ids))]

        def as_tensors(table: list[tuple[int, ...]], n_cols: int) -> list[torch.Tensor]:
            columns = list(zip(*table, strict=True)) if table else [() for _ in range(n_cols)]
            return [torch.tensor(c, dtype=torch.long, device=device) for c in columns]

        self._batch = {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "position_ids": (mask.cumsum(-1) - 1).clamp_min(0).to(device),
            "last_pos": torch.tensor(last_pos, dtype=torch.long, device=device),
        }
        self._loss_idx = as_tensors(loss_idx, 4)
        self._target_idx = as_tensors(tgt_idx, 4)
        self._first_idx = as_tensors(first_idx, 4)
        self._max_len = max(len(p) for p in self.prompt_ids)

        with torch.no_grad():
            try:
                vocab = int(self._logits(model).shape[-1])
            except IndexError as err:
                self._fail(
                    f"the first forward failed ({err}); the largest token id is {max(max(r) for r in rows)}",
                    "if that is outside the model's vocabulary, use the tokenizer the model was trained with.",
                )
        hint = "use the tokenizer the model was trained with, or a model with a larger vocab_size."
        self._check_ids(rows, vocab, f"vocabulary of {vocab}", hint)
        self.vocab_size = vocab
        self._k = min(self.top_k, vocab)
        n = len(self.prompt_ids)
        self.add_output("token_loss", (n, self._max_len - 1), "float32", nan_marks_missing=True)
        if self.max_targets:
            self.add_output("target_logprob", (n, self.max_targets), "float32", nan_marks_missing=True)
            self.add_output("target_first_logit", (n, self.max_targets), "float32", nan_marks_missing=True)
        self.add_output("topk_ids", (n, self._k), "int64")
        self.add_output("topk_logprob", (n, self._k), "float32")
        if self.full_logits:
            self.add_output("logits", (n, vocab), "float16")
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
        }

    def run(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """One forward over all prompt and prompt + target rows; gather the recorded numbers."""
        if not self._batch:
            self._fail(
                "run() was called before setup()",
                "call probe.setup(model, device) first (the Recorder does).",
            )
        logits = self._logits(model)
        n = len(self.prompt_ids)
        device = logits.device

        def logprobs_at(rows: torch.Tensor, pos: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            picked = logits[rows, pos].float()  # only the positions needed, never (batch, seq, vocab)
            return picked.gather(-1, tokens[:, None])[:, 0] - picked.logsumexp(-1)

        row, pos, tok, t = self._loss_idx
        token_loss = torch.full((n, self._max_len - 1), float("nan"), device=device)
        if len(row):
            token_loss[row, t] = -logprobs_at(row, pos, tok)

        last = logits[torch.arange(n, device=device), self._batch["last_pos"]].float()
        topk_logprob, topk_ids = last.log_softmax(-1).topk(self._k, dim=-1)
        record = {"token_loss": token_loss}
        if self.max_targets:
            row, pos, tok, slot = self._target_idx
            total = torch.zeros(n * self.max_targets, device=device)
            total.index_add_(0, slot, logprobs_at(row, pos, tok))
            filled = torch.zeros(n * self.max_targets, dtype=torch.bool, device=device)
            filled[slot] = True
            record["target_logprob"] = total.masked_fill(~filled, float("nan")).reshape(n, self.max_targets)
            row, pos, tok, slot = self._first_idx
            first = torch.full((n * self.max_targets,), float("nan"), device=device)
            first[slot] = logits[row, pos, tok].float()
            record["target_first_logit"] = first.reshape(n, self.max_targets)
        record["topk_ids"] = topk_ids.long()
        record["topk_logprob"] = topk_logprob
        if self.full_logits:
            record["logits"] = last.half()
        return record
