"""PromptProbe records what a direct, one-prompt-at-a-time computation gives."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trajhook.errors import TrajhookError
from trajhook.probes.prompts import PromptProbe

CORPUS = [
    "the cat sat on the mat",
    "the dog sat on the log",
    "a cat and a dog met on a mat",
    "paris is the capital of france",
    "berlin is the capital of germany",
]
PROMPTS = {
    "capital": "paris is the capital of",
    "cat": "the cat sat on the",
    "short": "a",
    "none": "the dog",
}
TARGETS = {
    "capital": [" france", " germany", " xylophone"],  # " xylophone" splits into several BPE tokens
    "cat": [" mat"],
    "short": [" cat", " dog"],
}


def make_hf_tokenizer(padding_side: str):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        show_progress=False,
        special_tokens=["<pad>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", padding_side=padding_side
    )


def make_gpt2(vocab_size: int):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=vocab_size, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


class TinyCausalLM(torch.nn.Module):
    """A plain causal LM that takes only input_ids: embedding, one causal attention, unembedding."""

    def __init__(self, vocab_size: int, d: int = 16, max_len: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, d)
        self.pos = torch.nn.Embedding(max_len, d)
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.unembed = torch.nn.Linear(d, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos(torch.arange(input_ids.shape[1]))
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return self.unembed(x + F.scaled_dot_product_attention(q, k, v, is_causal=True))


def direct_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[t + 1] | ids[:t + 1]) for one unpadded sequence, with plain log_softmax."""
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    logits = out.logits if hasattr(out, "logits") else out
    logp = torch.log_softmax(logits[0].double(), dim=-1)
    return logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:], dtype=torch.long)]


def direct_last_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out)[0, -1]


def check_against_direct(probe: PromptProbe, model, encode_prompt, encode_target) -> None:
    probe.setup(model, torch.device("cpu"))
    with torch.no_grad():
        record = {k: v.numpy() for k, v in probe.run(model).items()}
    names = list(PROMPTS)
    max_len = max(len(encode_prompt(PROMPTS[n])) for n in names)
    assert record["token_loss"].shape == (len(names), max_len - 1)
    assert record["target_logprob"].shape == (len(names), 3)
    for p, name in enumerate(names):
        ids = encode_prompt(PROMPTS[name])
        assert probe.metadata["prompt_token_ids"][p] == ids
        expected_loss = -direct_logprobs(model, ids).numpy()
        np.testing.assert_allclose(record["token_loss"][p, : len(ids) - 1], expected_loss, rtol=1e-4, atol=1e-5)
        assert np.isnan(record["token_loss"][p, len(ids) - 1 :]).all()

        last = direct_last_logits(model, ids)
        expected_top = torch.log_softmax(last.double(), -1).topk(probe.top_k)
        np.testing.assert_array_equal(record["topk_ids"][p], expected_top.indices.numpy())
        np.testing.assert_allclose(record["topk_logprob"][p], expected_top.values.numpy(), rtol=1e-4, atol=1e-5)

        targets = TARGETS.get(name, [])
        for k, text in enumerate(targets):
            target_ids = encode_target(text)
            full = ids + target_ids
            expected = direct_logprobs(model, full)[len(ids) - 1 :].sum().item()
            assert math.isclose(record["target_logprob"][p, k], expected, rel_tol=1e-4, abs_tol=1e-4)
            expected_logit = last[target_ids[0]].item()
            assert math.isclose(record["target_first_logit"][p, k], expected_logit, rel_tol=1e-4, abs_tol=1e-4)
        assert np.isnan(record["target_logprob"][p, len(targets) :]).all()
        assert np.isnan(record["target_first_logit"][p, len(targets) :]).all()


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_gpt2_matches_direct_computation(padding_side):
    tokenizer = make_hf_tokenizer(padding_side)
    assert len(tokenizer.encode(" xylophone", add_special_tokens=False)) > 1
    model = make_gpt2(len(tokenizer))
    probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS, top_k=4)
    check_against_direct(probe, model, tokenizer.encode, lambda t: tokenizer.encode(t, add_special_tokens=False))
    assert probe.padding_side == padding_side
    assert "".join(probe.metadata["prompt_tokens"][0]) == PROMPTS["capital"]
    assert probe.metadata["target_texts"][3] == []


