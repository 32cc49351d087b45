"""Shared fixtures: every behavioural test runs against both backends.

PostgreSQL: one database per test session, created from the server at $TIDEFLOW_TEST_PG (default
postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end. Between tests tideflow's
tables are emptied and every table in schema ``public`` (read models that projections and tests
create there) is dropped: each test starts as fresh as on SQLite, where it gets a new file.
Without a server the PostgreSQL variants are skipped - except under CI=true, where they fail, so
a missing server can never pass for green.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tideflow.app import App
from tideflow.clock import ManualClock
from tideflow.retrying import Backoff
from tideflow.storage import open_store
from tideflow.storage.flow_store import SqlFlowStore

ADMIN_URL = os.environ.get("TIDEFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgres"]
#: BACKENDS plus PostgreSQL without its fast paths (``fast_paths=False``: the flow store's plain
#: Python transitions, the append through a cursor): for the flow-store and event-store suites,
#: which override ``backend`` with it.
FLOW_BACKENDS = [*BACKENDS, "postgres-plain"]


def _with_db(url: str, dbname: str) -> str:
    base = url.rsplit("/", 1)[0]
    return f"{base}/{dbname}"


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated once."""
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true and is not reachable: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}: {exc}")
    name = f"tideflow_test_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = _with_db(ADMIN_URL, name)
    store = open_store(url)
    store.migrate()
    store.close()
    try:
        yield url
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _reset(url: str) -> None:
    """Empty tideflow's tables (migrations stay applied) and drop every table in ``public``."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT schemaname, format('%I.%I', schemaname, tablename) FROM pg_tables "
            "WHERE (schemaname = 'tideflow' AND tablename <> 'schema_migrations') "
            "OR schemaname = 'public'"
        ).fetchall()
        tideflow = [name for schema, name in rows if schema == "tideflow"]
        public = [name for schema, name in rows if schema == "public"]
        if tideflow:
            conn.execute(f"TRUNCATE {', '.join(tideflow)} CASCADE")
        if public:
            conn.execute(f"DROP TABLE IF EXISTS {', '.join(public)} CASCADE")


@pytest.fixture(autouse=True)
def _loggers_left_as_found() -> Iterator[None]:
    """Whatever a test configures on tideflow's loggers (the CLI's worker command run
    in-process, caplog.at_level, a test's own handler) ends with it: a handler left on
    'tideflow' would print a later test's worker lines into pytest's output."""
    loggers = [logging.getLogger(name) for name in ("tideflow", "psycopg.pool")]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, (handlers, level, propagate, disabled) in zip(loggers, saved, strict=True):
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outage backoff from 10 ms up to 0.5 s instead of 0.1 s up to 5 s, for tests of outages
    that the test itself ends (a wrapped store failing n times): what they check is that every
    loop waits the outage out and logs it once, not how long; the real schedule is left to
    tests/test_restart.py. Every ``Backoff()`` made during the test, in any module, uses it."""
    initial, maximum, *rest = Backoff.__init__.__defaults__ or ()
    assert (initial, maximum) == (0.1, 5.0), "Backoff's defaults changed: update quick_backoff"
    monkeypatch.setattr(Backoff.__init__, "__defaults__", (0.01, 0.5, *rest))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database URL of the parametrized backend, without events, runs or handler state and
    without tables in schema ``public``: on PostgreSQL a migrated database, on SQLite the path
    of a file that does not exist yet (the first write, through an App, creates and migrates
    it)."""
    if backend.startswith("postgres"):
        url: str = request.getfixturevalue("pg_url")
        _reset(url)
        return url
    return f"sqlite:///{tmp_path / 'tideflow.db'}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def store(backend: str, db_url: str, clock: ManualClock) -> Iterator[SqlFlowStore]:
    s = open_store(db_url, clock=clock, fast_paths=backend != "postgres-plain")
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def app(db_url: str) -> Iterator[App]:
    """An App on the parametrized backend with the wall clock."""
    a = App(db_url)
    yield a
    a.close()


@pytest.fixture
def clocked_app(db_url: str, clock: ManualClock) -> Iterator[App]:
    """An App whose storage reads time from ``clock`` (move it with clock.advance)."""
    a = App(db_url, clock=clock)
    yield a
    a.close()
