"""Bad input gets a TrajhookError where it is passed, naming the probe, the value and the fix.

``test_bad_input`` runs one table of cases. Each case does one wrong thing and must raise a
``TrajhookError`` whose message matches its pattern and carries a ``HINT:``. Afterwards every
Recorder the case opened must still close cleanly: a rejected value never reaches the writer
thread, and whatever was recorded before it stays loadable.
"""

import ast
import traceback
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from trajhook import MazeProbe, Probe, Recorder, TensorProbe, TrajhookError, load
from trajhook.recording import checks

pytestmark = pytest.mark.timeout(60)

LINEAR = nn.Linear(4, 2)


def probe(name="p", shape=(1, 4), **kwargs):
    return TensorProbe(name, torch.ones(shape), **kwargs)


class Later(TensorProbe):
    """Runs normally at setup; once ``armed``, returns ``later(output)`` instead."""

    def __init__(self, later):
        super().__init__("later", torch.ones(1, 4))
        self.later = later
        self.armed = False

    def run(self, model):
        out = super().run(model)
        return {"output": self.later(out["output"])} if self.armed else out


class Whole(Later):
    """Like Later, but ``later`` maps the whole record."""

    def run(self, model):
        out = TensorProbe.run(self, model)
        return self.later(out) if self.armed else out


def armed_whole(later):
    def action(c):
        whole = Whole(later)
        rec = c.recorded(0, probes=[whole])
        whole.armed = True
        rec.record(LINEAR, 1)

    return action


class Declared(Probe):
    """A probe that declares ``declare`` and returns ``value``."""

    def __init__(self, declare=(("out", (2,), "float32"),), value=None):
        super().__init__("declared")
        self.declare, self.value = declare, value

    def setup(self, model, device):
        for name, shape, dtype in self.declare:
            self.add_output(name, shape, dtype)

    def run(self, model):
        return {"out": self.value if self.value is not None else torch.zeros(2)}


class Case:
    """The context a case runs in: a store path and the Recorders it opened."""

    def __init__(self, path):
        self.path = path
        self.opened = []

    def recorder(self, probes=None, every_n_steps=1, **kwargs):
        rec = Recorder(self.path, probes or [probe()], every_n_steps, wandb=kwargs.pop("wandb", False), **kwargs)
        self.opened.append(rec)
        return rec

    def recorded(self, *steps, probes=None):
        """A Recorder that has recorded ``steps`` of LINEAR."""
        rec = self.recorder(probes)
        for step in steps:
            rec.record(LINEAR, step)
        return rec

    def maybe_record_steps(self, *steps):
        rec = self.recorder()
        for step in steps:
            rec.maybe_record(LINEAR, step)

    def armed_model(self):
        """Record step 0, then record step 1 of a model that now returns None."""
        model = nn.Linear(4, 2)
        rec = self.recorder()
        rec.record(model, 0)
        model.forward = lambda x: None
        rec.record(model, 1)

    def armed(self, later):
        """Record step 0, then arm a Later probe and record step 1."""
        later_probe = Later(later)
        rec = self.recorded(0, probes=[later_probe])
        later_probe.armed = True
        rec.record(LINEAR, 1)


def not_a_store(c):
    c.path.write_text("my notes")
    Recorder(c.path, [probe()], 1)


def another_hdf5_file(c):
    with h5py.File(c.path, "w") as f:
        f["x"] = np.zeros(2)
    Recorder(c.path, [probe()], 1)


def below_a_file(c):
    c.path.write_text("x")
    Recorder(c.path / "run.h5", [probe()], 1)


def log_scalars(**scalars):
    return lambda c: c.recorder().log_scalars(0, **scalars)


def mark(label):
    return lambda c: c.recorder().mark(0, label)


