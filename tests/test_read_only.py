"""Reading never writes (issue 7, section 5).

Every read - the CLI's read commands and the App's read calls - on a database without the
tideflow schema raises ``SchemaMissingError`` (the CLI: one line, exit code 1) and leaves the
database exactly as it was: no ``tideflow`` schema in PostgreSQL, no tables in an existing SQLite
file, no file and no folder for a SQLite path that does not exist. A database with pending
migrations raises ``SchemaNotReadyError`` and keeps its old schema. URLs that would let libpq or
a bare path decide where the data goes are refused before anything connects. And the writers -
``tideflow migrate``, the worker, ``start_flow``, ``dispatch`` - still create the schema.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.events.test_app_events import Inventory
from tests.pgdb import empty_database
from tests.test_cli import QUICK, Quick, assert_one_line_error, invoke
from tideflow import App
from tideflow.errors import (
    SchemaMissingError,
    SchemaNotReadyError,
    StorageError,
    UnsupportedDatabaseURLError,
)
from tideflow.events import Command
from tideflow.storage import check_schema, open_store
from tideflow.storage.sqlfile import load_migrations

HANDLERS_APP = "tests.events.test_events_cli:HANDLERS"

#: Every CLI command that reads, or changes rows only a migrated database can hold.
READ_COMMANDS: list[list[str]] = [
    ["runs"],
    ["runs", "--flow", "cli_quick", "--status", "failed"],
    ["run", "some-run"],
    ["run", "some-run", "--tasks"],
    ["flows"],
    ["flows", "--app", QUICK],
    ["cancel", "some-run"],
    ["events"],
    ["events", "--stream", "s-1", "--json"],
    ["stream", "s-1"],
    ["handlers"],
    ["handlers", "--app", HANDLERS_APP],
    ["handlers", "reset", "cli_totals", "--yes"],
    ["handlers", "resume", "cli_ledger"],
    ["deadletters"],
    ["deadletters", "retry", "1", "--app", HANDLERS_APP],
    ["sagas"],
    ["saga", "shipping", "order-1"],
]


def _read_apis(app: App) -> dict[str, Callable[[], object]]:
    """The App's read calls (and cancel_run, which needs a run, so a schema)."""
    return {
        "get_run": lambda: app.get_run("some-run"),
        "list_runs": lambda: app.list_runs(),
        "list_runs(filters)": lambda: app.list_runs(flow="cli_quick", status="started"),
        "wait_for_run": lambda: app.wait_for_run("some-run", timeout=0.1),
        "cancel_run": lambda: app.cancel_run("some-run"),
        "read_store().list_flows": lambda: app.read_store().list_flows(),
        "aio.get_run": lambda: asyncio.run(app.aio.get_run("some-run")),
        "aio.list_runs": lambda: asyncio.run(app.aio.list_runs()),
    }


# --- the state of a database, before and after --------------------------------------------------


def _pg_has_schema(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'tideflow'"
        ).fetchone() == (1,)


