"""The codec's wire format as SQL sees it (the queries docs/concepts/storage.md shows), and its
types through event data, command payloads and a process manager's undo list: both backends."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

import psycopg
import pytest

from tideflow import App
from tideflow.events import (
    ANY,
    Aggregate,
    Command,
    InvalidCommandDataError,
    NewEvent,
    as_payload,
    handles,
)

from .flows_typed import Priority, Tier, Untyped

ORDER = UUID("7f0c2a64-55a3-4c1e-9e43-6f1f1b7e2a10")


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql).fetchall()


def test_the_documented_sql_reads_tagged_values(app: App, db_url: str) -> None:
    app.register(Untyped)
    placed = datetime.now(ZoneInfo("Europe/Paris")) - timedelta(hours=1)
    value = {"total": Decimal("18.20"), "placed_at": placed, "order_id": ORDER, "tier": Tier.GOLD}
    run_id = app.start_flow(Untyped, value)
    app.start_flow(Untyped, dict(value, placed_at=placed - timedelta(days=3)))
    app.event_store.append("order-1", [NewEvent("Placed", {"order_id": ORDER})], ANY)
    tier = "tests.typed.flows_typed:Tier.GOLD"
    if db_url.startswith("sqlite"):
        rows = query(
            db_url,
            "SELECT run_id, json_extract(input, '$.total.\"$decimal\"') FROM runs "
            "WHERE json_extract(input, '$.placed_at.\"$datetime\"') > "
            f"'{(placed - timedelta(days=1)).isoformat()}'",
        )
        assert rows == [(run_id, "18.20")]
        events = query(
            db_url,
            "SELECT event_type FROM events "
            f"WHERE json_extract(data, '$.order_id.\"$uuid\"') = '{ORDER}'",
        )
        assert events == [("Placed",)]
        return
    rows = query(
        db_url,
        "SELECT run_id, (input->'total'->>'$decimal')::numeric AS total FROM tideflow.runs "
        "WHERE (split_part(input->'placed_at'->>'$datetime', '[', 1))::timestamptz "
        "> now() - interval '1 day'",
    )
    assert rows == [(run_id, Decimal("18.20"))]
    events = query(
        db_url,
        f"SELECT event_type FROM tideflow.events WHERE data->'order_id'->>'$uuid' = '{ORDER}'",
    )
    assert events == [("Placed",)]
    pattern = f'{{"tier": {{"$enum": "{tier}"}}}}'
    contained = query(db_url, f"SELECT count(*) FROM tideflow.runs WHERE input @> '{pattern}'")
    assert contained == [(2,)]


EVENT_DATA = {
    "at": datetime(2026, 12, 7, 21, 7, 0, 1, tzinfo=UTC),
    "naive": datetime(2026, 12, 7, 21, 7),
    "day": date(2026, 12, 7),
    "amount": Decimal("0.10"),
    "id": ORDER,
    "tier": Tier.SILVER,
    "priority": Priority.LOW,
    "plain": {"a": [1, 2.5, None, True, "x"]},
}


def test_event_data_and_metadata_round_trip_exactly(app: App) -> None:
    store = app.event_store
    written = store.append("s", [NewEvent("E", EVENT_DATA, {"by": ORDER})], ANY)[0]
    assert written.data == EVENT_DATA
    [read] = list(store.read_stream("s"))
    assert read.data == EVENT_DATA and read.metadata == {"by": ORDER}
    assert [type(v) for v in read.data.values()] == [type(v) for v in EVENT_DATA.values()]
    assert str(read.data["amount"]) == "0.10"
    [every] = list(store.read_all())
    assert every.data == EVENT_DATA


@dataclass(frozen=True)
class AddStock:
    qty: int
    expires: date
    unit_price: Decimal


class Stock(Aggregate):
    def initial_state(self, aggregate_id: str) -> Any:
        return {"on_hand": 0}

    @handles("AddStock")
    def add(self, state: Any, command: Command) -> Any:
        payload = command.payload_as(AddStock)
        return ("StockAdded", {"qty": payload.qty, "expires": payload.expires, "payload": payload})


def test_a_typed_command_payload_is_built_checked_and_its_events_keep_the_types(app: App) -> None:
    app.aggregate(Stock)
    command = Command("AddStock", "tea", as_payload(AddStock(3, date(2027, 1, 1), Decimal("2.5"))))
    assert command.payload == {"qty": 3, "expires": date(2027, 1, 1), "unit_price": Decimal("2.5")}
    result = app.dispatch(command)
    [event] = result.events
    assert event.data == {
        "qty": 3,
        "expires": date(2027, 1, 1),
        "payload": {"qty": 3, "expires": date(2027, 1, 1), "unit_price": Decimal("2.5")},
    }
    # The same key with the same payload is a replay (the fingerprint encodes the payload).
    again = app.dispatch(command)
    assert again.replayed
    bad = Command("AddStock", "tea", {"qty": "3", "expires": date(2027, 1, 1), "unit_price": 1})
    with pytest.raises(InvalidCommandDataError, match=r"\$\.qty: expected int") as caught:
        app.dispatch(bad)
    assert caught.value.field == "payload"
    assert [e.event_type for e in app.event_store.read_stream("stock-tea")] == ["StockAdded"]
    with pytest.raises(InvalidCommandDataError, match=r"no field 'qtty' \(did you mean 'qty'\?\)"):
        Command("AddStock", "tea", {"qtty": 1}).payload_as(AddStock)
