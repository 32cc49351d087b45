"""Events through the App: one database and one set of connections for flows and events."""

from __future__ import annotations

import pytest

from tideflow import App
from tideflow.events import Aggregate, Command, DomainError, UnknownCommandError, applies, handles


class OutOfStock(DomainError):
    pass


class Inventory(Aggregate):
    @handles("AddStock")
    def add(self, state, command):
        return [("StockAdded", {"qty": command.payload["qty"]})]

    @handles("RemoveStock")
    def remove(self, state, command):
        if state["qty"] < command.payload["qty"]:
            raise OutOfStock(f"only {state['qty']} left")
        return [("StockRemoved", {"qty": command.payload["qty"]})]

    def initial_state(self, aggregate_id):
        return {"qty": 0}

    @applies("StockAdded")
    def added(self, state, event):
        return {"qty": state["qty"] + event.data["qty"]}

    @applies("StockRemoved")
    def removed(self, state, event):
        return {"qty": state["qty"] - event.data["qty"]}


def test_app_dispatches_to_registered_aggregates(db_url: str) -> None:
    with App(db_url, aggregates=[Inventory]) as app:
        result = app.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
        assert [e.event_type for e in result.events] == ["StockAdded"]
        app.dispatch(Command("RemoveStock", "sku-1", {"qty": 2}))
        with pytest.raises(OutOfStock):
            app.dispatch(Command("RemoveStock", "sku-1", {"qty": 9}))
        with pytest.raises(UnknownCommandError):
            app.dispatch(Command("Teleport", "sku-1", {}))
        assert app.dispatcher.load(Inventory, "sku-1").state == {"qty": 3}
        assert [e.event_type for e in app.event_store.read_stream("inventory-sku-1")] == [
            "StockAdded",
            "StockRemoved",
        ]


def test_aggregate_decorator_and_async_dispatch(db_url: str) -> None:
    import asyncio

    app = App(db_url)
    app.aggregate(Inventory)
    try:
        result = asyncio.run(app.aio.dispatch(Command("AddStock", "sku-2", {"qty": 1})))
        assert result.version == 1
    finally:
        app.close()


def test_one_worker_runs_flows_and_projections(db_url: str) -> None:
    from tideflow import Flow, step
    from tideflow.events import Projection

    class StockLevels(Projection):
        name = "stock_levels_app"
        event_types = ["StockAdded", "StockRemoved"]
        tables = "stock_levels_app"
        schema = (
            "CREATE TABLE IF NOT EXISTS stock_levels_app "
            "(sku TEXT PRIMARY KEY, qty BIGINT NOT NULL)"
        )

        def handle(self, event, ctx):
            sign = 1 if event.event_type == "StockAdded" else -1
            ctx.execute(
                "INSERT INTO stock_levels_app (sku, qty) VALUES (%(sku)s, %(qty)s) "
                "ON CONFLICT (sku) DO UPDATE SET qty = stock_levels_app.qty + excluded.qty",
                {"sku": event.stream_id, "qty": sign * event.data["qty"]},
            )

    class Restock(Flow, slug="restock"):
        @step()
        def order(self, input):
            return input["qty"]

    app = App(db_url, flows=[Restock], aggregates=[Inventory], handlers=[StockLevels])
    try:
        app.dispatch(Command("AddStock", "sku-9", {"qty": 7}))
        app.dispatch(Command("RemoveStock", "sku-9", {"qty": 3}))
        run_id = app.start_flow("restock", {"qty": 4})
        app.run_worker(until_idle=True, poll_interval=0.05)
        assert app.get_run(run_id).output == {"order": 4}
        with app.event_store.transaction() as tx:
            cur = tx.connection.execute(
                "SELECT qty FROM stock_levels_app WHERE sku = 'inventory-sku-9'"
            )
            assert cur.fetchone()[0] == 4
    finally:
        app.close()
