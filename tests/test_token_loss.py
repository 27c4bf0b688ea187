"""TokenLossProbe records the loss of every token of a long stream, as a direct per-window forward gives it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trajhook import Recorder, TokenLossProbe, TrajhookError, load
from trajhook.analysis.trajectory import icl_score, trajectory_pca
from trajhook.probes.token_loss import per_window

VOCAB = 300


def make_gpt2(n_positions: int = 64):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=n_positions, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(config).eval()


def stream(n: int = 10_050, seed: int = 0) -> list[int]:
    return np.random.default_rng(seed).integers(VOCAB, size=n).tolist()


def direct_window_losses(model, ids: list[int], context: int) -> np.ndarray:
    """Each window unpadded through the model (full windows stacked, all the same length); float64 log_softmax."""
    windows = [ids[s : s + context] for s in range(0, len(ids), context)]
    groups = [windows[:-1], windows[-1:]] if len(windows[-1]) != context else [windows]
    losses = []
    with torch.no_grad():
        for group in groups:
            if len(group[0]) < 2:
                continue
            batch = torch.tensor(group)
            logp = torch.log_softmax(model(batch).logits.double(), -1)[:, :-1]
            losses.append(-logp.gather(-1, batch[:, 1:, None])[..., 0].reshape(-1).numpy())
    return np.concatenate(losses)


@pytest.mark.timeout(120)
def test_ten_thousand_tokens_match_a_direct_forward_of_each_window():
    model = make_gpt2()
    ids = stream()
    probe = TokenLossProbe(ids)  # context from config.n_positions
    probe.setup(model, torch.device("cpu"))
    assert probe.context == 64
    assert probe.metadata["window_lengths"] == [64] * 157 + [2]  # 10,050 = 157 * 64 + 2
    assert probe.outputs["token_loss"].shape == (157 * 63 + 1,)
    with torch.no_grad():
        record = probe.run(model)["token_loss"]
    expected = direct_window_losses(model, ids, 64)
    np.testing.assert_allclose(record.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert abs(expected.mean() - np.log(VOCAB)) < 0.5  # a random-init model: about uniform


def test_micro_batch_size_does_not_change_the_numbers_and_text_is_tokenized_once():
    model = make_gpt2(n_positions=32)
    calls = []

    def tokenizer(text):
        calls.append(text)
        return [int(word) for word in text.split()]

    ids = stream(500, seed=1)
    text = " ".join(map(str, ids))
    records = []
    for max_tokens in (1, 100, None):
        probe = TokenLossProbe(text, tokenizer, context=20, max_tokens_per_batch=max_tokens)
        probe.setup(model, torch.device("cpu"))
        with torch.no_grad():
            records.append(probe.run(model)["token_loss"].numpy())
    assert len(calls) == 3  # once per probe
    np.testing.assert_allclose(records[0], records[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(records[1], records[2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(records[2], direct_window_losses(model, ids, 20), rtol=1e-4, atol=1e-5)


def test_recorded_float16_flat_vectors_feed_pca_and_icl(tmp_path):
    model = make_gpt2()
    ids = stream(2_000)
    probes = [TokenLossProbe(ids, name="half", dtype="float16"), TokenLossProbe(ids, name="full")]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    batch = torch.tensor([ids[:64]])
    with Recorder(tmp_path / "run.h5", probes, every_n_steps=2, wandb=False) as rec:
        for step in range(7):
            rec.maybe_record(model, step)
            if step == 6:
                expected_last = direct_window_losses(model.eval(), ids, 64)
                model.train()
            loss = model(batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    log = load(tmp_path / "run.h5")
    half, full = log["half"]["token_loss"], log["full"]["token_loss"]
    assert half.dtype == np.float16 and full.dtype == np.float32
    assert half.shape == full.shape == (4, 31 * 63 + 15)  # 2,000 = 31 * 64 + 16
    np.testing.assert_allclose(half, full, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(full[-1], expected_last, rtol=1e-4, atol=1e-5)
    assert not np.allclose(full[0], full[-1])  # training moved it
    windows = per_window(full, log["full"].metadata)
    assert windows.shape == (4, 32, 63) and np.isnan(windows[:, -1, 15:]).all()
    np.testing.assert_allclose(windows[-1, 3], expected_last[3 * 63 : 4 * 63], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(windows[:, -1, :15], full[:, -15:])
    expected_icl = (windows[:, :-1, 50] - windows[:, :-1, 10]).mean(axis=1)  # the short last window: clipped
    np.testing.assert_allclose(icl_score(windows[:, :-1], late=50, early=10), expected_icl, rtol=1e-6)
    assert trajectory_pca(full).coords.shape == (4, 2)


class PlainLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.out = torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, VOCAB)

    def forward(self, input_ids):
        return self.out(self.embed(input_ids))


@pytest.mark.parametrize(
    ("args", "kwargs", "model", "message"),
    [
        (["some text"], {}, None, "a text was given without a tokenizer"),
        ([[1]], {}, None, r"the stream has 1 token\(s\)"),
        ([np.zeros((2, 5), dtype=np.int64)], {}, None, "the token ids are a 2-D int64 array"),
        ([[1, 2.5]], {}, None, r"'\[1, 2.5\]' is not a list of int token ids"),
        ([[1, 2, 3]], {"context": 1}, None, "context=1 is not an int >= 2"),
        ([[1, 2, 3]], {"dtype": "int8"}, None, "dtype='int8' is not 'float32' or 'float16'"),
        ([[1, 2, 3]], {"max_tokens_per_batch": 0}, None, "max_tokens_per_batch=0 is not a positive int"),
        ([[1, 2, 3]], {"context": 128}, "gpt2", "context=128 is longer than the model's context of 64 positions"),
        ([[1, 2, 3]], {}, "plain", "the model does not say its context length"),
        ([[1, 2, -1, 4]], {"context": 2}, "plain", r"window 1 \(tokens 2..3 of the stream\) has the negative token id"),
        ([[1, 2, 3, VOCAB, 4]], {"context": 3}, "gpt2", rf"token id {VOCAB} is outside the model's input embedding"),
    ],
)
def test_bad_input_is_named(args, kwargs, model, message):
    with pytest.raises(TrajhookError, match=rf"TokenLossProbe 'token_loss': {message}.*HINT"):
        probe = TokenLossProbe(*args, **kwargs)
        probe.setup({"gpt2": make_gpt2, "plain": PlainLM}[model](), torch.device("cpu"))
