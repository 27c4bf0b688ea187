"""trajectory_pca, icl_score and turning_points on synthetic trajectories with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from trajhook.analysis.trajectory import icl_score, trajectory_pca, turning_angles, turning_points
from trajhook.errors import TrajhookError


def bent_trajectory(turn: int = 60, n: int = 100, dim: int = 30, noise: float = 0.01, seed: int = 0):
    """Records that drift along one direction until ``turn``, then move fast along another."""
    rng = np.random.default_rng(seed)
    u, v = np.linalg.qr(rng.normal(size=(dim, 2)))[0].T
    t = np.arange(n, dtype=float)
    along_u = np.minimum(t, turn) / turn  # slow: 1 unit over `turn` records
    along_v = np.maximum(t - turn, 0) / (n - turn) * 3.0  # faster: 3 units over the rest
    data = along_u[:, None] * u + along_v[:, None] * v + noise * rng.normal(size=(n, dim))
    return data.reshape(n, 5, 6), u, v


def test_pca_recovers_the_plane_and_the_turn():
    data, u, v = bent_trajectory()
    data[:, 4, 5] = np.nan  # a column that is NaN somewhere is dropped, not propagated
    data[:, 4, 5][:10] = 1.0
    pca = trajectory_pca(data, n_components=3)
    assert pca.kept_columns.sum() == 29 and not pca.kept_columns[-1]
    assert pca.coords.shape == (100, 3) and np.isfinite(pca.coords).all()
    assert pca.explained_variance_ratio[:2].sum() > 0.99
    assert pca.explained_variance_ratio[0] >= pca.explained_variance_ratio[1] >= pca.explained_variance_ratio[2]
    # The first two components span u and v (restricted to the kept columns).
    plane = pca.components[:2]
    for direction in (u[:29], v[:29]):
        assert np.linalg.norm(plane @ direction) / np.linalg.norm(direction) > 0.99
    np.testing.assert_allclose(pca.coords, pca.transform(data), atol=1e-10)
    assert abs(int(turning_points(pca.coords[:, :2], n=1)[0]) - 60) <= 3


def test_joint_pca_shares_one_basis_across_runs():
    a, _, _ = bent_trajectory(seed=0)
    b = a[:50] + 0.5  # a second run: a shifted copy of the first half
    joint = trajectory_pca([a, b], n_components=2)
    assert [c.shape for c in joint.coords] == [(100, 2), (50, 2)]
    np.testing.assert_allclose(joint.coords[1], joint.transform(b), atol=1e-10)
    np.testing.assert_allclose(joint.mean, np.concatenate([a, b]).reshape(150, -1).mean(0), atol=1e-12)
    with pytest.raises(TrajhookError, match="different record sizes"):
        trajectory_pca([a, a[:, :2]])
    with pytest.raises(TrajhookError, match="HINT"):
        trajectory_pca(np.full((4, 3), np.nan))


def test_turning_points_ignore_noise_and_speed_changes():
    rng = np.random.default_rng(1)
    t = np.linspace(0, 1, 40)
    # A straight line whose speed changes abruptly (not a turn), then a 90-degree corner at record 70.
    slow_then_fast = np.concatenate([0.2 * t, 0.2 + 2 * t[1:]])
    leg1 = np.stack([slow_then_fast, 0 * slow_then_fast], 1)[:70]
    leg2 = leg1[-1] + np.stack([0 * t, 2 * t], 1)[1:]
    path = np.concatenate([leg1, leg2]) + 0.003 * rng.normal(size=(len(leg1) + len(leg2), 2))
    points = turning_points(path, n=2, smoothing=1.5)
    assert abs(int(points[0]) - 69) <= 3
    angles = turning_angles(path, smoothing=1.5)
    assert np.nanmax(angles) > 60
    assert np.nanmax(angles[30:50]) < 30  # the speed change at record 39 is not a turn
    assert turning_points(np.zeros((10, 2))).tolist() == []


def test_icl_score_on_per_step_token_losses():
    n_positions = 64
    before = np.full((3, n_positions), 4.0)  # no in-context learning: flat loss
    after = before.copy()
    after[:, 32:] = 0.1  # the repeated half becomes easy
    after[2, 60:] = np.nan  # a shorter prompt: late index is clipped to its last finite position
    history = np.stack([before, after])
    np.testing.assert_allclose(icl_score(history, late=500, early=10), [0.0, -3.9])
    np.testing.assert_allclose(icl_score(history, late=40, early=10), [0.0, -3.9])
    assert icl_score(before, late=40, early=10) == 0.0
    with pytest.raises(TrajhookError, match="n_positions"):
        icl_score(np.zeros(5))
