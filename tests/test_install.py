"""What `pip install trajhook` promises: a light core, numpy 1 or 2, and clear errors for missing extras."""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

import trajhook
from trajhook import TrajhookError

FRAMEWORKS = (
    "procgen",
    "gym3",
    "gymnasium",
    "stable_baselines3",
    "pytorch_lightning",
    "lightning",
    "wandb",
    "tensorboard",
    "transformers",
    "trl",
    "matplotlib",
)


@pytest.mark.timeout(60)
def test_import_trajhook_loads_no_framework():
    code = f"import sys, trajhook; print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="the language-model environment has trl")
def test_language_model_side_runs_on_numpy_2_with_current_hf_libraries():
    import datasets
    import transformers
    import trl

    assert int(np.__version__.split(".")[0]) >= 2, np.__version__
    assert int(transformers.__version__.split(".")[0]) >= 5
    assert trl.__version__ and datasets.__version__
    assert importlib.util.find_spec("procgen") is None  # procgen2 would have forced numpy 1


@pytest.mark.skipif(importlib.util.find_spec("procgen") is not None, reason="procgen is installed here")
def test_maze_probe_without_procgen_names_the_extra_to_install(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(15))
    probe = trajhook.MazeProbe(seed=0)
    with pytest.raises(TrajhookError, match=r"pip install 'trajhook\[maze\]'"):
        trajhook.Recorder(tmp_path / "run.h5", [probe], wandb=False).setup(model)
