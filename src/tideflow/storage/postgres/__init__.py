"""PostgreSQL backend (production)."""

from tideflow.storage.postgres.backend import PostgresStore

__all__ = ["PostgresStore"]
