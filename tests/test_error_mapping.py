"""Driver errors provoked for real and read through the one mapping module per backend
(``storage/<backend>/errors.py``): callers see tideflow's errors, never psycopg's or sqlite3's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import errors as pg_errors

from tests.pgdb import empty_database
from tideflow import Flow, step
from tideflow.errors import (
    DatabaseUnavailableError,
    InvalidDataError,
    RunAlreadyExistsError,
    SchemaMissingError,
    SchemaNotReadyError,
    StorageError,
)
from tideflow.events import ANY, NewEvent
from tideflow.storage import EventStore, open_event_store
from tideflow.storage.flow_store import SqlFlowStore
from tideflow.storage.postgres import PostgresDatabase
from tideflow.storage.postgres import errors as pg_mapping
from tideflow.storage.sqlite import SQLiteDatabase
from tideflow.storage.sqlite import errors as sqlite_mapping

Store = SqlFlowStore


class One(Flow, slug="mapping_one"):
    @step()
    def only(self, input):
        return input


@contextmanager
def unmigrated(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of an empty database of ``backend``: no tideflow schema at all."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with empty_database(request.getfixturevalue("pg_url")) as url:
        yield url


def open_store(url: str) -> Store:
    if url.startswith("sqlite"):
        return sqlite_store(url.removeprefix("sqlite:///"))[0]
    return pg_store(url)


def pg_store(url: str) -> Store:
    return SqlFlowStore(PostgresDatabase(url, pool_size=2), owns_db=True)


def sqlite_store(path: str) -> tuple[Store, SQLiteDatabase]:
    db = SQLiteDatabase(path)
    return SqlFlowStore(db, owns_db=True), db


def test_missing_schema_is_schema_not_ready(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with unmigrated(backend, tmp_path, request) as url:
        store = open_store(url)
        events: EventStore = open_event_store(url)
        try:
            with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
                store.get_run("r-1")
            with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
                store.start_run(One.definition, "r-1", "{}")
            with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
                events.append("s-1", [NewEvent("E")], ANY)
        finally:
            events.close()
            store.close()


def test_values_the_driver_refuses_are_invalid_data(store: Store) -> None:
    """Past tideflow's own checks (the store called directly): the driver's refusal is still a
    typed InvalidDataError - a surrogate on both backends (UTF-8 cannot encode it), a NUL on
    PostgreSQL (SQLite's text can hold it)."""
    with pytest.raises(InvalidDataError, match=r"surrogates|refused a value"):
        store.start_run(One.definition, "r-\ud800", "{}")
    with pytest.raises(InvalidDataError):
        store.get_run("r-\udfff")
    if store.db.dialect == "postgresql":
        with pytest.raises(InvalidDataError, match="NUL"):
            store.start_run(One.definition, "r-\x00", "{}")
        with pytest.raises(InvalidDataError):
            store.start_run(One.definition, "r-2", '{"a": "\\u0000"}')
    assert store.list_runs() == []


def test_lost_postgres_connection_inside_a_transaction(request: pytest.FixtureRequest) -> None:
    """pg_terminate_backend on the connection of an open transaction: the next statement and
    the end of the transaction fail as DatabaseUnavailableError, nothing is committed, and the
    store works again on a fresh connection."""
    url = request.getfixturevalue("pg_url")
    store = pg_store(url)
    events = open_event_store(url)
    try:
        # the Database's transaction, as every FlowStore call runs
        with (
            pytest.raises(DatabaseUnavailableError, match="unavailable"),
            store.db.transaction() as tx,
        ):
            tx.run(
                "insert_flow",
                flow_slug="lost",
                version="v1",
                shape="{}",
                created_at=store.clock.now(),
            )
            _terminate(url, tx.connection.info.backend_pid)
            tx.rows("get_run", run_id="r-1")
        with pytest.raises(DatabaseUnavailableError), events.transaction() as etx:
            etx.append("lost-1", [NewEvent("E")], ANY)
            _terminate(url, etx.connection.info.backend_pid)
            etx.append("lost-1", [NewEvent("E")], ANY)
        assert [f.flow_slug for f in store.list_flows()] == []
        assert events.stream_version("lost-1") == 0
    finally:
        events.close()
        store.close()


def _terminate(url: str, pid: int) -> None:
    with psycopg.connect(url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_locked_sqlite_file_past_the_busy_timeout(tmp_path: Path) -> None:
    """Another connection holds the write lock longer than the store's busy timeout: the write
    fails as DatabaseUnavailableError (transient), and succeeds once the lock is released."""
    path = tmp_path / "locked.db"
    store, db = sqlite_store(str(path))
    store.migrate()
    db.connection.execute("PRAGMA busy_timeout=50")
    other = sqlite3.connect(str(path), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseUnavailableError, match="locked"):
            store.start_run(One.definition, "r-1", "{}")
        other.execute("ROLLBACK")
        store.start_run(One.definition, "r-1", "{}")
        assert store.get_run("r-1").status == "started"
    finally:
        other.close()
        store.close()


class Two(Flow, slug="mapping_two"):
    @step()
    def only(self, input):
        return input


def test_a_failed_start_does_not_leave_its_flow_version_remembered(store: Store) -> None:
    """The first start of a flow version stores the version in the same transaction. When that
    transaction fails (here: the run id is taken), the version's row rolls back with it, so the
    store must not remember it as stored: the next start would skip the insert and fail on the
    foreign key."""
    store.start_run(One.definition, "taken", "{}")
    with pytest.raises(RunAlreadyExistsError):
        store.start_run(Two.definition, "taken", "{}")
    store.start_run(Two.definition, "fresh", "{}")
    assert store.get_run("fresh").flow_slug == "mapping_two"


def test_full_sqlite_database_rolls_back_and_recovers(tmp_path: Path) -> None:
    """A full disk, for real: SQLite's max_page_count caps the file, so the next write gets
    SQLITE_FULL. It is DatabaseUnavailableError, the transaction leaves nothing behind, and the
    same write works once there is room again."""
    path = tmp_path / "full.db"
    store, db = sqlite_store(str(path))
    store.migrate()
    try:
        pages = db.connection.execute("PRAGMA page_count").fetchone()[0]
        db.connection.execute(f"PRAGMA max_page_count={pages}")
        big = '{"blob":"' + "x" * 200_000 + '"}'
        with pytest.raises(DatabaseUnavailableError, match="full"):
            store.start_run(One.definition, "r-1", big)
        assert db.connection.execute("SELECT count(*) FROM runs").fetchone() == (0,)
        assert db.connection.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
        db.connection.execute("PRAGMA max_page_count=1073741823")
        store.start_run(One.definition, "r-1", big)
        assert store.get_run("r-1").input == {"blob": "x" * 200_000}
    finally:
        store.close()


# --- the classification itself, from the errors the drivers raise ------------------------------


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("08006", DatabaseUnavailableError),  # connection failure
        ("40001", DatabaseUnavailableError),  # serialization failure
        ("40P01", DatabaseUnavailableError),  # deadlock
        ("40002", StorageError),  # deferred constraint at COMMIT: fails again, not transient
        ("53100", DatabaseUnavailableError),  # disk full
        ("57P01", DatabaseUnavailableError),  # admin shutdown
        ("55P03", DatabaseUnavailableError),  # lock not available
        ("58030", DatabaseUnavailableError),  # I/O error
        ("3F000", SchemaMissingError),
        ("42P01", SchemaNotReadyError),
        ("22P02", InvalidDataError),
        ("23514", StorageError),  # a check constraint: a bug, not the database's state
    ],
)
def test_postgres_sqlstates(sqlstate: str, expected: type[Exception]) -> None:
    error = pg_mapping.translate(pg_errors.lookup(sqlstate)("boom"), "doing it")
    assert type(error) is expected and str(error).startswith("doing it failed")
    assert pg_mapping.is_transient(pg_errors.lookup(sqlstate)("boom")) == (
        expected is DatabaseUnavailableError
    )


def test_unencodable_text_is_invalid_data_on_both() -> None:
    exc = UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
    assert isinstance(pg_mapping.translate(exc), InvalidDataError)
    assert isinstance(sqlite_mapping.translate(exc), InvalidDataError)


def test_postgres_connections_have_keepalives_unless_the_url_says_otherwise(
    request: pytest.FixtureRequest,
) -> None:
    """A peer that vanished without closing the connection (a partition, a frozen VM) must be
    noticed, not waited on forever: every connection tideflow opens has TCP keepalives and a
    connect timeout - settings the URL names itself are left as the URL says."""
    url: str = request.getfixturevalue("pg_url")

    def options(store_url: str) -> dict[str, str]:
        db = PostgresDatabase(store_url)
        try:
            with db.pool.connection() as conn:
                return {
                    o.keyword.decode(): (o.val or b"").decode()
                    for o in conn.pgconn.info
                    if o.keyword in (b"keepalives", b"keepalives_idle", b"connect_timeout")
                }
        finally:
            db.close()

    assert options(url) == {"keepalives": "1", "keepalives_idle": "10", "connect_timeout": "5"}
    assert options(url + "?keepalives_idle=30")["keepalives_idle"] == "30"
