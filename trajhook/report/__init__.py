"""The HTML report: one self-contained offline file with one step slider driving every panel.

``trajhook report RUN.h5 [MORE.h5 ...] -o report.html`` or :func:`write_report`. The data
(:mod:`trajhook.report.data`) comes from :mod:`trajhook.analysis`; Plotly draws, and its
JavaScript is inlined in the page.
"""

from trajhook.report.data import report_data, thin_indices
from trajhook.report.page import render_page, write_report

__all__ = ["render_page", "report_data", "thin_indices", "write_report"]
