"""Run by tests/test_distributed.py under ``DS_ACCELERATOR=cpu torchrun --nproc_per_node 2``: sharded engines.

Each engine trains a tiny GPT-2 for 4 steps twice, with and without trajhook's one line (a PromptProbe
of several micro-batches, every 2 steps), then gathers the final full weights (a test-side gather; trajhook
never gathers). Rank zero saves, per engine, the final weights of both runs and the PromptProbe record
of the final weights computed in one process on an unsharded copy.

1. HF ``Trainer`` + DeepSpeed ZeRO-3 (unpatched: DeepSpeed 0.19 runs on its CPU accelerator with gloo;
   ``torch_adam`` so that no op is compiled; no ``use_cpu=True``, which turns DeepSpeed off).
2. HF ``Trainer`` + Accelerate FSDP2. TEST-ONLY PATCH: Accelerate never turns FSDP on for CPU
   (``accelerate/state.py`` switches to FSDP only from GPU-like types); after ``AcceleratorState.__init__``,
   a ``MULTI_CPU`` state given an ``fsdp_plugin`` is set to ``DistributedType.FSDP``.
3. Lightning ``FSDPStrategy`` (FSDP1). TEST-ONLY PATCH: Lightning refuses it without a GPU; a subclass
   passes the ``type(...) is FSDPStrategy`` check and wraps with ``device_id=torch.device("cpu")``.
4. Lightning ``DeepSpeedStrategy`` stage 3. TEST-ONLY PATCHES: skip its CUDA check, make
   ``_validate_device_index_selection`` a no-op, and map ``device_rank=None`` to -1.
Unpatched, these run on a GPU machine.
"""

import argparse
import os
import sys
import time

import deepspeed
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from trajhook import PromptProbe
from trajhook.integrations import hf, lightning

out_dir = sys.argv[1]
T0 = time.monotonic()
V = 64
CONFIG = GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0)
DATA = torch.randint(0, V, (32, 12), generator=torch.Generator().manual_seed(0))
results: dict = {}
ONLY = os.environ.get("ENGINES", "hf_zero3,hf_fsdp2,lit_fsdp1,lit_deepspeed").split(",")  # to run some alone


def probes():
    prompts = [bytes(range(97, 97 + n)).decode() for n in (3, 9, 5, 7, 4, 11, 6)]
    tokenizer = lambda text: [ord(c) % V for c in text]  # noqa: E731
    return [PromptProbe(prompts, tokenizer, targets=[["ab"]] * 7, max_tokens_per_batch=16)]


def reference_record(state):
    """The probe's record in one process, on an unsharded model holding the gathered weights."""
    model = GPT2LMHeadModel(CONFIG)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)  # tied to the embedding
    model.eval()
    (probe,) = probes()
    with torch.no_grad():
        probe.setup(model, torch.device("cpu"))
        return {k: v.clone() for k, v in probe.run(model).items()}


def gathered_zero3(module):
    with deepspeed.zero.GatheredParameters(list(module.parameters())):
        return {k: v.detach().clone() for k, v in module.state_dict().items()}


def full_state(module):
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def keep(name, with_trajhook, state):
    print(f"{time.monotonic() - T0:.1f}s {name} trajhook={with_trajhook}", flush=True)
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if dist.get_rank() == 0:
        results.setdefault(name, {})["trajhook" if with_trajhook else "plain"] = state
        if with_trajhook:
            results[name]["reference"] = reference_record(state)


