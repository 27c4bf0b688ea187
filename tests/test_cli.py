"""The trajhook command on real stores: every subcommand, and one clear line with exit code 2 for
every bad input."""

import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from fake_maze import maze_store, prompt_store
from torch import nn

from trajhook import MazeProbe, Recorder, TensorProbe, load
from trajhook.cli import main

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    maze_store(folder / "maze.h5", steps=20, every=5)
    prompt_store(folder / "lm.h5", seed=0, steps=24, every=4, events=[(12, "lr drop")])
    prompt_store(folder / "lm2.h5", seed=1, steps=24, every=6)
    with Recorder(folder / "lin.h5", [TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
        rec.record(nn.Linear(2, 1), 0)
    return folder


def run(*argv):
    return main([str(a) for a in argv])


def test_plot_draws_maze_and_prompt_probes(stores, tmp_path, capsys):
    assert run("plot", stores / "maze.h5", tmp_path / "field.png", "--step", 10) == 0
    field = iio.imread(tmp_path / "field.png")
    assert field.ndim == 3 and field.shape[0] > 300 and field.std() > 10
    assert run("plot", stores / "lm.h5", tmp_path / "prompts.png", "--step", 8) == 0
    assert iio.imread(tmp_path / "prompts.png").std() > 10
    assert capsys.readouterr().out.count("wrote") == 2

    from trajhook.plots.prompts import prompt_record

    log = load(stores / "lm.h5")
    fig = prompt_record(log, step=8)
    line = fig.axes[0].get_lines()[0]  # the first prompt's per-token loss at step 8, as recorded
    np.testing.assert_allclose(line.get_ydata(), log["prompts"]["token_loss"][2, 0])
    bars = [patch.get_width() for patch in fig.axes[1].patches]
    np.testing.assert_allclose(bars, log["prompts"]["target_logprob"][2].ravel(), rtol=1e-6)


def test_curves_pca_animate_and_report(stores, tmp_path, capsys):
    assert run("curves", stores / "lm.h5", "-o", tmp_path / "curves.png") == 0
    assert run("curves", stores / "maze.h5", "-o", tmp_path / "loss.png") == 0  # no targets: the scalars
    assert run("pca", stores / "lm.h5", stores / "lm2.h5", "-o", tmp_path / "pca.png") == 0
    assert run("animate", stores / "maze.h5", tmp_path / "maze.gif") == 0
    assert run("report", stores / "lm.h5", stores / "maze.h5", "-o", tmp_path / "r.html", "--max-frames", 3) == 0
    for name in ("curves.png", "loss.png", "pca.png"):
        assert iio.imread(tmp_path / name).std() > 10, name
    assert len(iio.imread(tmp_path / "maze.gif", index=None)) == len(load(stores / "maze.h5").steps)
    page = (tmp_path / "r.html").read_text()
    assert "trajhook report: lm, maze" in page and 'id="step-slider"' in page
    assert "MB)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["info", "{d}/none.h5"], r"load: no file at '.*none.h5'\."),
        (["plot", "{d}/plain.h5", "{t}/x.png"], r"plain.h5' is an HDF5 file but not a trajhook store.*HINT"),
        (["report", "{d}/text.h5", "-o", "{t}/r.html"], r"text.h5' is not an HDF5 file, or it is corrupt.*HINT"),
        (["plot", "{d}/lin.h5", "{t}/x.png"], r"has no maze probe or prompts probe \(probes: \['lin'\]\)\. HINT"),
        (["plot", "{d}/maze.h5", "{t}/x.png", "--probe", "mouse"], r"has no probe 'mouse'; it has \['maze'\]\. HINT"),
        (["animate", "{d}/lm.h5", "{t}/x.gif"], r"has no maze probe \(probes: \['prompts'\]\)\. HINT"),
        (["pca", "{d}/lm.h5", "-o", "{t}/p.png", "--output", "logits"], r"has no dataset 'logits'; it has .*HINT"),
        (["plot", "{d}/maze.h5", "{t}/x.png", "--step", "7"], r"step 7 was not recorded \(first 0, last 20.*HINT"),
        (["plot", "{d}/lm.h5", "{t}/x.png", "--step", "999"], r"prompt_record: step 999 was not recorded.*HINT"),
        (["curves", "{d}/lin.h5", "-o", "{t}/c.png"], r"has no target curves and no scalars to draw\. HINT"),
        (["plot", "{d}/maze.h5"], r"^trajhook: plot: no output file\. HINT: pass one with -o"),
        (["curves", "{d}/lm.h5"], r"^trajhook: curves: no output file\. HINT: pass one with -o"),
        (["plot", "{d}/maze.h5", "{t}/a.png", "-o", "{t}/b.png"], r"plot: the output is given twice.*HINT"),
        (["verify", "{d}/plain.h5"], r"plain.h5' is an HDF5 file but not a trajhook store.*HINT"),
    ],
)
def test_bad_input_is_one_clear_line_with_exit_code_2(stores, tmp_path, capsys, argv, message):
    import re

    with h5py.File(stores / "plain.h5", "w") as f:
        f["x"] = np.arange(3)
    (stores / "text.h5").write_text("not a store")
    code = main([a.format(d=stores, t=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("trajhook: "), err
    assert re.search(message, err), err


def test_a_real_process_exits_2_and_unknown_subcommands_are_refused(stores):
    proc = subprocess.run(
        [sys.executable, "-m", "trajhook.cli", "plot", str(stores / "lin.h5"), "x.png"], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "has no maze probe or prompts probe" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "trajhook.cli", "frobnicate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("trajhook: ")  # one line, as every error
    proc = subprocess.run([sys.executable, "-m", "trajhook.cli", "plot", "--step", "x"], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("trajhook: plot: argument --step: invalid int value: 'x'. HINT"), proc.stderr


WRITER = textwrap.dedent(
    """
    import sys, torch
    from trajhook import Recorder, TensorProbe
    rec = Recorder(sys.argv[1], [TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False, flush_every_s=0.1)
    for step in range(5):
        rec.maybe_record(torch.nn.Linear(2, 1), step, loss=1.0)
    rec.flush()
    print("ready", flush=True)
    sys.stdin.readline()  # still open for writing until told to finish
    rec.close()
    """
)


@pytest.mark.timeout(120)
def test_info_reads_a_store_while_it_is_being_written(tmp_path, capsys):
    path = tmp_path / "live.h5"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        assert run("info", path) == 0
        out = capsys.readouterr().out
        assert "5 records, steps 0..4" in out and "scalar loss: 5 values" in out
    finally:
        writer.communicate("done\n", timeout=60)
    assert writer.returncode == 0


@pytest.mark.maze
@pytest.mark.timeout(300)
def test_plot_and_animate_a_procgen_maze_store(tmp_path, capsys):
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 64, 15))
    with Recorder(tmp_path / "maze.h5", [MazeProbe(seed=1, distribution_mode="easy")], 1, wandb=False) as rec:
        for step in range(3):
            rec.record(policy, step * 10)
            nn.init.normal_(policy[-1].weight)  # a visibly different field at each step
    assert main(["plot", str(tmp_path / "maze.h5"), str(tmp_path / "field.png"), "--step", "10"]) == 0
    image = iio.imread(tmp_path / "field.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 10
    assert main(["animate", str(tmp_path / "maze.h5"), str(tmp_path / "maze.gif")]) == 0
    frames = iio.imread(tmp_path / "maze.gif", index=None)
    assert len(frames) == 3 and not (frames[0] == frames[1]).all()
    assert "wrote" in capsys.readouterr().out
    # the same through -o, the one output form of every subcommand; the probe is chosen by its stored kind
    assert load(tmp_path / "maze.h5")["maze"].kind == "maze"
    assert main(["plot", str(tmp_path / "maze.h5"), "-o", str(tmp_path / "f2.png"), "--step", "10"]) == 0
    assert (iio.imread(tmp_path / "f2.png") == image).all()
    assert main(["animate", str(tmp_path / "maze.h5"), "-o", str(tmp_path / "m2.gif")]) == 0
    assert (iio.imread(tmp_path / "m2.gif", index=None) == frames).all()
    assert main(["curves", str(tmp_path / "maze.h5"), "-o", str(tmp_path / "c.png")]) == 2  # no targets, no loss
    assert "has no target curves and no scalars" in capsys.readouterr().err