def _sqlite_tables(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    finally:
        conn.close()


class Unmigrated:
    """A database without the tideflow schema: an empty PostgreSQL database, or an existing,
    empty SQLite file."""

    def __init__(self, url: str, path: Path | None) -> None:
        self.url = url
        self.path = path

    def assert_untouched(self, what: str = "") -> None:
        if self.path is None:
            assert not _pg_has_schema(self.url), f"{what} created the tideflow schema"
        else:
            assert self.path.stat().st_size == 0, f"{what} wrote to the SQLite file"
            assert _sqlite_tables(self.path) == [], f"{what} created tables"
            siblings = sorted(p.name for p in self.path.parent.iterdir())
            assert siblings == [self.path.name], f"{what} left {siblings}"

    def has_schema(self) -> bool:
        if self.path is None:
            return _pg_has_schema(self.url)
        return "schema_migrations" in _sqlite_tables(self.path)


@pytest.fixture
def unmigrated(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Unmigrated]:
    if backend == "postgres":
        with empty_database(request.getfixturevalue("pg_url"), "tideflow_ro") as url:
            yield Unmigrated(url, None)
        return
    folder = tmp_path / "db"
    folder.mkdir()
    path = folder / "empty.db"
    path.touch()
    yield Unmigrated(f"sqlite:///{path}", path)


# --- (a) + (c): a database without the schema ----------------------------------------------------


def test_every_read_command_refuses_a_database_without_the_schema(unmigrated: Unmigrated) -> None:
    where = unmigrated.url.removeprefix("sqlite:///") if unmigrated.path else unmigrated.url
    for args in READ_COMMANDS:
        result = invoke(*args, "-d", unmigrated.url)
        assert_one_line_error(
            result,
            1,
            f"no tideflow schema in {where}",
            f"run `tideflow migrate -d {unmigrated.url}`",
        )
        unmigrated.assert_untouched(" ".join(args))


def test_the_url_from_the_environment_is_read_the_same_way(unmigrated: Unmigrated) -> None:
    for args in (["runs"], ["events"], ["sagas"]):
        result = invoke(*args, TIDEFLOW_DATABASE_URL=unmigrated.url)
        assert_one_line_error(result, 1, "no tideflow schema in", "tideflow migrate -d")
    unmigrated.assert_untouched("a read with $TIDEFLOW_DATABASE_URL")


def test_every_read_api_refuses_a_database_without_the_schema(unmigrated: Unmigrated) -> None:
    with App(unmigrated.url, flows=[Quick]) as app:  # migrate=True: it migrates before WRITES
        for name, call in _read_apis(app).items():
            with pytest.raises(
                SchemaMissingError,
                match=r"no tideflow schema in .*: run "
                r"`tideflow migrate -d ",
            ):
                call()
            unmigrated.assert_untouched(name)
    store = open_store(unmigrated.url, create=False)
    try:
        with pytest.raises(SchemaMissingError):
            check_schema(store)
    finally:
        store.close()
    unmigrated.assert_untouched("open_store(create=False)")


def test_a_write_after_refused_reads_creates_the_schema_and_reads_then_work(
    unmigrated: Unmigrated,
) -> None:
    with App(unmigrated.url, flows=[Quick]) as app:
        with pytest.raises(SchemaMissingError):
            app.list_runs()
        run_id = app.start_flow(Quick, {"n": 1})
        assert app.get_run(run_id).status == "started"
        assert [r.run_id for r in app.list_runs()] == [run_id]
    assert unmigrated.has_schema()
    listed = invoke("runs", "--wide", "-d", unmigrated.url)
    assert listed.exit_code == 0, listed.output
    assert run_id in listed.stdout


# --- writers create the schema -------------------------------------------------------------------


def test_migrate_command_creates_the_schema(unmigrated: Unmigrated) -> None:
    result = invoke("migrate", "-d", unmigrated.url)
    assert result.exit_code == 0, result.output
    assert "applied 0001_initial" in result.stdout
    assert unmigrated.has_schema()
    assert invoke("runs", "-d", unmigrated.url).exit_code == 0


def test_worker_command_creates_the_schema(unmigrated: Unmigrated) -> None:
    result = invoke(
        "worker", "--app", QUICK, "-d", unmigrated.url, "--until-idle", "--poll-interval", "0.05"
    )
    assert result.exit_code == 0, result.output
    assert unmigrated.has_schema()
    flows = invoke("flows", "-d", unmigrated.url)
    assert flows.exit_code == 0 and "cli_quick" in flows.stdout, flows.output


def test_app_run_worker_creates_the_schema(unmigrated: Unmigrated) -> None:
    with App(unmigrated.url, flows=[Quick]) as app:
        app.run_worker(until_idle=True, poll_interval=0.05)
    assert unmigrated.has_schema()


def test_start_command_and_dispatch_create_the_schema(
    unmigrated: Unmigrated, backend: str, tmp_path: Path
) -> None:
    started = invoke("start", "cli_quick", "--app", QUICK, "-i", '{"n": 1}', "-d", unmigrated.url)
    assert started.exit_code == 0, started.output
    assert unmigrated.has_schema()
    # dispatch, on another fresh database
    if backend == "postgres":
        with empty_database(unmigrated.url, "tideflow_ro") as url:
            with App(url, aggregates=[Inventory]) as app:
                app.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
            assert _pg_has_schema(url)
    else:
        path = tmp_path / "new" / "folder" / "dispatch.db"
        with App(f"sqlite:///{path}", aggregates=[Inventory]) as app:
            app.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
        assert "schema_migrations" in _sqlite_tables(path)


def test_migrate_false_keeps_writes_from_migrating(unmigrated: Unmigrated) -> None:
    # (SQLite's "no such table" may not be mapped to a tideflow error: not this change's work.)
    with (
        App(unmigrated.url, flows=[Quick], migrate=False) as app,
        pytest.raises((StorageError, sqlite3.OperationalError)),
    ):
        app.start_flow(Quick, {"n": 1})
    assert not unmigrated.has_schema()


# --- an older schema: SchemaNotReadyError, not a migration ---------------------------------------


def _migrate_up_to(url: str, last: int) -> list[str]:
    """Apply the migrations up to ``last`` by hand, as an older tideflow did; the rest's names."""
    sqlite = url.startswith("sqlite")
    migrations = load_migrations(
        "tideflow.storage.sqlite" if sqlite else "tideflow.storage.postgres"
    )
    if sqlite:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT "
            "NOT NULL, applied_at REAL NOT NULL)"
        )
        for m in migrations[:last]:
            conn.executescript(m.sql)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (m.version, m.name))
        conn.commit()
        conn.close()
    else:
        with psycopg.connect(url) as pg:
            pg.execute("CREATE SCHEMA tideflow")
            pg.execute(
                "CREATE TABLE tideflow.schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL)"
            )
            for m in migrations[:last]:
                pg.execute(m.sql.encode())
                pg.execute(
                    "INSERT INTO tideflow.schema_migrations VALUES (%s, %s, now())",
                    (m.version, m.name),
                )
    return [f"{m.version:04d}_{m.name}" for m in migrations[last:]]


