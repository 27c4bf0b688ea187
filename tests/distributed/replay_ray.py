"""Run by tests/test_replay.py: ``trajhook.replay`` inside Ray Train's ``TorchTrainer`` (2 CPU workers, gloo).

Ray sets up the process group; the one replay line in ``train_loop_per_worker`` shares the series between the
two workers and the rank-0 worker writes the store. ``ray.init`` runs here with 2 CPUs and no dashboard.
"""

import json
import sys
from pathlib import Path

import ray
import ray.cloudpickle
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import test_replay

ray.cloudpickle.register_pickle_by_value(test_replay)  # the workers need not find the tests folder
ckpts, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()


def loop(config):
    import torch.distributed as dist

    import trajhook

    result = trajhook.replay(config["ckpts"], test_replay.make_probes(), config["store"], model=test_replay.make_net)
    Path(config["out"], f"ray_rank{dist.get_rank()}.json").write_text(json.dumps({"recorded": result.recorded}))


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
TorchTrainer(
    loop,
    train_loop_config={"ckpts": str(ckpts), "store": str(out / "ray.h5"), "out": str(out)},
    scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
    torch_config=TorchConfig(backend="gloo"),
    run_config=RunConfig(storage_path=str(out / "ray_results"), name="trajhook_replay"),
).fit()
ray.shutdown()
