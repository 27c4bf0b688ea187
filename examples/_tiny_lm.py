"""A tiny character tokenizer and causal transformer shared by the language-model examples.

Nothing here is part of trajhook: it is the smallest model and tokenizer that show the
phenomena on a laptop CPU. The model is a plain ``nn.Module`` taking only ``input_ids``, so
the PromptProbe right-pads its rows (exact for a causal model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CharTokenizer:
    """Characters to ids and back; unknown characters map to ``unknown``.

    >>> tok = CharTokenizer("ab ")
    >>> tok("ba b"), tok.decode([1, 0])
    ([1, 0, 2, 1], 'ba')
    """

    def __init__(self, alphabet: str, unknown: str | None = None) -> None:
        self.alphabet = alphabet
        self.index = {c: i for i, c in enumerate(alphabet)}
        self.unknown = self.index[unknown] if unknown is not None else None

    def __len__(self) -> int:
        return len(self.alphabet)

    def __call__(self, text: str) -> list[int]:
        if self.unknown is None:
            return [self.index[c] for c in text]
        return [self.index.get(c, self.unknown) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[i] for i in ids)


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int, mlp: bool) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.mlp = (
            nn.Sequential(
                nn.LayerNorm(d_model), nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model)
            )
            if mlp
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, d = x.shape
        q, k, v = self.qkv(self.ln_attn(x)).view(batch, length, 3, self.n_heads, d // self.n_heads).unbind(2)
        heads = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
        x = x + self.out(heads.transpose(1, 2).reshape(batch, length, d))
        return x + self.mlp(x) if self.mlp is not None else x


class TinyTransformer(nn.Module):
    """A causal transformer LM: ``model(input_ids) -> logits (batch, length, vocab)``.

    >>> model = TinyTransformer(vocab_size=10, d_model=16, n_layers=1, n_heads=2, max_len=8)
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
    torch.Size([2, 5, 10])
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        max_len: int = 64,
        mlp: bool = False,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_len, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, mlp) for _ in range(n_layers))
        self.ln_final = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))
