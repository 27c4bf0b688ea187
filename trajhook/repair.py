"""Moved to :mod:`trajhook.store.repair`; this name stays so that existing imports keep working."""

from trajhook.store.repair import Salvage, repair, salvage

__all__ = ["Salvage", "repair", "salvage"]
