"""Bad input gets a TrajhookError before training starts, naming the probe, the value and the fix."""

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from trajhook import Recorder, TensorProbe, TrajhookError


def probe(name="p", shape=(1, 4)):
    return TensorProbe(name, torch.ones(shape))


@pytest.mark.parametrize("every", [0, -5, 2.5, True])
def test_every_n_steps_must_be_a_positive_integer(store_path, every):
    with pytest.raises(TrajhookError, match=rf"every_n_steps={every!r} is not a positive integer.*HINT"):
        Recorder(store_path, [probe()], every_n_steps=every)


def test_duplicate_probe_names(store_path):
    with pytest.raises(TrajhookError, match=r"probe names \['a'\] are used more than once.*HINT: give each probe"):
        Recorder(store_path, [probe("a"), probe("b"), probe("a")], every_n_steps=1)


def test_a_directory_path(tmp_path):
    with pytest.raises(TrajhookError, match=r"is a directory\. HINT"):
        Recorder(tmp_path, [probe()], every_n_steps=1)


def test_an_unwritable_path(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(TrajhookError, match=r"cannot create the folder .*a-file.*HINT: choose a path in a writable"):
        Recorder(blocker / "run.h5", [probe()], every_n_steps=1)


def test_an_existing_file_that_is_not_a_store(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("my notes")
    with pytest.raises(TrajhookError, match="not an HDF5 file"):
        Recorder(text, [probe()], every_n_steps=1)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(2)
    with pytest.raises(TrajhookError, match="not a trajhook store"):
        Recorder(other, [probe()], every_n_steps=1)
    with h5py.File(other) as f:
        np.testing.assert_array_equal(f["x"][:], np.zeros(2))  # untouched


def test_inputs_that_do_not_fit_the_model_fail_at_setup(store_path):
    rec = Recorder(store_path, [probe("fine"), probe("wrong", shape=(1, 7))], every_n_steps=1, wandb=False)
    with pytest.raises(TrajhookError, match=r"TensorProbe 'wrong' failed on its first run at setup.*HINT: check"):
        rec.setup(nn.Linear(4, 2))
    assert not store_path.exists()  # nothing was created before the probes ran


def test_bad_probe_list_and_names(store_path):
    with pytest.raises(TrajhookError, match="not a non-empty list of probes"):
        Recorder(store_path, [], every_n_steps=1)
    with pytest.raises(TrajhookError, match="is not a trajhook Probe"):
        Recorder(store_path, [nn.Linear(2, 2)], every_n_steps=1)
    with pytest.raises(TrajhookError, match=r"probe name 'a/b' is not valid"):
        probe("a/b")


def test_bad_scalars_and_marks(store_path):
    rec = Recorder(store_path, [probe()], every_n_steps=1, wandb=False)
    with pytest.raises(TrajhookError, match=r"scalar 'loss' has shape \(3,\)"):
        rec.log_scalars(0, loss=torch.ones(3))
    with pytest.raises(TrajhookError, match="scalar acc='high' is not a number"):
        rec.log_scalars(0, acc="high")
    with pytest.raises(TrajhookError, match="label '' must be a non-empty string"):
        rec.mark(0, "")
    rec.close()
