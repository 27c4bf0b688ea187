"""A Hugging Face ``Trainer`` with trajhook attached: one added callback.

A tiny GPT-2 (a small random config) and a byte-level BPE tokenizer are trained here, on text
that ships with Python (the Zen of Python and standard-library docstrings): nothing is
downloaded. A PromptProbe records the log-probability of Zen continuations every few optimizer
steps; the callback also logs HF's training loss and records the weights training starts from.

    python examples/hf_trainer_prompts.py           # 1-3 minutes on 2 CPU cores
    python examples/hf_trainer_prompts.py --small   # the smoke-test settings
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_hf import stdlib_corpus, tiny_gpt2, train_tokenizer

from trajhook import PromptProbe, load
from trajhook.integrations.hf import TrajectoryCallback
from trajhook.plots.prompts import target_curves

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=200, help="optimizer steps")
parser.add_argument("--record-every", type=int, default=10, help="probe cadence, in optimizer steps")
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--block", type=int, default=64, help="tokens per training example")
parser.add_argument("--out", default="runs/hf_trainer_prompts.h5", help="the trajhook store")
parser.add_argument("--figure", default="runs/hf_trainer_prompts.png", help="where to save the figure")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
if args.small:
    args.steps, args.record_every, args.batch_size = 12, 4, 4
torch.manual_seed(0)

# ---- data: the Zen and stdlib docstrings, a BPE tokenizer trained on them, blocks of tokens --------------
texts = stdlib_corpus()
tokenizer = train_tokenizer(texts)
ids = [i for text in texts for i in tokenizer(text)["input_ids"] + [tokenizer.eos_token_id]]
blocks = torch.tensor(ids[: len(ids) // args.block * args.block]).view(-1, args.block)
train_dataset = [{"input_ids": block, "labels": block} for block in blocks]  # GPT-2 shifts the labels itself
model = tiny_gpt2(tokenizer, n_positions=args.block)

# ---- the probe: Zen prompts and their continuations ----------------------------------------------------
prompts = {
    "beautiful": "Beautiful is better than",
    "explicit": "Explicit is better than",
    "errors": "Errors should never pass",
}
targets = {"beautiful": [" ugly.", " nice."], "explicit": [" implicit."], "errors": [" silently."]}
probe = PromptProbe(prompts, tokenizer, targets=targets, name="prompts")

# ---- training: HF's Trainer, with the one added callback -----------------------------------------------
trainer = Trainer(
    model=model,
    args=TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        logging_steps=max(1, args.record_every // 2),
        save_strategy="no",
        report_to="none",  # or "wandb": trajhook's panels land in the same run
        use_cpu=True,
    ),
    train_dataset=train_dataset,
    callbacks=[TrajectoryCallback(args.out, [probe], every_n_steps=args.record_every, overwrite=True)],
)
trainer.train()

# ---- what the log holds ---------------------------------------------------------------------------------
log = load(args.out)
logprob = log["prompts"]["target_logprob"]  # (records, prompts, max targets)
names, target_texts = log["prompts"].metadata["prompt_names"], log["prompts"].metadata["target_texts"]
print(
    f"recorded steps {log.steps[0]}..{log.steps[-1]} ({len(log.steps)} records); loss logged at "
    f"{len(log.scalars['loss'].steps)} steps"
)
for p, name in enumerate(names):
    for k, text in enumerate(target_texts[p]):
        print(
            f"log p({text!r:12} | {name:9}): step 0 {logprob[0, p, k]:7.2f} -> step {log.steps[-1]} "
            f"{logprob[-1, p, k]:7.2f}"
        )
fig = target_curves(log)
Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
fig.savefig(args.figure, dpi=110, bbox_inches="tight")
print(f"figure saved to {args.figure}")
