"""``trajhook.replay``: a checkpoint series replays to the store a live run recorded, bit for bit on the CPU.

Each equality test trains once with the live recorder AND the framework's own checkpointing at the same
steps, replays the checkpoints into a second store, and compares every recorded array exactly. The
Stable-Baselines3 case is in ``test_replay_sb3.py`` (the maze side).
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trajhook
from trajhook import Recorder, TensorProbe, TrajhookError, load
from trajhook.probes.base import Probe

PROBE_X = torch.linspace(-1, 1, 12).reshape(3, 4)
STEPS, EVERY = 20, 5


class Net(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, hidden), nn.Dropout(0.1), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.body(x)


def make_net():
    """The zero-argument factory replay builds the model with (module level: spawned workers import it)."""
    return Net()


def make_probes():
    return [TensorProbe("fixed", PROBE_X)]


def train_and_save(folder: Path, store: Path, steps=STEPS, every=EVERY) -> None:
    """A plain loop recorded live every ``every`` steps, saving train-procgen-pytorch's checkpoints then too."""
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    folder.mkdir(parents=True, exist_ok=True)
    with Recorder(store, make_probes(), every_n_steps=every, wandb=False) as rec:
        for t in range(steps + 1):
            if rec.maybe_record(net, t):
                state = {"model_state_dict": net.state_dict(), "optimizer_state_dict": opt.state_dict()}
                torch.save(state, folder / f"model_{t}.pth")  # agents/ppo.py's format and name
            x = torch.randn(16, 4)
            loss = (net(x) - x[:, :2]).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()


def assert_same_records(live: Path, replayed: Path) -> None:
    a, b = load(live), load(replayed)
    assert b.steps.tolist() == a.steps.tolist() and len(a.steps) >= 3
    assert sorted(a) == sorted(b)
    for probe in a:
        assert sorted(a[probe]) == sorted(b[probe])
        for key in a[probe]:
            assert np.array_equal(a[probe][key], b[probe][key]), (probe, key)
    first, last = a[next(iter(a))], None
    last = next(iter(first.values()))
    assert not np.array_equal(last[0], last[-1])  # the weights did change: equality is not trivial


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    root = tmp_path_factory.mktemp("series")
    train_and_save(root / "ckpts", root / "live.h5")
    return root


# -- equal to live recording ------------------------------------------------------------------------------------


def test_plain_loop_in_train_procgen_pytorch_format_replays_bit_identical(series, tmp_path):
    out = tmp_path / "replay.h5"
    result = trajhook.replay(str(series / "ckpts" / "model_*.pth"), make_probes(), out, model=make_net, wandb=False)
    assert result.recorded == [0, 5, 10, 15, 20] and not result.skipped and not result.already
    assert_same_records(series / "live.h5", out)
    log = load(out, verify=True)  # the same checksums a live store carries
    assert log.metadata["source"] == "replay"
    # the folder itself, a list of paths, a module instance and a "pkg.module:name" factory give the same store
    for i, (given, model) in enumerate(
        [
            (series / "ckpts", Net()),
            (sorted((series / "ckpts").iterdir()), "test_replay:make_net"),
        ]
    ):
        other = tmp_path / f"other{i}.h5"
        trajhook.replay(given, "test_replay:make_probes", other, model=model, wandb=False)
        assert_same_records(series / "live.h5", other)


