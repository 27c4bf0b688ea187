"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node 2``: the framework callbacks.

1. HF ``Trainer`` (DDP over gloo, set up by accelerate from torchrun's environment);
2. Lightning ``strategy="ddp"``;
3. Lightning ``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model`` (Lightning's
   FSDP2; its ``FSDPStrategy`` and ``DeepSpeedStrategy`` are in engines.py);
4. ``ModelParallelStrategy`` with ``tensor_parallel_size=2``: refused at setup, on both ranks.

Beside each TrajectoryCallback, a capture callback computes the probe's output by hand at every
step (for the sharded model: the forward of the gathered full weights) and rank zero saves it.
"""

import copy
import sys

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.utils.data import DataLoader, TensorDataset
from transformers import Trainer, TrainerCallback, TrainingArguments

from trajhook import TensorProbe
from trajhook.errors import TrajhookError
from trajhook.integrations import hf, lightning

out_dir = sys.argv[1]
PROBE_X = torch.linspace(-1, 1, 12).reshape(3, 4)
results = {}


def direct(model):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    with torch.no_grad():
        y = model(PROBE_X).clone()
    for m, t in modes:
        m.training = t
    return y


# -- 1. HF Trainer under DDP ------------------------------------------------------------------------------
class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x, labels=None):
        out = self.net(x)
        return out if labels is None else {"loss": nn.functional.mse_loss(out, labels), "logits": out}


class HFCapture(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        results.setdefault("hf", {})[state.global_step] = direct(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        results.setdefault("hf", {})[state.global_step] = direct(model)


g = torch.Generator().manual_seed(0)
x = torch.randn(64, 4, generator=g)
torch.manual_seed(0)
trainer = Trainer(
    model=Regressor(),
    args=TrainingArguments(
        output_dir=f"{out_dir}/hf_out",
        max_steps=5,
        per_device_train_batch_size=4,
        learning_rate=0.05,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    ),
    train_dataset=[{"x": row, "labels": row.sum(0, keepdim=True)} for row in x],
    callbacks=[
        hf.TrajectoryCallback(f"{out_dir}/hf.h5", [TensorProbe("fixed", PROBE_X)], every_n_steps=2),
        HFCapture(),
    ],
)
trainer.train()
results["hf_ddp"] = type(trainer.model_wrapped).__name__
results["hf_loss"] = {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}
rank = dist.get_rank()


# -- 2 and 3. Lightning -------------------------------------------------------------------------------------
class LitRegressor(pl.LightningModule):
    def __init__(self, shard):
        super().__init__()
        self.shard = shard
        self.net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1))

    def configure_model(self):
        if self.shard:
            fully_shard(self.net[0])
            fully_shard(self.net[2])
            fully_shard(self.net)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return nn.functional.mse_loss(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class LitCapture(pl.Callback):
    def __init__(self, key, reference):
        self.key, self.reference = key, reference

    def take(self, trainer, pl_module):
        if self.reference is None:
            value = direct(pl_module)
        else:  # gather the full weights (a collective: every rank), forward an unsharded copy
            state = get_model_state_dict(pl_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if trainer.global_rank != 0:
                return  # the full state dict arrives on rank zero only
            self.reference.load_state_dict(state)
            value = direct(self.reference)
        results.setdefault(self.key, {})[trainer.global_step] = value

    def on_train_start(self, trainer, pl_module):
        self.take(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.take(trainer, pl_module)


for key, strategy in [
    ("lit_ddp", "ddp"),
    ("lit_fsdp2", pl.strategies.ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)),
]:
    torch.manual_seed(0)
    model = LitRegressor(shard=key == "lit_fsdp2")
    reference = copy.deepcopy(model) if key == "lit_fsdp2" else None
    cb = lightning.TrajectoryCallback(f"{out_dir}/{key}.h5", [TensorProbe("fixed", PROBE_X)], every_n_steps=2)
    pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=5,
        callbacks=[cb, LitCapture(key, reference)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(model, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4))

# -- 4. a sharding trajhook does not know: ModelParallelStrategy with tensor parallel, refused at setup --------
tp = pl.strategies.ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=2)
try:
    pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=tp,
        max_steps=1,
        callbacks=[lightning.TrajectoryCallback(f"{out_dir}/lit_tp.h5", [TensorProbe("fixed", PROBE_X)])],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(LitRegressor(shard=False), DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4))
    results["lit_tp"] = None
except TrajhookError as err:
    results["lit_tp"] = str(err)

torch.save(results, f"{out_dir}/frameworks_rank{rank}.pt")
dist.barrier()
