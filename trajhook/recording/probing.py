"""The guard around a probe run: eval mode and ``no_grad`` inside; every module's train flag and
the RNG states of torch (CPU and CUDA), numpy and Python restored after; the outputs' copies off
the device started without waiting. Attaching trajhook never changes training.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from trajhook.errors import TrajhookError
from trajhook.probes.base import Probe
from trajhook.recording.checks import checked_record


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def moved_to(now: torch.device, set_up_on: torch.device | None) -> torch.device | None:
    """Where to set the probes up again before a record: ``now``, the model's device, if they were set up
    on another one (``set_up_on``; None: not yet), else None.

    Probes cache their inputs on the device they were set up on, so a model moved after setup (a loop
    that calls ``rec.setup(model)`` before ``model.cuda()``, a framework placing it later) needs them
    set up again there, once. Asked only when a record is due, never on a step that is not.

    >>> cpu, gpu0, gpu1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)
    >>> moved_to(cpu, cpu) is None, moved_to(gpu0, torch.device("cuda:0")) is None
    (True, True)
    >>> moved_to(gpu0, cpu), moved_to(gpu1, gpu0)  # model.cuda() after setup; a DDP rank's own GPU
    (device(type='cuda', index=0), device(type='cuda', index=1))
    """
    return None if now == set_up_on else now


@contextlib.contextmanager
def probing(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad inside; every module's train flag and all RNG states restored after.

    >>> net = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.BatchNorm1d(2)).train()
    >>> _ = net[1].eval()  # a mixed state, which `model.train()` at the end would not restore
    >>> before = torch.random.get_rng_state()
    >>> with probing(net):
    ...     _ = torch.rand(3), net.training
    >>> net[0].training, net[1].training, torch.equal(before, torch.random.get_rng_state())
    (True, False, True)
    """
    modes = [(module, module.training) for module in model.modules()]
    cpu_rng = torch.random.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    numpy_rng = np.random.get_state()
    python_rng = random.getstate()
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        torch.random.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        np.random.set_state(numpy_rng)
        random.setstate(python_rng)


def start_copy_to_host(record: Mapping[str, Mapping[str, torch.Tensor]]) -> tuple[dict, Any]:
    """Start device-to-host copies without waiting; returns host tensors and a CUDA event or None."""
    host: dict[str, dict[str, torch.Tensor]] = {}
    on_cuda = False
    for probe, outputs in record.items():
        host[probe] = {}
        for key, tensor in outputs.items():
            tensor = tensor.detach()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            if tensor.device.type == "cuda":
                pinned = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
                host[probe][key] = pinned.copy_(tensor, non_blocking=True)
                on_cuda = True
            elif tensor.device.type == "cpu":
                host[probe][key] = tensor.clone()  # the probe may return a view of a live tensor
            else:
                host[probe][key] = tensor.to("cpu")
    event = None
    if on_cuda:
        event = torch.cuda.Event()
        event.record()
    return host, event


def attempt_at_step(probe: Probe, run: Callable[[], Any], step: int) -> Any:
    """``run()``, ``probe``'s work at ``step`` (all of it, or a part: :mod:`trajhook.distributed`); an error
    names the probe and the step."""
    try:
        return run()
    except TrajhookError as err:
        raise TrajhookError(f"{err} (at step {step})") from err
    except Exception as err:
        raise TrajhookError(
            f"{type(probe).__name__} {probe.name!r} failed at step {step}: {type(err).__name__}: {err}. "
            "HINT: the probe ran at setup; check what changed in the model since."
        ) from err


def attempt_at_setup(probe: Probe, run: Callable[[], Any]) -> Any:
    """``run()``, ``probe.setup`` or (a part of) its first run, before training; an error names the probe."""
    try:
        return run()
    except TrajhookError:
        raise
    except Exception as err:
        raise TrajhookError(
            f"{type(probe).__name__} {probe.name!r} failed on its first run at setup, before training: "
            f"{type(err).__name__}: {err}. HINT: check that the probe's inputs fit the model (shape, dtype, device)."
        ) from err


def checked_at_setup(probe: Probe, record: Any) -> dict[str, torch.Tensor]:
    """The first record, checked against the outputs ``probe`` declared (it must declare some)."""
    if not probe.outputs:
        raise TrajhookError(
            f"{type(probe).__name__} {probe.name!r} declares no outputs. HINT: call self.add_output(...) in __init__ "
            "or setup."
        )
    return checked_record(probe, record, step=None)
