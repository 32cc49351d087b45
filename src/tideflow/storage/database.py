"""The seam under every store: a ``Database`` hands out transactions, a ``Tx`` runs named queries.

Every store - flows, events, handlers, process instances, and the ones to come - is written once,
in Python, over these two protocols; a backend (``sqlite/``, ``postgres/``) supplies a Database,
its SQL files (one ``-- name:`` per query, the same names in each dialect) and, where they
measurably win, fast paths behind documented hooks::

    FlowStore  EventStore  HandlerStore  ProcessStore      storage/*_store.py: written once
         \\          |            |            /
          +---------- Database / Tx ----------+            storage/database.py: this seam
               |                        |
       sqlite/database.py       postgres/database.py       connections, locking, NOTIFY,
       sqlite/*.sql             postgres/*.sql             migrations, error mapping, SQL

A unit of work that spans stores - a process manager's reaction writes its instance row, the
commands' events, the flow runs it starts and its checkpoint - is one ``Tx``, handed to each
store's method (``tx=``); nothing else carries a transaction from one store to another.

Errors: every driver error leaving a Tx or a Database is already one of ``tideflow.errors``'
storage errors (each backend maps them in one module, ``<backend>/errors.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from tideflow.clock import Clock
from tideflow.events.handling import Dialect

if TYPE_CHECKING:
    from tideflow.storage.event_contract import PreparedAppend

Row = dict[str, Any]

log = logging.getLogger("tideflow.storage")

#: The channel flow workers listen on: a transaction that made tasks visible wakes them.
TASKS_CHANNEL = "tideflow_tasks"
#: The channel event handler runners listen on: appended events wake them.
EVENTS_CHANNEL = "tideflow_events"
#: The channel waits for process instances listen on: a transaction that saved one wakes them.
PROCESSES_CHANNEL = "tideflow_processes"
#: The channel waits for runs listen on: a transaction that ended runs (completed, failed,
#: cancelled) wakes them, with the ended run ids as its payload (a JSON array; empty when
#: unknown or too long for a NOTIFY) - so a thousand waiters do not all re-read their rows for
#: every run that ends (``storage/run_watch.py``).
RUNS_CHANNEL = "tideflow_runs"


class Tx(Protocol):
    """One open transaction."""

    dialect: Dialect
    notify: bool
    """Set by a store when this transaction made flow tasks visible: the Database wakes the flow
    workers once it commits (``TASKS_CHANNEL``)."""

    @property
    def run_ends(self) -> set[str]:
        """Added to by the flow store: runs this transaction may have ended. The Database tells
        their waiters (``RUNS_CHANNEL``) as it commits - PostgreSQL with a NOTIFY of those that
        did end, sent in this transaction so that it arrives with the commit, never before."""
        ...

    @property
    def connection(self) -> Any:
        """The driver connection (``sqlite3.Connection`` or ``psycopg.Connection``): for a
        backend's fast paths, and for an application's own SQL in an event store transaction.
        Do not commit or roll it back."""
        ...

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        """Run named query ``name``; its rows as dicts (timestamps as aware datetimes)."""
        ...

    def run(self, name: str, /, **params: Any) -> int:
        """Run named query ``name`` for its effect; the number of rows it changed."""
        ...

    def run_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        """Run named query ``name`` once per parameter set, for its effect: one round trip for
        all of them on PostgreSQL (psycopg pipelines ``executemany``), where a loop of ``run``
        would wait for each - the way a batch of process instances is saved."""
        ...

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        """Run named query ``name``; its rows as tuples in the query's column order, values as
        the driver gives them (``Database.decode_time`` / ``decode_uuid`` finish the job): the
        cheap form for hot reads such as pages of events."""
        ...

    def defer(self, name: str, /, **params: Any) -> None:
        """``run`` for a write whose row count nobody reads, sent with this transaction's next
        statement or with its COMMIT: one round trip for all of them on PostgreSQL (a handler
        batch's checkpoint and process instances go with its COMMIT); SQLite, which has no round
        trips to save, runs it now. Statements keep their order. A deferred statement's error
        is raised by the statement (or the end of the block) that sends it - so defer only what
        cannot fail but by the database's own weather: validate inputs first."""
        ...

    def defer_many(self, name: str, params: Sequence[dict[str, Any]], /) -> None:
        """``run_many``, deferred as ``defer`` is."""
        ...

    def prefetch(self, name: str, /, **params: Any) -> Callable[[], list[Row]]:
        """Named query ``name``, sent with this transaction's next statement (as ``defer``);
        call the result for its rows (it sends the query then, if nothing did before). For
        reads known in advance - a handler batch's lease, checkpoint and instances go to the
        server in one round trip instead of three. SQLite runs it now."""
        ...

    def page_after_commit(
        self, name: str, /, *, after: int, **params: Any
    ) -> Callable[[], tuple[int, list[tuple[Any, ...]]] | None]:
        """``Database.records_below_horizon(name, after=after, ...)`` sent right after this
        transaction's COMMIT, in the same round trip (PostgreSQL): the next page of a handler
        whose batch appended events it may handle itself. Call the result, once the block has
        committed, for the horizon and the rows - or None if the page was not read (SQLite,
        which has no round trip to save; a transaction that sent nothing; a read that failed
        after the COMMIT, which still committed): read it the usual way then."""
        ...

    def execute(self, sql: str, params: Any = None) -> Any:
        """Run an application's own statement (a projection's row) in this transaction; the
        driver's cursor. Placeholders are written as psycopg's (``%s``, ``%(name)s``, ``%%``)
        for both dialects: SQLite's Tx rewrites them, so that a handler's SQL is written once."""
        ...

    def execute_script(self, script: str) -> None:
        """Run SQL text of one or more statements (an application's DDL) in this transaction."""
        ...

    def savepoint(self) -> AbstractContextManager[None]:
        """A nested atomic unit: if the block raises, what it did is undone and the transaction
        stays usable."""
        ...

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the transaction has ended, committed or rolled back."""
        ...

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the work of this transaction is committed: after the COMMIT
        of the outermost transaction, never after a rollback. What is registered inside a
        savepoint (``savepoint()``, or a nested ``transaction()`` on SQLite) that rolls back is
        dropped with it; what a released savepoint registered waits for the outer COMMIT. For
        what must happen once per committed change and never for work that vanished - a
        dispatcher's ``after_dispatch`` hooks. Callbacks run in order, once the connection is
        released; one that raises is logged (logger ``tideflow.storage``) and the others still
        run: the transaction has committed, so raising would report a failure that did not
        happen."""
        ...


class AsyncStatements(Protocol):
    """A Database's named queries, awaitable without holding a thread (a backend with an async
    driver: PostgreSQL's ``aio.py``). Each call is a statement, or a read-only transaction, of
    its own."""

    async def rows(self, name: str, /, **params: Any) -> list[Row]:
        """``Database.rows``, awaitable."""
        ...

    async def read_together(self, reads: Sequence[tuple[str, dict[str, Any]]]) -> list[list[Row]]:
        """The rows of each of these named reads, run in one read-only transaction (one
        snapshot), sent together: a run with its steps in one round trip."""
        ...


def run_after_commit(callbacks: list[Callable[[], None]]) -> None:
    """Run a committed transaction's ``on_commit`` callbacks: each one, in order; one that
    raises is logged, not raised (``Tx.on_commit`` says why)."""
    for callback in callbacks:
        try:
            callback()
        except Exception:
            log.exception("a callback run after a commit raised; the transaction has committed")


class Database(Protocol):
    """One database, for every store of a process: one pool (PostgreSQL) or one connection
    (SQLite). Safe to share between threads."""

    url: str
    clock: Clock
    dialect: Dialect
    fast_paths: bool
    """Whether the backend's fast paths run (PostgreSQL's PL/pgSQL transitions and pipelined
    append); False runs their plain counterparts, which the same tests hold to the same
    behaviour."""

    def transaction(self) -> AbstractContextManager[Tx]:
        """A transaction, committed when the block ends, rolled back if it raises. Inside
        another transaction of this thread (SQLite) it is a savepoint of that one."""
        ...

    def rows(self, name: str, /, **params: Any) -> list[Row]:
        """Named query ``name`` as a statement of its own - committed on its own, with a fresh
        snapshot - for reads, and writes that are one statement; its rows as ``Tx.rows``."""
        ...

    def records(self, name: str, /, **params: Any) -> list[tuple[Any, ...]]:
        """``rows``, as tuples (``Tx.records``)."""
        ...

    def read_together(self, reads: Sequence[tuple[str, dict[str, Any]]]) -> list[list[Row]]:
        """Named reads in one snapshot, their rows in order: on PostgreSQL with their BEGIN
        and COMMIT in one pipeline - one round trip (``AsyncStatements.read_together``,
        blocking)."""
        ...

    def append_events(
        self, tx: Tx | None, prepared: PreparedAppend, recorded_at: datetime
    ) -> tuple[int, list[int]]:
        """Append hook: write ``prepared``'s events in ``tx`` (under a savepoint, so that a
        refused append leaves ``tx`` usable) or, with None, atomically on its own; the first
        version and the events' positions. One backend operation because each dialect keeps
        the log's order its own way: PostgreSQL in ``append_events_v3`` (floor locks, see its
        migration), SQLite by statements under its single write lock. Raises
        ``WrongExpectedVersionError``, ``DuplicateEventIdError``, ``StreamDeletedError`` or
        ``DuplicateIdempotencyKeyError`` (without the recorded result: the event store reads
        it), having written nothing."""
        ...

    def records_below_horizon(
        self, name: str, /, *, after: int | None, checkpoint: str | None, **params: Any
    ) -> tuple[int, int, list[tuple[Any, ...]]]:
        """A handler batch's page: the event log's safe horizon (and, with ``after`` None,
        checkpoint ``checkpoint``'s position as ``after``), then named query ``name``
        reading from ``after`` up to that horizon: two statements with two snapshots, in that
        order, as the horizon requires (postgres migration 0004) - in one round trip on
        PostgreSQL, where ``name`` reads what the first statement kept. Returns ``after``, the
        horizon and the rows."""
        ...

    def stored_time(self, moment: datetime) -> datetime:
        """``moment`` as it reads back once stored (SQLite keeps seconds as a float), so that
        what a write returns equals what a later read gives."""
        ...

    def decode_time(self, value: Any) -> datetime:
        """A timestamp column of ``Tx.records`` as an aware datetime."""
        ...

    def decode_uuid(self, value: Any) -> UUID:
        """A uuid column of ``Tx.records``, not null, as a UUID."""
        ...

    def subscribe(self, channel: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` when ``channel`` is woken, from any process; returns the function
        that unsubscribes it."""
        ...

    def wake(self, channel: str, *, here: bool = True) -> None:
        """Wake ``channel``'s subscribers in every process, soon (coalesced: cheap to call after
        every append). ``here=False``: in other processes only (and other Databases of this
        one) - the caller woke this Database's subscribers itself, knowing better whom."""
        ...

    def subscribe_with_payload(
        self, channel: str, callback: Callable[[str | None], None]
    ) -> Callable[[], None]:
        """``subscribe``, for a callback that takes the notification's payload (None when it
        is unknown: another process committed on SQLite, a LISTEN reconnected)."""
        ...

    def async_statements(self) -> AsyncStatements | None:
        """The awaitable statements of this database, or None when its driver has none
        (SQLite: the stores then run a blocking call in a thread, briefly)."""
        ...

    def is_unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the database cannot serve now (worth waiting out)."""
        ...

    def migrate(self) -> list[str]:
        """Apply pending migrations under a lock; the ones applied."""
        ...

    def pending_migrations(self) -> list[str] | None:
        """The migrations this database lacks, or None if it has no tideflow schema; reads
        only."""
        ...

    def check_schema(self) -> None:
        """``SchemaMissingError`` / ``SchemaNotReadyError`` unless the schema is current."""
        ...

    def close(self) -> None: ...
