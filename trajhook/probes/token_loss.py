"""TokenLossProbe: the per-token loss of a fixed token stream, cut into context-sized windows.

Olsson et al. (2022) follow a model through training by its loss on every token of a fixed
text: one long vector per snapshot, whose PCA trajectory turns when induction heads form,
and whose late-minus-early difference within a context is the in-context-learning score.
This probe records exactly that vector.

The stream (a text, tokenized once, or token ids) is cut into consecutive, non-overlapping
windows of ``context`` tokens (the last one may be shorter; a last window of one token is
dropped). Each window is one row of the model's input, so each token's loss is conditioned
only on the tokens before it *in its window*. ``token_loss`` is one flat float vector per
record: window 0's losses for its tokens 1..L-1, then window 1's, and so on (the first token
of a window has nothing to be predicted from). :func:`per_window` reshapes it to ``(...,
n_windows, context - 1)`` (NaN-padded) for :func:`~trajhook.analysis.trajectory.icl_score`;
:func:`~trajhook.analysis.trajectory.trajectory_pca` takes the flat records as they are.

Memory and speed are those of :class:`~trajhook.probes.prompts.PromptProbe`: windows go
through the model in micro-batches of at most ``max_tokens_per_batch`` tokens (default: 128
MiB of float32 logits, at least one window), and only the log-prob of each next token is kept.

>>> torch.manual_seed(0) and None
>>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 10))
>>> probe = TokenLossProbe(list(range(10)) * 3, context=8)
>>> probe.setup(model, torch.device("cpu"))
>>> probe.metadata["window_lengths"], probe.outputs["token_loss"].shape
([8, 8, 8, 6], (26,))
>>> with torch.no_grad():  # the Recorder runs probes under no_grad
...     flat = probe.run(model)["token_loss"].numpy()
>>> per_window(flat, probe.metadata).shape
(4, 7)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from trajhook.errors import TrajhookError
from trajhook.probes.base import stage_tracker
from trajhook.probes.microbatch import (
    LogitsFn,
    MicroBatchedProbe,
    default_max_tokens,
    forward_arguments,
    gather_logprobs,
    plan_micro_batches,
)
from trajhook.probes.prompts import check_fits_model, check_ids, first_forward_vocab, model_context

if TYPE_CHECKING:  # imported where it is used: import trajhook imports no analysis module
    from trajhook.analysis.online import StageTracker


class TokenLossProbe(MicroBatchedProbe):
    """Record the loss of every token of a fixed stream, as one flat vector per record.

    Args:
        text_or_ids: a text (tokenized once with ``tokenizer``) or the token ids themselves
            (a list, a 1-D numpy array or tensor). 10,000 tokens or more is typical.
        tokenizer: a Hugging Face tokenizer (``encode``) or a callable ``text -> ids``; only
            needed for a text.
        context: window length in tokens. Default: the model's context
            (``config.n_positions``, ``max_position_embeddings``...) at setup.
        name: the probe's name in the store.
        dtype: ``"float32"`` or ``"float16"`` (half the store, about 3 significant digits).
        max_tokens_per_batch: padded tokens per forward (see the module docstring).
        logits_fn: ``logits_fn(model, input_ids, attention_mask) -> logits`` when
            ``model(input_ids)`` does not return logits.
        track_stages: ``True`` or a :class:`~trajhook.analysis.online.StageTracker`: follow the
            records on the writer thread and add an event at each confirmed PCA turn or ICL drop
            (``True``: default parameters, ICL score of positions 500 and 50, clipped to the window).
    """

    kind = "token_loss"

    def __init__(
        self,
        text_or_ids: str | Sequence[int] | np.ndarray | torch.Tensor,
        tokenizer: Any = None,
        context: int | None = None,
        *,
        name: str = "token_loss",
        dtype: str = "float32",
        max_tokens_per_batch: int | None = None,
        logits_fn: LogitsFn | None = None,
        track_stages: bool | StageTracker = False,
    ) -> None:
        super().__init__(name)
        self.ids = self._stream(text_or_ids, tokenizer)
        if context is not None and (isinstance(context, bool) or not isinstance(context, int) or context < 2):
            self._fail(f"context={context!r} is not an int >= 2", "pass the model's context length, e.g. context=1024.")
        if str(dtype) not in ("float32", "float16"):
            self._fail(f"dtype={dtype!r} is not 'float32' or 'float16'", "pass dtype='float16' to halve the store.")
        tokens = max_tokens_per_batch
        if tokens is not None and (isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1):
            self._fail(
                f"max_tokens_per_batch={tokens!r} is not a positive int",
                "pass e.g. max_tokens_per_batch=4096, or leave it out for the memory-bounded default.",
            )
        self.requested_context = context
        self.dtype = np.dtype(dtype)
        self.max_tokens_per_batch = tokens
        self.logits_fn = logits_fn
        self.tokenizer = tokenizer
        self.stage_tracker: StageTracker | None = stage_tracker(track_stages, f"TokenLossProbe {name!r}", icl=(500, 50))

    def _stream(self, text_or_ids: Any, tokenizer: Any) -> list[int]:
        if isinstance(text_or_ids, str):
            if tokenizer is None:
                self._fail("a text was given without a tokenizer", "pass the model's tokenizer, or token ids.")
            try:
                encode = tokenizer.encode if hasattr(tokenizer, "encode") else tokenizer
                ids = encode(text_or_ids)
            except Exception as err:
                self._fail(f"the tokenizer failed on the text: {err!r}", "check that it maps a string to token ids.")
            if isinstance(ids, Mapping):
                ids = ids.get("input_ids")
        else:
            ids = text_or_ids
        if isinstance(ids, torch.Tensor | np.ndarray):
            floating = ids.dtype.is_floating_point if isinstance(ids, torch.Tensor) else ids.dtype.kind not in "iu"
            if ids.ndim != 1 or floating:
                self._fail(
                    f"the token ids are a {ids.ndim}-D {ids.dtype} array",
                    "pass a 1-D sequence of int token ids (flatten a batch with ids.reshape(-1)).",
                )
            ids = ids.tolist()
        if not isinstance(ids, Sequence) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            self._fail(f"{str(ids)[:80]!r} is not a list of int token ids", "pass a text with a tokenizer, or int ids.")
        if len(ids) < 2:
            self._fail(f"the stream has {len(ids)} token(s)", "give at least 2 tokens; 10,000 or more is typical.")
        return list(ids)

    def _window_name(self, r: int) -> str:
        start = self._starts[r]
        return f"window {r} (tokens {start}..{start + len(self._rows[r]) - 1} of the stream)"

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Cut the stream into windows, plan micro-batches on ``device``, declare ``token_loss``."""
        known = model_context(model)
        context = self.requested_context or (known[0] if known else None)
        if context is None:
            self._fail(
                "the model does not say its context length (no config.n_positions or max_position_embeddings)",
                "pass context=, the number of tokens the model takes at once, e.g. context=1024.",
            )
        if known is not None and context > known[0]:
            self._fail(
                f"context={context} is longer than the model's context of {known[0]} positions ({known[1]})",
                f"pass context={known[0]} or less.",
            )
        self.context = int(context)
        starts = list(range(0, len(self.ids), self.context))
        rows = [self.ids[s : s + self.context] for s in starts]
        if len(rows[-1]) < 2:  # a lone last token has no loss
            starts, rows = starts[:-1], rows[:-1]
        self._starts, self._rows = starts, rows
        self._takes = forward_arguments(model) if self.logits_fn is None else set()
        check_fits_model(model, rows, self._fail, self._window_name)
        vocab = first_forward_vocab(model, rows, lambda b: self._logits(model, b), self._fail, self._window_name)
        check_ids(rows, vocab, f"vocabulary of {vocab}", self._fail, self._window_name)
        self.max_tokens = self.max_tokens_per_batch or default_max_tokens(vocab, self.context)
        self._micro_batches = plan_micro_batches(rows, self.max_tokens, "right", pad_id=rows[0][0])
        flat_start = np.concatenate([[0], np.cumsum([len(r) - 1 for r in rows])])
        for batch in self._micro_batches:
            table = [
                (j, t, rows[r][t + 1], int(flat_start[r]) + t)
                for j, r in enumerate(batch.rows)
                for t in range(len(rows[r]) - 1)
            ]
            batch.set_gather("loss", table, 4)
            batch.to(device)
        self.merge_device = device
        self.vocab_size = vocab
        # run_part gives each micro-batch's losses with their positions in the flat vector (its table's last column)
        self.add_output("token_loss", (int(flat_start[-1]),), self.dtype, merge="scatter", fill=float("nan"))
        self.metadata = {
            "context": self.context,
            "window_starts": starts,
            "window_lengths": [len(r) for r in rows],
            "n_stream_tokens": len(self.ids),
            "vocab_size": vocab,
            "max_tokens_per_batch": self.max_tokens,
        }
        if self.stage_tracker is not None:
            if self.stage_tracker.output != "token_loss":
                self._fail(f"its StageTracker follows {self.stage_tracker.output!r}", "use StageTracker('token_loss').")
            if self.stage_tracker.reshape is None:
                metadata = self.metadata
                self.stage_tracker.reshape = lambda flat: per_window(flat, metadata)

    def run_part(self, model: torch.nn.Module, part: int, parts: int) -> dict[str, Any]:
        """The losses of micro-batch ``part``'s tokens, with their positions in ``token_loss``."""
        batch = self._micro_batches[part]
        logits = self._logits(model, batch)
        row, pos, tok, at = batch.gathers["loss"]
        return {"token_loss": (at, -gather_logprobs(logits, row, pos, tok, batch.runs["loss"]))}


