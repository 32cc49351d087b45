"""SQLite backend (embedded default)."""

from tideflow.storage.sqlite.backend import SQLiteStore

__all__ = ["SQLiteStore"]
