"""Essential dynamics of the maze field, live and offline, on real procgen observations.

A synthetic policy whose field turns sharply (right for K records, then up, with a small steady
drift) runs under a Recorder with ``MazeProbe(track_stages=True)``: the live tracker and the
offline trajectory both find the turn within a few records. The offline trajectory is checked
against an independent computation, as the essential-dynamics work does it from checkpoints:
each saved policy is run again on the level's observations, its field is computed from the
procgen action table, and the stacked, centred fields are decomposed by SVD.
"""

from __future__ import annotations

import copy

import matplotlib.image
import numpy as np
import pytest
import torch

from trajhook import Recorder, TrajhookError, load

pytest.importorskip("procgen")

from trajhook.analysis.field import field_trajectory, field_trajectory_from_log
from trajhook.analysis.online import StageTracker
from trajhook.cli import main
from trajhook.plots.field import field_dynamics
from trajhook.probes.maze import MazeProbe

pytestmark = pytest.mark.maze  # procgen: the maze environment (numpy<2)

K, N = 30, 60  # the field turns at record K of N
RIGHT, LEFT, UP, DOWN = (6, 7, 8), (0, 1, 2), (5,), (3,)  # procgen's action table (NOTES.md)


class TurningPolicy(torch.nn.Module):
    """A cell-dependent base policy mixed with moves right (for K records), then up, and a slow drift down.

    The action probabilities are ``(1 - a - b - c) * base + a * RIGHT + b * UP + c * DOWN``: the
    field moves along one direction per cell while ``a`` grows, then along another while ``b``
    grows (a sharp turn at record K), and ``c`` adds a small steady drift throughout.
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Linear(3 * 8 * 8, 15)
        with torch.no_grad():
            self.features.weight.mul_(4.0)
        self.mix = torch.nn.Parameter(torch.zeros(3))  # a, b, c

    def place(self, record: int) -> None:
        with torch.no_grad():
            self.mix.copy_(torch.tensor([0.01 * min(record, K), 0.01 * max(record - K, 0), 0.001 * record]))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        base = torch.softmax(self.features(torch.nn.functional.avg_pool2d(obs, 8).flatten(1)), dim=-1)
        moves = torch.zeros(3, 15)
        moves[0, 7], moves[1, 5], moves[2, 3] = 1.0, 1.0, 1.0  # RIGHT, UP, DOWN
        return torch.log((1 - self.mix.sum()) * base + self.mix @ moves)  # logits of that mixture


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A recorded run of the turning policy, with a checkpoint of the policy at every record."""
    path = tmp_path_factory.mktemp("field") / "run.h5"
    policy = TurningPolicy()
    probe = MazeProbe(seed=1, distribution_mode="easy", track_stages=True)
    checkpoints = []
    with Recorder(path, [probe], every_n_steps=10, wandb=False) as rec:
        for record in range(N):
            policy.place(record)
            if rec.maybe_record(policy, record * 10):
                checkpoints.append(copy.deepcopy(policy.state_dict()))
    return load(path), probe, checkpoints


def test_the_live_tracker_and_the_offline_trajectory_find_the_turn(run):
    log, probe, _ = run
    assert log.steps.tolist() == [10 * r for r in range(N)]
    live = [e for e in log.events if e.label.startswith("candidate stage boundary (PCA turn; confirmed at step ")]
    assert len(live) == 1 and abs(live[0].step - 10 * K) <= 30  # within 3 records of the turn
    confirmed = int(live[0].label.rsplit(" ", 1)[1].rstrip(")"))
    assert 10 * (K + 5) <= confirmed <= 10 * (K + 12)  # after the after-leg (5 records) and `confirm`
    assert probe.stage_tracker.output == "vectors" and probe.stage_tracker.n_records == N
    offline = field_trajectory_from_log(log)
    assert abs(int(offline.turn_steps[0]) - 10 * K) <= 30
    assert offline.explained_variance_ratio.sum() > 0.9


def test_the_offline_trajectory_is_the_svd_of_the_fields_recomputed_from_checkpoints(run):
    log, probe, checkpoints = run
    policy = TurningPolicy()
    obs = torch.from_numpy(probe.observations).permute(0, 3, 1, 2).float() / 255.0
    fields = []
    for state in checkpoints:  # as from saved checkpoints: run each policy again on the level
        policy.load_state_dict(state)
        with torch.no_grad():
            p = torch.softmax(policy(obs), dim=-1).double().numpy()
        fields.append(np.stack([p[:, RIGHT].sum(1) - p[:, LEFT].sum(1), p[:, UP].sum(1) - p[:, DOWN].sum(1)], 1))
    x = np.stack(fields).reshape(len(fields), -1)
    u, s, _ = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    expected = u[:, :2] * s[:2]
    offline = field_trajectory_from_log(log)
    signs = np.sign((offline.coords * expected).sum(axis=0))  # equal up to the sign of each component
    np.testing.assert_allclose(offline.coords * signs, expected, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_allclose(offline.explained_variance_ratio, s[:2] ** 2 / (s**2).sum(), atol=1e-4)


def test_the_figure_marks_the_current_step(run):
    log, _, _ = run
    fig = field_dynamics(log, step=200)
    ax_pca = next(ax for ax in fig.axes if ax.get_title() == "Field PCA trajectory (essential dynamics)")
    offline = field_trajectory_from_log(log)
    marked = [c for c in ax_pca.collections if c.get_label() == "step 200"]
    assert len(marked) == 1 and np.allclose(marked[0].get_offsets()[0], offline.coords[20])
    assert fig.axes[0].get_title().endswith("step 200")


def test_trajhook_pca_draws_a_maze_store(run, tmp_path):
    log, _, _ = run
    assert main(["pca", str(log.path), "-o", str(tmp_path / "cli.png")]) == 0
    field_dynamics(log).savefig(tmp_path / "direct.png", dpi=120)  # the last step, as the CLI draws it
    cli, direct = (matplotlib.image.imread(tmp_path / f"{name}.png") for name in ("cli", "direct"))
    assert cli.shape == direct.shape and np.array_equal(cli, direct)
    two = [str(log.path), str(log.path)]  # two runs: one joint basis, the maze's vectors by default
    assert main(["pca", *two, "-o", str(tmp_path / "two.png")]) == 0 and (tmp_path / "two.png").stat().st_size > 0
    assert main(["pca", str(log.path), "-o", str(tmp_path / "x.png"), "--output", "logits"]) == 2


def test_a_maze_tracker_must_follow_a_field_output(run):
    _, probe, _ = run
    with pytest.raises(TrajhookError, match=r"track_stages='yes' is not True, False or a StageTracker.*HINT"):
        MazeProbe(seed=1, distribution_mode="easy", track_stages="yes")
    for tracker in (StageTracker("token_loss"), StageTracker("vectors", icl=(50, 10))):
        wrong = MazeProbe(seed=1, distribution_mode="easy", track_stages=tracker)
        wrong.level = probe.level  # the same level: no second procgen render
        with pytest.raises(TrajhookError, match=r"MazeProbe 'maze': its StageTracker follows .*HINT: use StageTracker"):
            wrong.setup(TurningPolicy(), torch.device("cpu"))
    with pytest.raises(TrajhookError, match=r"field_trajectory: steps \(3,\) and fields \(2, 4, 2\).*HINT"):
        field_trajectory(np.arange(3), np.zeros((2, 4, 2)))