def test_plain_module_with_left_padding_tokenizer_is_right_padded_and_exact():
    tokenizer = make_hf_tokenizer("left")
    model = TinyCausalLM(len(tokenizer)).eval()
    probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS, top_k=3)
    check_against_direct(probe, model, tokenizer.encode, lambda t: tokenizer.encode(t, add_special_tokens=False))
    assert probe.padding_side == "right"


def test_callable_tokenizer_list_targets_and_logits_fn():
    torch.manual_seed(1)
    vocab = {c: i for i, c in enumerate(" abcdefghijklmnopqrstuvwxyz")}

    def encode(text: str) -> list[int]:
        return [vocab[c] for c in text]

    model = TinyCausalLM(len(vocab)).eval()
    calls = []

    def logits_fn(m, input_ids, attention_mask):
        calls.append(attention_mask.clone())
        return m(input_ids)

    probe = PromptProbe(
        list(PROMPTS.values()),
        encode,
        targets=[TARGETS.get(n, []) for n in PROMPTS],
        logits_fn=logits_fn,
        full_logits=True,
    )
    check_against_direct(probe, model, encode, encode)
    assert probe.metadata["prompt_names"] == ["0", "1", "2", "3"]
    assert probe.outputs["logits"].dtype == np.float16
    calls.clear()
    with torch.no_grad():
        record = probe.run(model)
    expected = direct_last_logits(model, encode(PROMPTS["cat"]))
    np.testing.assert_allclose(record["logits"][1].float().numpy(), expected.numpy(), rtol=2e-3, atol=2e-3)
    # one run's micro-batches (one here: a 27-token vocabulary fits them all) hold every real token once
    assert len(calls) == 1 and calls[0].sum().item() == sum(len(encode(p)) for p in PROMPTS.values()) + sum(
        len(encode(PROMPTS[n])) + len(encode(t)) for n, ts in TARGETS.items() for t in ts
    )


def test_no_targets_declares_no_target_outputs():
    probe = PromptProbe(["ab", "abc"], lambda t: [ord(c) - 97 for c in t])
    model = TinyCausalLM(3).eval()
    probe.setup(model, torch.device("cpu"))
    assert set(probe.outputs) == {"token_loss", "topk_ids", "topk_logprob"}
    assert probe.outputs["topk_ids"].shape == (2, 3)  # top_k clipped to the vocabulary
    record = probe.run(model)
    assert set(record) == set(probe.outputs)
    assert record["token_loss"].shape == (2, 2)
    assert torch.isnan(record["token_loss"][0, 1]) and not torch.isnan(record["token_loss"][1]).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": []}, "prompts is empty"),
        ({"prompts": {"bad name": "x"}}, "prompt name 'bad name'"),
        ({"prompts": ["ab", ""]}, "not a non-empty string"),
        ({"prompts": ["ab", "!!"]}, "returned no tokens"),
        ({"prompts": ["ab"], "targets": {"nope": ["a"]}}, "'nope'"),
        ({"prompts": ["ab"], "targets": [["a"], ["b"]]}, "2 entries for 1 prompts"),
        ({"prompts": ["ab"], "top_k": 0}, "top_k=0"),
    ],
)
def test_bad_input_raises_trajhook_error(kwargs, message):
    with pytest.raises(TrajhookError, match="PromptProbe 'prompts'") as err:
        PromptProbe(tokenizer=lambda t: [ord(c) - 97 for c in t if c.isalpha()], **kwargs)
    assert message in str(err.value) and "HINT:" in str(err.value)


def test_wrong_model_output_and_out_of_vocab_ids_raise():
    probe = PromptProbe(["ab"], lambda t: [ord(c) - 97 for c in t])
    with pytest.raises(TrajhookError, match=r"returned \(2, 5\)"):
        probe.setup(torch.nn.Sequential(torch.nn.Embedding(5, 5), torch.nn.Flatten(0, 1)), torch.device("cpu"))
    with pytest.raises(TrajhookError, match="outside the model's vocabulary of 1"):
        one_word = PromptProbe(["ab"], lambda t: [ord(c) - 97 for c in t], logits_fn=lambda m, i, a: m(i))
        one_word.setup(lambda ids: torch.zeros(*ids.shape, 1), torch.device("cpu"))
    with pytest.raises(TrajhookError, match="padding_side='left'"):
        PromptProbe(["ab"], lambda t: [0, 1], padding_side="left").setup(TinyCausalLM(2), torch.device("cpu"))


