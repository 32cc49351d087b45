"""Opening stores by database URL: the one module of the storage layer that knows its backends.

The contracts (``flow_contract``, ``event_contract``, ``handler_contract``, ``process_contract``)
say what a store does and import no backend; the backends (``sqlite/``, ``postgres/``) implement
them. Something must pick a backend for a URL - that is this module, above both, and everything
that opens a store (the App, the CLI, tests) comes through it (``tideflow.storage`` re-exports
it). The runtime (worker, dispatcher, process managers) is handed stores and never opens one.
Backends are imported inside the functions, so that using SQLite never imports psycopg.
"""

from __future__ import annotations

from tideflow.clock import Clock
from tideflow.errors import UnsupportedDatabaseURLError
from tideflow.events.upcasting import Upcasters
from tideflow.storage.event_contract import DEFAULT_PAGE_SIZE, EventStore
from tideflow.storage.flow_contract import FlowStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.storage.process_contract import ProcessStore
from tideflow.storage.urls import POSTGRES_SCHEMES, redact_url, resolve_url, sqlite_path


def open_store(
    url: str | None = None, *, clock: Clock | None = None, create: bool = True
) -> FlowStore:
    """The flow store for a database URL (checked by ``resolve_url``; default
    ``$TIDEFLOW_DATABASE_URL``, else ``sqlite:///tideflow.db``).

    ``create=False`` opens for reading: nothing is created - no SQLite file or folder (a
    missing file raises ``SchemaMissingError``) - and nothing is migrated; call
    ``check_schema`` before the first read. Connecting to PostgreSQL creates nothing either way;
    the schema is only ever created by ``migrate()``."""
    url = resolve_url(url)
    if url.startswith(POSTGRES_SCHEMES):
        from tideflow.storage.postgres import PostgresStore

        return PostgresStore(url, clock)
    if url.startswith("sqlite://"):
        from tideflow.storage.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), clock, create=create)
    raise UnsupportedDatabaseURLError(  # pragma: no cover - resolve_url refuses it first
        f"unsupported database URL {redact_url(url)}"
    )


def check_schema(store: FlowStore) -> None:
    """Raise ``SchemaMissingError`` if the store's database has no tideflow schema, or
    ``SchemaNotReadyError`` if migrations are pending; write nothing. What every read path
    calls instead of migrating."""
    from tideflow.storage.postgres import PostgresStore
    from tideflow.storage.sqlite import SQLiteStore

    if isinstance(store, PostgresStore | SQLiteStore):
        store.check_schema()
        return
    raise TypeError(f"no schema check for {type(store).__name__}")


def open_event_store_on(flow_store: FlowStore, *, upcasters: Upcasters | None = None) -> EventStore:
    """An event store sharing ``flow_store``'s connections and clock, so that one process opens
    one pool (PostgreSQL) or one connection (SQLite) for flows and events alike."""
    from tideflow.storage.postgres import PostgresStore
    from tideflow.storage.sqlite import SQLiteStore

    if isinstance(flow_store, PostgresStore):
        from tideflow.storage.postgres.event_store import PostgresEventStore

        return PostgresEventStore.sharing(flow_store, upcasters=upcasters)
    if isinstance(flow_store, SQLiteStore):
        from tideflow.storage.sqlite.event_store import SQLiteEventStore

        return SQLiteEventStore.sharing(flow_store, upcasters=upcasters)
    raise TypeError(f"no event store for {type(flow_store).__name__}")


def open_handler_store_on(flow_store: FlowStore) -> HandlerStore:
    """The handler store (leases, dead letters) on ``flow_store``'s connections."""
    from tideflow.storage.postgres import PostgresStore
    from tideflow.storage.sqlite import SQLiteStore

    if isinstance(flow_store, PostgresStore):
        from tideflow.storage.postgres.handler_store import PostgresHandlerStore

        return PostgresHandlerStore.sharing(flow_store)
    if isinstance(flow_store, SQLiteStore):
        from tideflow.storage.sqlite.handler_store import SQLiteHandlerStore

        return SQLiteHandlerStore.sharing(flow_store)
    raise TypeError(f"no handler store for {type(flow_store).__name__}")


