"""Ray Train: trajhook's one line inside ``train_loop_per_worker`` (``TorchTrainer``, 2 CPU workers, gloo).

Ray starts the workers, sets ``RANK``/``WORLD_SIZE`` and the process group; ``prepare_model`` wraps the
model in DDP. The same Recorder line runs in every worker: global rank zero writes the store, and the
workers share the probe work (here each of the two probes runs on one worker; rank zero gathers them).

- **The store path** is opened by the rank-0 worker, wherever Ray placed it: on several machines, give a
  path on shared storage (or one that exists on the rank-0 worker's node). Pass it absolute: workers do
  not run in the driver's working directory.
- **Not in ``RunConfig(callbacks=...)``**: those run on the controller and see metric dicts, never the model.

    python examples/ray_train.py runs/ray.h5            # about 30 s on 2 CPU cores
    trajhook info runs/ray.h5
"""

from __future__ import annotations

import argparse
import os

import torch
from torch import nn

from trajhook import Recorder, TensorProbe

PROBE_GRID = torch.linspace(-1, 1, 24).reshape(6, 4)
PROBE_CORNERS = torch.tensor([[1.0, 1, 1, 1], [-1, -1, -1, -1], [1, -1, 1, -1]])


def build_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each worker's own batch: a noisy sum of the inputs."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    x = torch.randn(16, 4, generator=g)
    return x, x.sum(1, keepdim=True) + 0.1 * torch.randn(16, 1, generator=g)


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch

    model = ray.train.torch.prepare_model(build_model())  # DDP over gloo
    opt = torch.optim.SGD(model.parameters(), lr=config.get("lr", 0.05))
    rank = ray.train.get_context().get_world_rank()
    probes = [TensorProbe("grid", PROBE_GRID), TensorProbe("corners", PROBE_CORNERS)]
    record = config.get("record", True)  # False: the same run without trajhook, to compare
    rec = Recorder(config["store"], probes, every_n_steps=config.get("every", 5), wandb=False) if record else None
    loss = torch.zeros(())
    for step in range(config.get("steps", 20)):
        x, y = batch(step, rank)
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.maybe_record(model, step, loss=loss.detach())  # the one line, on every worker
    if rec is not None:
        rec.close()
    if config.get("weights") and rank == 0:  # the final weights, e.g. to compare runs
        torch.save(model.module.state_dict(), config["weights"])
    ray.train.report({"loss": loss.item()})


def fit(loop: object, config: dict, workers: int = 2, storage: str | None = None) -> object:
    """Run ``loop`` on ``workers`` CPU workers (gloo) with ``TorchTrainer``; returns Ray's result."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=False),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(storage_path=os.path.abspath(storage or "runs/ray_results"), name="trajhook_ray"),
    )
    return trainer.fit()


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", nargs="?", default="runs/ray.h5")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False)
    store = os.path.abspath(args.store)  # the rank-0 worker opens it, in another working directory
    fit(train_loop_per_worker, {"store": store, "steps": args.steps})
    ray.shutdown()
    from trajhook import load

    log = load(store)
    print(f"{store}: records at steps {log.steps.tolist()}, probes {list(log)}")


if __name__ == "__main__":
    main()