CASES = [
    # -- the Recorder's arguments, checked at construction ------------------------------------------------------
    (lambda c: Recorder(None, [probe()], 1), r"Recorder: path=None is not a file path\. HINT: pass a str"),
    (lambda c: Recorder(42, [probe()], 1), r"Recorder: path=42 is not a file path\. HINT"),
    (lambda c: Recorder("run\0.h5", [probe()], 1), r"Recorder: path='run\\x00\.h5' is not a file path"),
    (lambda c: Recorder(c.path.parent, [probe()], 1), r"is a directory\. HINT: pass a file path"),
    (below_a_file, r"cannot create the folder .*HINT: choose a path in a writable folder"),
    (not_a_store, r"is not an HDF5 file, or it is corrupt .*HINT: pass the \.h5 file written by"),
    (another_hdf5_file, r"is an HDF5 file but not a trajhook store .*HINT: pass a trajhook store"),
    (
        lambda c: Recorder("/proc/sys/trajhook.h5", [probe()], 1),
        r"path '/proc/sys/trajhook\.h5' is not writable\. HINT",
    ),
    (
        lambda c: c.recorder(on_error="ignore"),
        r"Recorder: on_error='ignore' is not 'raise' or 'warn'\. HINT: 'raise' stops",
    ),
    (lambda c: Recorder(c.path, [], 1), r"Recorder: probes=\[\] is not a non-empty list of probes\. HINT"),
    (lambda c: Recorder(c.path, probe(), 1), r"is not a non-empty list of probes\. HINT: pass e\.g\. \[TensorProbe"),
    (lambda c: Recorder(c.path, [nn.Linear(2, 2)], 1), r"Linear\(.*\) is not a trajhook Probe\. HINT: subclass"),
    (
        lambda c: Recorder(c.path, [probe("a"), probe("b"), probe("a")], 1),
        r"probe names \['a'\] are used more than once\. HINT: give each probe its own name=",
    ),
    (lambda c: c.recorder(metadata=[("lr", 0.1)]), r"Recorder: metadata=\[\('lr', 0\.1\)\] is not a dict with str"),
    (lambda c: c.recorder(metadata={1: "a"}), r"Recorder: metadata=\{1: 'a'\} is not a dict with str keys\. HINT"),
    (lambda c: c.recorder(metadata={"f": object()}), r"Recorder metadata cannot be stored: object is not JSON.*HINT"),
    (lambda c: c.recorder(flush_every_s="5"), r"Recorder: flush_every_s='5' is not a positive number of seconds"),
    (lambda c: c.recorder(flush_every_s=0), r"Recorder: flush_every_s=0 is not a positive number.*HINT: pass e\.g\."),
    (lambda c: c.recorder(flush_every_s=float("nan")), r"Recorder: flush_every_s=nan is not a positive number"),
    (lambda c: c.recorder(max_queue=0), r"Recorder: max_queue=0 is not a positive integer\. HINT: e\.g\. max_queue"),
    (lambda c: c.recorder(max_queue=True), r"Recorder: max_queue=True is not a positive integer"),
    (lambda c: c.recorder(overwrite="no"), r"Recorder: overwrite='no' is not a bool\. HINT: pass overwrite=True"),
    (lambda c: c.recorder(forward_context=42), r"Recorder: forward_context=42 is not callable\. HINT: pass a function"),
    (
        lambda c: c.recorder(forward_context=lambda: 42).setup(LINEAR),
        r"Recorder: forward_context\(\) returned int, not a context manager\. HINT",
    ),
    # -- probes: names, inputs, declarations --------------------------------------------------------------------
    (lambda c: probe("a/b"), r"probe name 'a/b' is not valid\. HINT: start with a letter"),
    (lambda c: probe("."), r"probe name '\.' is not valid\. HINT"),
    (lambda c: probe(".."), r"probe name '\.\.' is not valid\. HINT"),
    (lambda c: probe(""), r"probe name '' is not valid\. HINT"),
    (lambda c: probe(None), r"probe name None is not valid\. HINT"),
    (lambda c: probe("x" * 101), r"probe name 'x{101}' is not valid\. HINT.*at most 100 characters"),
    (lambda c: TensorProbe("t", "some text"), r"TensorProbe 't': inputs of type str are not supported\. HINT"),
    (lambda c: TensorProbe("t", ()), r"TensorProbe 't': an empty tuple of inputs is not supported\. HINT"),
    (
        lambda c: TensorProbe("t", [torch.ones(2), [1.0]]),
        r"TensorProbe 't': a list of inputs holding list is not supported\. HINT: pass a tensor",
    ),
    (lambda c: TensorProbe("t", torch.ones(2), fn=3), r"TensorProbe 't': fn=3 is not callable\. HINT"),
    (
        lambda c: c.recorder([probe("fine"), probe("wrong", shape=(1, 7))]).setup(LINEAR),
        r"TensorProbe 'wrong' failed on its first run at setup, before training: RuntimeError.*HINT: check",
    ),
    (
        lambda c: c.recorder([TensorProbe("t", torch.ones(1, 4), fn=lambda m, x: None)]).setup(LINEAR),
        r"TensorProbe 't': the model returned NoneType, not a tensor.*HINT: pass fn=",
    ),
    (
        lambda c: c.recorder([TensorProbe("t", torch.ones(1, 4), fn=lambda m, x: {"a": m(x), "b": None})]).setup(
            LINEAR
        ),
        r"TensorProbe 't': output 'b' is NoneType, not a tensor\. HINT",
    ),
    (
        lambda c: c.recorder([TensorProbe("t", torch.ones(1, 4), fn=lambda m, x: m(x).to_sparse())]).setup(LINEAR),
        r"TensorProbe 't' output 'output' is a torch\.sparse_coo tensor at setup.*HINT: return value\.to_dense\(\)",
    ),
    (
        lambda c: c.recorder([TensorProbe("t", torch.ones(1, 4), fn=lambda m, x: m(x) * 1j)]).setup(LINEAR),
        r"TensorProbe 't': output 'output' has dtype complex64, which the store cannot hold\. HINT",
    ),
    (
        lambda c: c.recorder([Declared(declare=())]).setup(LINEAR),
        r"Declared 'declared' declares no outputs\. HINT: call self\.add_output",
    ),
    (
        lambda c: c.recorder([Declared(declare=(("a/b", (2,), "float32"),))]).setup(LINEAR),
        r"Declared 'declared': output name 'a/b' is not valid\. HINT",
    ),
    (
        lambda c: Declared(declare=(("out", ("a",), "float32"),)).setup(LINEAR, torch.device("cpu")),
        r"Declared 'declared': output 'out' has shape \('a',\), not a tuple of ints\. HINT",
    ),
    (
        lambda c: Declared(declare=(("out", (-1,), "float32"),)).setup(LINEAR, torch.device("cpu")),
        r"Declared 'declared': output 'out' has negative shape \(-1,\)\. HINT",
    ),
    (
        lambda c: Declared(declare=(("out", (2,), "U8"),)).setup(LINEAR, torch.device("cpu")),
        r"Declared 'declared': output 'out' has dtype <U8, which the store cannot hold\. HINT",
    ),
    (
        lambda c: c.recorder([Declared(declare=(("out", (2,), "int64"),))]).setup(LINEAR),
        r"Declared 'declared' output 'out' is torch\.float32 at setup, declared out\(2,\) int64: storing it would",
    ),
    (lambda c: MazeProbe(seed=2**31), r"MazeProbe 'maze': seed 2147483648 is not a procgen level seed.*31-bit.*HINT"),
    (lambda c: MazeProbe(seed=-1), r"MazeProbe 'maze': seed -1 is not a procgen level seed, an int in 0\.\.2\*\*31-1"),
    (
        lambda c: MazeProbe(seed="0"),
        r"MazeProbe 'maze': seed '0' is not a procgen level seed.*HINT: pass e\.g\. seed=0",
    ),
    (
        lambda c: MazeProbe(seed=0, render_options={"monochrome": True}),
        r"MazeProbe 'maze': render_options key 'monochrome' is not one of procgen's drawing switches.*HINT",
    ),
    (
        lambda c: MazeProbe(seed=0, render_options={"use_monochrome_assets": 1}),
        r"MazeProbe 'maze': render_options\['use_monochrome_assets'\] = 1 is not a bool\. HINT: pass True",
    ),
    (
        lambda c: MazeProbe(seed=0, render_options=["use_monochrome_assets"]),
        r"MazeProbe 'maze': render_options \['use_monochrome_assets'\] is not a dict\. HINT",
    ),
    # -- a probe that changes after setup, mid-run ----------------------------------------------------------------
    (lambda c: c.armed(lambda out: None), r"Later 'later' output 'output' is NoneType at step 1, declared output"),
    (
        lambda c: c.armed(lambda out: out.to_sparse()),
        r"'later' output 'output' is a torch\.sparse_coo tensor at step 1",
    ),
    (
        lambda c: c.armed(lambda out: out.double()),
        r"Later 'later' output 'output' is torch\.float64 at step 1, but was torch\.float32 at setup\. HINT",
    ),
    (
        lambda c: c.armed(lambda out: out[:, :1]),
        r"Later 'later' output 'output' is \(1, 1\) at step 1, declared output\(1, 2\) float32\. HINT",
    ),
    (
        lambda c: c.armed(lambda out: out.numpy().tolist().pop(7)),
        r"Later 'later' failed at step 1: IndexError: pop index out of range\. HINT",
    ),
    (
        lambda c: c.armed_model(),
        r"TensorProbe 'p': the model returned NoneType, not a tensor.*\(at step 1\)",
    ),
    (lambda c: c.armed(lambda out: {"x": out}), r"Later 'later' output 'output' is dict at step 1, declared output"),
    # -- steps --------------------------------------------------------------------------------------------------------
    (lambda c: c.recorded(100, 50), r"Recorder\.record: step 50 is below step 100, which this session already wrote"),
    (
        lambda c: c.maybe_record_steps(0, 1, 0),
        r"Recorder\.maybe_record: step 0 is below step 1, which this session already wrote to its records\. HINT",
    ),
    (lambda c: c.recorded(3, 3), r"Recorder\.record: step 3 was already recorded in this session\. HINT"),
    (lambda c: c.recorded(2**70), r"Recorder\.record: step=1180591620717411303424 is outside 0\.\.2\*\*63-1.*HINT"),
    (lambda c: c.recorded(-1), r"Recorder\.record: step=-1 is outside 0\.\.2\*\*63-1, the range the store holds"),
    (lambda c: c.recorded(2.5), r"Recorder\.record: step=2\.5 is not an integer\. HINT: pass the optimizer step"),
    (lambda c: c.recorder().maybe_record(LINEAR, "3"), r"Recorder\.maybe_record: step='3' is not an integer\. HINT"),
    (lambda c: c.recorder().log_scalars(True, loss=1.0), r"Recorder\.log_scalars: step=True is not an integer"),
    (
        lambda c: (rec := c.recorded(5), rec.log_scalars(5, loss=1.0), rec.log_scalars(4, loss=1.0)),
        r"Recorder\.log_scalars: step 4 is below step 5, which this session already wrote to its scalars",
    ),
    (
        lambda c: (rec := c.recorded(5), rec.mark(5, "warm-up ends"), rec.mark(4, "LR drop")),
        r"Recorder\.mark: step 4 is below step 5, which this session already wrote to its events",
    ),
    # -- scalars and marks --------------------------------------------------------------------------------------------
    (log_scalars(loss=torch.ones(3)), r"Recorder\.log_scalars: scalar 'loss' has shape \(3,\)\. HINT: pass one number"),
    (log_scalars(acc="high"), r"Recorder\.log_scalars: scalar acc='high' is not a number\. HINT: pass a float"),
    (log_scalars(flag=True), r"Recorder\.log_scalars: scalar flag=True is not a number\. HINT"),
    (log_scalars(z=1j), r"Recorder\.log_scalars: scalar z=1j is complex; the store holds real numbers\. HINT"),
    (log_scalars(z=np.complex64(1j)), r"Recorder\.log_scalars: scalar z=.*1j.* is complex.*HINT: pass e\.g\. abs"),
    (log_scalars(z=torch.tensor(1j)), r"scalar 'z' is a torch\.complex64 torch\.strided tensor; the store holds real"),
    (log_scalars(big=10**400), r"Recorder\.log_scalars: scalar big=1000.* is too large for a float64\. HINT"),
    (log_scalars(**{"a\0b": 1.0}), r"scalar name 'a\\x00b' contains a NUL character.*HINT"),
    (log_scalars(**{"x" * 129: 1.0}), r"Recorder\.log_scalars: scalar name 'x{70,}.* is over 128 bytes\. HINT"),
    (mark(""), r"Recorder\.mark: label '' is not a non-empty string\. HINT"),
    (mark(3), r"Recorder\.mark: label 3 is not a non-empty string\. HINT"),
    (mark("LR\0drop"), r"Recorder\.mark: label 'LR\\x00drop' contains a NUL character, which the store cannot hold"),
    (armed_whole(lambda out: out["output"]), r"Whole 'later'\.run returned Tensor at step 1; it must return a dict"),
    (
        armed_whole(lambda out: {"other": out["output"]}),
        r"Whole 'later'\.run returned \['other'\] at step 1, but declares \['output'\]\. HINT: return exactly",
    ),
    (mark("x" * 257), r"Recorder\.mark: label 'x{70,}.* is over 256 bytes\. HINT"),
    (mark("bad \ud800"), r"Recorder\.mark: label 'bad \\ud800' is not valid Unicode \(a lone surrogate\)\. HINT"),
    # -- after close ------------------------------------------------------------------------------------------------
    (
        lambda c: [rec := c.recorded(0), rec.close(), rec.maybe_record(LINEAR, 1)],
        r"Recorder\.record after close\(\): .* is closed\. HINT: create a new Recorder on the same path",
    ),
]


