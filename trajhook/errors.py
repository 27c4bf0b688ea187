"""The one exception type trajhook raises."""

from __future__ import annotations


class TrajhookError(Exception):
    """Raised for bad input or a broken store, with the fix in a ``HINT:`` line.

    >>> raise TrajhookError("Recorder: every_n_steps=0 is not positive. HINT: pass every_n_steps=100.")
    Traceback (most recent call last):
    ...
    trajhook.errors.TrajhookError: Recorder: every_n_steps=0 is not positive. HINT: pass every_n_steps=100.
    """
