"""Induction heads form in a phase change; trajhook sees it in the per-token losses.

A 2-layer attention-only transformer is trained on a mix of bigram text (learnable from
n-gram statistics) and random character spans that repeat (predictable only by copying from
context). Two probes record, on a log-spaced cadence (dense early, then every 10 steps):

- a TokenLossProbe: the loss of every token of a fixed stream of ``--probe-tokens`` tokens
  (repeated random spans, cut into 64-token windows), with a live stage tracker: on the
  writer thread it adds an event when the per-token-loss trajectory turns sharply or the
  in-context-learning score drops, a few records after it happened;
- a PromptProbe: a few repeated sequences, and the log-prob of the character copying predicts.

From the log we then compute offline (Olsson et al. 2022) the in-context-learning score, which
drops abruptly when induction heads form, and the PCA trajectory of the per-token losses, which
turns at about the same step, and print them beside the live events.

    python examples/induction_heads.py                # 1.5 to 3 minutes on 2 busy CPU cores
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

from trajhook import PromptProbe, Recorder, TokenLossProbe, load, log_spaced
from trajhook.analysis.online import StageTracker
from trajhook.analysis.trajectory import icl_score, smooth, trajectory_pca, turning_points
from trajhook.plots.prompts import pca_trajectory
from trajhook.probes.token_loss import per_window

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--steps", type=int, default=900, help="optimizer steps")
parser.add_argument("--record-every", type=int, default=None, help="a fixed cadence instead of the log-spaced one")
parser.add_argument("--probe-tokens", type=int, default=4096, help="tokens in the TokenLossProbe's stream")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny model)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/induction_heads.h5", help="the trajhook store")
parser.add_argument("--figure", default="docs/images/induction_heads.png", help="where to save the figure")
parser.add_argument("--small", action="store_true", help="tiny settings for smoke tests")
args = parser.parse_args()
if args.small:
    args.steps, args.record_every, args.batch_size, args.probe_tokens = 60, 5, 8, 512
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


# ---- the probes: a long stream of repeated spans, and a few prompts with the character copying predicts ----
probe_rng = np.random.default_rng(1234)
windows = [probe_rng.integers(VOCAB, size=HALF) for _ in range(-(-args.probe_tokens // LENGTH))]
stream = np.concatenate([np.concatenate([w, w]) for w in windows])[: args.probe_tokens]
# token_loss[w, t] predicts token t + 1 of window w: position 10 is in the random first half, 50 in the repeat.
tracker = StageTracker(icl=(50, 10))
stream_probe = TokenLossProbe(stream, context=LENGTH, name="stream", track_stages=tracker)
spans = ["".join(ALPHABET[i] for i in probe_rng.integers(VOCAB, size=HALF)) for _ in range(8)]
prompts = {f"repeat{i}": (s + s)[:-1] for i, s in enumerate(spans)}
targets = {f"repeat{i}": [s[-1]] for i, s in enumerate(spans)}
probe = PromptProbe(prompts, tokenizer, targets=targets, name="prompts")

# ---- training, with one Recorder line -----------------------------------------------------------------
# Log-spaced: every step at first, 20 records per factor of ten, then one every 10 steps from step 200.
cadence = args.record_every or log_spaced(first=1, per_decade=20, until=200, then_every=10)
model = TinyTransformer(VOCAB, d_model=64, n_layers=2, n_heads=4, max_len=LENGTH, mlp=False)
optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
rec = Recorder(args.out, [stream_probe, probe], every_n_steps=cadence, metadata=vars(args), overwrite=True)
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
seconds = time.perf_counter() - start
print(f"trained {args.steps} steps in {seconds:.1f} s; {len(rec.recorded_steps)} records at {args.out}")

# ---- analysis of the loaded log: offline, with every record, beside the live events -------------------
log = load(args.out)
steps = log.steps
token_loss = per_window(log["stream"]["token_loss"], log["stream"].metadata)  # (records, windows, positions)
icl = icl_score(token_loss, late=50, early=10)
icl_smooth = smooth(icl, sigma=1.0)
halfway = (icl_smooth[0] + icl_smooth.min()) / 2
icl_drop_step = int(steps[np.argmax(icl_smooth < halfway)])
pca = trajectory_pca(log["stream"]["token_loss"], n_components=2)
offline_turns = [int(s) for s in steps[turning_points(pca.coords, n=3, smoothing=1.0)]]  # sharpest first
turn_step = offline_turns[0]
explained = pca.explained_variance_ratio.sum()
print(f"offline: ICL score {icl[0]:+.2f} -> {icl[-1]:+.2f}; it drops through halfway at step {icl_drop_step}")
print(f"offline: the PCA trajectory (PC1+PC2 explain {explained:.0%}) turns at step {turn_step} (sharpest), ", end="")
print(f"then at steps {offline_turns[1:]}")
live = [(e.step, e.label) for e in log.events if e.label.startswith("candidate stage boundary")]
for event_step, label in live:
    offline = min(offline_turns, key=lambda s: abs(s - event_step)) if "PCA" in label else icl_drop_step
    print(f"live:    {label} at step {event_step} ({(event_step - offline) / offline:+.0%} from offline {offline})")
if not live:
    print("live:    no stage boundary confirmed (too few records for the tracker)")

# ---- figure: loss, ICL score, PCA trajectory ----------------------------------------------------------
fig, (ax_loss, ax_icl, ax_pca) = plt.subplots(1, 3, figsize=(15, 4.2))
loss_series = log.scalars["loss"]
ax_loss.plot(loss_series.steps, loss_series.values, lw=0.6, color="0.6", label="training loss")
ax_loss.plot(steps, np.nanmean(token_loss[:, :, : HALF - 1], axis=(1, 2)), label="stream: first half (random)")
ax_loss.plot(steps, np.nanmean(token_loss[:, :, HALF:], axis=(1, 2)), label="stream: repeated half")
ax_loss.set(xlabel="step", ylabel="loss (nats)", title="Loss")
ax_loss.legend(fontsize=8)
ax_icl.plot(steps, icl, color="C3")
ax_icl.set(xlabel="step", ylabel="loss[50] − loss[10]", title="In-context-learning score")
for ax in (ax_loss, ax_icl):
    ax.axvline(icl_drop_step, color="C3", ls="--", lw=1, label=f"ICL drop, offline ({icl_drop_step})")
    ax.axvline(turn_step, color="k", ls=":", lw=1, label=f"PCA turn, offline ({turn_step})")
    for event_step, label in live:
        kind = "PCA turn" if "PCA" in label else "ICL drop"
        ax.axvline(event_step, color="C2", lw=2, alpha=0.5, label=f"{kind}, live ({event_step})")
ax_icl.legend(fontsize=8)
pca_trajectory(steps, log["stream"]["token_loss"], ax=ax_pca, n_turning_points=1)
ax_pca.set_title(f"Per-token-loss PCA trajectory ({log['stream']['token_loss'].shape[1]} tokens)")
fig.tight_layout()
Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
fig.savefig(args.figure, dpi=110)
print(f"figure saved to {args.figure}")
