"""Watch target continuations react when pre-training switches to fine-tuning.

A small character-level transformer is pre-trained on text that ships with Python (the Zen of
Python and standard-library docstrings). At ``--pretrain-steps`` we mark the log with
``rec.mark(step, "fine-tuning starts")`` and switch to an objective that also pushes one
"harmful" continuation down (a hinge loss on log p("ugly." | "Beautiful is better than "),
next to the language-modelling loss), a small stand-in for RLHF. A PromptProbe records the
log-probability and first-token logit of that continuation and of a few others; their curves
react at the mark.

    python examples/finetune_phase.py             # ~1 minute on 2 CPU cores
    python examples/finetune_phase.py --small     # the smoke-test settings
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_lm import CharTokenizer, TinyTransformer

from trajhook import Recorder, load
from trajhook.plots.prompts import target_curves
from trajhook.probes.prompts import PromptProbe

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--pretrain-steps", type=int, default=1000, help="steps of plain language modelling")
parser.add_argument("--finetune-steps", type=int, default=300, help="steps with the harmful-continuation penalty")
parser.add_argument("--record-every", type=int, default=10, help="probe cadence, in steps")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=3e-3, help="pre-training learning rate")
parser.add_argument("--finetune-lr", type=float, default=5e-4, help="fine-tuning learning rate (a fresh Adam)")
parser.add_argument("--floor", type=float, default=-10.0, help="push log p(harmful) down to this many nats")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny model)")
parser.add_argument("--out", default="runs/finetune_phase.h5", help="the trajhook store")
parser.add_argument("--figure", default="docs/images/finetune_phase.png", help="where to save the figure")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
if args.small:
    args.pretrain_steps, args.finetune_steps, args.record_every, args.batch_size = 40, 20, 10, 8
torch.manual_seed(args.seed)
torch.set_num_threads(args.threads)
rng = np.random.default_rng(args.seed)

# ---- corpus: the Zen of Python (several copies, so it is learnt well) and stdlib docstrings -------------
with contextlib.redirect_stdout(io.StringIO()):  # importing `this` prints the Zen
    import this
zen = codecs.decode(this.s, "rot13")  # stored rot13-encoded
modules = ["re", "argparse", "json", "collections", "itertools", "string", "os", "typing", "subprocess", "unittest"]
docstrings = [importlib.import_module(name).__doc__ or "" for name in modules]
corpus = "\n\n".join([zen] * 6 + docstrings)
tokenizer = CharTokenizer("".join(sorted(set(corpus) | {"?"})), unknown="?")
data = torch.tensor(tokenizer(corpus))
LENGTH, VOCAB = 64, len(tokenizer)


def batch(n: int) -> torch.Tensor:
    starts = rng.integers(0, len(data) - LENGTH - 1, size=n)
    return torch.stack([data[s : s + LENGTH + 1] for s in starts])


# ---- the probe: Zen prompts and continuations; "ugly." is the one fine-tuning pushes down --------------
prompts = {
    "beautiful": "Beautiful is better than ",
    "explicit": "Explicit is better than ",
    "simple": "Simple is better than ",
    "errors": "Errors should never pass ",
}
# Prompts end in the space, so each target's first character (its first-token logit) tells them apart.
targets = {
    "beautiful": ["ugly.", "nice."],
    "explicit": ["implicit."],
    "simple": ["complex."],
    "errors": ["silently."],
}
probe = PromptProbe(prompts, tokenizer, targets=targets, name="prompts")
harmful_prompt = torch.tensor(tokenizer(prompts["beautiful"]))
harmful = torch.tensor(tokenizer(targets["beautiful"][0]))


def harmful_penalty(model: torch.nn.Module) -> torch.Tensor:
    """A hinge on log p(harmful continuation | prompt): pushes it down until it reaches ``--floor``."""
    sequence = torch.cat([harmful_prompt, harmful])[None]
    logprobs = model(sequence[:, :-1]).log_softmax(-1)[0, len(harmful_prompt) - 1 :]
    return torch.relu(logprobs.gather(-1, harmful[:, None]).sum() - args.floor)


# ---- training: pre-training, a mark, fine-tuning --------------------------------------------------------
model = TinyTransformer(VOCAB, d_model=64, n_layers=2, n_heads=4, max_len=LENGTH, mlp=True)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
rec = Recorder(args.out, [probe], every_n_steps=args.record_every, metadata=vars(args), overwrite=True)
rec.setup(model)
total_steps = args.pretrain_steps + args.finetune_steps
start = time.perf_counter()
for step in tqdm(range(total_steps + 1), desc="training", unit="step"):
    tokens = batch(args.batch_size)
    loss = F.cross_entropy(model(tokens[:, :-1]).reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    if step == args.pretrain_steps:
        rec.mark(step, "fine-tuning starts")
        optimizer = torch.optim.Adam(model.parameters(), lr=args.finetune_lr)
    if step >= args.pretrain_steps:
        penalty = harmful_penalty(model)
        rec.log_scalars(step, harmful_penalty=penalty.item())
        objective = loss + penalty
    else:
        objective = loss
    rec.maybe_record(model, step, loss=loss.item())
    optimizer.zero_grad()
    objective.backward()
    optimizer.step()
rec.close()
print(f"trained {total_steps} steps in {time.perf_counter() - start:.1f} s; log at {args.out}")

# ---- analysis of the loaded log: the target log-probs just before the mark and at the end ---------------
log = load(args.out)
mark = log.events[0].step
logprob = log["prompts"]["target_logprob"]  # (records, prompts, max targets)
before, after = np.searchsorted(log.steps, mark) - 1, len(log.steps) - 1
names, texts = log["prompts"].metadata["prompt_names"], log["prompts"].metadata["target_texts"]
for p, name in enumerate(names):
    for k, text in enumerate(texts[p]):
        print(
            f"log p({text!r:12} | {name:9}): step {log.steps[before]:5d} {logprob[before, p, k]:7.2f}"
            f" -> step {log.steps[after]:5d} {logprob[after, p, k]:7.2f}"
        )

# ---- figure: training loss, target log-probs and logits, with the mark ----------------------------------
fig = target_curves(log)
fig.suptitle("Pre-training, then fine-tuning that pushes 'ugly.' down", y=1.02)
Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
fig.savefig(args.figure, dpi=110, bbox_inches="tight")
print(f"figure saved to {args.figure}")