def _applied(url: str) -> list[int]:
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            return sorted(r[0] for r in conn.execute("SELECT version FROM schema_migrations"))
        finally:
            conn.close()
    with psycopg.connect(url) as pg:
        return sorted(r[0] for r in pg.execute("SELECT version FROM tideflow.schema_migrations"))


def test_reads_on_an_older_schema_ask_for_a_migration(unmigrated: Unmigrated) -> None:
    pending = _migrate_up_to(unmigrated.url, 5)
    assert pending, "this test needs a migration after the fifth"
    for args in (["runs"], ["events"], ["handlers"], ["sagas"], ["flows"]):
        result = invoke(*args, "-d", unmigrated.url)
        assert_one_line_error(
            result,
            1,
            "older than this tideflow",
            f"pending migrations: {', '.join(pending)}",
            "tideflow migrate -d",
        )
    with App(unmigrated.url) as app:
        with pytest.raises(SchemaNotReadyError, match="pending migrations") as caught:
            app.list_runs()
        assert not isinstance(caught.value, SchemaMissingError)
    assert _applied(unmigrated.url) == [1, 2, 3, 4, 5]
    # A writer brings it up to date.
    with App(unmigrated.url, flows=[Quick]) as app:
        app.start_flow(Quick, {"n": 1})
    assert len(_applied(unmigrated.url)) == 5 + len(pending)


# --- (b) a SQLite path in a folder that does not exist -------------------------------------------


def test_sqlite_reads_never_create_the_file_or_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "nodir" / "deeper"
    url = f"sqlite:///{folder / 'x.db'}"
    for args in READ_COMMANDS:
        result = invoke(*args, "-d", url)
        assert_one_line_error(
            result,
            1,
            f"no tideflow schema in {folder / 'x.db'} (no such file)",
            f"run `tideflow migrate -d {url}`",
        )
        assert not (tmp_path / "nodir").exists(), f"{' '.join(args)} created the folder"
    with App(url, flows=[Quick]) as app:
        for name, call in _read_apis(app).items():
            with pytest.raises(SchemaMissingError, match="no such file"):
                call()
            assert not (tmp_path / "nodir").exists(), f"{name} created the folder"
        # ... and a write does create them, as before.
        app.start_flow(Quick, {"n": 1})
    assert (folder / "x.db").is_file()


def test_sqlite_relative_path_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("runs")  # the default, sqlite:///tideflow.db
    assert_one_line_error(
        result,
        1,
        "no tideflow schema in tideflow.db (no such file)",
        "run `tideflow migrate -d sqlite:///tideflow.db`",
    )
    assert list(tmp_path.iterdir()) == []


