"""The HTML report: the live page of ``trajhook serve`` as one self-contained offline file.

``trajhook report RUN.h5 [MORE.h5 ...] -o report.html`` or :func:`write_report`. The same page and
script draw it (:mod:`trajhook.serve`); the server's answers are inlined, maze frames thinned.
"""

from trajhook.report.data import run_names, thin_indices
from trajhook.report.page import render_page, snapshot, write_report

__all__ = ["render_page", "run_names", "snapshot", "thin_indices", "write_report"]
