"""TrajectoryCallback in both Lightning packages (``pytorch_lightning`` and ``lightning.pytorch``).

The two packages are copies of the same classes, and a Trainer accepts only its own package's
``Callback``. Which packages are imported, and in which order, is per process: each case runs in
its own Python process.
"""

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("lightning")
pytest.importorskip("pytorch_lightning")

FIT = """
import numpy as np, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from trajhook import TensorProbe, load

PROBE_X = torch.linspace(-1, 1, 12).reshape(3, 4)

def fit(package, path):
    class Regressor(package.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(4, 1)
        def forward(self, x):
            return self.net(x)
        def training_step(self, batch, batch_idx):
            return nn.functional.mse_loss(self(batch[0]), batch[1])
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    x = torch.randn(32, 4)
    model = Regressor()
    cb = TrajectoryCallback(path, [TensorProbe("fixed", PROBE_X)], every_n_steps=2)
    assert isinstance(cb, package.Callback)
    trainer = package.Trainer(max_steps=4, callbacks=cb, logger=False, enable_checkpointing=False,
                              enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=4))
    log = load(path)
    assert log.steps.tolist() == [0, 2, 4], log.steps
    assert log.scalars["loss"].steps.tolist() == [0, 1, 2, 3]
    with torch.no_grad():
        np.testing.assert_allclose(log["fixed"]["output"][-1], model(PROBE_X).numpy(), rtol=1e-6)
    return cb
"""


def run(imports: str, fits: str, tmp_path) -> None:
    code = textwrap.dedent(imports) + FIT + textwrap.dedent(fits)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]


@pytest.mark.timeout(160)
def test_trajhook_imported_first_then_lightning_pytorch_then_both(tmp_path):
    run(
        """
        from trajhook.integrations.lightning import TrajectoryCallback
        import lightning.pytorch as L
        """,
        """
        fit(L, "unified.h5")  # callbacks=cb, not a list, in the unified package's Trainer
        import pytorch_lightning as pl
        cb = fit(pl, "classic.h5")
        assert isinstance(cb, TrajectoryCallback) and cb.state_key == "TrajectoryCallback{'path': 'classic.h5'}"
        import pickle  # ddp_spawn pickles callbacks
        fresh = TrajectoryCallback("classic.h5", [TensorProbe("fixed", PROBE_X)])
        assert pickle.loads(pickle.dumps(fresh)).state_key == cb.state_key
        """,
        tmp_path,
    )


@pytest.mark.timeout(160)
def test_lightning_pytorch_imported_first_then_trajhook_then_pytorch_lightning(tmp_path):
    run(
        """
        import lightning.pytorch as L
        from trajhook.integrations.lightning import TrajectoryCallback
        import pytorch_lightning as pl
        """,
        """
        fit(pl, "classic.h5")
        fit(L, "unified.h5")
        """,
        tmp_path,
    )
