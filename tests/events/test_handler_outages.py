"""Handlers ride out database outages: a batch that met one rolls back and is tried again after
a backoff, without counting an attempt - even when the outage surfaced inside ``handle`` as a
raw driver error from the handler's own SQL (issue 7)."""

from __future__ import annotations

import logging
import sqlite3

import psycopg
import pytest

from tideflow.errors import DatabaseUnavailableError
from tideflow.events.handling import EventHandler, HandlerContext
from tideflow.events.model import ExpectedVersion, NewEvent, RecordedEvent
from tideflow.events.projections import Projection
from tideflow.storage.event_contract import EventStore, EventTransaction
from tideflow.storage.handler_contract import HandlerStore
from tideflow.worker.handlers import HandlerRunner, HandlerRunnerOptions

pytestmark = pytest.mark.usefixtures("quick_backoff")  # outages end by count, not time


class Outaged(EventHandler):
    """Meets the database going away twice - as the driver's own error (its ``ctx.execute``)
    and as tideflow's (its ``ctx.append``) - before handling anything. One attempt only: were
    an outage counted as a failure, the first event would become a dead letter."""

    name = "outaged"
    max_attempts = 1

    def __init__(self) -> None:
        self.calls = 0
        self.handled: list[int] = []

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        self.calls += 1
        if self.calls == 1:
            raise driver_outage(ctx.dialect)
        if self.calls == 2:
            raise DatabaseUnavailableError("appending failed: the database is unavailable")
        self.handled.append(event.position)


def driver_outage(dialect: str) -> Exception:
    """What the handler's ``ctx.execute`` raises when this backend's database goes away (the
    store judges its own driver's errors: a psycopg error inside a handler on SQLite comes from
    some other database, and counts as the handler failing)."""
    if dialect == "postgresql":
        return psycopg.OperationalError(
            "consuming input failed: server closed the connection unexpectedly"
        )
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # SQLITE_BUSY, as the driver sets it
    return locked


def test_an_outage_inside_handle_is_waited_out_not_counted(
    stores: tuple[EventStore, HandlerStore], caplog: pytest.LogCaptureFixture
) -> None:
    events, handler_store = stores
    appended = [
        events.append(f"s-{i % 2}", [NewEvent("A", {"i": i})], ExpectedVersion.ANY)[0]
        for i in range(5)
    ]
    handler = Outaged()
    runner = HandlerRunner(
        events,
        handler_store,
        [handler],
        options=HandlerRunnerOptions(poll_interval=0.02, lease_ttl=5),
    )
    with caplog.at_level(logging.INFO, "tideflow"):
        runner.run_until_idle()
    assert handler.handled == [e.position for e in appended]  # each once, in order
    assert handler_store.list_dead_letters() == []
    record = next(r for r in handler_store.list_handlers() if r.name == "outaged")
    assert record.status == "running" and record.last_error is None
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([m for m in lines if "handler outaged failed" in m]) == 1  # one per outage
    assert any("database back" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if r.exc_info]


class SetUpInAnOutage(Projection):
    """Its tables are created while the database goes away (a restart while the runner takes
    the projection over): the setup's driver error is the outage's, not the schema's."""

    name = "set_up_in_an_outage"
    tables = "outage_counts"
    schema = "CREATE TABLE IF NOT EXISTS outage_counts (position bigint PRIMARY KEY)"

    def __init__(self) -> None:
        self.setups = 0

    def setup(self, tx: EventTransaction) -> None:
        self.setups += 1
        if self.setups == 1:
            raise driver_outage(tx.dialect)
        super().setup(tx)

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        ctx.execute("INSERT INTO outage_counts (position) VALUES (%s)", (event.position,))


def test_an_outage_during_a_projections_setup_is_waited_out(
    stores: tuple[EventStore, HandlerStore], caplog: pytest.LogCaptureFixture
) -> None:
    events, handler_store = stores
    events.append("s", [NewEvent("A", {}), NewEvent("A", {})], ExpectedVersion.NO_STREAM)
    projection = SetUpInAnOutage()
    runner = HandlerRunner(
        events,
        handler_store,
        [projection],
        options=HandlerRunnerOptions(poll_interval=0.02, lease_ttl=5),
    )
    with caplog.at_level(logging.INFO, "tideflow"):
        runner.run_until_idle()
    assert projection.setups == 2
    with events.transaction() as tx:
        rows = tx.connection.execute("SELECT count(*) FROM outage_counts").fetchone()
    assert rows is not None and rows[0] == 2
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("database back" in r.getMessage() for r in caplog.records)
