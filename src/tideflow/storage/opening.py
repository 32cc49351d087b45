"""Opening a database by URL: the one module of the storage layer that knows its backends.

``open_database(url)`` gives every store on one ``Database`` - one pool (PostgreSQL) or one
connection (SQLite) for flows, events, handlers, process instances and their timers. The
``open_*`` functions below it open one store on a Database of its own (closed with it), for
scripts and tools that need one. The contracts and the stores import no backend; the runtime
(worker, dispatcher, process managers) is handed stores and never opens one. Backends are
imported inside the functions, so that using SQLite never imports psycopg.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType

from tideflow.clock import Clock
from tideflow.events.upcasting import Upcasters
from tideflow.storage.database import Database
from tideflow.storage.event_contract import DEFAULT_PAGE_SIZE
from tideflow.storage.event_store import SqlEventStore
from tideflow.storage.flow_store import SqlFlowStore
from tideflow.storage.handler_store import SqlHandlerStore
from tideflow.storage.monitor_store import SqlMonitorStore
from tideflow.storage.process_store import SqlProcessStore
from tideflow.storage.schedule_store import SqlScheduleStore
from tideflow.storage.timer_store import SqlTimerStore
from tideflow.storage.urls import POSTGRES_SCHEMES, resolve_url, sqlite_path


def connect(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    create: bool = True,
    fast_paths: bool = True,
) -> Database:
    """The ``Database`` for a URL (checked by ``resolve_url``; default
    ``$TIDEFLOW_DATABASE_URL``, else ``sqlite:///tideflow.db``).

    ``create=False`` opens for reading: nothing is created - no SQLite file or folder (a missing
    file raises ``SchemaMissingError``) - and nothing is migrated; call ``check_schema`` before
    the first read. Connecting to PostgreSQL creates nothing either way; the schema is only
    ever created by ``migrate()``. ``fast_paths=False`` runs PostgreSQL's plain paths (for
    tests that hold both to the same behaviour)."""
    url = resolve_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        from tideflow.storage.postgres import PostgresDatabase

        return PostgresDatabase(url, clock, fast_paths=fast_paths)
    from tideflow.storage.sqlite import SQLiteDatabase

    return SQLiteDatabase(sqlite_path(url), clock, create=create)


@dataclass(frozen=True)
class Stores:
    """Every store on one Database; ``close()`` (or leaving a ``with`` block) closes it."""

    db: Database
    flows: SqlFlowStore
    events: SqlEventStore
    handlers: SqlHandlerStore
    processes: SqlProcessStore
    timers: SqlTimerStore
    monitor: SqlMonitorStore
    schedules: SqlScheduleStore

    def close(self) -> None:
        self.flows.close()  # its reading thread, if it has one; the Database is shared
        self.db.close()

    def __enter__(self) -> Stores:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_database(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    create: bool = True,
    upcasters: Upcasters | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> Stores:
    """Every store for a database URL (``connect`` says which URLs and what ``create`` does),
    on one Database. Call ``stores.db.migrate()`` (or ``tideflow migrate``) before first use."""
    return stores_on(connect(url, clock=clock, create=create), upcasters, page_size)


def stores_on(
    db: Database, upcasters: Upcasters | None = None, page_size: int = DEFAULT_PAGE_SIZE
) -> Stores:
    """Every store on ``db``."""
    events = SqlEventStore(db, upcasters=upcasters, page_size=page_size)
    flows = SqlFlowStore(db)
    return Stores(
        db,
        flows,
        events,
        SqlHandlerStore(db),
        SqlProcessStore(db),
        SqlTimerStore(db, events),
        SqlMonitorStore(db),
        SqlScheduleStore(db, flows),
    )


def open_store(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    create: bool = True,
    fast_paths: bool = True,
) -> SqlFlowStore:
    """The flow store for a database URL, on a Database of its own."""
    db = connect(url, clock=clock, create=create, fast_paths=fast_paths)
    return SqlFlowStore(db, owns_db=True)


def open_event_store(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    upcasters: Upcasters | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    fast_paths: bool = True,
) -> SqlEventStore:
    """The event store for a database URL, on a Database of its own."""
    db = connect(url, clock=clock, fast_paths=fast_paths)
    return SqlEventStore(db, upcasters=upcasters, page_size=page_size, owns_db=True)


def open_handler_store(url: str | None = None, *, clock: Clock | None = None) -> SqlHandlerStore:
    """The handler store for a database URL, on a Database of its own."""
    return SqlHandlerStore(connect(url, clock=clock), owns_db=True)


def open_process_store(url: str | None = None, *, clock: Clock | None = None) -> SqlProcessStore:
    """The process store for a database URL, on a Database of its own."""
    return SqlProcessStore(connect(url, clock=clock), owns_db=True)


def open_event_store_on(
    flow_store: SqlFlowStore, *, upcasters: Upcasters | None = None
) -> SqlEventStore:
    """An event store on ``flow_store``'s Database (left open when the event store closes)."""
    return SqlEventStore(flow_store.db, upcasters=upcasters)


def open_handler_store_on(flow_store: SqlFlowStore) -> SqlHandlerStore:
    """The handler store on ``flow_store``'s Database."""
    return SqlHandlerStore(flow_store.db)


def open_process_store_on(flow_store: SqlFlowStore) -> SqlProcessStore:
    """The process store on ``flow_store``'s Database."""
    return SqlProcessStore(flow_store.db)


def check_schema(store: SqlFlowStore) -> None:
    """Raise ``SchemaMissingError`` if the store's database has no tideflow schema, or
    ``SchemaNotReadyError`` if migrations are pending; write nothing. What every read path
    calls instead of migrating."""
    store.db.check_schema()


def check_connection(url: str) -> None:
    """Connect once to a PostgreSQL URL and raise a typed error at once if that fails (the
    stores connect lazily); nothing to do for SQLite, whose file opens when first used."""
    if url.startswith(POSTGRES_SCHEMES):
        from tideflow.storage.postgres.connecting import check_connection as connect_once

        connect_once(url)


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of a database driver (``sqlite3``, psycopg) that reached the
    caller untranslated - for the CLI, which names it as a database error rather than a bug,
    without importing a driver itself."""
    module = type(exc).__module__
    if module.startswith("sqlite3"):
        from tideflow.storage.sqlite.errors import is_driver_error as sqlite_error

        return sqlite_error(exc)
    if module.startswith(("psycopg", "psycopg_pool")):
        from tideflow.storage.postgres.errors import is_driver_error as pg_error

        return pg_error(exc)
    return False
