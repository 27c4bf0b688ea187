"""Pure numpy analysis of recorded trajectories; works on arrays from ``trajhook.load``."""

from trajhook.analysis.field import FieldTrajectory, field_trajectory, field_trajectory_from_log
from trajhook.analysis.maze import (
    bfs_distances,
    chance_agreement,
    path_agreement,
    shortest_path,
    shortest_path_moves,
)
from trajhook.analysis.trajectory import (
    TrajectoryPCA,
    icl_score,
    smooth,
    trajectory_pca,
    turning_angles,
    turning_points,
    turning_scores,
)

__all__ = [
    "FieldTrajectory",
    "TrajectoryPCA",
    "bfs_distances",
    "chance_agreement",
    "field_trajectory",
    "field_trajectory_from_log",
    "icl_score",
    "path_agreement",
    "shortest_path",
    "shortest_path_moves",
    "smooth",
    "trajectory_pca",
    "turning_angles",
    "turning_points",
    "turning_scores",
]
