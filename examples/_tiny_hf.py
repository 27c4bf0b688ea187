"""A tiny GPT-2 and a BPE tokenizer trained here, on text that ships with Python. Nothing is downloaded.

Nothing here is part of trajhook: it is the smallest Hugging Face model and tokenizer that learn
something on a laptop CPU in a minute, for the Trainer and TRL examples.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib
import io

MODULES = ["re", "argparse", "json", "collections", "itertools", "string", "os", "typing", "subprocess", "unittest"]


def zen_of_python() -> str:
    with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
        import this
    return codecs.decode(this.s, "rot13")  # stored rot13-encoded


def stdlib_corpus(zen_copies: int = 6) -> list[str]:
    """Paragraphs: the Zen of Python several times (so it is learnt well) and stdlib docstrings."""
    docstrings = [importlib.import_module(name).__doc__ or "" for name in MODULES]
    paragraphs = [p.strip() for doc in docstrings for p in doc.split("\n\n") if len(p.strip()) > 40]
    zen_lines = [line for line in zen_of_python().splitlines()[2:] if line]
    return zen_lines * zen_copies + paragraphs


def train_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer (GPT-2's kind) trained on ``texts``, as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|endoftext|>", pad_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def tiny_gpt2(tokenizer, n_positions: int = 128, n_embd: int = 64, n_layer: int = 2, n_head: int = 4):
    """A randomly initialised GPT-2 with a small config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)
