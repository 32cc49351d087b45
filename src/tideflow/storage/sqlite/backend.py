"""SQLite backend: the embedded default, no server needed.

One connection per store, shared by the threads of this process under a lock; other processes
(a CLI, a second worker) coordinate through SQLite's own database lock. Every write transaction
starts with ``BEGIN IMMEDIATE`` so that it takes the write lock up front: a deferred transaction
that reads and then writes can fail with SQLITE_BUSY half way, which would turn a claim into an
error instead of a short wait. WAL mode lets readers run while a writer holds the lock. Within
``joined`` (a process manager starting flows in its batch), operations run under a savepoint of
the event store transaction that already holds the lock on this same connection.

SQLite has no NOTIFY. A worker in the same process as the client is woken at once; to hear of
commits from other processes, a subscriber starts a watcher thread that reads ``PRAGMA
data_version`` every few milliseconds - a check of the shared WAL index, no disk read - and wakes
the worker when another connection has committed.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tideflow.clock import Clock
from tideflow.errors import RunAlreadyExistsError, StorageError
from tideflow.storage.flow_engine import SqlEngine
from tideflow.storage.rows import Row
from tideflow.storage.sqlfile import load_migrations, load_queries
from tideflow.storage.sqlite.errors import rollback_quietly, translate, translated
from tideflow.storage.urls import schema_error

#: How often a subscribed store checks whether another process committed.
WATCH_INTERVAL = 0.005
_PARAM = re.compile(r"%\((\w+)\)s")
_QUERIES = {
    name: _PARAM.sub(r":\1", sql) for name, sql in load_queries("tideflow.storage.sqlite").items()
}


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return value


def _column(name: str, value: Any) -> Any:
    if name.endswith("_at") and value is not None:
        return datetime.fromtimestamp(value, UTC)
    return value


class _SQLiteTx:
    notify = False

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.notify = False

    def _execute(self, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
        try:
            return self.conn.execute(_QUERIES[name], {k: _param(v) for k, v in params.items()})
        except sqlite3.IntegrityError as exc:
            if name == "insert_run" and "UNIQUE" in str(exc):
                raise RunAlreadyExistsError(
                    f"a run with id {params['run_id']!r} already exists; pass another run_id "
                    "or none to get a fresh one"
                ) from exc
            raise translate(exc, f"query {name}") from exc
        except (sqlite3.Error, UnicodeEncodeError) as exc:
            raise translate(exc, f"query {name}") from exc

    def rows(self, name: str, **params: Any) -> list[Row]:
        cur = self._execute(name, params)
        names = [d[0] for d in cur.description or ()]
        return [
            {n: _column(n, v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()
        ]

    def run(self, name: str, **params: Any) -> int:
        return self._execute(name, params).rowcount


class SQLiteStore(SqlEngine):
    def __init__(
        self, path: str | Path, clock: Clock | None = None, *, create: bool = True
    ) -> None:
        """``create=False`` opens the file for reading (and the writes of a database that has
        the schema, such as a cancel) without creating anything: a missing file raises
        ``SchemaMissingError`` and neither it nor its folder is created, and the journal mode is
        left alone (a tideflow database is already in WAL mode: ``migrate`` set it, and WAL mode
        is a property of the file)."""
        super().__init__(clock)
        self.path = str(path)
        self.url = "sqlite:///" + self.path
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._conn = self._open(create)

    def _open(self, create: bool) -> sqlite3.Connection:
        memory = self.path == ":memory:"
        if not create and not memory and not Path(self.path).is_file():
            raise schema_error(f"{self.path} (no such file)", self.url, None)
        try:
            if create or memory:
                if not memory:
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
                conn.execute("PRAGMA journal_mode=WAL")
            else:
                # mode=rw: never creates the file (plain connect would). Not mode=ro: a
                # read-only connection cannot rebuild a WAL database's -shm index when it is
                # missing, and cancel/reset/resume write through this connection.
                conn = sqlite3.connect(
                    f"file:{quote(self.path)}?mode=rw",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30.0,
                )
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(
                f"cannot open SQLite database {self.path!r}: {exc}; check that the directory "
                "exists and is writable, or pass another sqlite:/// URL"
            ) from exc

    @property
    def connection(self) -> sqlite3.Connection:
        """The one connection, shared by the event and handler stores opened on this store;
        hold ``lock`` while using it."""
        return self._conn

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    @contextmanager
    def _tx(self) -> Iterator[_SQLiteTx]:
        with self._lock:
            tx = _SQLiteTx(self._conn)
            if self._joined_connection() is not None and self._conn.in_transaction:
                begin, commit = "SAVEPOINT tideflow_flows", "RELEASE tideflow_flows"
                rollback: tuple[str, ...] = ("ROLLBACK TO tideflow_flows", commit)
            else:
                begin, commit, rollback = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
            with translated(f"SQLite database {self.path!r}: beginning a transaction"):
                self._conn.execute(begin)
            try:
                yield tx
            except BaseException:
                rollback_quietly(self._conn, rollback)
                raise
            try:
                self._conn.execute(commit)
            except sqlite3.Error as exc:
                rollback_quietly(self._conn, rollback)
                raise translate(exc, f"SQLite database {self.path!r}: committing") from exc
        # Joined, this is before the caller's commit: a worker of this process that wakes now
        # waits for the lock, which the caller's transaction holds until it ends.
        if tx.notify:
            self._notify_local()

    def _joinable(self, connection: Any) -> None:
        if connection is not self._conn:
            raise StorageError(
                "a SQLite flow store can only join a transaction on its own connection; open "
                "the event store on this flow store (tideflow.storage.open_event_store_on("
                "flow_store)) so that both share it"
            )
        if not self._conn.in_transaction:
            raise StorageError(
                "joined() needs an open transaction on the connection: call it "
                "inside `with event_store.transaction() as tx`"
            )

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(callback)
        if self._watcher is None and self.path != ":memory:":
            self._watcher = threading.Thread(
                target=self._watch, name="tideflow-sqlite-watch", daemon=True
            )
            self._watcher.start()
        return unsubscribe

    def _watch(self) -> None:
        conn = sqlite3.connect(self.path, check_same_thread=False)
        try:
            last = conn.execute("PRAGMA data_version").fetchone()[0]
            while not self._closing.wait(WATCH_INTERVAL):
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last:
                    last = version
                    self._notify_local()
        except sqlite3.Error:  # pragma: no cover - the file went away; workers still poll
            pass
        finally:
            conn.close()

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with self._lock:
            with translated(f"SQLite database {self.path!r}: migrating"):
                self._conn.execute("BEGIN EXCLUSIVE")
            try:
                self._conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at REAL NOT NULL)"
                )
                done = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations")}
                for m in load_migrations("tideflow.storage.sqlite"):
                    if m.version in done:
                        continue
                    for statement in _statements(m.sql):
                        self._conn.execute(statement)
                    self._conn.execute(
                        "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                        (m.version, m.name, self.clock.now().timestamp()),
                    )
                    applied.append(f"{m.version:04d}_{m.name}")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        return applied

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout=1.0)
        with self._lock:
            self._conn.close()

    def pending_migrations(self) -> list[str] | None:
        """The migrations this database lacks, or None if it has no tideflow schema; reads
        only (an empty file stays empty)."""
        try:
            with self._lock:
                if (
                    self._conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' "
                        "AND name = 'schema_migrations'"
                    ).fetchone()
                    is None
                ):
                    return None
                done = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations")}
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot read SQLite database {self.path!r}: {exc}") from exc
        return [
            f"{m.version:04d}_{m.name}"
            for m in load_migrations("tideflow.storage.sqlite")
            if m.version not in done
        ]

    def check_schema(self) -> None:
        """Raise ``SchemaMissingError`` / ``SchemaNotReadyError`` unless the schema is current."""
        pending = self.pending_migrations()
        if pending is None or pending:
            raise schema_error(self.path, self.url, pending)


def _statements(script: str) -> Iterator[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer
            buffer = ""
    if buffer.strip():  # pragma: no cover - a migration missing its last semicolon
        raise ValueError(f"incomplete SQL statement in migration: {buffer[:80]!r}")