def open_process_store_on(flow_store: FlowStore) -> ProcessStore:
    """The process store (process manager instances) on ``flow_store``'s connections."""
    from tideflow.storage.postgres import PostgresStore
    from tideflow.storage.sqlite import SQLiteStore

    if isinstance(flow_store, PostgresStore):
        from tideflow.storage.postgres.process_store import PostgresProcessStore

        return PostgresProcessStore.sharing(flow_store)
    if isinstance(flow_store, SQLiteStore):
        from tideflow.storage.sqlite.process_store import SQLiteProcessStore

        return SQLiteProcessStore.sharing(flow_store)
    raise TypeError(f"no process store for {type(flow_store).__name__}")


def open_event_store(
    url: str | None = None,
    *,
    clock: Clock | None = None,
    upcasters: Upcasters | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> EventStore:
    """The event store for a database URL (``postgresql://...`` or ``sqlite:///path``; default
    as for ``open_store``: ``$TIDEFLOW_DATABASE_URL``, else ``sqlite:///tideflow.db``).
    Call ``migrate()`` on it (or on the flow store) before first use."""
    url = resolve_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tideflow.storage.postgres.event_store import PostgresEventStore

        return PostgresEventStore(url, clock, upcasters=upcasters, page_size=page_size)
    if url.startswith("sqlite://"):
        from tideflow.storage.sqlite.event_store import SQLiteEventStore

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SQLiteEventStore(path, clock, upcasters=upcasters, page_size=page_size)
    raise UnsupportedDatabaseURLError(
        f"unsupported database URL {url.split('://')[0]!r}://... for the event store: use "
        "postgresql://user@host/db or sqlite:///path/to/file.db"
    )


def open_handler_store(url: str | None = None, *, clock: Clock | None = None) -> HandlerStore:
    """The handler store for a database URL, as ``open_event_store`` (same default). It opens
    its own connection(s); use ``SQLiteHandlerStore.sharing`` / ``PostgresHandlerStore.sharing``
    to run on a flow store's."""
    url = resolve_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tideflow.storage.postgres.handler_store import PostgresHandlerStore

        return PostgresHandlerStore(url, clock)
    if url.startswith("sqlite://"):
        from tideflow.storage.sqlite.handler_store import SQLiteHandlerStore

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SQLiteHandlerStore(path, clock)
    raise UnsupportedDatabaseURLError(
        f"unsupported database URL {url.split('://')[0]!r}://... for the handler store: use "
        "postgresql://user@host/db or sqlite:///path/to/file.db"
    )


def open_process_store(url: str | None = None, *, clock: Clock | None = None) -> ProcessStore:
    """The process store for a database URL, as ``open_event_store`` (same default). It opens
    its own connection(s); use ``SQLiteProcessStore.sharing`` / ``PostgresProcessStore.sharing``
    (or ``tideflow.storage.open_process_store_on``) to run on a flow store's."""
    url = resolve_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tideflow.storage.postgres.process_store import PostgresProcessStore

        return PostgresProcessStore(url, clock)
    if url.startswith("sqlite://"):
        from tideflow.storage.sqlite.process_store import SQLiteProcessStore

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SQLiteProcessStore(path, clock)
    raise UnsupportedDatabaseURLError(
        f"unsupported database URL {url.split('://')[0]!r}://... for the process store: use "
        "postgresql://user@host/db or sqlite:///path/to/file.db"
    )


def check_connection(url: str) -> None:
    """Connect once to a PostgreSQL URL and raise a typed error at once if that fails (the
    stores connect lazily); nothing to do for SQLite, whose file opens when first used."""
    if url.startswith(POSTGRES_SCHEMES):
        from tideflow.storage.postgres.backend import check_connection as connect_once

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
