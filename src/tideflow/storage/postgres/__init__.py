"""PostgreSQL backend (production): its Database, SQL, migrations and fast paths."""

from tideflow.storage.postgres.database import PostgresDatabase

__all__ = ["PostgresDatabase"]