def test_bare_prefixed_and_safetensors_files_step_function_and_every(series, tmp_path):
    from safetensors.torch import save_file

    live = load(series / "live.h5")
    saved = {int(p.stem.split("_")[1]): torch.load(p)["model_state_dict"] for p in (series / "ckpts").glob("*.pth")}
    (tmp_path / "bare").mkdir()
    (tmp_path / "named").mkdir()
    for step, state in saved.items():
        torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "bare" / f"ddp_{step}.pt")  # DDP's keys
        save_file(dict(state), tmp_path / "bare" / f"st_{step + 1000}.safetensors")
        torch.save(state, tmp_path / "named" / f"policy-{chr(97 + step // 5)}.pt")  # no number in the name
    out = tmp_path / "bare.h5"
    trajhook.replay(str(tmp_path / "bare" / "ddp_*.pt"), make_probes(), out, model=make_net, wandb=False)
    assert_same_records(series / "live.h5", out)
    out = tmp_path / "st.h5"
    trajhook.replay(str(tmp_path / "bare" / "*.safetensors"), make_probes(), out, model=make_net, wandb=False)
    assert load(out).steps.tolist() == [1000, 1005, 1010, 1015, 1020]
    assert np.array_equal(load(out)["fixed"]["output"], live["fixed"]["output"])
    out = tmp_path / "named.h5"

    def letter_step(path):
        return 5 * (ord(path.stem[-1]) - 97)

    trajhook.replay(tmp_path / "named", make_probes(), out, model=make_net, step=letter_step, wandb=False)
    assert_same_records(series / "live.h5", out)
    out = tmp_path / "every.h5"
    result = trajhook.replay(series / "ckpts", make_probes(), out, model=make_net, every_n_steps=10, wandb=False)
    assert result.recorded == [0, 10, 20]
    assert np.array_equal(load(out)["fixed"]["output"], live["fixed"]["output"][[0, 2, 4]])


def test_import_layout_the_package_is_callable_as_the_function(series, tmp_path):
    import trajhook.replay.sources  # the subpackage imported first must not hide the function
    from trajhook.replay import ReplayResult, replay

    assert callable(trajhook.replay) and replay.__name__ == "replay"
    result = trajhook.replay(series / "ckpts", make_probes(), tmp_path / "a.h5", model=make_net, wandb=False)
    assert isinstance(result, ReplayResult) and trajhook.replay.sources.SOURCES
    assert "replay" in trajhook.__all__


def test_workers_two_equal_one(series, tmp_path):
    out = tmp_path / "two.h5"
    result = trajhook.replay(series / "ckpts", make_probes(), out, model=make_net, workers=2, wandb=False)
    assert result.recorded == [0, 5, 10, 15, 20]
    assert_same_records(series / "live.h5", out)


def test_resume_continues_after_the_last_committed_step(series, tmp_path):
    out = tmp_path / "resumed.h5"
    ckpts = sorted((series / "ckpts").glob("*.pth"), key=lambda p: int(p.stem.split("_")[1]))
    first = trajhook.replay(ckpts[:3], make_probes(), out, model=make_net, wandb=False)
    assert first.recorded == [0, 5, 10]
    stored = np.asarray(load(out)["fixed"]["output"])
    again = trajhook.replay(ckpts, make_probes(), out, model=make_net, wandb=False)
    assert again.already == [0, 5, 10] and again.recorded == [15, 20]
    assert_same_records(series / "live.h5", out)
    assert np.array_equal(load(out)["fixed"]["output"][:3], stored)  # committed rows untouched
    assert trajhook.replay(ckpts, make_probes(), out, model=make_net, wandb=False).recorded == []
    over = trajhook.replay(ckpts[:2], make_probes(), out, model=make_net, overwrite=True, wandb=False)
    assert over.recorded == [0, 5] and load(out).steps.tolist() == [0, 5]


class Saboteur(Probe):
    """At its first run, truncates one later checkpoint and deletes another (as a disk or a cleanup job might)."""

    def __init__(self, victims):
        super().__init__("saboteur")
        self.victims = victims
        self.add_output("ran", (), "int64")

    def run(self, model):
        truncate, delete = self.victims
        if truncate.exists() and truncate.stat().st_size > 100:
            with open(truncate, "r+b") as f:
                f.truncate(100)
        delete.unlink(missing_ok=True)
        return {"ran": torch.tensor(1)}


