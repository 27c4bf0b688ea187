"""Framework adapters, imported as ``trajhook.integrations.<framework>``.

Each module imports its framework itself; ``import trajhook`` imports none of them.
"""
