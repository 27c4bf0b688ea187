"""The docs scripts' doctests: pytest collects ``tests`` and ``trajhook`` only, so these run here."""

from __future__ import annotations

import doctest
import importlib.util
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("script", ["make_figures.py"])
def test_the_docs_scripts_doctests_pass(script):
    spec = importlib.util.spec_from_file_location(f"docs_{script[:-3]}", DOCS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0, result
