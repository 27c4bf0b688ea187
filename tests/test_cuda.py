"""The CUDA path: probes on the model's GPU, pinned non-blocking copies, CUDA RNG restored, and probes
set up where the model runs (a loop that calls ``setup`` before ``.cuda()``; Lightning on one GPU, under
``ddp`` with one process and under ``ModelParallelStrategy``).

Skipped without a GPU (CI has none); run on a GPU machine with ``pytest tests/test_cuda.py``.
"""

import numpy as np
import pytest
import torch
from torch import nn

from trajhook import Probe, Recorder, TensorProbe, load

pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.timeout(300),
]


def mlp():
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 8))


def train(steps, recorder=None, seed=0):
    torch.manual_seed(seed)
    model = mlp().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    expected = []
    x_probe = torch.linspace(-1, 1, 32 * 16).reshape(32, 16)
    for step in range(steps):
        x = torch.randn(64, 16, device="cuda")
        loss = model(x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if recorder is not None:
            recorder.maybe_record(model, step, loss=loss.detach())
            model.eval()
            with torch.no_grad():
                expected.append(model(x_probe.cuda()).cpu().numpy())
            model.train()
    return model, expected


def test_records_on_cuda_equal_a_direct_forward_and_training_is_unchanged(tmp_path):
    torch.use_deterministic_algorithms(True, warn_only=True)
    plain, _ = train(12)
    x_probe = torch.linspace(-1, 1, 32 * 16).reshape(32, 16)
    with Recorder(tmp_path / "run.h5", [TensorProbe("fixed", x_probe)], every_n_steps=1, wandb=False) as rec:
        probed, expected = train(12, rec)
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == list(range(12))
    np.testing.assert_array_equal(log["fixed"]["output"], np.stack(expected))
    assert log.scalars["loss"].values.dtype == np.float64 and np.isfinite(log.scalars["loss"].values).all()
    for a, b in zip(plain.parameters(), probed.parameters(), strict=True):
        assert torch.equal(a, b)  # the probe's dropout-free eval forward drew no CUDA random numbers


class CudaNoise(Probe):
    """Draws from the CUDA generator and returns a buffer it overwrites in place at the next run."""

    def setup(self, model, device):
        self.buffer = torch.zeros(1000, device=device)
        self.calls = 0
        self.add_output("value", (1000,))

    def run(self, model):
        torch.rand(10, device="cuda")
        self.calls += 1
        self.buffer.fill_(float(self.calls))  # the pinned copy of the previous record must not see this
        return {"value": self.buffer}


def test_cuda_rng_is_restored_and_in_place_reuse_does_not_corrupt_records(tmp_path):
    model = mlp().cuda()
    with Recorder(tmp_path / "run.h5", [CudaNoise("noise")], every_n_steps=1, wandb=False) as rec:
        rec.setup(model)
        for step in range(20):
            before = torch.cuda.get_rng_state()
            rec.record(model, step)
            assert torch.equal(before, torch.cuda.get_rng_state())
    values = load(tmp_path / "run.h5")["noise"]["value"]
    np.testing.assert_array_equal(values[:, 0], np.arange(2, 22))  # call 1 was setup's first run
    assert (values == values[:, :1]).all()


def test_prompt_probe_in_bfloat16_on_cuda_matches_a_direct_float32_forward(tmp_path):
    transformers = pytest.importorskip("transformers")
    from trajhook import PromptProbe

    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    model = transformers.GPT2LMHeadModel(config).cuda().eval()
    prompts = {"a": [5, 9, 11, 40, 7], "b": [3, 3, 3], "c": list(range(10, 40))}
    names = {"t0": [1, 2], "t1": [250], "t2": [0]}  # target name -> token ids
    target_names = {"a": ["t0", "t1"], "c": ["t2"]}
    token_ids = {**prompts, **names}  # the "tokenizer": each text is a name of its ids
    probe = PromptProbe({k: k for k in prompts}, token_ids.__getitem__, targets=target_names)
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=1, wandb=False) as rec:
        rec.record(model.to(torch.bfloat16), 0)
    record = load(tmp_path / "run.h5")["prompts"]
    model = model.float()
    for p, (name, ids) in enumerate(prompts.items()):
        with torch.no_grad():
            logits = model(torch.tensor([ids], device="cuda")).logits[0].float().log_softmax(-1).cpu()
        want = -logits[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
        np.testing.assert_allclose(record["token_loss"][0, p, : len(ids) - 1], want, atol=0.15)  # bf16 vs f32
        for k, target in enumerate(target_names.get(name, [])):
            full = ids + names[target]
            with torch.no_grad():
                lp = model(torch.tensor([full], device="cuda")).logits[0].float().log_softmax(-1).cpu()
            total = sum(float(lp[len(ids) - 1 + m, t]) for m, t in enumerate(names[target]))
            np.testing.assert_allclose(record["target_logprob"][0, p, k], total, atol=0.3)


PROBE_X = torch.linspace(-1, 1, 32 * 16).reshape(32, 16)


def test_a_loop_that_sets_up_before_cuda_records_on_the_gpu(tmp_path):
    """The README's loop calls ``rec.setup(model)`` first; here the model moves to the GPU after it."""
    torch.manual_seed(0)
    model = mlp()
    probe = TensorProbe("fixed", PROBE_X)
    expected = {}
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=3, wandb=False) as rec:
        rec.setup(model)  # on the CPU
        model.cuda()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for step in range(7):
            if rec.maybe_record(model, step):  # step 0 sets the probe up again, on the GPU
                model.eval()
                with torch.no_grad():
                    expected[step] = model(PROBE_X.cuda()).cpu().numpy()
                model.train()
            loss = model(torch.randn(64, 16, device="cuda")).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert probe.inputs.device == torch.device("cuda", 0)
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 3, 6]
    np.testing.assert_allclose(log["fixed"]["output"], np.stack([expected[s] for s in (0, 3, 6)]), rtol=1e-6)


