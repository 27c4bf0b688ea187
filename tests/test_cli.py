"""The trajhook command on real stores."""

import subprocess
import sys

import imageio.v3 as iio
import torch
from torch import nn

from trajhook import MazeProbe, Recorder, TensorProbe
from trajhook.cli import main


def maze_store(path):
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 64, 15))
    with Recorder(path, [MazeProbe(seed=1, distribution_mode="easy")], every_n_steps=1, wandb=False) as rec:
        for step in range(3):
            rec.record(policy, step * 10)
            nn.init.normal_(policy[-1].weight)  # a visibly different field at each step


def test_plot_and_animate_a_maze_store(tmp_path, capsys):
    maze_store(tmp_path / "maze.h5")
    assert main(["plot", str(tmp_path / "maze.h5"), str(tmp_path / "field.png"), "--step", "10"]) == 0
    image = iio.imread(tmp_path / "field.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 10
    assert main(["animate", str(tmp_path / "maze.h5"), str(tmp_path / "maze.gif")]) == 0
    frames = iio.imread(tmp_path / "maze.gif", index=None)
    assert len(frames) == 3 and not (frames[0] == frames[1]).all()
    assert "wrote" in capsys.readouterr().out


def test_errors_are_one_clear_line(tmp_path):
    with Recorder(tmp_path / "lin.h5", [TensorProbe("lin", torch.ones(1, 2))], 1, wandb=False) as rec:
        rec.record(nn.Linear(2, 1), 0)
    proc = subprocess.run(
        [sys.executable, "-m", "trajhook.cli", "plot", str(tmp_path / "lin.h5"), str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("has no maze probe. HINT: this command draws MazeProbe records.")
    proc = subprocess.run(
        [sys.executable, "-m", "trajhook.cli", "info", str(tmp_path / "none.h5")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no file at" in proc.stderr