def _case_id(index):
    return f"case{index:02d}"


@pytest.mark.parametrize(("action", "message"), CASES, ids=[_case_id(i) for i in range(len(CASES))])
def test_bad_input(tmp_path, action, message):
    case = Case(tmp_path / "run.h5")
    with pytest.raises(TrajhookError, match=message) as caught:
        action(case)
    assert "HINT: " in str(caught.value)
    for rec in case.opened:
        rec.close()  # the writer is alive: nothing bad reached it
    if case.opened and case.path.exists():
        load(case.path)  # and what was recorded before the bad call is loadable


def _raise_sites(module) -> set[int]:
    """The lines of every ``raise TrajhookError(...)`` in ``module``'s source, found by reading it."""
    tree = ast.parse(Path(module.__file__).read_text())
    return {
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Raise)
        and isinstance(node.exc, ast.Call)
        and getattr(node.exc.func, "id", None) == "TrajhookError"
    }


def test_the_table_reaches_every_argument_check(tmp_path):
    # every check in trajhook.recording.checks (read from its source, not from this table) is raised by some case
    hit = set()
    for index, (action, _) in enumerate(CASES):
        case = Case(tmp_path / f"{index}" / "run.h5")
        case.path.parent.mkdir()
        try:
            action(case)
        except TrajhookError as err:
            frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == checks.__file__]
            hit |= {frames[-1].lineno} if frames else set()
        finally:
            for rec in case.opened:
                rec.close()
    missed = _raise_sites(checks) - hit
    assert not missed, f"no case reaches the checks at trajhook/recording/checks.py lines {sorted(missed)}"


@pytest.mark.parametrize("every", [0, -5, 2.5, True])
def test_every_n_steps_must_be_a_positive_integer(store_path, every):
    with pytest.raises(TrajhookError, match=rf"every_n_steps={every!r} is not a positive integer.*HINT"):
        Recorder(store_path, [probe()], every_n_steps=every)


def test_a_file_that_is_not_a_store_is_left_untouched(store_path):
    with h5py.File(store_path, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TrajhookError, match="not a trajhook store"):
        Recorder(store_path, [probe()], every_n_steps=1)
    with h5py.File(store_path) as f:
        np.testing.assert_array_equal(f["x"][:], np.arange(3))


def test_inputs_that_do_not_fit_create_no_file(store_path):
    rec = Recorder(store_path, [probe("fine"), probe("wrong", shape=(1, 7))], every_n_steps=1, wandb=False)
    with pytest.raises(TrajhookError, match="failed on its first run at setup"):
        rec.setup(LINEAR)
    assert not store_path.exists()  # nothing was created before the probes ran
