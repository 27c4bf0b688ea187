"""Run by tests/test_distributed.py: examples/ray_train.py's loop under Ray Train's ``TorchTrainer``, 2 CPU workers.

Each worker trains twice, with and without the Recorder line, and rank zero saves both runs' final
weights. ``ray.init`` runs here with 2 CPUs and no dashboard; nothing leaves the machine.
"""

import sys
from pathlib import Path

import ray
import ray.cloudpickle

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import ray_train

ray.cloudpickle.register_pickle_by_value(ray_train)  # the workers need not find the examples folder
out = Path(sys.argv[1]).resolve()


def both_runs(config):
    ray_train.train_loop_per_worker({**config, "record": True, "weights": str(out / "with.pt")})
    ray_train.train_loop_per_worker({**config, "record": False, "weights": str(out / "without.pt")})


ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
ray_train.fit(both_runs, {"store": str(out / "ray.h5"), "steps": 9, "every": 4}, storage=str(out / "ray_results"))
ray.shutdown()
