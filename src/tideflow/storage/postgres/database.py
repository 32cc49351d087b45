"""PostgreSQL's ``Database``: production, many workers on many machines.

Connections come from a psycopg_pool pool, in autocommit mode: ``rows()`` and ``records()`` run
a statement on one, which commits on its own (one round trip, a fresh snapshot each - what
``read_all``'s horizon needs), ``transaction()`` one inside ``BEGIN ... COMMIT``. JSON columns are
read back as text (a loader registered per connection): the stores move JSON between rows
without looking inside it, and decode it themselves where they must.

Wake-ups: flow workers LISTEN on ``TASKS_CHANNEL``, notified inside the transaction that made
tasks visible, so a notification never arrives before the rows do; handler runners LISTEN on
``EVENTS_CHANNEL``, notified after the append by a coalescing notifier (notifier.py says why not
inside the append). Waits for runs LISTEN on ``RUNS_CHANNEL``, notified inside the transaction
that ended runs, with their ids (``commit``). A listener thread per channel starts with the
first ``subscribe``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from tideflow.clock import Clock, SystemClock
from tideflow.errors import StorageError
from tideflow.events.handling import Dialect
from tideflow.storage.database import RUNS_CHANNEL, TASKS_CHANNEL, Row, Tx, run_after_commit
from tideflow.storage.postgres.connecting import (
    check_connection,
    connect_error,
    connect_kwargs,
    listen_forever,
)
from tideflow.storage.postgres.errors import is_transient, translate, translated
from tideflow.storage.postgres.notifier import CoalescingNotifier
from tideflow.storage.postgres.plans import KEYED_READS
from tideflow.storage.sqlfile import load_dialect, load_migrations, pending
from tideflow.storage.unavailable import is_unavailable
from tideflow.storage.urls import redact_url, require_current
from tideflow.storage.wakeups import Subscribers, TxCallbacks

if TYPE_CHECKING:
    from tideflow.storage.event_contract import PreparedAppend
    from tideflow.storage.postgres.aio import PgAsyncStatements

T = TypeVar("T")

log = logging.getLogger(__name__)

Conn = psycopg.Connection[Any]
QUERIES = load_dialect("tideflow.storage.postgres")
#: Any constant works; it only has to be the same for every tideflow process.
_MIGRATION_LOCK = 0x7469_6465_666C  # "tidefl"


def _configure(conn: Conn) -> None:
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


#: A connection handed out less than this long ago is handed out again unchecked.
CHECK_AFTER_IDLE = 1.0
_handed_out_at: weakref.WeakKeyDictionary[Conn, float] = weakref.WeakKeyDictionary()


def _check_if_idle(conn: Conn) -> None:
    """The pool's ``check`` hook. A connection that sat idle may have died with a server
    restart; one more round trip (an empty query) finds out before a caller's statement does,
    and the pool replaces it. Under load a connection comes back within milliseconds, and a
    check on each checkout would cost a round trip per transaction (+6% wall time, +30% client
    CPU on a dispatch): a connection last handed out under a second ago - so idle for less than
    that - goes out as it is; if it did die meanwhile, the caller sees DatabaseUnavailableError
    and retries like through any outage. (Timed at checkout, not return: a ``reset`` hook to
    time returns would make the pool return every connection through a worker thread, which
    costs more than the check.)"""
    now = time.monotonic()
    last = _handed_out_at.get(conn)
    _handed_out_at[conn] = now
    if last is not None and now - last < CHECK_AFTER_IDLE:
        return
    ConnectionPool.check_connection(conn)


def _what(name: str, sent: str) -> str:
    return f"query {name}" + (f" (sent with deferred {sent})" if sent else "")


class _Prefetched:
    """The rows of a prefetched query (``PgTx.prefetch``), read once it has been sent."""

    def __init__(self, tx: PgTx, name: str) -> None:
        self._tx = tx
        self._name = name
        self.cursor: psycopg.Cursor[Row] | None = None
        self._rows: list[Row] | None = None

    def __call__(self) -> list[Row]:
        if self._tx.closed:  # as on SQLite: read inside the transaction
            raise StorageError(f"query {self._name}: this transaction has ended")
        if self._rows is None:
            if self.cursor is None:
                self._tx._run(self._name, lambda conn: None)
            assert self.cursor is not None
            try:
                self._rows = self.cursor.fetchall() if self.cursor.description else []
            except psycopg.Error as exc:
                raise translate(exc, f"query {self._name}") from exc
        return self._rows


def _send_page(
    conn: Conn, name: str, after: int | None, checkpoint: str | None, params: dict[str, Any]
) -> tuple[psycopg.Cursor[Any], psycopg.Cursor[Any]]:
    """A handler's page, sent into the caller's pipeline: in one transaction at READ COMMITTED
    whatever the server's default (each statement takes its own snapshot there), the horizon
    and the start kept with ``set_config``, then named query ``name`` that reads them. The
    cursors of the two, read once the pipeline has synced."""
    conn.execute(b"BEGIN ISOLATION LEVEL READ COMMITTED")
    head = conn.execute(QUERIES["set_horizon"], {"after": after, "checkpoint": checkpoint})
    rows = conn.execute(QUERIES[name], params, binary=True)
    conn.execute(b"COMMIT")
    return head, rows


class _PageAfterCommit:
    """``PgTx.page_after_commit``'s result: its cursors, read once the COMMIT's pipeline has
    synced."""

    head: psycopg.Cursor[Any] | None = None
    rows: psycopg.Cursor[Any] | None = None

    def __call__(self) -> tuple[int, list[tuple[Any, ...]]] | None:
        if self.head is None or self.rows is None:
            return None
        try:
            found = self.head.fetchone()
            if found is None:
                return None
            return int(found[0]), self.rows.fetchall()
        except psycopg.Error:  # the read failed after the COMMIT (logged there)
            return None
        finally:
            self.head = self.rows = None  # read once


class PgTx(TxCallbacks):
    """``Tx`` on one pooled connection.

    ``begin_lazily`` (``Database.transaction``): BEGIN is not sent on its own but in one
    pipeline with the transaction's first named query - one round trip fewer for every
    transaction, a tenth of a handler batch's. Code that takes the driver connection itself
    (``tx.connection``: a fast path, an application's SQL) gets it with the BEGIN sent first."""

    dialect: Dialect = "postgresql"

    def __init__(self, conn: Conn, *, begin_lazily: bool = False) -> None:
        super().__init__()
        self._conn = conn
        self._pending_begin = begin_lazily
        self._queued: list[tuple[str, Callable[[Conn], object]]] = []
        """Deferred and prefetched statements not sent yet (``defer``, ``prefetch``)."""
        self._then: list[Callable[[Conn], object]] = []
        """What goes after the COMMIT, in its pipeline (``page_after_commit``)."""
        self.begun = False
        self.notify = False
        self.run_ends: set[str] = set()
        self.closed = False  # the block ended: the connection is back in the pool

    @property
    def connection(self) -> Conn:
        if self._pending_begin or self._queued:
            self._run("(deferred statements)", lambda conn: None)
        return self._conn

    def _send_pending(self, conn: Conn) -> str:
        """Send the pending BEGIN and queued statements (inside the caller's pipeline); what
        was sent, for an error message."""
        if self._pending_begin:
            self._pending_begin = False
            self.begun = True
            conn.execute(b"BEGIN")
        queued, self._queued = self._queued, []
        for _, send in queued:
            send(conn)
        return ", ".join(name for name, _ in queued)

    def _run(self, name: str, statement: Callable[[Conn], T]) -> T:
        """``statement(conn)``, errors mapped. What is pending goes to the server in one
        pipeline with it - the transaction's BEGIN, deferred writes, prefetched reads - and its
        results are read once the pipeline has synced."""
        conn = self._conn
        sent = ""
        try:
            if not self._pending_begin and not self._queued:
                return statement(conn)
            with conn.pipeline():
                sent = self._send_pending(conn)
                return statement(conn)
        except (psycopg.Error, UnicodeEncodeError) as exc:  # a surrogate never reaches psycopg
            raise translate(exc, _what(name, sent)) from exc

    def defer(self, name: str, /, **params: Any) -> None:
        self._queue(name, lambda conn: conn.execute(QUERIES[name], params))

    def defer_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        if params:
            self._queue(name, lambda conn: conn.cursor().executemany(QUERIES[name], params))

    def prefetch(self, name: str, /, **params: Any) -> Callable[[], list[Row]]:
        fetched = _Prefetched(self, name)

        def send(conn: Conn) -> None:
            fetched.cursor = conn.cursor(row_factory=dict_row).execute(QUERIES[name], params)

        self._queue(name, send)
        return fetched

    def _queue(self, name: str, send: Callable[[Conn], object]) -> None:
        if self.closed:
            raise StorageError(f"query {name}: this transaction has ended")
        self._queued.append((name, send))

    def page_after_commit(
        self, name: str, /, *, after: int, **params: Any
    ) -> Callable[[], tuple[int, list[tuple[Any, ...]]] | None]:
        page = _PageAfterCommit()

        def send(conn: Conn) -> None:
            page.head, page.rows = _send_page(conn, name, after, None, params)

        self._then.append(send)
        return page

    def _commit(self) -> str | None:
        """COMMIT (with the NOTIFYs the stores asked for), in one pipeline with what is still
        queued - a handler batch's last writes cost no round trip of their own - and with what
        goes after it (``page_after_commit``). When the transaction may have ended runs
        (``run_ends``), ``notify_ended_runs`` goes just before the COMMIT, in the same
        pipeline: its NOTIFY is delivered with the commit, so a wait it wakes finds the run
        ended. Returns the ids of the runs that ended (a JSON array, the NOTIFY's payload), or
        None."""
        conn = self._conn
        if not self.begun and not self._queued:
            return None  # nothing was sent: there is nothing to commit
        sent, commit, ended = "", None, None
        try:
            with conn.pipeline():
                sent = self._send_pending(conn)
                if self.notify:
                    conn.execute(f"NOTIFY {TASKS_CHANNEL}")
                if len(self.run_ends) == 1:
                    (run_id,) = self.run_ends
                    ended = conn.execute(QUERIES["notify_ended_run"], {"run_id": run_id})
                elif self.run_ends:
                    ended = conn.execute(
                        QUERIES["notify_ended_runs"], {"run_ids": sorted(self.run_ends)}
                    )
                commit = conn.execute(b"COMMIT")
                for then in self._then:
                    then(conn)
        except psycopg.Error as exc:
            if commit is not None and commit.statusmessage == "COMMIT" and not is_transient(exc):
                # Committed: only a read after it failed (its callers read again). Its own
                # transaction is left open and aborted: end it before the pool gets it back.
                log.warning("a read sent after a COMMIT failed; read again: %s", exc)
                with contextlib.suppress(psycopg.Error):
                    conn.execute(b"ROLLBACK")
                return None  # the waits of any run it ended look for themselves
            if is_transient(exc) or sent:
                raise translate(exc, _what("COMMIT", sent)) from exc
            raise
        row = None if ended is None else ended.fetchone()
        return None if row is None else str(row[0])

    def _execute(self, name: str, params: dict[str, Any], binary: bool = False) -> Any:
        return self._run(
            name,
            lambda conn: conn.cursor(row_factory=dict_row).execute(
                QUERIES[name], params, binary=binary
            ),
        )

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        cur = self._execute(name, params)
        return cur.fetchall() if cur.description else []

    def run(self, name: str, /, **params: Any) -> int:
        return int(self._execute(name, params).rowcount)

    def run_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        if params:
            self._run(name, lambda conn: conn.cursor().executemany(QUERIES[name], params))

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        """Binary format: uuid, bigint and timestamptz arrive without parsing text (about a fifth
        of ``read_all``'s time per event)."""
        cur = self._run(name, lambda conn: conn.execute(QUERIES[name], params, binary=True))
        try:
            return cur.fetchall()
        except psycopg.Error as exc:
            raise translate(exc, f"query {name}") from exc

    def execute(self, sql: str, params: Any = None) -> psycopg.Cursor[Any]:
        return self.connection.execute(sql, params)

    def execute_script(self, script: str) -> None:
        self.connection.execute(script)  # no parameters: PostgreSQL runs several statements

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with self._savepoint_callbacks(), translated("savepoint"), self.connection.transaction():
            yield


class PostgresDatabase:
    """``Database`` on PostgreSQL. ``fast_paths`` (default True) runs the PL/pgSQL transitions
    and the pipelined append (storage/postgres/fast_paths.py); False their plain
    counterparts."""

    dialect: Dialect = "postgresql"

    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        *,
        pool_size: int = 8,
        fast_paths: bool = True,
    ) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self.fast_paths = fast_paths
        check_connection(url)
        try:
            self._pool: ConnectionPool[Conn] = ConnectionPool(
                url,
                min_size=1,
                max_size=pool_size,
                open=True,
                configure=_configure,
                kwargs={"autocommit": True, **connect_kwargs(url)},
                name="tideflow",
                check=_check_if_idle,
                # A caller waits at most this long for a connection - the pool's default of
                # 30 s would make a client's ~5 s of retries (retrying.py) last half a minute
                # when the server is down. Workers back off and try again regardless.
                timeout=5.0,
            )
            self._pool.wait(timeout=10.0)
        except Exception as exc:
            raise connect_error(url, exc) from exc
        self._subscribers = Subscribers()
        self._listeners: list[threading.Thread] = []
        self._listening: set[str] = set()
        self._notifiers: dict[str, Any] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._async: PgAsyncStatements | None = None

    @property
    def pool(self) -> ConnectionPool[Conn]:
        return self._pool

    def async_statements(self) -> PgAsyncStatements:
        """The same named queries, awaitable, on psycopg's async connections (``aio.py``): what the
        async client reads with, so that a coroutine waiting on the database holds no
        thread."""
        with self._lock:
            if self._async is None:
                from tideflow.storage.postgres.aio import PgAsyncStatements

                self._async = PgAsyncStatements(self.url)
            return self._async

    def _getconn(self) -> Conn:
        """``getconn``/``putconn`` rather than ``pool.connection()``, which also commits or rolls
        back on the way out: on these autocommit connections there is never anything to end by
        then, and the no-op costs half of a checkout, some 10 us an append. ``putconn`` still
        rolls back, or replaces, a connection returned in a bad state."""
        try:
            return self._pool.getconn()
        except psycopg.Error as exc:
            raise translate(exc, "connecting") from exc

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        with self.statement() as tx:
            return tx.rows(name, **params)

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        with self.statement() as tx:
            return tx.records(name, **params)

    def records_below_horizon(
        self, name: str, /, *, after: int | None, checkpoint: str | None, **params: Any
    ) -> tuple[int, int, list[tuple[Any, ...]]]:
        """``_send_page`` as a pipeline of its own."""
        with self.statement() as tx:
            conn = tx.connection
            with translated(f"query {name}"):
                with conn.pipeline():
                    head, page = _send_page(conn, name, after, checkpoint, params)
                row = head.fetchone()
                assert row is not None
                return int(row[1]), int(row[0]), page.fetchall()

    def read_together(self, reads: Sequence[tuple[str, dict[str, Any]]]) -> list[list[Row]]:
        """BEGIN, the reads and COMMIT in one pipeline: one round trip, one snapshot
        (REPEATABLE READ, free for a read-only transaction) - a run and its steps as of one
        moment, read by a woken wait (``FlowStore.look_runs``) without a round trip per
        statement and one more for the COMMIT."""
        what = f"queries {', '.join(name for name, _ in reads)}"
        with self.statement() as tx:
            conn = tx.connection
            with translated(what):
                with conn.pipeline():
                    conn.execute(b"BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    conn.execute(KEYED_READS)
                    cursors = [
                        conn.cursor(row_factory=dict_row).execute(QUERIES[name], params)
                        for name, params in reads
                    ]
                    conn.execute(b"COMMIT")
                return [c.fetchall() if c.description else [] for c in cursors]

    @contextmanager
    def statement(self) -> Iterator[PgTx]:
        conn = self._getconn()
        tx = PgTx(conn)
        try:
            yield tx
        except psycopg.Error as exc:
            # Only a lost connection is ours to map here: our queries' errors are mapped where
            # they run, and other driver errors come from the caller's own SQL.
            if is_transient(exc):
                raise translate(exc) from exc
            raise
        finally:
            self._pool.putconn(conn)
        if tx._on_commit:  # each statement committed on its own
            run_after_commit(tx._on_commit)

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        conn = self._getconn()
        tx = PgTx(conn, begin_lazily=True)
        ended: str | None = None
        try:
            try:
                yield tx
                ended = tx._commit()
            except BaseException:
                if tx.begun and not conn.closed:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute(b"ROLLBACK")
                raise
        except psycopg.Error as exc:  # BEGIN, COMMIT, NOTIFY, or the caller's own SQL
            if is_transient(exc):
                raise translate(exc) from exc
            raise
        finally:
            tx.closed = True
            self._pool.putconn(conn)
            for callback in tx._on_end:
                callback()
        if tx.notify:
            self._wake_local(TASKS_CHANNEL)
        if ended is not None:
            self._subscribers.wake(RUNS_CHANNEL, ended)
        run_after_commit(tx._on_commit)

    def append_events(
        self, tx: Tx | None, prepared: PreparedAppend, recorded_at: datetime
    ) -> tuple[int, list[int]]:
        from tideflow.storage.postgres.fast_paths import append_events

        if tx is not None:
            return append_events(tx.connection, prepared, recorded_at, True, self.fast_paths)
        with self.statement() as own:
            return append_events(own.connection, prepared, recorded_at, False, self.fast_paths)

    def stored_time(self, moment: datetime) -> datetime:
        return moment

    def decode_time(self, value: Any) -> datetime:
        return value  # type: ignore[no-any-return]

    def decode_uuid(self, value: Any) -> UUID:
        return value  # type: ignore[no-any-return]

    # --- wake-ups -------------------------------------------------------------------------------

    def _wake_local(self, channel: str, payload: str | None = None) -> None:
        self._subscribers.wake(channel, payload)

    def subscribe(self, channel: str, callback: Callable[[], None]) -> Callable[[], None]:
        with self._lock:
            self._listen(channel)
            return self._subscribers.add(channel, callback)

    def subscribe_with_payload(
        self, channel: str, callback: Callable[[str | None], None]
    ) -> Callable[[], None]:
        with self._lock:
            self._listen(channel)
            return self._subscribers.add_with_payload(channel, callback)

    def _listen(self, channel: str) -> None:
        """Start ``channel``'s listener thread, unless it runs already (caller holds the
        lock)."""
        if channel in self._listening or self._stopping.is_set():
            return
        self._listening.add(channel)
        listener = threading.Thread(
            target=listen_forever,
            args=(
                self.url,
                channel,
                lambda payload: self._wake_local(channel, payload or None),
                self._stopping,
                self._notified_here,
            ),
            name=f"tideflow-listen-{channel}",
            daemon=True,
        )
        self._listeners.append(listener)
        listener.start()

    def _notified_here(self, pid: int) -> bool:
        """Whether a notification came from this Database's own notifier: ``wake`` woke this
        process's subscribers before it asked for the NOTIFY, so waking them again on its
        arrival would only repeat their look (a handler batch's reads, a wait's query)."""
        return any(n.backend_pid == pid for n in list(self._notifiers.values()))

    def wake(self, channel: str, *, here: bool = True) -> None:
        # This process's subscribers at once - a process manager's runner reacting to the events
        # its own commands caused need not wait for the NOTIFY's round trip - and the others
        # through the coalescing notifier.
        if here:
            self._wake_local(channel)
        notifier = self._notifiers.get(channel)
        if notifier is None:
            with self._lock:
                notifier = self._notifiers.setdefault(
                    channel, CoalescingNotifier(self.url, channel)
                )
        notifier.poke()

    def is_unavailable(self, exc: BaseException) -> bool:
        return is_unavailable(exc, is_transient)

    def close(self) -> None:
        self._stopping.set()
        if self._async is not None:
            self._async.close()
        for notifier in self._notifiers.values():
            notifier.close()
        if self._listeners:
            # Wake the listeners now rather than at their next timeout, so close() is quick.
            try:
                with self.statement() as tx:
                    for channel in self._listening:
                        tx.connection.execute("SELECT pg_notify(%s, '')", (channel,))
            except (psycopg.Error, StorageError):
                pass
            for listener in self._listeners:
                listener.join(timeout=2.0)
        self._pool.close()

    # --- schema ---------------------------------------------------------------------------------

    def migrate(self) -> list[str]:
        applied: list[str] = []
        with translated("migrating"), self._pool.connection() as conn, conn.transaction():
            # Transaction-scoped advisory lock: concurrent `migrate` calls (several workers
            # starting at once) queue here and find the work done.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE SCHEMA IF NOT EXISTS tideflow")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS tideflow.schema_migrations (version integer PRIMARY "
                "KEY, name text NOT NULL, applied_at timestamptz NOT NULL)"
            )
            done = {r[0] for r in conn.execute("SELECT version FROM tideflow.schema_migrations")}
            for m in load_migrations("tideflow.storage.postgres"):
                if m.version in done:
                    continue
                conn.execute(m.sql.encode())  # no parameters: may hold several statements
                conn.execute(
                    "INSERT INTO tideflow.schema_migrations VALUES (%s, %s, %s)",
                    (m.version, m.name, self.clock.now()),
                )
                applied.append(f"{m.version:04d}_{m.name}")
        return applied

    def pending_migrations(self) -> list[str] | None:
        try:
            with self._pool.connection() as conn:
                found = conn.execute("SELECT to_regclass('tideflow.schema_migrations')").fetchone()
                if found is None or found[0] is None:
                    return None
                done = {
                    r[0] for r in conn.execute("SELECT version FROM tideflow.schema_migrations")
                }
        except psycopg.Error as exc:
            raise translate(exc, f"reading the tideflow schema of {redact_url(self.url)}") from exc
        return pending("tideflow.storage.postgres", done)

    def check_schema(self) -> None:
        require_current(self.pending_migrations(), redact_url(self.url), self.url)