@pytest.fixture
def no_process_group():
    """Lightning's ``ddp`` and ``ModelParallelStrategy`` leave their process group behind: end it after the test."""
    yield
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("strategy", ["auto", "ddp", "model_parallel"])
def test_lightning_on_one_gpu_sets_the_probes_up_on_it(tmp_path, strategy, no_process_group):
    """A fit on one GPU: the plain strategy, ``ddp`` with one process, ``ModelParallelStrategy`` (FSDP2
    ``fully_shard`` in ``configure_model``, which runs after Lightning's ``setup`` hook). Each records from
    the first step on, and the last record equals a forward of the trained model."""
    pl = pytest.importorskip("pytorch_lightning")
    from torch.distributed.fsdp import fully_shard
    from torch.utils.data import DataLoader, TensorDataset

    from trajhook.integrations.lightning import TrajectoryCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def configure_model(self):
            if strategy == "model_parallel":
                fully_shard(self.net[0])
                fully_shard(self.net[3])
                fully_shard(self.net)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return self(batch[0]).square().mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Final(pl.Callback):
        """The trained model's output on the probe's inputs, by hand, while the process group still exists."""

        def on_train_end(self, trainer, pl_module):
            pl_module.eval()
            with torch.no_grad():
                self.output = pl_module(PROBE_X.cuda()).float().cpu().numpy()
            pl_module.train()

    torch.manual_seed(0)
    probe = TensorProbe("fixed", PROBE_X)
    final = Final()
    chosen = pl.strategies.ModelParallelStrategy() if strategy == "model_parallel" else strategy
    data = DataLoader(TensorDataset(torch.randn(64, 16)), batch_size=8)
    pl.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=chosen,
        max_steps=4,
        callbacks=[TrajectoryCallback(tmp_path / "run.h5", [probe], every_n_steps=2), final],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(Module(), data)
    assert probe.inputs.device == torch.device("cuda", 0)
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 2, 4]
    np.testing.assert_allclose(log["fixed"]["output"][-1], final.output, rtol=1e-5, atol=1e-6)
