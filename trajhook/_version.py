"""The version of trajhook, kept here only: ``trajhook.__version__`` and pyproject.toml (dynamic) read it."""

__version__ = "0.1.0"
