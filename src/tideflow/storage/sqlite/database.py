"""SQLite's ``Database``: the embedded default, no server needed.

One connection per Database, shared by the threads of this process under a lock; other processes
(a CLI, a second worker) coordinate through SQLite's own database lock. Every write transaction
starts with ``BEGIN IMMEDIATE`` so that it takes the write lock up front: a deferred transaction
that reads and then writes can fail with SQLITE_BUSY half way, which would turn a claim into an
error instead of a short wait. WAL mode lets readers run while a writer holds the lock. A
transaction begun inside another on the same thread is a savepoint of it.

SQLite has no NOTIFY. Subscribers in this process are woken directly; to hear of commits from
other processes, the first subscriber starts a watcher thread that reads ``PRAGMA data_version``
every few milliseconds - a check of the shared WAL index, no disk read - on a connection of its
own, and wakes every subscriber when another connection has committed.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote
from uuid import UUID

from tideflow.clock import Clock, SystemClock
from tideflow.errors import DuplicateKeyError, StorageError
from tideflow.events.errors import (
    DuplicateIdempotencyKeyError,
    StreamDeletedError,
    WrongExpectedVersionError,
)
from tideflow.events.handling import Dialect
from tideflow.storage.database import RUNS_CHANNEL, TASKS_CHANNEL, Row, Tx, run_after_commit
from tideflow.storage.event_contract import duplicate_event_id
from tideflow.storage.sqlfile import load_dialect, load_migrations, pending
from tideflow.storage.sqlite.errors import is_transient, rollback_quietly, translate, translated
from tideflow.storage.unavailable import is_unavailable
from tideflow.storage.urls import require_current, schema_error
from tideflow.storage.wakeups import Subscribers, TxCallbacks

if TYPE_CHECKING:
    from tideflow.storage.event_contract import PreparedAppend

#: How often a subscribed database checks whether another connection committed.
WATCH_INTERVAL = 0.005
#: The same while a wait for a run is parked here (``RUNS_CHANNEL`` has subscribers): a client
#: waiting for a run would otherwise see its end 2.5 ms late on average. Not always: each check
#: wakes a thread, and at 1 ms an idle process spends ~6% of a core on it (2.4% at 5 ms).
WATCH_INTERVAL_WAITING = 0.001
_PYFORMAT = re.compile(r"%\((\w+)\)s|%s|%%")


@functools.lru_cache(maxsize=512)
def sqlite_sql(sql: str) -> str:
    """``%(name)s`` / ``%s`` / ``%%`` placeholders (psycopg's, tideflow's SQL style) in SQLite's
    style (``:name``, ``?``, ``%``): SQL is written once for both dialects."""
    return _PYFORMAT.sub(
        lambda m: f":{m.group(1)}" if m.group(1) else "?" if m.group(0) == "%s" else "%", sql
    )


QUERIES = {name: sqlite_sql(sql) for name, sql in load_dialect("tideflow.storage.sqlite").items()}


#: Parameter types the driver takes as they are.
_AS_IS = frozenset({str, int, float, bytes, type(None)})


def _params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` in the driver's types: a datetime as epoch seconds, a list as a JSON array, a
    UUID as text. Most statements have none of those, and are passed on as they are: this runs
    for every statement, the append's included."""
    for value in params.values():
        if type(value) not in _AS_IS:
            return {k: v if type(v) in _AS_IS else _param(v) for k, v in params.items()}
    return params


