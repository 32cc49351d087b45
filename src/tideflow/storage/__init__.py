"""Storage: the contract (``contract``), the shared run state machine (``engine``) and one
package per backend. ``open_store`` picks the backend from a database URL."""

from __future__ import annotations

from tideflow.clock import Clock
from tideflow.errors import UnsupportedDatabaseURLError
from tideflow.events.upcasting import Upcasters
from tideflow.storage.contract import FlowStore
from tideflow.storage.event_contract import EventStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.storage.process_contract import ProcessStore
from tideflow.storage.urls import (
    DEFAULT_URL,
    POSTGRES_SCHEMES,
    URL_ENV,
    check_url,
    redact_url,
    resolve_url,
    sqlite_path,
)


def open_store(url: str | None = None, *, clock: Clock | None = None,
               create: bool = True) -> FlowStore:
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
        f"unsupported database URL {redact_url(url)}")


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


__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "EventStore",
    "FlowStore",
    "HandlerStore",
    "ProcessStore",
    "check_schema",
    "check_url",
    "open_event_store_on",
    "open_handler_store_on",
    "open_process_store_on",
    "open_store",
    "redact_url",
    "resolve_url",
]
