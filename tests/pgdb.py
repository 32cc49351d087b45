"""A throwaway, empty PostgreSQL database beside the test session's: for tests of what happens
before migrations (an unmigrated database, an upgrade from an older schema)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg


@contextmanager
def empty_database(beside_url: str, prefix: str = "tideflow_bare") -> Iterator[str]:
    """The URL of a new database on ``beside_url``'s server, dropped (connections and all)
    when the block ends."""
    server, name = beside_url.rsplit("/", 1)[0], f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
