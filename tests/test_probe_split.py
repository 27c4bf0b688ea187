"""The split protocol (``Probe.split``/``run_part``/``merge``) that shares a record across ranks, in one process.

Rank zero merges the parts the ranks computed; here every part runs in this process, in a shuffled
order, and the merged record must equal ``run`` (values from an independent forward are checked by
each probe's own tests, and across real ranks by tests/test_distributed.py).
"""

import random

import numpy as np
import pytest
import torch
from torch import nn

from trajhook import PromptProbe, TokenLossProbe


class CausalLM(nn.Module):
    def __init__(self, vocab: int = 40) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(vocab, 16), nn.Linear(32, vocab)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        return self.head(torch.cat([h, h.cumsum(1) / torch.arange(1, h.shape[1] + 1).reshape(1, -1, 1)], -1))


def merged_in_any_order(probe, model, ranks):
    n = probe.split(ranks)
    order = list(range(n))
    random.Random(0).shuffle(order)
    parts = {i: probe.run_part(model, i, n) for i in order}  # as the ranks would compute them
    return n, probe.merge([parts[i] for i in range(n)])


def same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)


def test_prompt_and_token_loss_probes_merge_their_micro_batches_into_the_record_run_gives():
    model = CausalLM()
    prompts = [bytes(range(97, 97 + n)).decode() for n in (3, 9, 5, 7, 4, 11)]
    tokenizer = lambda text: [ord(c) % 40 for c in text]  # noqa: E731
    probes = [
        PromptProbe(prompts, tokenizer, targets=[["ab", "c"]] * 6, max_tokens_per_batch=14, full_logits=True),
        TokenLossProbe([(7 * i) % 40 for i in range(77)], context=10, max_tokens_per_batch=20),
    ]
    with torch.no_grad():
        for probe in probes:
            probe.setup(model, torch.device("cpu"))
            n, merged = merged_in_any_order(probe, model, ranks=2)
            assert n >= 4  # one part per micro-batch, whatever the number of ranks
            same(merged, probe.run(model))


@pytest.mark.maze
def test_maze_probe_splits_its_cells_into_one_block_per_rank():
    pytest.importorskip("procgen")
    from trajhook import MazeProbe
    from trajhook.probes.maze import load_maze_level, make_maze_env

    torch.manual_seed(0)
    policy = nn.Sequential(nn.Conv2d(3, 4, 4, stride=4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(15))
    probe = MazeProbe(seed=0, distribution_mode="easy")
    env = make_maze_env(0, "easy")
    try:  # the level from an env closed at once: procgen envs left open can stall a later one in this process
        probe.level = load_maze_level(0, "easy", env=env)
    finally:
        env.close()
    with torch.no_grad():
        probe.setup(policy, torch.device("cpu"))
        whole = probe.run(policy)
        assert probe.split(1) == 0  # one process: one batched forward, as before
        n, merged = merged_in_any_order(probe, policy, ranks=3)
    assert n == 3
    for key in whole:  # a batch of one block gives the same numbers up to the kernels' rounding
        np.testing.assert_allclose(merged[key].numpy(), whole[key].numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
