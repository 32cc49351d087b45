"""PostgreSQL backend: production, many workers on many machines.

Connections come from a psycopg_pool pool; each engine operation borrows one for one transaction
(within ``joined``, it runs under a savepoint on the caller's connection, in its transaction).
JSON columns are read back as text (a loader registered per connection) because the engine moves
JSON between rows without looking inside it. Workers wake on ``NOTIFY tideflow_tasks``, sent in the
same transaction that makes tasks visible, so a notification never arrives before the rows do.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from psycopg_pool import ConnectionPool

from tideflow.clock import Clock
from tideflow.errors import RunAlreadyExistsError, StorageError
from tideflow.flows.definition import FlowDefinition
from tideflow.retrying import Backoff
from tideflow.storage.flow_contract import ClaimedTask, ClaimRequest, TaskCompletion
from tideflow.storage.flow_engine import SqlEngine, step_rows
from tideflow.storage.postgres.errors import translate, translated
from tideflow.storage.rows import Row, batch
from tideflow.storage.sqlfile import load_migrations, load_queries
from tideflow.storage.urls import redact_url, schema_error

log = logging.getLogger(__name__)

CHANNEL = "tideflow_tasks"
_QUERIES = load_queries("tideflow.storage.postgres")
#: Any constant works; it only has to be the same for every tideflow process.
_MIGRATION_LOCK = 0x7469_6465_666C  # "tidefl"


def _configure(conn: psycopg.Connection[Any] | psycopg.Cursor[Any]) -> None:
    conn.adapters.register_loader("jsonb", TextLoader)
    conn.adapters.register_loader("json", TextLoader)


#: Connection settings for every connection tideflow opens, unless the URL sets them: give up
#: connecting after 5 s (libpq's default waits for the operating system, minutes when a host is
#: unreachable), and TCP keepalives, so that a peer that vanished without closing the connection
#: (a network partition, a frozen VM) is noticed in about 25 s - a listening connection only
#: reads and would otherwise wait forever, a pooled one would hang its caller.
CONNECT_DEFAULTS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def connect_kwargs(url: str) -> dict[str, Any]:
    """``CONNECT_DEFAULTS`` minus what ``url`` sets itself (the user's settings win)."""
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:  # a malformed URL: let connecting report it
        given = {}
    return {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}


#: A connection handed out less than this long ago is handed out again unchecked.
CHECK_AFTER_IDLE = 1.0
_handed_out_at: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
    weakref.WeakKeyDictionary()
)


def _check_if_idle(conn: psycopg.Connection[Any]) -> None:
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


def check_connection(url: str) -> None:
    """One direct connection attempt, failing in moments with a one-line ``StorageError``: a
    pool retries until its timeout, which would turn "server down" or "no such database" into
    a silent ten-second stall."""
    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        raise _connect_error(url, exc) from exc


def _connect_error(url: str, exc: BaseException) -> StorageError:
    """``DatabaseUnavailableError`` when the server is down or restarting (worth waiting
    for), a plain ``StorageError`` when the URL is wrong (no such database, bad password)."""
    kind = type(translate(exc))
    if not issubclass(kind, StorageError):  # pragma: no cover - translate maps to storage errors
        kind = StorageError
    detail = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return kind(
        f"cannot connect to PostgreSQL at {redact_url(url)}: {detail or type(exc).__name__}"
    )


class _PgTx:
    def __init__(self, conn: psycopg.Connection[Any], *, foreign: bool = False) -> None:
        self.conn = conn
        self.notify = False
        self.foreign = foreign  # a joined connection, perhaps not from our pool: see _execute

    def _execute(self, name: str, params: dict[str, Any]) -> psycopg.Cursor[Row]:
        cur = self.conn.cursor(row_factory=dict_row)
        if self.foreign:
            # JSON as text, as on our pool's connections; configured on the cursor (a copy of
            # the connection's adapters) so that the caller's connection stays as it was.
            _configure(cur)
        try:
            return cur.execute(_QUERIES[name], params)
        except pg_errors.UniqueViolation as exc:
            if name in ("insert_run", "start_run"):
                raise RunAlreadyExistsError(
                    f"a run with id {params['run_id']!r} already exists; pass another run_id "
                    "or none to get a fresh one"
                ) from exc
            raise translate(exc, f"query {name}") from exc
        except (psycopg.Error, UnicodeEncodeError) as exc:  # a surrogate never reaches psycopg
            raise translate(exc, f"query {name}") from exc

    def rows(self, name: str, **params: Any) -> list[Row]:
        return self._execute(name, params).fetchall()

    def run(self, name: str, **params: Any) -> int:
        return self._execute(name, params).rowcount