def test_a_checkpoint_unreadable_midway_is_skipped_with_one_warning_and_listed(series, tmp_path):
    ckpts = tmp_path / "ckpts"
    shutil.copytree(series / "ckpts", ckpts)
    out = tmp_path / "replay.h5"
    probes = [*make_probes(), Saboteur((ckpts / "model_15.pth", ckpts / "model_20.pth"))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = trajhook.replay(ckpts, probes, out, model=make_net, wandb=False)
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(skipped) == 2 and "model_15.pth" in skipped[0] and "model_20.pth" in skipped[1]
    assert result.recorded == [0, 5, 10]
    assert [Path(p).name for p, _ in result.skipped] == ["model_15.pth", "model_20.pth"]
    assert "skipped 2 unreadable" in result.summary()
    log = load(out, verify=True)
    live = load(series / "live.h5")
    assert log.steps.tolist() == [0, 5, 10]
    assert np.array_equal(log["fixed"]["output"], live["fixed"]["output"][:3])


class Slow(TensorProbe):
    """A TensorProbe that takes its time, so that a reader can look at the store mid-replay."""

    def run(self, model):
        time.sleep(0.3)
        return super().run(model)


def test_a_replay_in_progress_can_be_followed(series, tmp_path):
    """Readers (load, serve's follower) see committed records while the replay still runs: the same SWMR store."""
    out = tmp_path / "following.h5"
    done = threading.Event()

    def run():
        try:
            trajhook.replay(series / "ckpts", [Slow("fixed", PROBE_X)], out, model=make_net, flush_every_s=0.05)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    seen = []
    while not done.is_set():
        if out.exists():
            with contextlib.suppress(TrajhookError):  # the file may still be being created
                seen.append(load(out).steps.tolist())
        time.sleep(0.05)
    thread.join()
    final = load(out).steps.tolist()
    assert final == [0, 5, 10, 15, 20]
    partial = [s for s in seen if 0 < len(s) < len(final)]
    assert partial and all(s == final[: len(s)] for s in partial)  # whole records, in step order, while it ran
    assert_same_records(series / "live.h5", out)


# -- bad input, before any record ---------------------------------------------------------------------------------


def test_bad_input_names_the_file_and_writes_nothing(series, tmp_path):
    out = tmp_path / "never.h5"
    ckpts = tmp_path / "ckpts"
    shutil.copytree(series / "ckpts", ckpts)

    def refused(match, given, **kwargs):
        kwargs = {"model": make_net, "wandb": False, **kwargs}
        with pytest.raises(TrajhookError, match=match):
            trajhook.replay(given, make_probes(), out, **kwargs)
        assert not out.exists()  # nothing recorded, not even an empty store

    notes = ckpts / "notes.txt"
    notes.write_text("not a checkpoint")
    refused(r"notes.txt is not a checkpoint format trajhook knows", [*ckpts.glob("*.pth"), notes])
    nameless = tmp_path / "final.pth"
    torch.save(make_net().state_dict(), nameless)
    refused(r"final.pth \(torch state-dict file\) records no step", [nameless])
    wider = tmp_path / "wider" / "model_12.pth"  # one checkpoint of another model among the series
    wider.parent.mkdir()
    torch.save({"model_state_dict": Net(hidden=16).state_dict()}, wider)
    refused(
        r"model_12.pth do not fit the model: other shapes \['body.0.bias \(16,\) \(model: \(8,\)\)'", [ckpts, wider]
    )
    renamed = tmp_path / "renamed" / "model_13.pth"
    renamed.parent.mkdir()
    torch.save({k.replace("body", "trunk"): v for k, v in make_net().state_dict().items()}, renamed)
    refused(r"model_13.pth do not fit the model: missing \['body.0.bias', .*unexpected \['trunk.0.bias'", [renamed])
    other = tmp_path / "run_b"
    other.mkdir()
    shutil.copy(ckpts / "model_5.pth", other / "policy_5.pth")
    refused(r"model_5.pth and .*policy_5.pth both hold step 5", [*ckpts.glob("*.pth"), other / "policy_5.pth"])
    refused(r"the glob '.*nothing_\*.pth' matches nothing", str(tmp_path / "nothing_*.pth"))
    refused(r"does not exist", [tmp_path / "model_99.pth"])
    (tmp_path / "empty").mkdir()
    refused(r"holds no checkpoints", tmp_path / "empty")
    pickled = tmp_path / "pickled_1.pth"
    torch.save({"model": make_net()}, pickled)  # the module object, not its state dict
    refused(r"pickled_1.pth holds Python objects that torch.load\(weights_only=True\) refuses", [pickled])
    truncated = tmp_path / "trunc" / "model_7.pth"
    truncated.parent.mkdir()
    truncated.write_bytes((ckpts / "model_5.pth").read_bytes()[:200])
    refused(r"model_7.pth cannot be read", [*ckpts.glob("*.pth"), truncated])
    refused(r"workers=0 is not an int >= 1", ckpts, workers=0)
    refused(r"model=.*cannot be sent to worker processes", ckpts, workers=2, model=lambda: Net())
    refused(r"a torch state-dict file, which does not say what model it holds.*HINT: pass model=", ckpts, model=None)


def test_sharded_checkpoints_are_refused_with_the_reason(tmp_path):
    import torch.distributed.checkpoint as dcp

    dcp_dir = tmp_path / "step_10"
    dcp.save({"model": make_net().state_dict()}, checkpoint_id=dcp_dir)  # one process: a one-shard DCP folder
    with pytest.raises(TrajhookError, match=r"step_10 is a torch.distributed.checkpoint .*not supported this round"):
        trajhook.replay([dcp_dir], make_probes(), tmp_path / "x.h5", model=make_net, wandb=False)
    zero = tmp_path / "checkpoint-4"
    (zero / "global_step4").mkdir(parents=True)
    (zero / "global_step4" / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"x")
    (zero / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    with pytest.raises(TrajhookError, match=r"DeepSpeed checkpoint .*not supported this round"):
        trajhook.replay([zero], make_probes(), tmp_path / "x.h5", model=make_net, wandb=False)
    assert not (tmp_path / "x.h5").exists()


# -- the CLI ------------------------------------------------------------------------------------------------------


def test_cli_replays_with_a_progress_bar_and_resumes(series, tmp_path):
    out = tmp_path / "cli.h5"
    env = dict(os.environ, PYTHONPATH=f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "trajhook.cli", "replay", *map(str, sorted((series / "ckpts").glob("*.pth")))]
    cmd += ["-o", str(out), "--model", "test_replay:make_net", "--probes", "test_replay:make_probes"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ckpt/s" in proc.stderr and "replayed 5 checkpoint(s)" in proc.stdout
    assert_same_records(series / "live.h5", out)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "5 already in the store" in again.stdout
    bad = subprocess.run([*cmd[:-4], "--probes", "test_replay:nothing"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "cannot be imported" in bad.stderr


# -- torchrun: the ranks share the series, rank zero writes -------------------------------------------------------


@pytest.mark.timeout(200)
def test_torchrun_two_ranks_give_the_same_store(series, tmp_path):
    script = Path(__file__).parent / "distributed" / "replay_ranks.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline")
    env["PYTHONPATH"] = f"{Path(__file__).parent}{os.pathsep}{env.get('PYTHONPATH', '')}"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.Popen(
        [*cmd, str(series / "ckpts"), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun hung:\n{stdout[-2000:]}{stderr[-3000:]}")
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert_same_records(series / "live.h5", tmp_path / "ranks.h5")
    done = {json.loads((tmp_path / f"rank{r}.json").read_text())["rank"]: r for r in (0, 1)}
    assert done == {0: 0, 1: 1}
    shares = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert shares[0]["recorded"] == [0, 5, 10, 15, 20] and shares[1]["recorded"] == []  # rank zero wrote them


@pytest.mark.timeout(240)
def test_ray_train_two_workers_give_the_same_store(series, tmp_path):
    pytest.importorskip("ray.train")
    script = Path(__file__).parent / "distributed" / "replay_ray.py"
    env = dict(os.environ, OMP_NUM_THREADS="1", RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="disabled")
    proc = subprocess.Popen(
        [sys.executable, str(script), str(series / "ckpts"), str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=220)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        pytest.fail(f"Ray Train hung:\n{output[-4000:]}")
    assert proc.returncode == 0, output[-5000:]
    assert_same_records(series / "live.h5", tmp_path / "ray.h5")
    shares = [json.loads((tmp_path / f"ray_rank{r}.json").read_text())["recorded"] for r in (0, 1)]
    assert shares == [[0, 5, 10, 15, 20], []]