def per_window(token_loss: np.ndarray, metadata: Mapping[str, Any]) -> np.ndarray:
    """Reshape flat records ``(..., n_losses)`` to ``(..., n_windows, context - 1)``, NaN past a short window.

    ``[..., w, t]`` is the loss of token ``t + 1`` of window ``w`` given its tokens ``0..t``: the
    layout :func:`~trajhook.analysis.trajectory.icl_score` takes (e.g. ``late=499, early=49``).

    >>> per_window(np.arange(5.0), {"context": 3, "window_lengths": [3, 3, 2]}).tolist()
    [[0.0, 1.0], [2.0, 3.0], [4.0, nan]]
    """
    flat = np.asarray(token_loss)  # once: a loaded log's dataset is read from the file by each np.asarray
    flat = flat if flat.dtype == np.float64 else flat.astype(np.float32)
    lengths = [int(n) - 1 for n in metadata["window_lengths"]]
    width = int(metadata["context"]) - 1
    if flat.shape[-1] != sum(lengths):
        raise TrajhookError(
            f"per_window: token_loss has {flat.shape[-1]} entries per record, the windows {sum(lengths)}. "
            "HINT: pass the TokenLossProbe's own metadata, e.g. log['token_loss'].metadata."
        )
    out = np.full((*flat.shape[:-1], len(lengths), width), np.nan, dtype=flat.dtype)
    start = 0
    for w, n in enumerate(lengths):
        out[..., w, :n] = flat[..., start : start + n]
        start += n
    return out
