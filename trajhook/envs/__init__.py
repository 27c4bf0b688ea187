"""Gymnasium environments, imported as ``trajhook.envs.<name>`` (each imports gymnasium and its backend)."""
