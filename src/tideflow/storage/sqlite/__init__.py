"""SQLite backend (embedded default): its Database, SQL and migrations."""

from tideflow.storage.sqlite.database import SQLiteDatabase

__all__ = ["SQLiteDatabase"]
