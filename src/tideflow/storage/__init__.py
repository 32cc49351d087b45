"""Storage: the seam, the stores written once over it, and one package per backend.

``database`` is the seam (``Database``, ``Tx``); ``flow_store``, ``event_store``,
``handler_store`` and ``process_store`` are the stores, written once over it;
``*_contract`` modules say what each store does (Protocols and data types); ``sqlite/`` and
``postgres/`` each supply a Database, their SQL and their fast paths. ``opening`` (re-exported
here) picks the backend for a database URL: ``open_database`` gives every store on one Database.
"""

from __future__ import annotations

from tideflow.storage.database import Database, Tx
from tideflow.storage.event_contract import EventStore
from tideflow.storage.flow_contract import FlowStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.storage.opening import (
    Stores,
    check_schema,
    connect,
    open_database,
    open_event_store,
    open_event_store_on,
    open_handler_store,
    open_handler_store_on,
    open_process_store,
    open_process_store_on,
    open_store,
    stores_on,
)
from tideflow.storage.process_contract import ProcessStore
from tideflow.storage.urls import (
    DEFAULT_URL,
    URL_ENV,
    check_url,
    redact_url,
    resolve_url,
)

__all__ = [
    "DEFAULT_URL",
    "URL_ENV",
    "Database",
    "EventStore",
    "FlowStore",
    "HandlerStore",
    "ProcessStore",
    "Stores",
    "Tx",
    "check_schema",
    "check_url",
    "connect",
    "open_database",
    "open_event_store",
    "open_event_store_on",
    "open_handler_store",
    "open_handler_store_on",
    "open_process_store",
    "open_process_store_on",
    "open_store",
    "redact_url",
    "resolve_url",
    "stores_on",
]
