"""The benchmarks' throwaway PostgreSQL databases, in one place.

Each benchmark creates ``tideflow_bench_<random>`` on the server at ``--pg-url`` (default
``$TIDEFLOW_TEST_PG``, else the local server), so that it never measures - or damages - a
database someone uses, and drops it at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg

ADMIN_URL = os.environ.get("TIDEFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_database(admin_url: str = ADMIN_URL) -> tuple[str, Callable[[], None]]:
    """A new, empty database on ``admin_url``'s server: its URL, and the function that drops
    it (with any connection still open to it)."""
    name = f"tideflow_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{admin_url.rsplit('/', 1)[0]}/{name}", drop


@contextmanager
def postgres_database(admin_url: str = ADMIN_URL) -> Iterator[str]:
    """``pg_database`` for a ``with`` block."""
    url, drop = pg_database(admin_url)
    try:
        yield url
    finally:
        drop()
