"""``Probe.merge``: each output of a split record assembled from the parts as ``add_output(..., merge=, fill=)`` says.

A custom probe that only declares its outputs' merges and writes ``split`` and ``run_part``
(tests/distributed/split_probe.py) records through a real Recorder in one process, where ``run``
merges the parts of ``split(1)``, and under real ``torchrun`` DDP ranks, where rank zero merges the
parts each rank ran. Both stores must equal one forward of all rows, with no part or merge in it.
The merges themselves are checked against sums written out by hand; bad declarations and bad parts
get a ``TrajhookError``.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_distributed import torchrun  # tests/ is on sys.path under pytest
from torch import nn

from trajhook import Probe, Recorder, TrajhookError, load

sys.path.insert(0, str(Path(__file__).parent / "distributed"))
from split_probe import ROWS, Strided, train


def check_last_record(log, full: torch.Tensor) -> None:
    """The last stored record against one forward of all ten rows (``full``)."""
    full = full.numpy()
    record = {key: log["strided"][key][-1] for key in log["strided"]}
    # a batch of a few rows may round differently from one of ten
    np.testing.assert_allclose(record["out"], full, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(record["even_first"][::2], full[::2, 0], rtol=1e-6, atol=1e-6)
    assert np.isnan(record["even_first"][1::2]).all()  # the fill: no part gives odd rows
    np.testing.assert_allclose(record["part_max"], [full[i::3].max() for i in range(3)], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(record["total"], full.astype(np.float64).sum(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(record["argmax_counts"], np.bincount(full.argmax(1), minlength=3))
    assert record["argmax_counts"].dtype == np.int64


def test_a_custom_probe_declaring_its_merges_records_in_one_process(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    probe = Strided()
    with Recorder(tmp_path / "run.h5", [probe], every_n_steps=2, wandb=False) as rec:
        train(model, torch.optim.SGD(model.parameters(), lr=0.1), rec, steps=5)
    with torch.no_grad():
        full = model(ROWS)
    log = load(tmp_path / "run.h5")
    assert log.steps.tolist() == [0, 2, 4]
    check_last_record(log, full)
    assert not np.allclose(log["strided"]["out"][0], log["strided"]["out"][-1])  # training moved it
    assert probe.ran == [0, 1, 2] * (len(probe.ran) // 3) and len(probe.ran) >= 9  # one process: every part


@pytest.mark.timeout(120)
def test_a_custom_probe_declaring_its_merges_is_shared_by_ddp_ranks(tmp_path):
    torchrun("split_probe.py", tmp_path, timeout=110)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0["direct"], rank1["direct"])  # DDP: the same weights on both ranks
    log = load(tmp_path / "split.h5")
    assert log.steps.tolist() == [0, 2, 4]
    check_last_record(log, rank0["direct"])
    # the three parts of each record dealt round-robin: rank zero runs parts 0 and 2, rank one part 1
    records = len(rank1["ran"])
    assert records >= 3 and rank0["ran"] == [0, 2] * records and rank1["ran"] == [1] * records


def declared(**merges) -> Probe:
    probe = Probe("p")
    for name, (shape, dtype, merge, fill) in merges.items():
        probe.add_output(name, shape, dtype, merge=merge, fill=fill)
    return probe


def test_a_sum_adds_in_part_order_in_the_declared_dtype_and_fills_what_no_part_gives():
    probe = declared(total=((3,), "float32", "sum", float("nan")), whole=((), "float32", "sum", 0))
    big = torch.tensor([1e8], dtype=torch.float32)
    parts = [
        {"total": (torch.tensor([0, 0]), torch.cat([big, torch.ones(1)])), "whole": big[0]},
        {"total": (torch.tensor([0, 1]), torch.tensor([-1e8, 2.0])), "whole": torch.tensor(1.0)},
        {"whole": -big[0]},
    ]
    record = probe.merge(parts)
    # float32, in order: 1e8 + 1 rounds to 1e8, so slot 0 is 0 (1.0 in any other order); slot 2 has no part
    want = np.float32(np.float32(np.float32(1e8) + np.float32(1.0)) + np.float32(-1e8))
    assert want == 0.0
    np.testing.assert_array_equal(record["total"].numpy(), np.array([want, 2.0, np.nan], dtype=np.float32))
    assert record["whole"].item() == np.float32(np.float32(1e8) + np.float32(1.0)) - np.float32(1e8) == 0.0


def test_scatter_and_cat_give_the_declared_dtype_on_the_merge_device():
    probe = declared(
        half=((2, 2), "float16", "scatter", float("nan")),
        ids=((2, 3), "int64", "scatter", -1),
        blocks=((3, 2), "float32", "cat", 0),
    )
    values = torch.tensor([1 / 3, 2 / 3, 1e-8], dtype=torch.float32)
    parts = [
        {
            "half": (torch.tensor([3, 0]), values[:2]),
            "ids": ([1], torch.tensor([[4, 5, 6]])),
            "blocks": torch.ones(2, 2),
        },
        {"half": (torch.tensor([1]), values[2:]), "blocks": torch.zeros(1, 2, dtype=torch.float64)},
    ]
    record = probe.merge(parts)
    half = torch.tensor([values[1], values[2], float("nan"), values[0]]).half().reshape(2, 2)
    assert record["half"].dtype == torch.float16 and record["half"].view(torch.int16).equal(half.view(torch.int16))
    assert record["ids"].tolist() == [[-1, -1, -1], [4, 5, 6]]
    assert record["blocks"].dtype == torch.float32 and record["blocks"].tolist() == [[1, 1], [1, 1], [0, 0]]
    assert all(v.device == torch.device("cpu") for v in record.values())  # no merge_device: where the parts are
    probe.merge_device = torch.device("meta")
    assert all(v.device.type == "meta" for v in probe.merge(parts).values())


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (dict(merge="concat"), r" has merge='concat'\. HINT: pass merge='cat', 'scatter' or 'sum'"),
        (dict(dtype="bool", merge="sum"), r" is bool, which cannot be summed\. HINT: use merge='scatter'"),
        (dict(dtype="int64", merge="scatter", fill=float("nan")), r" is int64, which cannot hold fill=nan\. HINT"),
        (dict(fill=float("nan")), r" has merge=None\. HINT: pass merge='cat', 'scatter' or 'sum'"),
        (dict(merge="scatter", fill="nan"), r" has fill='nan', not a number\. HINT: pass e\.g\. fill=float\('nan'\)"),
        (dict(dtype="float128", merge="cat"), r": float128 has no torch dtype.*HINT: declare e\.g\. 'float32'"),
    ],
)
def test_a_merge_that_cannot_be_built_is_refused_where_it_is_declared(declare, message):
    if declare.get("dtype") == "float128" and not hasattr(np, "float128"):
        pytest.skip("no float128 on this platform")
    with pytest.raises(TrajhookError, match=r"^Probe 'p': output 'x'" + message):
        Probe("p").add_output("x", (2,), **declare)


@pytest.mark.parametrize(
    ("merge", "parts", "message"),
    [
        ("scatter", [{"y": torch.ones(2)}], r"part 0 returned the output 'y', which it does not declare\. HINT"),
        ("scatter", [torch.ones(2)], r"part 0 returned Tensor\. HINT: run_part returns \{output: values\}"),
        (
            "scatter",
            [{"x": torch.ones(2)}],
            r"part 0 returned Tensor for output 'x', which merges by 'scatter'\. "
            r"HINT: return \(indices, values\) for it",
        ),
        (
            "cat",
            [{"x": torch.ones(1)}, {"x": ([1], torch.ones(1))}],
            r"part 1 returned \(indices, values\) for "
            r"output 'x', which merges by 'cat'\. HINT: return values alone",
        ),
        ("cat", [{}], r"no part returned output 'x'\. HINT: return it from run_part"),
        (
            None,
            [{"x": torch.ones(2)}],
            r"output 'x' declares no merge, so a split record cannot be assembled\. "
            r"HINT: add_output\(\.\.\., merge=",
        ),
    ],
)
def test_parts_that_do_not_fit_the_declaration_get_an_error_naming_the_probe(merge, parts, message):
    probe = Probe("p")
    probe.add_output("x", (2,), merge=merge)
    with pytest.raises(TrajhookError, match=r"^Probe 'p': " + message):
        probe.merge(parts)


class NoMerge(Strided):
    def setup(self, model, device):
        super().setup(model, device)
        self.add_output("out", (10, 3))  # redeclared without its merge


def test_a_splitting_probe_with_an_output_that_declares_no_merge_fails_at_setup_before_training(tmp_path):
    rec = Recorder(tmp_path / "run.h5", [NoMerge("strided")], wandb=False)
    with pytest.raises(TrajhookError, match=r"NoMerge 'strided': output 'out' declares no merge.*HINT"):
        rec.setup(nn.Linear(4, 3))
    rec.close()
