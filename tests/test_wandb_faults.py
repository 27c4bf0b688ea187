"""W&B never blocks training or silently disappears: a W&B that raises, hangs in log, hangs in
define_metric, and bad ``wandb=`` arguments. The runs are real offline W&B runs, read back from
their ``.wandb`` file; a hang is a wrapper around the real run (a real run cannot be made to hang
on demand), and the hang tests run in a real process that must exit on its own.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
from fake_maze import GridProbe, policy
from wandb_offline import read_run

from trajhook import Recorder, TrajhookError, load
from trajhook.sinks.wandb import STEP_KEY, WandbSink

TESTS = Path(__file__).parent


class DownFrom:
    """A real run whose ``log`` raises for rows at ``trajhook/step`` >= ``step`` (W&B goes down),
    or only the first ``times`` calls (a transient error)."""

    def __init__(self, run, step=None, times=None):
        self.run, self.step, self.times = run, step, times

    def __getattr__(self, name):
        return getattr(self.run, name)

    def log(self, row):
        if self.times:
            self.times -= 1
            raise ConnectionError("transient: 503 from api.wandb.ai")
        if self.step is not None and row.get(STEP_KEY, -1) >= self.step:
            raise ConnectionError("W&B is down")
        self.run.log(row)


def record_20(path, sink):
    model = policy()
    with Recorder(path, [GridProbe()], every_n_steps=1, wandb=sink) as rec:
        for step in range(20):
            rec.maybe_record(model, step, loss=float(step))
            rec.flush()  # the sink gets each step's items in step order, as from a real loop's pace


@pytest.mark.timeout(120)
def test_a_transient_wandb_error_is_retried_and_nothing_is_missed(tmp_path):
    import wandb

    run = wandb.init(dir=tmp_path, mode="offline", project="trajhook-test")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record_20(tmp_path / "run.h5", WandbSink(DownFrom(run, times=2), retry_backoff_s=0.01, image_every_s=0))
    run.finish()
    assert not [w for w in caught if "missed" in str(w.message)]
    history, _, _ = read_run(run.dir.removesuffix("/files"))
    logged = sorted({row[STEP_KEY] for row in history if "trajhook/maze/vector_field/path" in row})
    assert logged == list(range(20))  # every record's image reached W&B, after the retries


@pytest.mark.timeout(120)
def test_a_wandb_that_keeps_failing_is_given_up_with_one_warning_counting_the_missed_records(tmp_path):
    import wandb

    run = wandb.init(dir=tmp_path, mode="offline", project="trajhook-test")
    sink = WandbSink(DownFrom(run, step=5), retry_backoff_s=0.01, give_up_after=3, image_every_s=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record_20(tmp_path / "run.h5", sink)
    run.finish()
    messages = [str(w.message) for w in caught if "WandbSink" in str(w.message)]
    assert len(messages) == 1, messages
    assert re.search(r"W&B missed 15 of 20 records \(stopped sending because 3 items in a row failed", messages[0])
    assert "ConnectionError: W&B is down" in messages[0]
    log = load(tmp_path / "run.h5")  # the HDF5 log stays complete
    assert log.steps.tolist() == list(range(20)) and len(log.scalars["loss"].steps) == 20
    history, _, _ = read_run(run.dir.removesuffix("/files"))
    assert sorted({row[STEP_KEY] for row in history if "trajhook/loss" in row}) == list(range(5))


HANG = textwrap.dedent(
    """
    import json, sys, threading, time, warnings
    sys.path.insert(0, sys.argv[3])
    import wandb
    from fake_maze import GridProbe, policy
    from trajhook import Recorder, load
    from trajhook.sinks.wandb import WandbSink

    hang_in = sys.argv[1]

    class Hanging:  # the real offline run, except that one method never returns
        def __init__(self, run):
            self.run = run
        def __getattr__(self, name):
            return getattr(self.run, name)
        def define_metric(self, *args, **kwargs):
            if hang_in == "define_metric":
                threading.Event().wait()
            return self.run.define_metric(*args, **kwargs)
        def log(self, row):
            if hang_in == "log":
                threading.Event().wait()
            return self.run.log(row)

    run = wandb.init(dir=sys.argv[2], mode="offline", project="trajhook-test")
    model = policy()
    sink = WandbSink(Hanging(run), close_timeout_s=2, call_timeout_s=1, image_every_s=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.monotonic()
        rec = Recorder(sys.argv[2] + "/run.h5", [GridProbe()], every_n_steps=1, wandb=sink)
        rec.setup(model)
        setup_s = time.monotonic() - start
        for step in range(20):
            rec.maybe_record(model, step, loss=float(step))
            time.sleep(0.1)  # 2 s of training: the hung call passes call_timeout_s meanwhile
        start = time.monotonic()
        rec.close()
        close_s = time.monotonic() - start
    print(json.dumps({
        "setup_s": setup_s, "close_s": close_s, "steps": load(sys.argv[2] + "/run.h5").steps.tolist(),
        "warnings": [str(w.message) for w in caught if "WandbSink" in str(w.message)],
    }))
    """
)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("hang_in", ["define_metric", "log"])
def test_a_hung_wandb_blocks_neither_setup_nor_close_and_the_process_exits(tmp_path, hang_in):
    proc = subprocess.run(
        [sys.executable, "-c", HANG, hang_in, str(tmp_path), str(TESTS)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["setup_s"] < 5  # define_metric is not called on the training thread
    assert result["close_s"] < 2 + 1  # close_timeout_s bounds close
    assert result["steps"] == list(range(20))
    (message,) = result["warnings"]
    assert "W&B missed 20 of 20 records" in message, message
    assert "a call hung for more than 1 s" in message and "left behind" in message


@pytest.mark.parametrize("bad", [42, "yes", object(), 1.5])
def test_a_bad_wandb_argument_fails_at_construction(tmp_path, bad):
    with pytest.raises(TrajhookError, match=r"Recorder: wandb=.* is not a W&B setting\. HINT: pass wandb=\"auto\""):
        Recorder(tmp_path / "run.h5", [GridProbe()], every_n_steps=1, wandb=bad)
    assert not (tmp_path / "run.h5").exists()


def test_bad_sink_options_fail_at_construction():
    for kwargs, match in [
        ({"close_timeout_s": "5"}, r"close_timeout_s='5' is not a non-negative number"),
        ({"max_retries": -1}, r"max_retries=-1 is not a non-negative integer"),
        ({"max_queue": 0}, r"max_queue=0 must be at least 1"),
    ]:
        with pytest.raises(TrajhookError, match=match):
            WandbSink(**kwargs)


@pytest.mark.timeout(120)
def test_target_keys_are_unique_and_readable_for_any_text_with_the_text_in_the_config(tmp_path):
    import wandb
    from fake_maze import TinyLM, prompt_probe
    from wandb_offline import read_config

    run = wandb.init(dir=tmp_path, mode="offline", project="trajhook-test")
    model = TinyLM()
    with Recorder(tmp_path / "run.h5", [prompt_probe()], every_n_steps=1, wandb=WandbSink(run)) as rec:
        for step in range(3):
            rec.maybe_record(model, step)
    run.finish()
    run_dir = run.dir.removesuffix("/files")
    history, metrics, _ = read_run(run_dir)
    lp = load(tmp_path / "run.h5")["prompts"]["target_logprob"]
    keys = {  # prompt "punct" has targets "d" and ",": the index keeps "," apart, the text stays readable
        "trajhook/prompts/repeat/target0_a": lp[:, 0, 0],
        "trajhook/prompts/repeat/target1_z": lp[:, 0, 1],
        "trajhook/prompts/punct/target0_d": lp[:, 1, 0],
        "trajhook/prompts/punct/target1": lp[:, 1, 1],
    }
    for key, values in keys.items():
        logged = [row[key] for row in history if key in row]
        assert logged == pytest.approx(values.tolist(), rel=1e-6), key
        assert metrics[key] == STEP_KEY
    config = read_config(run_dir)
    assert config["trajhook/prompts/punct/target1 text"] == ","
    assert config["trajhook/prompts/repeat/target0_a text"] == "a"


def test_the_default_auto_without_an_active_run_is_silent(tmp_path):
    import wandb

    assert wandb.run is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one warning: W&B was never meant to get these records
        record_20(tmp_path / "run.h5", "auto")
    assert load(tmp_path / "run.h5").steps.tolist() == list(range(20))
