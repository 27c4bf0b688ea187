"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: one Recorder line on every rank.

Part 1, DDP: a model with BatchNorm (whose buffers DDP broadcasts in its forward) trained with the
one-line hook; rank zero saves the direct forward of the unwrapped model at every recorded step.
Part 2, FSDP (``fully_shard``): every rank joins each probe forward; at every recorded step the
full weights are gathered (``get_model_state_dict``, a collective) and rank zero saves the forward
of an unsharded copy. Each rank also saves whether the store's path is open in this process.
Part 3, the probe work shared: a PromptProbe and a TokenLossProbe of several micro-batches each,
under DDP and under FSDP2; each rank counts its forwards; rank zero saves the same probes' records
from one process on the gathered weights.
Part 4, a probe failing on rank one only (DDP and FSDP2): every rank saves the error it got and how
long it took. Part 5, tensor parallel (a DTensor outside fully_shard): the error at setup.
"""

import copy
import os
import sys
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard

from trajhook import Recorder, TensorProbe
from trajhook.sinks.base import Sink

out_dir = sys.argv[1]
dist.init_process_group("gloo")
rank = dist.get_rank()
PROBE_X = torch.linspace(-1, 1, 24).reshape(6, 4)
STEPS, EVERY = 10, 3


def open_paths() -> set:
    return {
        os.path.realpath(os.readlink(f"/proc/self/fd/{fd}"))
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    }


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(8, 4, generator=g)
    return x, x.sum(1, keepdim=True)


def direct(model: nn.Module) -> torch.Tensor:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        y = model(PROBE_X).clone()
    for m, t in modes:
        m.training = t
    return y


class CountingSink(Sink):
    def __init__(self):
        self.calls = 0

    def open(self, probes, metadata):
        self.calls += 1

    def record(self, step, outputs):
        self.calls += 1

    def close(self):
        self.calls += 1


def train(model, path, expected, before_step=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    fds = {}
    sink = CountingSink()
    with Recorder(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=EVERY, wandb=False, sinks=[sink]) as rec:
        rec.setup(model)
        for step in range(STEPS):
            x, y = batch(step)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 5:
                rec.mark(step, "halfway")
            if step % EVERY == 0:
                expected[step] = before_step(model)
            rec.maybe_record(model, step, loss=loss.detach())
        rec.flush()
        fds["open_while_training"] = os.path.realpath(path) in open_paths()
    fds["sink_calls"] = sink.calls
    return fds


# -- part 1: DDP ------------------------------------------------------------------------------------------
torch.manual_seed(0)
ddp = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)))
ddp_expected = {}
ddp_fds = train(ddp, f"{out_dir}/ddp.h5", ddp_expected, before_step=lambda m: direct(m.module))

# -- part 2: FSDP2 -----------------------------------------------------------------------------------------
torch.manual_seed(0)
full = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))
reference = copy.deepcopy(full)
sharded = copy.deepcopy(full)
for layer in (sharded[0], sharded[2]):
    fully_shard(layer)
fully_shard(sharded)


def gathered_forward(model):
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    reference.load_state_dict(state)
    return direct(reference)


fsdp_expected = {}
fsdp_fds = train(sharded, f"{out_dir}/fsdp.h5", fsdp_expected, before_step=gathered_forward)

# -- part 3: the probe work shared across ranks -----------------------------------------------------------
from trajhook import PromptProbe, TokenLossProbe  # noqa: E402
from trajhook.errors import TrajhookError  # noqa: E402
from trajhook.probes.base import Probe  # noqa: E402

V = 32


class TinyLM(nn.Module):  # causal: each position sees itself and a running mean of the positions before
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, V)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        mean = h.cumsum(1) / torch.arange(1, h.shape[1] + 1).reshape(1, -1, 1)
        return self.head(torch.tanh(self.mix(mean)) + h)


def lm_probes():
    prompts = [bytes(range(97, 97 + n)).decode() for n in (3, 9, 5, 7, 4, 11, 6)]
    return [
        PromptProbe(prompts, lambda t: [ord(c) % V for c in t], targets=[["ab"]] * 7, max_tokens_per_batch=12),
        TokenLossProbe([(7 * i) % V for i in range(90)], context=10, max_tokens_per_batch=20),
    ]


def count_forwards(model):
    counter = {"n": 0}
    model.register_forward_pre_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    return counter


split = {}
for kind in ("ddp", "fsdp"):
    torch.manual_seed(1)
    lm = TinyLM()
    reference = copy.deepcopy(lm)
    if kind == "ddp":
        lm = nn.parallel.DistributedDataParallel(lm)
    else:
        fully_shard(lm.mix)
        fully_shard(lm)
    target = lm.module if kind == "ddp" else lm
    opt = torch.optim.SGD(lm.parameters(), lr=0.5)
    probes = lm_probes()
    with Recorder(f"{out_dir}/split_{kind}.h5", probes, every_n_steps=2, wandb=False) as rec:
        rec.setup(lm)
        counter = count_forwards(target)
        for step in range(3):
            ids = torch.randint(0, V, (4, 8), generator=torch.Generator().manual_seed(10 * step + rank))
            loss = nn.functional.cross_entropy(lm(ids)[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            counter["n"] -= 1  # the training forward
            rec.maybe_record(lm, step)  # records at 0 and 2 (after the last update)
    split[f"{kind}_forwards"] = counter["n"]  # the probe forwards of the records at steps 0 and 2
    if kind == "fsdp":  # after the probe every FSDP2 module is resharded, the root too (its forward leaves it full)
        groups = [m._get_fsdp_state()._fsdp_param_group for m in (lm, lm.mix)]  # private: no public accessor
        split["fsdp_resharded"] = [g.is_sharded for g in groups]
    split[f"{kind}_parts"] = [p.split(2) for p in probes]
    state = get_model_state_dict(lm, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:  # the same probes in one process, on the final weights
        reference.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
        reference.eval()
        fresh = lm_probes()
        with torch.no_grad():
            for probe in fresh:
                probe.setup(reference, torch.device("cpu"))
            split[kind] = {p.name: {k: v.clone() for k, v in p.run(reference).items()} for p in fresh}


# -- part 4: a probe that fails on rank one only -----------------------------------------------------------
class FailsOnRankOne(Probe):
    def setup(self, model, device):
        self.add_output("out", (4, 1))

    def run(self, model):
        return self.merge([self.run_part(model, i, 2) for i in range(2)])

    def split(self, ranks):
        return 2

    def run_part(self, model, part, parts):
        if dist.get_rank() == 1 and self.armed:
            raise ValueError("bad input on rank one")
        return model(PROBE_X[2 * part : 2 * part + 2, :4])

    def merge(self, partials):
        return {"out": torch.cat(partials)}


failures = {}
for kind, model in (("ddp", ddp), ("fsdp", sharded)):
    probe = FailsOnRankOne("fails")
    probe.armed = False
    rec = Recorder(f"{out_dir}/fails_{kind}.h5", [probe], every_n_steps=1, wandb=False)
    rec.setup(model)
    probe.armed = True
    started = time.monotonic()
    try:
        rec.record(model, 1)
        failures[kind] = None
    except TrajhookError as err:
        failures[kind] = (str(err), time.monotonic() - started)
    rec.close()

# -- part 5: a sharding trajhook does not know: tensor parallel -------------------------------------------
from torch.distributed.device_mesh import init_device_mesh  # noqa: E402
from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module  # noqa: E402

tp = parallelize_module(nn.Linear(4, 4), init_device_mesh("cpu", (2,)), ColwiseParallel())
try:
    Recorder(f"{out_dir}/tp.h5", [TensorProbe("fixed", PROBE_X)], wandb=False).setup(tp)
    failures["tp"] = None
except TrajhookError as err:
    failures["tp"] = str(err)

torch.save(
    {"ddp": ddp_expected, "fsdp": fsdp_expected, "ddp_fds": ddp_fds, "fsdp_fds": fsdp_fds, "split": split}
    | {"failures": failures},
    f"{out_dir}/rank{rank}.pt",
)
dist.barrier()
dist.destroy_process_group()
