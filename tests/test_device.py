"""Probes follow the model's device, and a single process's first record imports nothing it does not use.

The GPU paths (a model moved to CUDA after setup, Lightning placing it there) are in ``test_cuda.py``.
On a CPU-only machine the one other device a model can move to is ``meta`` (shapes, no values): a
model on ``meta`` refuses CPU inputs just as a CUDA model does, so it checks the same re-setup path.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from trajhook import Recorder, TensorProbe, TrajhookError, load
from trajhook.recording.probing import moved_to

CPU, META = torch.device("cpu"), torch.device("meta")


class CountingProbe(TensorProbe):
    """A TensorProbe that notes the device of each setup and builds its inputs there from host data (as the
    maze and prompt probes do; a meta tensor cannot be copied back); its output says where the forward ran."""

    def __init__(self):
        super().__init__("where", torch.ones(3, 2), fn=lambda model, x: {"on_meta": torch.tensor(model(x).is_meta)})
        self.setups = []

    def setup(self, model, device):
        self.setups.append(device)
        self.inputs = torch.ones(3, 2)
        super().setup(model, device)


@pytest.mark.parametrize(
    ("now", "set_up_on", "expected"),
    [
        (CPU, CPU, None),
        (torch.device("cuda", 0), torch.device("cuda:0"), None),
        (torch.device("cuda", 0), CPU, torch.device("cuda", 0)),  # model.cuda() after setup
        (torch.device("cuda", 1), torch.device("cuda", 0), torch.device("cuda", 1)),  # a DDP rank's own GPU
        (CPU, torch.device("cuda", 0), CPU),  # moved back
        (CPU, None, CPU),  # never set up
    ],
)
def test_moved_to_answers_the_new_device_only_when_it_differs(now, set_up_on, expected):
    assert moved_to(now, set_up_on) == expected


def test_a_model_moved_after_setup_has_its_probes_set_up_again_once_at_the_next_due_record(tmp_path):
    model = nn.Linear(2, 1)
    probe = CountingProbe()
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=2, wandb=False) as rec:
        rec.setup(model)
        assert rec.maybe_record(model, 0)
        model.to(META)  # the setup's CPU inputs no longer fit: the forward would raise
        assert not rec.maybe_record(model, 1)
        assert probe.setups == [CPU]  # a step that is not due does not look at the device
        assert rec.maybe_record(model, 2) and rec.maybe_record(model, 4)
        assert probe.setups == [CPU, META]  # once, not at every record
        assert probe.inputs.is_meta
        model.to_empty(device=CPU)
        rec.record(model, 5)
        assert probe.setups == [CPU, META, CPU]
    np.testing.assert_array_equal(load(tmp_path / "run.h5")["where"]["on_meta"], [False, True, True, False])


def test_without_the_re_setup_the_moved_model_fails_on_the_cached_inputs():
    """The control: the inputs cached at setup do not fit the moved model (what the re-setup repairs)."""
    model = nn.Linear(2, 1)
    probe = CountingProbe()
    probe.setup(model, CPU)
    model.to(META)
    with pytest.raises(RuntimeError, match="meta"):
        probe.run(model)


def test_a_probe_that_fails_on_the_new_device_names_itself_and_the_step(tmp_path):
    class CpuOnly(TensorProbe):
        def setup(self, model, device):
            if device != CPU:
                raise ValueError(f"no inputs for {device}")
            super().setup(model, device)

    model = nn.Linear(2, 1)
    with Recorder(tmp_path / "run.h5", [CpuOnly("cpu_only", torch.ones(1, 2))], every_n_steps=1, wandb=False) as rec:
        rec.record(model, 0)
        model.to(META)
        with pytest.raises(TrajhookError, match=r"CpuOnly 'cpu_only' failed at step 1: ValueError: no inputs for meta"):
            rec.record(model, 1)
    assert load(tmp_path / "run.h5").steps.tolist() == [0]


FIRST_RECORD = """
import json, sys, tempfile, time
import torch
from trajhook import Recorder, TensorProbe

loaded = {m for m in sys.modules if m.startswith("torch.distributed")}  # what `import torch` loads
model = torch.nn.Linear(2, 1)
with Recorder(tempfile.mkdtemp() + "/run.h5", [TensorProbe("x", torch.ones(1, 2))], 1, wandb=False) as rec:
    rec.setup(model)
    rec.record(model, 0)
    rec.record(model, 1)
print(json.dumps({
    "new": sorted(m for m in sys.modules if m.startswith("torch.distributed") and m not in loaded),
    "heavy": sorted(m for m in ("deepspeed", "accelerate", "torch.distributed.fsdp", "torch.distributed.tensor")
                    if m in sys.modules),
}))
"""


def test_a_single_process_first_record_imports_nothing_of_torch_distributed_beyond_import_torch():
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FIRST_RECORD)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {"new": [], "heavy": []}
