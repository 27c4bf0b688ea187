"""The Recorder under real ``torchrun --nproc_per_node 2`` jobs (gloo, CPU): one store, rank zero's.

Each launch runs a worker script from ``tests/distributed/`` under its own timeout, so a hang fails
the test instead of stalling the suite. The workers save what an independent forward gives at every
recorded step; the tests compare the store against it.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from trajhook import load

WORKERS = Path(__file__).parent / "distributed"


def torchrun(script: str, out_dir: Path, timeout: float, **env_vars: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", **env_vars)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.Popen(
        [*cmd, str(WORKERS / script), str(out_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a hang is killed with all the ranks, not just torchrun
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun {script} hung for {timeout} s:\n{stdout[-2000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]


@pytest.mark.timeout(180)
def test_ddp_and_fsdp_plain_loops_write_one_store_from_rank_zero(tmp_path):
    torchrun("plain_loop.py", tmp_path, timeout=170)
    stores = ["ddp.h5", "fails_ddp.h5", "fails_fsdp.h5", "fsdp.h5", "split_ddp.h5", "split_fsdp.h5"]
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == stores
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    check_shared_probe_work(tmp_path, rank0, rank1)
    check_failures(rank0["failures"], rank1["failures"])
    for kind in ("ddp", "fsdp"):
        log = load(tmp_path / f"{kind}.h5")
        assert log.steps.tolist() == [0, 3, 6, 9]
        assert log.scalars["loss"].steps.tolist() == list(range(10))  # rank zero's scalars, once each
        assert [(e.step, e.label) for e in log.events] == [(5, "halfway")]
        expected = np.stack([rank0[kind][s].numpy() for s in (0, 3, 6, 9)])
        # DDP: the unwrapped module's forward; FSDP: the forward of the gathered full weights
        np.testing.assert_allclose(log["fixed"]["output"], expected, rtol=1e-5, atol=1e-6)
        assert not np.allclose(expected[0], expected[-1])  # the weights did change
        assert rank0[f"{kind}_fds"]["open_while_training"]
        assert not rank1[f"{kind}_fds"]["open_while_training"]  # rank one never opened the file
        assert rank0[f"{kind}_fds"]["sink_calls"] == 6 and rank1[f"{kind}_fds"]["sink_calls"] == 0  # nor a sink


def check_shared_probe_work(tmp_path, rank0, rank1):
    """Each rank ran its share of the micro-batches; the merged records equal one process's run of the same probes."""
    for kind in ("ddp", "fsdp"):
        log = load(tmp_path / f"split_{kind}.h5")
        assert log.steps.tolist() == [0, 2]
        for name, outputs in rank0["split"][kind].items():  # the last record: the final weights
            for key, want in outputs.items():
                np.testing.assert_allclose(log[name][key][-1], want.numpy(), rtol=1e-5, atol=1e-6, err_msg=key)
        parts = rank0["split"][f"{kind}_parts"]
        assert min(parts) >= 4 and all(n % 2 for n in parts)  # several micro-batches each, odd: padded
        if kind == "fsdp":
            assert rank0["split"]["fsdp_resharded"] == rank1["split"]["fsdp_resharded"] == [True, True]
        if kind == "fsdp":  # every rank joins every forward: ceil(parts / 2) rounds per probe, padded
            each = 2 * sum((n + 1) // 2 for n in parts)
            assert rank0["split"]["fsdp_forwards"] == rank1["split"]["fsdp_forwards"] == each
        else:  # a whole model per rank: the parts of both probes dealt round-robin
            assert rank0["split"]["ddp_forwards"] == 2 * ((sum(parts) + 1) // 2)
            assert rank1["split"]["ddp_forwards"] == 2 * (sum(parts) // 2)


def check_failures(rank0, rank1):
    """A probe failing on rank one raises the same TrajhookError on both ranks at once; TP is refused at setup."""
    for kind in ("ddp", "fsdp"):
        (message0, seconds0), (message1, seconds1) = rank0[kind], rank1[kind]
        assert message0 == message1, kind
        assert "bad input on rank one" in message0 and "on rank 1 of 2" in message0
        assert seconds0 < 20 and seconds1 < 20, (kind, seconds0, seconds1)  # not the 60 s agreement timeout
    for failures in (rank0, rank1):
        assert "DTensor" in failures["tp"] and "'weight'" in failures["tp"] and "HINT" in failures["tp"]


@pytest.mark.timeout(240)
def test_hf_trainer_and_lightning_ddp_and_fully_shard_write_one_store_from_rank_zero(tmp_path):
    pytest.importorskip("transformers")
    torchrun("frameworks.py", tmp_path, timeout=230)
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["hf.h5", "lit_ddp.h5", "lit_fsdp2.h5"]
    expected = torch.load(tmp_path / "frameworks_rank0.pt")
    assert expected["hf_ddp"] == "DistributedDataParallel"  # the HF Trainer really ran DDP
    for name in ("hf", "lit_ddp", "lit_fsdp2"):
        log = load(tmp_path / f"{name}.h5")
        assert log.steps.tolist() == [0, 2, 4], name  # one writer: two would have doubled or broken the rows
        want = np.stack([expected[name][s].numpy() for s in (0, 2, 4)])
        np.testing.assert_allclose(log["fixed"]["output"], want, rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.allclose(want[0], want[-1])
    for rank in (0, 1):  # tensor parallel: the same clear error on both ranks, before any forward
        refused = torch.load(tmp_path / f"frameworks_rank{rank}.pt")["lit_tp"]
        assert "tensor_parallel_size=2" in refused and "HINT" in refused, refused
    hf_loss = expected["hf_loss"]  # rank zero's loss as HF logged it, at the step whose weights computed it
    np.testing.assert_allclose(load(tmp_path / "hf.h5").scalars["loss"].values, [hf_loss[s] for s in range(1, 6)])


@pytest.mark.timeout(300)
def test_zero3_fsdp2_fsdp1_under_hf_and_lightning_join_every_forward_and_keep_training_bit_identical(tmp_path):
    """HF + DeepSpeed ZeRO-3, HF + Accelerate FSDP2, Lightning FSDPStrategy and DeepSpeedStrategy stage 3.

    Accelerate's FSDP and Lightning's two strategies run on CPU only with test-only patches (said in
    tests/distributed/engines.py); DeepSpeed itself runs unpatched on its CPU accelerator.
    """
    pytest.importorskip("deepspeed")
    torchrun("engines.py", tmp_path, timeout=290, DS_ACCELERATOR="cpu")
    engines = ["hf_fsdp2", "hf_zero3", "lit_deepspeed", "lit_fsdp1"]
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == [f"{e}.h5" for e in engines]  # one store each
    results = torch.load(tmp_path / "engines_rank0.pt")
    assert sorted(results) == engines
    for name in engines:
        log = load(tmp_path / f"{name}.h5")
        assert log.steps.tolist() == [0, 2, 4], name
        for key, want in results[name]["reference"].items():  # the last record: a forward of the gathered model
            np.testing.assert_allclose(log["prompts"][key][-1], want.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        assert not np.allclose(log["prompts"]["token_loss"][0], log["prompts"]["token_loss"][-1], equal_nan=True)
        with_trajhook, plain = results[name]["trajhook"], results[name]["plain"]
        assert sorted(with_trajhook) == sorted(plain) and len(plain) > 10
        for key, value in plain.items():  # training is bit-identical with and without the one line
            assert torch.equal(with_trajhook[key], value), (name, key)


def wait_all(procs: list[subprocess.Popen], timeout: float, what: str) -> list[str]:
    """Wait for every process (each in its own session); kill them all when one outlives ``timeout``."""
    deadline, outputs = time.monotonic() + timeout, []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=max(1, deadline - time.monotonic()))[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{what} hung for {timeout} s: " + " | ".join(p.communicate()[0][-2000:] for p in procs))
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-5000:]
    return outputs


@pytest.mark.timeout(150)
def test_two_nodes_on_localhost_write_one_store_on_global_rank_zeros_node(tmp_path):
    """Two ``torchrun --nnodes 2`` agents (c10d rendezvous on 127.0.0.1), each in its own node-local directory."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = []
    for node in ("node_a", "node_b"):
        (tmp_path / node).mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "trajhook-two-nodes"]
        cmd += [str(WORKERS / "two_nodes.py")]
        procs.append(
            subprocess.Popen(
                cmd,
                cwd=tmp_path / node,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
            )
        )
    wait_all(procs, 140, "two torchrun agents")
    stores = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.h5"))
    (rank0_node,) = [p.parent.name for p in tmp_path.glob("*/global_rank0")]  # the first agent may get rank 1
    assert stores == [f"{rank0_node}/runs/two_nodes.h5"]  # exactly one store, on global rank zero's node
    log = load(tmp_path / stores[0])
    assert log.steps.tolist() == [0, 2, 4]
    expected = torch.load(tmp_path / rank0_node / "expected.pt")
    for name in ("grid", "ones"):  # one probe ran on each rank (whole probes dealt across ranks), merged on rank 0
        want = np.stack([expected[s][name].numpy() for s in (0, 2, 4)])
        np.testing.assert_allclose(log[name]["output"], want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.timeout(200)
def test_ray_train_torchtrainer_two_workers_one_store_bit_identical(tmp_path):
    """examples/ray_train.py's loop under ``TorchTrainer`` (2 CPU workers, gloo), with and without trajhook."""
    pytest.importorskip("ray.train")
    proc = subprocess.Popen(
        [sys.executable, str(WORKERS / "ray_run.py"), str(tmp_path)],
        env=dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    wait_all([proc], 190, "Ray Train")
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["ray.h5"]
    log = load(tmp_path / "ray.h5")
    assert log.steps.tolist() == [0, 4, 8]  # the record at 8 holds the final weights (9 updates)
    with_trajhook, plain = torch.load(tmp_path / "with.pt"), torch.load(tmp_path / "without.pt")
    assert sorted(with_trajhook) == sorted(plain)
    for key, value in plain.items():
        assert torch.equal(with_trajhook[key], value), key  # training is bit-identical with and without
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import ray_train

    model = ray_train.build_model()
    model.load_state_dict(with_trajhook)
    with torch.no_grad():
        for name, inputs in (("grid", ray_train.PROBE_GRID), ("corners", ray_train.PROBE_CORNERS)):
            np.testing.assert_allclose(log[name]["output"][-1], model(inputs).numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(log["grid"]["output"][0], log["grid"]["output"][-1])


@pytest.mark.timeout(120)
def test_a_failure_inside_a_sharded_forward_ends_the_job_after_the_short_agreement_timeout(tmp_path):
    """Rank one fails inside the forward while rank zero waits in FSDP's all-gather: no 30-minute hang."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.Popen(
        [*cmd, str(WORKERS / "fails_inside_forward.py")],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1", TRAJHOOK_AGREE_TIMEOUT_S="5"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        output = proc.communicate(timeout=100)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the job hung after a failure inside a probe forward: " + proc.communicate()[0][-3000:])
    assert proc.returncode != 0
    assert "trajhook.errors.TrajhookError" in output and "out of memory inside the forward, on rank one" in output
    assert "did not reach trajhook's agreement within 5 s" in output, output[-3000:]
    assert time.monotonic() - started < 90
