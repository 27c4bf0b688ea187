"""Pure numpy analysis of recorded trajectories; works on arrays from ``trajhook.load``."""

from trajhook.analysis.maze import bfs_distances, path_agreement, shortest_path, shortest_path_moves
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
    "TrajectoryPCA",
    "bfs_distances",
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
