"""Storage: the contracts, the shared run state machine and one package per backend.

``flow_contract``, ``event_contract``, ``handler_contract`` and ``process_contract`` say what a
store does; ``flow_engine`` is the run state machine both flow backends share; ``sqlite/`` and
``postgres/`` implement them. ``opening`` (re-exported here) picks the backend for a database URL:
``open_store``, ``open_event_store``, ``open_handler_store``, ``open_process_store``.
"""

from __future__ import annotations

from tideflow.storage.event_contract import EventStore
from tideflow.storage.flow_contract import FlowStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.storage.opening import (
    check_schema,
    open_event_store,
    open_event_store_on,
    open_handler_store,
    open_handler_store_on,
    open_process_store,
    open_process_store_on,
    open_store,
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
    "EventStore",
    "FlowStore",
    "HandlerStore",
    "ProcessStore",
    "check_schema",
    "check_url",
    "open_event_store",
    "open_event_store_on",
    "open_handler_store",
    "open_handler_store_on",
    "open_process_store",
    "open_process_store_on",
    "open_store",
    "redact_url",
    "resolve_url",
]