# -- 1 and 2: HF Trainer ----------------------------------------------------------------------------------
def patch_accelerate_fsdp_on_cpu():
    """TEST-ONLY: let Accelerate's FSDP run on CPU processes (see the module docstring)."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def reset_accelerate():
    from accelerate.state import AcceleratorState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    AcceleratorState._reset_state(reset_partial_state=True)
    unset_hf_deepspeed_config()
    for key in [k for k in os.environ if k.startswith("ACCELERATE_USE_") or k.startswith("FSDP_")]:
        del os.environ[key]


ZERO3 = {
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "torch_adam": True}},
    "train_micro_batch_size_per_gpu": 2,
    "gradient_accumulation_steps": 1,  # no train_batch_size: HF counts one process under DeepSpeed on CPU
}
FSDP2 = {
    "use_cpu": True,
    "fsdp": "full_shard",
    "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["GPT2Block"]},
}


def hf_run(name, engine_args, with_trajhook):
    reset_accelerate()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(CONFIG)
    callbacks = [hf.TrajectoryCallback(f"{out_dir}/{name}.h5", probes(), every_n_steps=2)] if with_trajhook else []
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=f"{out_dir}/{name}_out",
            max_steps=4,
            per_device_train_batch_size=2,
            learning_rate=0.01,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            **engine_args,
        ),
        train_dataset=[{"input_ids": row, "labels": row} for row in DATA],
        callbacks=callbacks,
    )
    trainer.train()
    if name == "hf_zero3":
        assert hasattr(next(trainer.model.parameters()), "ds_id"), "ZeRO-3 did not partition the parameters"
        state = gathered_zero3(trainer.model)
    else:
        assert "FSDP" in type(trainer.model).__name__, type(trainer.model)  # fully_shard's class
        state = full_state(trainer.model)
    keep(name, with_trajhook, state)


patch_accelerate_fsdp_on_cpu()
for with_trajhook in (True, False) if "hf_zero3" in ONLY else ():
    hf_run("hf_zero3", {"deepspeed": ZERO3}, with_trajhook)
for with_trajhook in (True, False) if "hf_fsdp2" in ONLY else ():
    hf_run("hf_fsdp2", FSDP2, with_trajhook)
reset_accelerate()


# -- 3 and 4: Lightning -------------------------------------------------------------------------------------
class LitGPT(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.model = GPT2LMHeadModel(CONFIG)

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.model(input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    def training_step(self, batch, batch_idx):
        return self.model(batch[0], labels=batch[0]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=0.01)


class CPUFSDPStrategy(pl.strategies.FSDPStrategy):
    """TEST-ONLY: FSDP1 on CPU processes (Lightning #21778, #21812)."""

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from transformers.models.gpt2.modeling_gpt2 import GPT2Block

        return FullyShardedDataParallel(
            model, auto_wrap_policy=ModuleWrapPolicy({GPT2Block}), device_id=torch.device("cpu")
        )


def patch_lightning_deepspeed_on_cpu():
    """TEST-ONLY: Lightning's DeepSpeedStrategy on CPU (see the module docstring)."""
    from pytorch_lightning.strategies import deepspeed as lit_ds

    lit_ds.DeepSpeedStrategy.setup_environment = pl.strategies.DDPStrategy.setup_environment
    lit_ds._validate_device_index_selection = lambda devices: None
    original = deepspeed.initialize

    def initialize(*args, **kwargs):
        if isinstance(kwargs.get("args"), argparse.Namespace) and kwargs["args"].device_rank is None:
            kwargs["args"].device_rank = -1
        return original(*args, **kwargs)

    deepspeed.initialize = initialize


class FinalWeights(pl.Callback):
    """Gathers the full weights at the end of training, before the strategy tears the model down."""

    def on_train_end(self, trainer, pl_module):
        if "DeepSpeed" in type(trainer.strategy).__name__:
            assert hasattr(next(pl_module.parameters()), "ds_id"), "ZeRO-3 did not partition the parameters"
            self.state = gathered_zero3(pl_module)
        else:
            from torch.distributed.fsdp import FullyShardedDataParallel
            from torch.distributed.fsdp._common_utils import clean_tensor_name

            root = trainer.strategy.model
            assert isinstance(root, FullyShardedDataParallel)
            with FullyShardedDataParallel.summon_full_params(root, writeback=False):  # (get_model_state_dict fails)
                named = [*root.named_parameters(), *root.named_buffers()]
                self.state = {clean_tensor_name(k): v.detach().clone() for k, v in named}


def lit_run(name, strategy, with_trajhook):
    torch.manual_seed(0)
    module = LitGPT()
    final = FinalWeights()
    callbacks = [final]
    if with_trajhook:
        callbacks.insert(0, lightning.TrajectoryCallback(f"{out_dir}/{name}.h5", probes(), every_n_steps=2))
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        max_steps=4,
        callbacks=callbacks,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(DATA), batch_size=2)
    trainer.fit(module, loader)
    keep(name, with_trajhook, final.state)


patch_lightning_deepspeed_on_cpu()
for with_trajhook in (False, True) if "lit_fsdp1" in ONLY else ():
    lit_run("lit_fsdp1", CPUFSDPStrategy(), with_trajhook)
for with_trajhook in (True, False) if "lit_deepspeed" in ONLY else ():
    lit_run(
        "lit_deepspeed",
        pl.strategies.DeepSpeedStrategy(
            config={
                "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                "zero_allow_untested_optimizer": True,
                "train_micro_batch_size_per_gpu": 2,
            }
        ),
        with_trajhook,
    )

if dist.get_rank() == 0:
    torch.save(results, f"{out_dir}/engines_rank0.pt")
dist.barrier()
