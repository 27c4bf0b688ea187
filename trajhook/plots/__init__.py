"""Figures and animations from a loaded log or from arrays (matplotlib)."""

from trajhook.plots.figures import figure_to_rgb, new_figure
from trajhook.plots.maze import (
    VectorFieldRenderer,
    animate_vector_field,
    vector_field,
    vector_field_from_log,
    vector_field_from_probe,
)
from trajhook.plots.prompts import pca_trajectory, target_curves

__all__ = [
    "VectorFieldRenderer",
    "animate_vector_field",
    "figure_to_rgb",
    "new_figure",
    "pca_trajectory",
    "target_curves",
    "vector_field",
    "vector_field_from_log",
    "vector_field_from_probe",
]
