"""A single process's first record imports nothing of ``torch.distributed`` that it does not use."""

import json
import subprocess
import sys
import textwrap

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