def _param(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    if isinstance(value, UUID):
        return str(value)
    return value


def _column(name: str, value: Any) -> Any:
    if name.endswith("_at") and value is not None:
        return datetime.fromtimestamp(value, UTC)
    return value


def split_script(script: str) -> Iterator[str]:
    """Statements of an SQL script, for SQLite, whose ``execute`` runs one statement (and whose
    ``executescript`` would commit the caller's transaction). ``sqlite3.complete_statement``
    knows where one ends, triggers' ``BEGIN ... END`` included."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip().strip(";").strip():
                yield buffer
            buffer = ""
    if buffer.strip():
        yield buffer


#: ``records_below_horizon``'s queries, as SQLite reads them.
_PAGE_QUERIES = {"read_page": "read_all", "read_page_of_types": "read_all_of_types"}


class SQLiteTx(TxCallbacks):
    """``Tx`` on the Database's connection; the caller holds its lock."""

    dialect: Dialect = "sqlite"

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        super().__init__()
        self.connection = conn
        self.notify = False
        self.closed = False  # the block ended
        self.run_ends: set[str] = set()
        self._path = path

    def _execute(self, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
        try:
            return self.connection.execute(QUERIES[name], _params(params))
        except (sqlite3.Error, UnicodeEncodeError) as exc:
            raise translate(exc, f"SQLite database {self._path!r}: query {name}") from exc

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        cur = self._execute(name, params)
        names = [d[0] for d in cur.description or ()]
        return [
            {n: _column(n, v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()
        ]

    def run(self, name: str, /, **params: Any) -> int:
        return self._execute(name, params).rowcount

    def run_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        try:
            self.connection.executemany(QUERIES[name], [_params(p) for p in params])
        except (sqlite3.Error, UnicodeEncodeError) as exc:
            raise translate(exc, f"SQLite database {self._path!r}: query {name}") from exc

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        return self._execute(name, params).fetchall()

    # No round trips to save in process: what PostgreSQL sends later runs now.

    def defer(self, name: str, /, **params: Any) -> None:
        self._open(name)
        self.run(name, **params)

    def defer_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        self._open(name)
        self.run_many(name, params)

    def prefetch(self, name: str, /, **params: Any) -> Callable[[], list[Row]]:
        self._open(name)
        rows = self.rows(name, **params)

        def fetched() -> list[Row]:
            self._open(name)  # as on PostgreSQL: read inside the transaction
            return rows

        return fetched

    def page_after_commit(
        self, name: str, /, *, after: int, **params: Any
    ) -> Callable[[], tuple[int, list[tuple[Any, ...]]] | None]:
        return lambda: None  # no round trip to save: the next page is read the usual way

    def _open(self, name: str) -> None:
        if self.closed:
            raise StorageError(f"query {name}: this transaction has ended")

    def execute(self, sql: str, params: Any = None) -> sqlite3.Cursor:
        if params is None:
            return self.connection.execute(sql)
        return self.connection.execute(sqlite_sql(sql), params)

    def execute_script(self, script: str) -> None:
        for statement in split_script(script):
            self.connection.execute(statement)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with self._savepoint_callbacks(), _atomic(self.connection, self._path, nested=True):
            yield


@contextmanager
def _atomic(conn: sqlite3.Connection, path: str, nested: bool) -> Iterator[None]:
    """A transaction (``BEGIN IMMEDIATE``), or a savepoint of the open one when ``nested``."""
    if nested:
        begin, commit = "SAVEPOINT tideflow", "RELEASE tideflow"
        rollback: tuple[str, ...] = ("ROLLBACK TO tideflow", commit)
    else:
        begin, commit, rollback = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
    with translated(f"SQLite database {path!r}: beginning a transaction"):
        conn.execute(begin)
    try:
        yield
    except BaseException:
        rollback_quietly(conn, rollback)
        raise
    try:
        conn.execute(commit)
    except sqlite3.Error as exc:
        rollback_quietly(conn, rollback)
        raise translate(exc, f"SQLite database {path!r}: committing") from exc


class SQLiteDatabase:
    """``Database`` on one SQLite file. It has no fast paths."""

    dialect: Dialect = "sqlite"
    fast_paths = False

    def __init__(
        self, path: str | Path, clock: Clock | None = None, *, create: bool = True
    ) -> None:
        """``create=False`` opens the file for reading (and the writes of a database that has
        the schema, such as a cancel) without creating anything: a missing file raises
        ``SchemaMissingError`` and neither it nor its folder is created, and the journal mode is
        left alone (a tideflow database is already in WAL mode: ``migrate`` set it, and WAL mode
        is a property of the file)."""
        self.clock = clock or SystemClock()
        self.path = str(path)
        self.url = "sqlite:///" + self.path
        self._lock = threading.RLock()
        self._subscribers = Subscribers()
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()
        self._conn = self._open(create)
        self._open_txs: list[SQLiteTx] = []  # transaction()s open on this thread, outermost first
        self._statements = SQLiteTx(self._conn, self.path)  # autocommit: outside transactions

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
        """The one connection of this Database; hold ``lock`` while using it."""
        return self._conn

    @property
    def lock(self) -> threading.RLock:
        return self._lock

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        with self._lock:
            return self._statements.rows(name, **params)

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._statements.records(name, **params)

    def records_below_horizon(
        self, name: str, /, *, after: int | None, checkpoint: str | None, **params: Any
    ) -> tuple[int, int, list[tuple[Any, ...]]]:
        with self._lock:
            if after is None:
                found = self._statements.records("get_checkpoint", name=checkpoint)
                after = int(found[0][0]) if found else 0
            horizon = int(self._statements.records("horizon")[0][0])
            # PostgreSQL's page queries read the horizon kept by their first statement; here it
            # is passed to read_all's, as read_all passes it.
            rows = self._statements.records(
                _PAGE_QUERIES[name], after=after, until=horizon, **params
            )
            return after, horizon, rows

    def read_together(self, reads: Sequence[tuple[str, dict[str, Any]]]) -> list[list[Row]]:
        with self.transaction() as tx:
            return [tx.rows(name, **params) for name, params in reads]

    @contextmanager
    def transaction(self) -> Iterator[SQLiteTx]:
        with self._lock:  # reentrant: a nested transaction() is on the thread that holds it
            nested = self._conn.in_transaction
            outer = self._open_txs[-1] if nested and self._open_txs else None
            tx = SQLiteTx(self._conn, self.path)
            self._open_txs.append(tx)
            try:
                with _atomic(self._conn, self.path, nested=nested):
                    yield tx
            finally:
                tx.closed = True
                self._open_txs.pop()
                for callback in tx._on_end:
                    callback()
            # A released savepoint: its work commits with the outer transaction, or not. (Nested
            # in a transaction begun without transaction() - outer None - the commit cannot be
            # seen from here: its callbacks run now, the best that can be done.)
            if outer is not None:
                outer._on_commit.extend(tx._on_commit)
                tx._on_commit.clear()
                outer.run_ends |= tx.run_ends
                tx.run_ends.clear()
        # Nested, this is before the outer commit: a worker of this process that wakes now
        # waits for the lock, which the outer transaction holds until it ends.
        if tx.notify:
            self._wake_local(TASKS_CHANNEL)
        if tx.run_ends:
            # The runs that may have ended, not only those that did: finding out would cost
            # every transaction a query, and the waiters of these runs read them anyway.
            self._wake_local(RUNS_CHANNEL, json.dumps(sorted(tx.run_ends)))
        run_after_commit(tx._on_commit)

    def append_events(
        self, tx: Tx | None, prepared: PreparedAppend, recorded_at: datetime
    ) -> tuple[int, list[int]]:
        """The append as statements, under SQLite's one write lock: with a single writer at a
        time, positions are handed out in commit order, which is all ``read_all`` needs to never
        miss an event (see migration 0002)."""
        if tx is None:  # a transaction of its own, without transaction()'s callbacks to run
            with self._lock, _atomic(self._conn, self.path, nested=self._conn.in_transaction):
                return _append(SQLiteTx(self._conn, self.path), prepared, recorded_at)
        # Inside a caller's transaction: no savepoint (two statements more per append, a tenth
        # of a process manager's step), but the rows a refused append wrote are deleted again
        # before the error is raised, which leaves the transaction as a savepoint's rollback
        # would - usable, without them.
        return _append(tx, prepared, recorded_at, undo_on_error=True)

    def stored_time(self, moment: datetime) -> datetime:
        return datetime.fromtimestamp(moment.timestamp(), UTC)

    def decode_time(self, value: Any) -> datetime:
        return datetime.fromtimestamp(value, UTC)

    def decode_uuid(self, value: Any) -> UUID:
        return UUID(value)

    # --- wake-ups -------------------------------------------------------------------------------

    def _wake_local(self, channel: str | None = None, payload: str | None = None) -> None:
        self._subscribers.wake(channel, payload)

    def subscribe(self, channel: str, callback: Callable[[], None]) -> Callable[[], None]:
        unsubscribe = self._subscribers.add(channel, callback)
        self._watch_commits()
        return unsubscribe

    def subscribe_with_payload(
        self, channel: str, callback: Callable[[str | None], None]
    ) -> Callable[[], None]:
        unsubscribe = self._subscribers.add_with_payload(channel, callback)
        self._watch_commits()
        return unsubscribe

    def _watch_commits(self) -> None:
        """Start the watcher of other connections' commits, unless it runs already."""
        with self._lock:
            if self._watcher is None and self.path != ":memory:":
                # The first reading is taken here, not in the thread: a commit between this
                # call and the thread's start must count as a change (SQLite's data_version
                # only says "different from last time").
                try:
                    conn = sqlite3.connect(self.path, check_same_thread=False)
                    first = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:  # pragma: no cover - no file: workers still poll
                    return
                self._watcher = threading.Thread(
                    target=self._watch,
                    args=(conn, first),
                    name="tideflow-sqlite-watch",
                    daemon=True,
                )
                self._watcher.start()

    def wake(self, channel: str, *, here: bool = True) -> None:
        if here:  # other connections see the commit through their change counter
            self._wake_local(channel)

    def async_statements(self) -> None:
        """None: Python's sqlite3 has no async API (the stores read in a thread, briefly)."""
        return None

    def _watch(self, conn: sqlite3.Connection, last: int) -> None:
        try:
            while not self._closing.wait(
                WATCH_INTERVAL_WAITING
                if self._subscribers.has_payload_subscribers()
                else WATCH_INTERVAL
            ):
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != last:
                    last = version
                    self._wake_local()
        except sqlite3.Error:  # pragma: no cover - the file went away; workers still poll
            pass
        finally:
            conn.close()

    def is_unavailable(self, exc: BaseException) -> bool:
        return is_unavailable(exc, is_transient)

    def close(self) -> None:
        self._closing.set()
        if self._watcher is not None:
            self._watcher.join(timeout=1.0)
        with self._lock:
            self._conn.close()

    # --- schema ---------------------------------------------------------------------------------

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
                    for statement in split_script(m.sql):
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

    def pending_migrations(self) -> list[str] | None:
        try:
            with self._lock:
                found = self._conn.execute(
                    "SELECT 1 FROM sqlite_master "
                    "WHERE type = 'table' AND name = 'schema_migrations'"
                ).fetchone()
                if found is None:
                    return None
                done = {r[0] for r in self._conn.execute("SELECT version FROM schema_migrations")}
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot read SQLite database {self.path!r}: {exc}") from exc
        return pending("tideflow.storage.sqlite", done)

    def check_schema(self) -> None:
        require_current(self.pending_migrations(), self.path, self.url)


def _append(
    tx: Tx, p: PreparedAppend, recorded_at: datetime, *, undo_on_error: bool = False
) -> tuple[int, list[int]]:
    """The append's statements. ``undo_on_error``: if it is refused after it wrote (a version
    conflict, a deleted stream, a duplicate event id), delete what it wrote before raising."""
    if p.idempotency_key is not None:
        inserted = tx.run(
            "insert_idempotency_key",
            key=p.idempotency_key,
            stream_id=p.stream_id,
            result=p.result_json,
            recorded_at=recorded_at.timestamp(),
        )
        if not inserted:
            raise DuplicateIdempotencyKeyError(p.idempotency_key, None, None)
    written = _Written()
    if not undo_on_error:
        return _append_events(tx, p, recorded_at, written)
    try:
        return _append_events(tx, p, recorded_at, written)
    except Exception:
        if p.idempotency_key is not None:
            tx.run("forget_idempotency_key", key=p.idempotency_key)
        for position in written.positions:
            tx.run("forget_event", position=position)
        if written.bumped:
            tx.run("unbump_stream_version", stream_id=p.stream_id, n=written.bumped)
        raise


@dataclass
class _Written:
    """What an append has written so far, to take back if it is refused half way."""

    positions: list[int] = field(default_factory=list)
    bumped: int = 0
    """How far it moved the stream's version before inserting the events."""


def _append_events(
    tx: Tx, p: PreparedAppend, recorded_at: datetime, written: _Written
) -> tuple[int, list[int]]:
    """The rest of ``_append``, after the key. The common case - events for a stream that exists,
    where the caller expects it - is one UPDATE that checks and moves the version (as
    PostgreSQL's append function does); anything else reads the stream row first."""
    n, kind = len(p.event_ids), p.expected_kind
    current: int | None = None
    if n and (kind in ("any", "exists") or (kind == "exact" and p.expected_number > 0)):
        bumped = tx.records(
            "bump_stream_version",
            stream_id=p.stream_id,
            n=n,
            exact=kind == "exact",
            expected=p.expected_number,
        )
        if bumped:
            current, written.bumped = bumped[0][0], n
    if current is None:
        found = tx.records("lock_stream", stream_id=p.stream_id)
        current = found[0][0] if found else 0
        if found and found[0][1] is not None:
            raise StreamDeletedError(p.stream_id, datetime.fromtimestamp(found[0][1], UTC))
        if (
            (kind == "no_stream" and found)
            or (kind == "exists" and not found)
            or (kind == "exact" and current != p.expected_number)
        ):
            raise WrongExpectedVersionError(p.stream_id, p.expected, current)
    positions = []
    seconds = recorded_at.timestamp()  # as the driver takes it, once for every event
    for i, event_id in enumerate(p.event_ids):
        causation, correlation = p.causation_ids[i], p.correlation_ids[i]
        try:
            row = tx.records(
                "insert_event",
                version=current + 1 + i,
                schema_version=p.schema_versions[i],
                stream_id=p.stream_id,
                event_id=str(event_id),
                event_type=p.event_types[i],
                causation_id=None if causation is None else str(causation),
                correlation_id=None if correlation is None else str(correlation),
                recorded_at=seconds,
                data=p.data[i],
                metadata=p.metadata[i],
            )
        except DuplicateKeyError as exc:
            raise duplicate_event_id(p.stream_id, f"event #{i}: {event_id}") from exc
        positions.append(row[0][0])
        written.positions.append(row[0][0])
    if positions and not written.bumped:
        tx.run("set_stream_version", stream_id=p.stream_id, version=current + len(positions))
    return current + 1, positions
