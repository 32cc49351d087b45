"""Fixtures of the event store suite: every test runs on SQLite and PostgreSQL (see the root
conftest's ``db_url``), with the store's clock under the test's control."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tideflow.clock import ManualClock
from tideflow.storage import EventStore, HandlerStore, open_event_store, open_handler_store

OpenStore = Callable[..., EventStore]


@pytest.fixture
def open_events(backend: str, db_url: str, clock: ManualClock) -> Iterator[OpenStore]:
    """Open more stores on the test's database (each with its own connections, like another
    process would), closed at the end of the test."""
    opened: list[EventStore] = []

    def open_store(**kwargs: Any) -> EventStore:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("fast_paths", backend != "postgres-plain")
        store = open_event_store(db_url, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def events(open_events: OpenStore) -> EventStore:
    """An event store on an empty, migrated database."""
    store = open_events()
    store.migrate()
    return store


@pytest.fixture
def stores(db_url: str) -> Iterator[tuple[EventStore, HandlerStore]]:
    """An event store on a migrated database and a handler store beside it, each with
    connections of its own."""
    events = open_event_store(db_url)
    events.migrate()
    handlers = open_handler_store(db_url)
    yield events, handlers
    handlers.close()
    events.close()
