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
from tideflow.storage.urls import DEFAULT_URL, URL_ENV, redact_url, resolve_url


def open_store(url: str | None = None, *, clock: Clock | None = None) -> FlowStore:
    url = resolve_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tideflow.storage.postgres import PostgresStore

        return PostgresStore(url, clock)
    if url.startswith("sqlite://"):
        from tideflow.storage.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SQLiteStore(path, clock)
    raise UnsupportedDatabaseURLError(
        f"unsupported database URL {url.split('://')[0]!r}://...: use postgresql://user@host/db "
        "or sqlite:///path/to/file.db"
    )


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
    "open_event_store_on",
    "open_handler_store_on",
    "open_process_store_on",
    "open_store",
    "redact_url",
    "resolve_url",
]