class PostgresStore(SqlEngine):
    """The flow store on PostgreSQL: the shared engine's transitions, with two fast paths.

    ``fast_paths`` (default True) is a backend hook, not a second engine: the two hottest
    transitions run as one PL/pgSQL call each instead of the engine's Python over named
    queries. ``start_run`` calls ``tideflow.start_run_v2`` (replacing insert_run, insert_steps
    and the root steps' get_steps / start_steps / insert_tasks) and ``complete_tasks`` calls
    ``tideflow.complete_tasks_v1`` (replacing lock_runs, complete_tasks, decrement_step_tasks,
    get_map_outputs, complete_steps, decrement_run_steps, decrement_deps, complete_runs and
    the dependents' start): one round trip instead of up to a dozen, which is what a flow's
    throughput is made of (docs/benchmarks.md, "How we got there"). With ``fast_paths=False``
    the engine's plain Python transitions run instead (SqlEngine.start_run / complete_tasks);
    the flow-store tests run on both, so the two cannot drift apart unnoticed.
    """

    #: claim_tasks (postgres/queries.sql) joins runs and returns each task's run_input and
    #: flow_version: no get_runs_context round trip.
    claim_returns_run_context = True

    def __init__(
        self,
        url: str,
        clock: Clock | None = None,
        *,
        pool_size: int = 8,
        fast_paths: bool = True,
    ) -> None:
        super().__init__(clock)
        self.url = url
        self.fast_paths = fast_paths
        check_connection(url)
        try:
            # check: a connection that died while idle in the pool (a server restart) is
            # replaced before it is handed out, instead of failing the caller's first query
            # (_check_if_idle says when it is worth a round trip).
            self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
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
            raise _connect_error(url, exc) from exc
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        """The connection pool, shared by the event and handler stores opened on this store."""
        return self._pool

    @contextmanager
    def _tx(self) -> Iterator[_PgTx]:
        joined: psycopg.Connection[Any] | None = self._joined_connection()
        try:
            with (
                nullcontext(joined) if joined is not None else self._pool.connection() as conn,
                conn.transaction(),
            ):
                tx = _PgTx(conn, foreign=joined is not None)
                yield tx
                if tx.notify:
                    # Joined, PostgreSQL delivers it when the caller's transaction commits -
                    # to this process's listener too, which wakes the local workers then.
                    conn.execute(f"NOTIFY {CHANNEL}")
        except psycopg.Error as exc:  # connecting, BEGIN, COMMIT, NOTIFY
            raise translate(exc) from exc
        if tx.notify and joined is None:
            self._notify_local()

    def _joinable(self, connection: Any) -> None:
        if not isinstance(connection, psycopg.Connection):
            raise StorageError(
                f"a PostgreSQL flow store can only join a psycopg connection "
                f"(an event store transaction's tx.connection), not "
                f"{type(connection).__name__}"
            )
        if connection.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
            raise StorageError(
                "joined() needs an open, healthy transaction on the connection: "
                "call it inside `with event_store.transaction() as tx`"
            )

    # The fast paths (see the class docstring): PL/pgSQL, one round trip instead of a dozen.
    def start_run(self, definition: FlowDefinition, run_id: str, input_json: str) -> None:
        if not self.fast_paths:
            super().start_run(definition, run_id, input_json)
            return
        with self._flow_tx(definition) as tx:
            tx.notify = bool(
                tx.rows(
                    "start_run",
                    run_id=run_id,
                    flow_slug=definition.slug,
                    flow_version=definition.version,
                    input=input_json,
                    steps=step_rows(definition),
                    now=self.clock.now(),
                )[0]["notify"]
            )

    def complete_tasks(
        self,
        worker_id: str,
        completions: Sequence[TaskCompletion],
        claim: ClaimRequest | None = None,
    ) -> list[ClaimedTask]:
        if not self.fast_paths:
            return super().complete_tasks(worker_id, completions, claim)
        if not completions:
            return []
        with self._tx() as tx:
            tx.notify = bool(
                tx.rows(
                    "complete_tasks_batch",
                    worker_id=worker_id,
                    now=self.clock.now(),
                    rows=batch(
                        {
                            "run_id": c.key.run_id,
                            "step_slug": c.key.step_slug,
                            "task_index": c.key.task_index,
                            "attempt": c.attempt,
                            "output": c.output_json,
                        }
                        for c in completions
                    ),
                )[0]["notify"]
            )
            return self._claim_ready(tx, worker_id, claim)

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

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(callback)
        if self._listener is None:
            self._listener = threading.Thread(
                target=self._listen, name="tideflow-listen", daemon=True
            )
            self._listener.start()
        return unsubscribe

    def _listen(self) -> None:
        """Forward NOTIFYs from other processes to subscribers; reconnect on failure."""
        listen_forever(
            self.url, CHANNEL, self._notify_local, self._stopping, "workers poll until it is back"
        )

    def close(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            self._listener.join(timeout=2.0)
        self._pool.close()

    def pending_migrations(self) -> list[str] | None:
        """The migrations this database lacks, or None if it has no tideflow schema; reads
        only, so a read pointed at the wrong database leaves it as it was."""
        try:
            with self._pool.connection() as conn:
                if conn.execute("SELECT to_regclass('tideflow.schema_migrations')").fetchone() in (
                    None,
                    (None,),
                ):
                    return None
                done = {
                    r[0] for r in conn.execute("SELECT version FROM tideflow.schema_migrations")
                }
        except psycopg.Error as exc:
            raise translate(exc, f"reading the tideflow schema of {redact_url(self.url)}") from exc
        return [
            f"{m.version:04d}_{m.name}"
            for m in load_migrations("tideflow.storage.postgres")
            if m.version not in done
        ]

    def check_schema(self) -> None:
        """Raise ``SchemaMissingError`` / ``SchemaNotReadyError`` unless the schema is current."""
        pending = self.pending_migrations()
        if pending is None or pending:
            raise schema_error(redact_url(self.url), self.url, pending)


def listen_forever(
    url: str, channel: str, on_notify: Callable[[], None], stopping: threading.Event, meanwhile: str
) -> None:
    """LISTEN on ``channel`` and call ``on_notify`` for each notification until ``stopping``.

    A lost connection (a server restart) is retried with ``Backoff`` - one warning per outage,
    one info line when listening again - and ``on_notify`` is called once after each reconnect:
    notifications sent while nobody listened are gone, so the subscribers look for themselves
    (a catch-up poll) instead of waiting for their next poll interval."""
    backoff = Backoff()
    lost = False
    while not stopping.is_set():
        try:
            with psycopg.connect(url, autocommit=True, **connect_kwargs(url)) as conn:
                conn.execute(f"LISTEN {channel}")
                if lost:
                    lost = False
                    log.info("LISTEN %s re-established", channel)
                    on_notify()
                backoff.reset()
                while not stopping.is_set():
                    for _ in conn.notifies(timeout=0.5, stop_after=1):
                        on_notify()
        except psycopg.Error as exc:
            if stopping.is_set():
                return
            if not lost:
                lost = True
                log.warning(
                    "LISTEN %s connection lost (%s); %s",
                    channel,
                    " ".join(str(exc).split()) or type(exc).__name__,
                    meanwhile,
                )
            stopping.wait(backoff.next_delay())
