"""Induction heads form in a phase change; trajhook sees it in the per-token losses.

A 2-layer attention-only transformer is trained on a mix of bigram text (learnable from
n-gram statistics) and random character spans that repeat (predictable only by copying from
context). A PromptProbe records the per-token loss on fixed repeated sequences every few
steps. From the log we compute (Olsson et al. 2022) the in-context-learning score, which drops
abruptly when induction heads form, and the PCA trajectory of the per-token losses, which
turns at about the same step.

    python examples/induction_heads.py                # ~30 s on 2 CPU cores
    python examples/induction_heads.py --small        # the smoke-test settings
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _tiny_lm import CharTokenizer, TinyTransformer

from trajhook import Recorder, load
from trajhook.analysis.trajectory import icl_score, smooth, trajectory_pca, turning_points
from trajhook.plots.prompts import pca_trajectory
from trajhook.probes.prompts import PromptProbe

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=900, help="optimizer steps")
parser.add_argument("--record-every", type=int, default=5, help="probe cadence, in steps")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny model)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/induction_heads.h5", help="the trajhook store")
parser.add_argument("--figure", default="docs/images/induction_heads.png", help="where to save the figure")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
if args.small:
    args.steps, args.record_every, args.batch_size = 60, 5, 8
torch.manual_seed(args.seed)
torch.set_num_threads(args.threads)
rng = np.random.default_rng(args.seed)

# ---- data: bigram text and repeated random spans, over 64 characters ---------------------------------
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ."
tokenizer = CharTokenizer(ALPHABET)
VOCAB, LENGTH, HALF = len(ALPHABET), 64, 32
# A sparse random bigram table: each character is followed by one of 4 favourites most of the time.
bigram = np.full((VOCAB, VOCAB), 0.2 / VOCAB)
for a in range(VOCAB):
    bigram[a, rng.choice(VOCAB, 4, replace=False)] += 0.2
bigram /= bigram.sum(1, keepdims=True)


def bigram_text(n: int) -> np.ndarray:
    seqs = np.empty((n, LENGTH), dtype=np.int64)
    seqs[:, 0] = rng.integers(VOCAB, size=n)
    for t in range(1, LENGTH):
        cumulative = bigram[seqs[:, t - 1]].cumsum(1)
        seqs[:, t] = (rng.random((n, 1)) > cumulative).sum(1).clip(max=VOCAB - 1)
    return seqs


def repeated_spans(n: int) -> np.ndarray:
    span = rng.integers(VOCAB, size=(n, HALF))
    return np.concatenate([span, span], axis=1)


def batch(n: int) -> torch.Tensor:
    half = n // 2
    return torch.from_numpy(np.concatenate([bigram_text(half), repeated_spans(n - half)]))


# ---- the probe: fixed repeated sequences; the target is the character that copying predicts ----------
probe_rng = np.random.default_rng(1234)
spans = ["".join(ALPHABET[i] for i in probe_rng.integers(VOCAB, size=HALF)) for _ in range(8)]
prompts = {f"repeat{i}": (s + s)[:-1] for i, s in enumerate(spans)}
targets = {f"repeat{i}": [s[-1]] for i, s in enumerate(spans)}
probe = PromptProbe(prompts, tokenizer, targets=targets, name="prompts")

# ---- training, with one Recorder line -----------------------------------------------------------------
model = TinyTransformer(VOCAB, d_model=64, n_layers=2, n_heads=4, max_len=LENGTH, mlp=False)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
rec = Recorder(args.out, [probe], every_n_steps=args.record_every, metadata=vars(args), overwrite=True)
rec.setup(model)
start = time.perf_counter()
for step in tqdm(range(args.steps + 1), desc="training", unit="step"):
    tokens = batch(args.batch_size)
    logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    rec.maybe_record(model, step, loss=loss.item())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
rec.close()
print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f} s; log at {args.out}")

# ---- analysis of the loaded log ------------------------------------------------------------------------
log = load(args.out)
steps = log.steps
token_loss = log["prompts"]["token_loss"]  # (records, prompts, positions)
# token_loss[..., t] predicts character t + 1: position 10 is in the random first half, 50 in the repeat.
icl = icl_score(token_loss, late=50, early=10)
icl_smooth = smooth(icl, sigma=1.0)
halfway = (icl_smooth[0] + icl_smooth.min()) / 2
icl_drop_step = int(steps[np.argmax(icl_smooth < halfway)])
pca = trajectory_pca(token_loss, n_components=2)
turn_step = int(steps[turning_points(pca.coords, n=1, smoothing=1.0)[0]])
print(f"ICL score {icl[0]:+.2f} -> {icl[-1]:+.2f}; it drops through halfway at step {icl_drop_step}")
print(f"the PCA trajectory (PC1+PC2 explain {pca.explained_variance_ratio.sum():.0%}) turns at step {turn_step}")

# ---- figure: loss, ICL score, PCA trajectory ----------------------------------------------------------
fig, (ax_loss, ax_icl, ax_pca) = plt.subplots(1, 3, figsize=(15, 4.2))
loss_series = log.scalars["loss"]
ax_loss.plot(loss_series.steps, loss_series.values, lw=0.6, color="0.6", label="training loss")
ax_loss.plot(steps, np.nanmean(token_loss[:, :, : HALF - 1], axis=(1, 2)), label="probe: first half (random)")
ax_loss.plot(steps, np.nanmean(token_loss[:, :, HALF:], axis=(1, 2)), label="probe: repeated half")
ax_loss.set(xlabel="step", ylabel="loss (nats)", title="Loss")
ax_loss.legend(fontsize=8)
ax_icl.plot(steps, icl, color="C3")
ax_icl.set(xlabel="step", ylabel="loss[50] − loss[10]", title="In-context-learning score")
for ax in (ax_loss, ax_icl):
    ax.axvline(icl_drop_step, color="C3", ls="--", lw=1, label=f"ICL drop ({icl_drop_step})")
    ax.axvline(turn_step, color="k", ls=":", lw=1, label=f"PCA turn ({turn_step})")
ax_icl.legend(fontsize=8)
pca_trajectory(steps, token_loss, ax=ax_pca, n_turning_points=1)
ax_pca.set_title("Per-token-loss PCA trajectory")
fig.tight_layout()
Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
fig.savefig(args.figure, dpi=110)
print(f"figure saved to {args.figure}")
