"""Moved to :mod:`trajhook.store.lock`; this name stays so that existing imports keep working."""

from trajhook.store.lock import WriterLock, lock_path, writer_alive

__all__ = ["WriterLock", "lock_path", "writer_alive"]