def test_sqlite_reads_see_a_wal_database_with_and_without_its_side_files(tmp_path: Path) -> None:
    """Reads open the file read-write without creating it (``mode=rw``), not ``mode=ro``: a
    read-only connection could not rebuild the WAL index (-shm) once the last writer has gone,
    and must see commits still in the -wal file while a writer is open."""
    path = tmp_path / "wal.db"
    url = f"sqlite:///{path}"
    with App(url, flows=[Quick]) as writer:
        run_id = writer.start_flow(Quick, {"n": 1})
        assert Path(f"{path}-wal").exists()  # the run is in the WAL, not yet in the file
        during = invoke("runs", "--wide", "-d", url)
        assert during.exit_code == 0 and run_id in during.stdout, during.output
    assert not Path(f"{path}-shm").exists() and not Path(f"{path}-wal").exists()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    after = invoke("run", run_id, "-d", url)
    assert after.exit_code == 0 and run_id in after.stdout, after.output
    with App(url) as reader:
        assert reader.get_run(run_id).status == "started"
        assert reader.cancel_run(run_id)  # the read connection can write a migrated database
    assert App(url).get_run(run_id).status == "cancelled"


def test_a_file_that_is_not_a_database_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database, just some text that is long enough to have a header" * 9)
    before = path.read_bytes()
    result = invoke("runs", "-d", f"sqlite:///{path}")
    assert_one_line_error(result, 1, "file is not a database", str(path))
    assert path.read_bytes() == before


# --- (d) URLs refused before anything connects ----------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("postgresql:///tideflow", ("names no host", "postgresql://user@host:5432/dbname")),
        ("postgresql://", ("names no host and no database name", "postgresql://user@host:5432/")),
        ("postgres://", ("names no host", "postgresql://user@host:5432/dbname")),
        ("postgresql://user:secret@:5432/db", ("names no host", "user:***@")),
        (
            "postgresql://postgres@127.0.0.1:5432",
            ("names no database name", "postgresql://user@host:5432/dbname"),
        ),
        ("tideflow.db", ("'tideflow.db' is not a URL", "sqlite:///tideflow.db")),
        ("./x.db", ("'./x.db' is not a URL", "write sqlite:///./x.db")),
        ("/tmp/nowhere/x.db", ("is not a URL", "write sqlite:////tmp/nowhere/x.db")),
        ("sqlite://x.db", ("two slashes", "write sqlite:///x.db")),
        ("mysql://localhost/db", ("unsupported database URL 'mysql'", "postgresql://")),
    ],
)
def test_urls_that_name_no_database_are_refused(
    url: str, fragments: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # Were libpq asked, these would point it somewhere: the refusal must come first.
    monkeypatch.setenv("PGHOST", "127.0.0.1")
    monkeypatch.setenv("PGDATABASE", "postgres")
    for args in (
        ["runs"],
        ["events"],
        ["sagas"],
        ["migrate"],
        ["start", "cli_quick", "--app", QUICK],
    ):
        result = invoke(*args, "-d", url)
        assert_one_line_error(result, 2, *fragments)
        assert "secret" not in result.output
    env = invoke("runs", TIDEFLOW_DATABASE_URL=url)
    assert_one_line_error(env, 2, "$TIDEFLOW_DATABASE_URL", *fragments[1:])
    for make in (lambda: App(url), lambda: open_store(url)):
        with pytest.raises(UnsupportedDatabaseURLError) as caught:
            make()
        for fragment in fragments:
            assert fragment in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_urls_with_an_explicit_socket_or_database_are_accepted() -> None:
    from tideflow.storage import check_url

    for url in (
        "postgresql:///db?host=/var/run/postgresql",
        "postgresql://h/?dbname=x",
        "sqlite://",
        "sqlite:///x.db",
        "sqlite:////tmp/x.db",
        "postgres://u:p@h:1/d?sslmode=require",
    ):
        assert check_url(url) == url


def test_a_postgres_database_that_does_not_exist_is_a_clear_storage_error(pg_url: str) -> None:
    """(The SQLite counterpart, a missing file, is test_sqlite_reads_never_create_...)"""
    server = pg_url.rsplit("/", 1)[0]
    url = f"{server}/tideflow_no_such_database"
    result = invoke("runs", "-d", url)
    assert_one_line_error(
        result,
        1,
        "cannot connect to PostgreSQL",
        'database "tideflow_no_such_database" does not exist',
    )
    with App(url) as app, pytest.raises(StorageError, match="does not exist"):
        app.list_runs()
