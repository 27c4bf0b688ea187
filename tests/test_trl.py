"""A real TRL run, SFT then DPO, with one TrajectoryCallback: one axis, the phase mark, values, the reaction."""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("trl")
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

from trajhook import PromptProbe, load
from trajhook.integrations.hf import TrajectoryCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from _tiny_hf import stdlib_corpus, tiny_gpt2, train_tokenizer

PAIRS = {
    "Beautiful is better than": (" nice.", " ugly."),
    "Explicit is better than": (" vague.", " implicit."),
    "Simple is better than": (" clever.", " complex."),
}
SFT_STEPS, DPO_STEPS = 6, 6


def direct_logprob(model, tokenizer, prompt, target):
    """log p(target | prompt) by hand: one unpadded forward, summed over the target's tokens."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + target_ids])
    model.eval()
    with torch.no_grad():
        logprobs = model(ids).logits[0, :-1].log_softmax(-1)
    positions = torch.arange(len(prompt_ids) - 1, ids.shape[1] - 1)
    return logprobs[positions, ids[0, len(prompt_ids) :]].sum().item()


@pytest.mark.timeout(240)
def test_sft_then_dpo_one_axis_marked_values_match_and_the_margin_reacts(tmp_path):
    torch.manual_seed(0)
    texts = stdlib_corpus()
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = tiny_gpt2(tokenizer, n_embd=32, n_layer=1)
    probe = PromptProbe(
        {str(i): p for i, p in enumerate(PAIRS)},
        tokenizer,
        targets={str(i): list(pair) for i, pair in enumerate(PAIRS.values())},
    )
    cb = TrajectoryCallback(tmp_path / "run.h5", [probe], every_n_steps=2)
    common = {"use_cpu": True, "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
    common["gradient_checkpointing"] = False  # TRL's default is on: only slower for a tiny model
    SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(tmp_path / "sft"),
            max_steps=SFT_STEPS,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            max_length=48,
            **common,
        ),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer,
        callbacks=[cb],
    ).train()
    cb.mark("DPO starts")
    DPOTrainer(
        model=model,
        ref_model=copy.deepcopy(model).eval(),
        args=DPOConfig(
            output_dir=str(tmp_path / "dpo"),
            max_steps=DPO_STEPS,
            per_device_train_batch_size=3,
            learning_rate=1e-3,
            beta=0.1,
            max_length=24,
            **common,
        ),
        train_dataset=Dataset.from_dict(
            {
                "prompt": list(PAIRS),
                "chosen": [c for c, _ in PAIRS.values()],
                "rejected": [r for _, r in PAIRS.values()],
            }
        ),
        processing_class=tokenizer,
        callbacks=[cb],
    ).train()

    log = load(tmp_path / "run.h5")
    end = SFT_STEPS + DPO_STEPS
    assert log.steps.tolist() == list(range(0, end + 1, 2))  # DPO's steps continue SFT's
    assert [(e.step, e.label) for e in log.events] == [(SFT_STEPS, "DPO starts")]
    assert log.scalars["loss"].steps.tolist() == list(range(end))  # SFT's loss, then DPO's
    logprob = log["prompts"]["target_logprob"]  # (records, 3 prompts, chosen/rejected)
    want = [[direct_logprob(model, tokenizer, p, t) for t in pair] for p, pair in PAIRS.items()]
    np.testing.assert_allclose(logprob[-1], want, rtol=1e-4, atol=1e-4)  # the trained model, by hand
    margin = (logprob[..., 0] - logprob[..., 1]).mean(axis=1)
    at_mark = log.steps.tolist().index(SFT_STEPS)
    assert margin[-1] - margin[at_mark] > 1.0  # DPO separates chosen from rejected after the mark
