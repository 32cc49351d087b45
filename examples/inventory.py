"""Inventory with event sourcing: commands decide, events record, handlers follow the log.

    AddStock / RemoveStock ──▶ Inventory ──▶ StockAdded / StockRemoved ──┬──▶ StockLevels
          (commands)          (aggregate)      (events, stream            │    (projection: table
                                                inventory-<sku>)          │     stock_levels)
                                                                          └──▶ LowStockAlerts
                                                                               (handler: appends
                                                                                LowStockAlerted)

``Inventory`` is the write side. A command is decided against the state folded from its stream
(``@applies``) by a ``@handles`` method, which returns the events that record what happened - or
raises ``OutOfStock`` (a ``DomainError``) to refuse, and then nothing is written. Every third
event of a stream, the state is stored as a snapshot (``snapshot_every``), so loading replays only
the events after it. A command sent twice with one ``idempotency_key`` (a client retrying after a
timeout) is recorded once; the repeat gets the original result back.

The read side follows the log. ``StockLevels`` is a projection: it keeps the table
``stock_levels`` up to date, its rows committed together with its checkpoint, so each event
counts exactly once however often a worker crashes. ``LowStockAlerts`` is a plain handler: when a
removal takes a product below ``LOW_STOCK`` it appends a ``LowStockAlerted`` event (caused by the
removal) in the same transaction as its checkpoint. ``app.run_worker`` runs both.

Run it:                  python examples/inventory.py [DATABASE_URL]
Then look at the log:    tideflow events
                         tideflow handlers --app examples.inventory
"""

from __future__ import annotations

import sys
from typing import Any

from tideflow import App
from tideflow.events import (
    Aggregate,
    Command,
    DomainError,
    EventHandler,
    HandlerContext,
    NewEvent,
    Projection,
    RecordedEvent,
    applies,
    handles,
)

LOW_STOCK = 3
"""A removal that leaves fewer than this many on hand raises a low-stock alert."""
ALERTS_STREAM = "low_stock_alerts"


class OutOfStock(DomainError):
    pass


class Inventory(Aggregate):
    """One product's stock; its events go to the stream ``inventory-<sku>``."""

    snapshot_every = 3

    def initial_state(self, aggregate_id: str) -> dict[str, Any]:
        return {"on_hand": 0}

    @handles("AddStock")
    def add_stock(self, state: dict[str, Any], command: Command) -> tuple[str, dict[str, Any]]:
        qty = command.payload["qty"]
        return ("StockAdded", {"sku": command.aggregate_id, "qty": qty})

    @handles("RemoveStock")
    def remove_stock(self, state: dict[str, Any], command: Command) -> tuple[str, dict[str, Any]]:
        qty, on_hand = command.payload["qty"], state["on_hand"]
        if qty > on_hand:
            raise OutOfStock(f"cannot remove {qty} {command.aggregate_id}: only {on_hand} on hand")
        # "left" saves every reader of the event from folding the stream to learn it.
        return ("StockRemoved", {"sku": command.aggregate_id, "qty": qty, "left": on_hand - qty})

    @applies("StockAdded")
    def stock_added(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {"on_hand": state["on_hand"] + event.data["qty"]}

    @applies("StockRemoved")
    def stock_removed(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {"on_hand": state["on_hand"] - event.data["qty"]}


class StockLevels(Projection):
    """The read model: how many of each product are on hand."""

    name = "stock_levels"
    event_types = ["StockAdded", "StockRemoved"]
    tables = "stock_levels"
    schema = """CREATE TABLE IF NOT EXISTS stock_levels (
                    sku TEXT PRIMARY KEY, on_hand BIGINT NOT NULL)"""

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        change = event.data["qty"] if event.event_type == "StockAdded" else -event.data["qty"]
        ctx.execute(
            "INSERT INTO stock_levels (sku, on_hand) VALUES (%(sku)s, %(change)s) "
            "ON CONFLICT (sku) DO UPDATE SET on_hand = stock_levels.on_hand + excluded.on_hand",
            {"sku": event.data["sku"], "change": change},
        )


class LowStockAlerts(EventHandler):
    """Raises an alert - an event others can follow - when a product runs low."""

    name = "low_stock_alerts"
    event_types = ["StockRemoved"]

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        left, qty = event.data["left"], event.data["qty"]
        if left < LOW_STOCK <= left + qty:  # crossing the line, not every removal below it
            ctx.append(
                ALERTS_STREAM,
                [NewEvent("LowStockAlerted", {"sku": event.data["sku"], "left": left})],
            )


COMMANDS = [
    Command("AddStock", "tea", {"qty": 10}, idempotency_key="delivery-1001"),
    Command("AddStock", "mug", {"qty": 4}, idempotency_key="delivery-1002"),
    # The client timed out and sends delivery 1001 again: recorded once.
    Command("AddStock", "tea", {"qty": 10}, idempotency_key="delivery-1001"),
    Command("RemoveStock", "tea", {"qty": 3}),
    Command("RemoveStock", "mug", {"qty": 9}),  # refused: only 4 on hand
    Command("RemoveStock", "tea", {"qty": 5}),  # leaves 2: a low-stock alert
    Command("RemoveStock", "mug", {"qty": 1}),
]


def send(app: App, command: Command) -> None:
    """Dispatch one command and say what became of it."""
    what = f"{command.command_type:<12} {command.aggregate_id:<4} {command.payload['qty']:>3}"
    try:
        result = app.dispatch(command)
    except DomainError as exc:
        print(f"  {what}  refused: {exc}")
        return
    if result.replayed:
        print(f"  {what}  already recorded (key {command.idempotency_key}): nothing written")
        return
    types = ", ".join(e.event_type for e in result.events)
    print(f"  {what}  {types}: {result.stream_id} at version {result.version}")


def main(database_url: str | None = None) -> dict[str, int]:
    """Send the commands, let the handlers catch up, print and return the stock levels.

    Without a URL this uses $TIDEFLOW_DATABASE_URL, else ./tideflow.db - the CLI's default, so
    `tideflow events` shows the log afterwards."""
    with App(database_url, aggregates=[Inventory], handlers=[StockLevels, LowStockAlerts]) as app:
        print("commands:")
        for command in COMMANDS:
            send(app, command)
        app.run_worker(until_idle=True, poll_interval=0.05)
        with app.event_store.transaction() as tx:
            rows = tx.connection.execute(
                "SELECT sku, on_hand FROM stock_levels ORDER BY sku"
            ).fetchall()
        levels = {str(sku): int(on_hand) for sku, on_hand in rows}
        alerts = list(app.event_store.read_stream(ALERTS_STREAM))
    print("stock levels (table stock_levels):")
    for sku, on_hand in levels.items():
        print(f"  {sku:<4} {on_hand:>3}")
    print("low-stock alerts:")
    for alert in alerts:
        print(f"  {alert.data['sku']}: {alert.data['left']} left")
    return levels


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
