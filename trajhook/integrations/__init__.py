"""Framework adapters, imported as ``trajhook.integrations.<framework>``.

Each module imports its framework itself (through :func:`trajhook.extras.require`); ``import
trajhook`` imports none of them. What the callbacks share (argument checks, the Recorder they open
and close, ``overwrite``, checkpoint state, ``mark(label, step=None)``) is in :mod:`.base`; each
adapter keeps only its framework's hooks, one line each.
"""
