"""RLHF phases with TRL: supervised fine-tuning, then DPO, with the phase change marked.

A tiny GPT-2 and a BPE tokenizer are trained here on text that ships with Python (the Zen of
Python and standard-library docstrings; nothing is downloaded). ``trl.SFTTrainer`` teaches it
the text; then ``trl.DPOTrainer`` trains it on preference pairs that prefer another ending
than the one it learned ("Beautiful is better than" -> chosen " nice.", rejected " ugly.").
One TrajectoryCallback goes to both trainers: its steps continue across them, and
``callback.mark("DPO starts")`` draws the phase change. A PromptProbe records the target
log-probs of the chosen and rejected continuations: flat or rising together during SFT, they
split at the mark.

    python examples/rlhf_sft_dpo.py           # 1-3 minutes on 2 CPU cores
    python examples/rlhf_sft_dpo.py --small   # the smoke-test settings
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_hf import stdlib_corpus, tiny_gpt2, train_tokenizer

from trajhook import PromptProbe, load
from trajhook.integrations.hf import TrajectoryCallback
from trajhook.plots.prompts import target_curves

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--sft-steps", type=int, default=120, help="optimizer steps of supervised fine-tuning")
parser.add_argument("--dpo-steps", type=int, default=30, help="optimizer steps of DPO")
parser.add_argument("--record-every", type=int, default=5, help="probe cadence, in optimizer steps")
parser.add_argument("--out", default="runs/rlhf_sft_dpo.h5", help="the trajhook store")
parser.add_argument("--figure", default="runs/rlhf_sft_dpo.png", help="where to save the figure")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
if args.small:
    args.sft_steps, args.dpo_steps, args.record_every = 8, 4, 4
torch.manual_seed(0)
common = {"use_cpu": True, "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
common["gradient_checkpointing"] = False  # TRL turns it on by default; a tiny model only pays for the recompute

# ---- model and tokenizer, trained from scratch on the stdlib's text --------------------------------------
texts = stdlib_corpus()
tokenizer = train_tokenizer(texts)
model = tiny_gpt2(tokenizer)

# ---- preference pairs: endings other than the Zen's are chosen, the Zen's own are rejected ---------------
pairs = {  # prompt: (chosen, rejected)
    "Beautiful is better than": (" nice.", " ugly."),
    "Explicit is better than": (" vague.", " implicit."),
    "Simple is better than": (" clever.", " complex."),
    "Flat is better than": (" deep.", " nested."),
}  # four pairs and one held-out prompt: nine curves, each its own colour
held_out = {"errors": ("Errors should never pass", [" silently."])}  # not in the DPO data
prompts = {p.split()[0].lower(): p for p in pairs} | {k: v[0] for k, v in held_out.items()}
targets = {p.split()[0].lower(): list(pair) for p, pair in pairs.items()} | {k: v[1] for k, v in held_out.items()}
probe = PromptProbe(prompts, tokenizer, targets=targets, name="prompts")
callback = TrajectoryCallback(args.out, [probe], every_n_steps=args.record_every, overwrite=True)  # the one line

# ---- phase 1: SFT on the text ------------------------------------------------------------------------------
sft = SFTTrainer(
    model=model,
    args=SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.sft_steps,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        lr_scheduler_type="constant",
        max_length=64,
        **common,
    ),
    train_dataset=Dataset.from_dict({"text": texts}),
    processing_class=tokenizer,
    callbacks=[callback],
)
sft.train()

# ---- phase 2: DPO on the preference pairs, from the SFT weights ------------------------------------------
callback.mark("DPO starts")  # at the step the next trainer starts from: the end of SFT
dpo = DPOTrainer(
    model=model,
    ref_model=copy.deepcopy(model).eval(),
    args=DPOConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.dpo_steps,
        per_device_train_batch_size=len(pairs),
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        beta=0.1,
        max_length=32,
        **common,
    ),
    train_dataset=Dataset.from_dict(
        {"prompt": list(pairs), "chosen": [c for c, _ in pairs.values()], "rejected": [r for _, r in pairs.values()]}
    ),
    processing_class=tokenizer,
    callbacks=[callback],
)
dpo.train()

# ---- what the log shows: chosen vs rejected log-probs, before and after the mark ------------------------
log = load(args.out)
mark = log.events[0].step
logprob = log["prompts"]["target_logprob"]  # (records, prompts, 2): chosen, rejected
at_mark, end = int(np.searchsorted(log.steps, mark)), len(log.steps) - 1
names, target_texts = log["prompts"].metadata["prompt_names"], log["prompts"].metadata["target_texts"]
print(f"SFT steps 0..{mark}, DPO steps {mark}..{log.steps[-1]}; records at {len(log.steps)} steps")
for p, name in enumerate(names):
    for k, text in enumerate(target_texts[p]):
        print(
            f"log p({text!r:11} | {name:9}): step 0 {logprob[0, p, k]:7.2f}, at the mark {logprob[at_mark, p, k]:7.2f}"
            f", end {logprob[end, p, k]:7.2f}"
        )
chosen_minus_rejected = logprob[:, : len(pairs), 0] - logprob[:, : len(pairs), 1]
print(
    f"mean log p(chosen) - log p(rejected): {chosen_minus_rejected[at_mark].mean():.2f} at the mark -> "
    f"{chosen_minus_rejected[end].mean():.2f} at the end"
)
fig = target_curves(log)
fig.suptitle("SFT, then DPO: chosen vs rejected continuations", y=1.02)
Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
fig.savefig(args.figure, dpi=110, bbox_inches="tight")
print(f"figure saved to {args.figure}")
