"""Figures and animations from a loaded log or from arrays (matplotlib)."""

from trajhook.plots.curves import scalar_curves
from trajhook.plots.field import draw_field_trajectory, field_dynamics, field_trajectory_figure
from trajhook.plots.figures import figure_to_rgb, new_figure
from trajhook.plots.maze import (
    VectorFieldRenderer,
    animate_vector_field,
    arrow_glyphs,
    vector_field,
    vector_field_from_log,
    vector_field_from_probe,
)
from trajhook.plots.prompts import pca_trajectories, pca_trajectory, prompt_record, target_curves

__all__ = [
    "VectorFieldRenderer",
    "animate_vector_field",
    "arrow_glyphs",
    "draw_field_trajectory",
    "field_dynamics",
    "field_trajectory_figure",
    "figure_to_rgb",
    "new_figure",
    "pca_trajectories",
    "pca_trajectory",
    "prompt_record",
    "scalar_curves",
    "target_curves",
    "vector_field",
    "vector_field_from_log",
    "vector_field_from_probe",
]