def test_recorded_log_round_trip_and_plots(tmp_path):
    from trajhook import Recorder, load
    from trajhook.plots.prompts import pca_trajectory, target_curves

    tokenizer = make_hf_tokenizer("left")
    model = make_gpt2(len(tokenizer))
    probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS, top_k=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = torch.tensor([tokenizer.encode(CORPUS[0])])
    expected = []
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=2, wandb=False) as rec:
        rec.setup(model)
        for step in range(7):
            loss = model(batch, labels=batch).loss
            rec.maybe_record(model, step, loss=loss.item())
            if step % 2 == 0:
                ids = tokenizer.encode(PROMPTS["capital"]) + tokenizer.encode(" xylophone", add_special_tokens=False)
                n_prompt = len(tokenizer.encode(PROMPTS["capital"]))
                expected.append(direct_logprobs(model.eval(), ids)[n_prompt - 1 :].sum().item())
                model.train()
            if step == 3:
                rec.mark(step, "halfway")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 2, 4, 6]
    np.testing.assert_allclose(log["prompts"]["target_logprob"][:, 0, 2], expected, rtol=1e-4, atol=1e-4)
    assert not np.allclose(expected[0], expected[-1])  # training moved it
    meta = log["prompts"].metadata
    assert meta["prompt_names"] == list(PROMPTS)
    assert meta["target_texts"][0] == TARGETS["capital"]
    assert meta["prompt_token_ids"][1] == tokenizer.encode(PROMPTS["cat"])
    fig = target_curves(log, select=["capital"])
    assert [len(ax.lines) for ax in fig.axes] == [2, 4, 4]  # loss + event line; 3 targets + event line
    fig = pca_trajectory(log)
    assert fig.axes[0].get_xlabel().startswith("PC1")


def test_a_pad_id_outside_the_embedding_is_harmless():
    """HF tokenizers often add a pad token without the embeddings being resized."""
    tokenizer = make_hf_tokenizer("right")
    model = make_gpt2(vocab_size=len(tokenizer))
    tokenizer.add_special_tokens({"pad_token": "<extra-pad>"})
    assert tokenizer.pad_token_id >= model.get_input_embeddings().num_embeddings
    probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS)
    check_against_direct(probe, model, tokenizer.encode, lambda t: tokenizer.encode(t, add_special_tokens=False))


def test_out_of_vocabulary_ids_are_named_before_any_forward():
    tokenizer = make_hf_tokenizer("right")
    small = make_gpt2(vocab_size=20)  # BPE ids run to 300: nn.Embedding would raise a bare IndexError
    with pytest.raises(TrajhookError, match=r"token id \d+ is outside the model's input embedding of 20 tokens"):
        PromptProbe(["the cat sat"], tokenizer).setup(small, torch.device("cpu"))
    plain = TinyCausalLM(5)  # no get_input_embeddings: the first forward tells
    with pytest.raises(TrajhookError, match=r"the first forward failed .* the largest token id is 7.*HINT"):
        PromptProbe(["ab"], lambda t: [1, 7]).setup(plain, torch.device("cpu"))


# ---------------------------------------------------------------------------------------- micro-batches


@pytest.mark.parametrize("max_tokens", [1, 23])
@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_micro_batches_match_direct_computation(padding_side, max_tokens):
    tokenizer = make_hf_tokenizer(padding_side)
    model = make_gpt2(len(tokenizer))
    probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS, top_k=4, max_tokens_per_batch=max_tokens)
    check_against_direct(probe, model, tokenizer.encode, lambda t: tokenizer.encode(t, add_special_tokens=False))
    shapes = [tuple(batch.input_ids.shape) for batch in probe._micro_batches]
    assert len(shapes) > 1 and all(rows == 1 or rows * width <= max_tokens for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(PROMPTS) + sum(len(t) for t in TARGETS.values())


def test_micro_batched_record_equals_the_one_batch_record():
    tokenizer = make_hf_tokenizer("right")
    model = TinyCausalLM(len(tokenizer)).eval()
    records = []
    for max_tokens in (1, 40, 10**6):  # a row each, a few rows each, all rows in one forward
        probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS, max_tokens_per_batch=max_tokens, full_logits=True)
        probe.setup(model, torch.device("cpu"))
        with torch.no_grad():
            records.append(probe.run(model))
        assert probe.metadata["max_tokens_per_batch"] == max_tokens
    assert [len(p._micro_batches) for p in [probe]] == [1]
    for other in records[:2]:
        for key, value in records[2].items():
            np.testing.assert_allclose(other[key].float().numpy(), value.float().numpy(), rtol=1e-5, atol=1e-5)


class LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor any torch operation creates while active."""

    largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


@pytest.mark.timeout(120)
def test_default_record_never_holds_the_full_logits_at_a_50k_vocabulary():
    transformers = pytest.importorskip("transformers")
    from trajhook.probes.microbatch import LOGITS_BUDGET_BYTES

    torch.manual_seed(0)
    vocab, n_prompts, length = 50_257, 24, 64
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=vocab, n_positions=length)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(vocab, (n_prompts, length), generator=torch.Generator().manual_seed(0)).tolist()
    prompts = [" ".join(map(str, row)) for row in ids]
    probe = PromptProbe(prompts, lambda text: [int(i) for i in text.split()])
    probe.setup(model, torch.device("cpu"))
    full = n_prompts * length * vocab * 4  # what one padded forward's float32 logits took: 309 MB
    with torch.no_grad(), LargestTensor() as seen:
        record = probe.run(model)
    assert seen.largest <= LOGITS_BUDGET_BYTES < full / 2
    assert seen.largest >= probe.max_tokens // length * length * vocab * 4  # it did see one micro-batch's logits
    # the numbers are still those of a direct forward
    expected = -direct_logprobs(model, ids[5]).numpy()
    np.testing.assert_allclose(record["token_loss"][5].numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_upcast_per_micro_batch(dtype):
    tokenizer = make_hf_tokenizer("right")
    model = make_gpt2(len(tokenizer)).to(dtype)
    probe = PromptProbe(PROMPTS, tokenizer, targets=TARGETS, max_tokens_per_batch=16)
    probe.setup(model, torch.device("cpu"))
    with torch.no_grad():
        record = probe.run(model)
    assert {record[k].dtype for k in ("token_loss", "target_logprob", "topk_logprob")} == {torch.float32}
    for p, name in enumerate(PROMPTS):
        ids = tokenizer.encode(PROMPTS[name])
        expected = -direct_logprobs(model, ids).numpy()  # the model's own half logits, upcast to float64
        np.testing.assert_allclose(record["token_loss"][p, : len(ids) - 1].numpy(), expected, rtol=2e-2, atol=2e-2)


def test_a_prompt_longer_than_the_context_is_named_as_such():
    tokenizer = make_hf_tokenizer("right")
    model = make_gpt2(len(tokenizer))  # n_positions=64
    long_prompt = " ".join(["the cat sat on the mat"] * 20)
    with pytest.raises(TrajhookError, match=r"prompt 'long' is \d+ tokens long, longer than the model's context of 64"):
        PromptProbe({"ok": "the cat", "long": long_prompt}, tokenizer).setup(model, torch.device("cpu"))
    with pytest.raises(TrajhookError, match=r"prompt 'ok' \+ target .* longer than the model's context of 64.*HINT"):
        PromptProbe({"ok": "the cat"}, tokenizer, targets={"ok": [long_prompt]}).setup(model, torch.device("cpu"))
    plain = TinyCausalLM(5, max_len=8)  # no config: the failed forward is diagnosed
    with pytest.raises(TrajhookError, match=r"prompt '0', 9 tokens long, .* longer than the model's context.*HINT"):
        PromptProbe(["x" * 9], lambda t: [1] * len(t)).setup(plain, torch.device("cpu"))


def test_negative_token_ids_are_named_as_such():
    with pytest.raises(TrajhookError, match=r"prompt '0' has the negative token id -100.*HINT: token ids count from 0"):
        PromptProbe(["ab"], lambda t: [1, -100]).setup(TinyCausalLM(5), torch.device("cpu"))
    with pytest.raises(TrajhookError, match=r"prompt 'a' \+ target 'x' has the negative token id -1"):
        probe = PromptProbe({"a": "ab"}, lambda t: [1, 2] if t == "ab" else [-1], targets={"a": ["x"]})
        probe.setup(make_gpt2(10), torch.device("cpu"))


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4096"])
def test_bad_max_tokens_per_batch(bad):
    with pytest.raises(TrajhookError, match=rf"max_tokens_per_batch={bad!r} is not a positive int.*HINT"):
        PromptProbe(["ab"], lambda t: [0, 1], max_tokens_per_batch=bad)
