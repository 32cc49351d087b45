"""An order saga: a process manager reserves stock, charges the card, ships - or undoes it all.

    PlaceOrder ──▶ OrderPlaced ──▶ OrderFulfilment ──▶ ReserveStock ──▶ StockReserved ──┐
                                 (process manager,                                      │
                                  one instance per order)  ◀────────────────────────────┘
                                        │ ChargeCard ──▶ PaymentCharged ──▶ ConfirmOrder
                                        │                                 + StartFlow(ship_order)
                                        └ refused? compensate: ReleaseStock, CancelOrder

Three aggregates decide: ``Order`` (stream ``order-<id>``), ``Stock`` (``stock-<sku>``) and
``Payment`` (``payment-<order id>``). None of them knows about the others; ``OrderFulfilment``
coordinates them. Each order gets its own instance, found by the correlation id that every
command it sends carries on to the events it causes; the instance's state is a row of the table
``process_instances`` (``tideflow sagas``).

When the card is declined, the stock that was reserved for the order is released and the order
cancelled: ``compensate`` returns the commands that undo what the instance did. An order for more
than is in stock is cancelled at the first step. A paid order is confirmed and the flow
``ship_order`` starts - in the same transaction as the instance's new state, so a worker crash
can neither lose the shipment nor start it twice.

Run it:                  python examples/order_saga.py [DATABASE_URL]
                         (again: the orders are sent with idempotency keys, so a second run
                         replays them and shows the same fates)
Then look:               tideflow sagas [-d DATABASE_URL]
                         tideflow saga INSTANCE_ID
                         tideflow runs
"""

from __future__ import annotations

import sys
from typing import Any

from tideflow import App, Flow, step
from tideflow.events import Aggregate, Command, DomainError, RecordedEvent, applies, handles
from tideflow.sagas import Action, ProcessManager, StartFlow

CARD_LIMIT = 500


class OrderClosed(DomainError):
    pass


class OutOfStock(DomainError):
    pass


class CardDeclined(DomainError):
    pass


Data = dict[str, Any]


class Order(Aggregate):
    def initial_state(self, aggregate_id: str) -> Data:
        return {"status": "new"}

    @handles("PlaceOrder")
    def place(self, state: Data, command: Command) -> tuple[str, Data]:
        if state["status"] != "new":
            raise OrderClosed(f"order {command.aggregate_id} was already placed")
        return ("OrderPlaced", {"order": command.aggregate_id, **command.payload})

    @handles("ConfirmOrder")
    def confirm(self, state: Data, command: Command) -> tuple[str, Data]:
        if state["status"] != "placed":
            raise OrderClosed(f"order {command.aggregate_id} is {state['status']}")
        return ("OrderConfirmed", {"order": command.aggregate_id})

    @handles("CancelOrder")
    def cancel(self, state: Data, command: Command) -> tuple[str, Data]:
        if state["status"] != "placed":
            raise OrderClosed(f"order {command.aggregate_id} is {state['status']}")
        return ("OrderCancelled", {"order": command.aggregate_id, **command.payload})

    @applies("OrderPlaced")
    def placed(self, state: Data, event: RecordedEvent) -> Data:
        return {"status": "placed"}

    @applies("OrderConfirmed")
    def confirmed(self, state: Data, event: RecordedEvent) -> Data:
        return {"status": "confirmed"}

    @applies("OrderCancelled")
    def cancelled(self, state: Data, event: RecordedEvent) -> Data:
        return {"status": "cancelled"}


class Stock(Aggregate):
    def initial_state(self, aggregate_id: str) -> Data:
        return {"on_hand": 0}

    @handles("AddStock")
    def add(self, state: Data, command: Command) -> tuple[str, Data]:
        return ("StockAdded", {"sku": command.aggregate_id, "qty": command.payload["qty"]})

    @handles("ReserveStock")
    def reserve(self, state: Data, command: Command) -> tuple[str, Data]:
        qty = command.payload["qty"]
        if qty > state["on_hand"]:
            raise OutOfStock(f"{qty} x {command.aggregate_id} wanted, {state['on_hand']} left")
        return ("StockReserved", {"sku": command.aggregate_id, **command.payload})

    @handles("ReleaseStock")
    def release(self, state: Data, command: Command) -> tuple[str, Data]:
        return ("StockReleased", {"sku": command.aggregate_id, **command.payload})

    @applies("StockAdded", "StockReleased")
    def back(self, state: Data, event: RecordedEvent) -> Data:
        return {"on_hand": state["on_hand"] + event.data["qty"]}

    @applies("StockReserved")
    def out(self, state: Data, event: RecordedEvent) -> Data:
        return {"on_hand": state["on_hand"] - event.data["qty"]}


class Payment(Aggregate):
    @handles("ChargeCard")
    def charge(self, state: Any, command: Command) -> tuple[str, Data]:
        amount = command.payload["amount"]
        if amount > CARD_LIMIT:
            raise CardDeclined(f"{amount} is over the card's limit of {CARD_LIMIT}")
        return ("PaymentCharged", {"order": command.aggregate_id, "amount": amount})


class ShipOrder(Flow, slug="ship_order"):
    @step()
    def pack(self, input: Data) -> Data:
        return {"parcel": f"P-{input['order']}", "items": input["qty"]}

    @step(depends_on=["pack"])
    def label(self, pack: Data) -> str:
        return f"label for {pack['parcel']}"


class OrderFulfilment(ProcessManager):
    """One instance per order, from OrderPlaced to OrderConfirmed or OrderCancelled."""

    name = "order_fulfilment"
    event_types = [
        "OrderPlaced",
        "StockReserved",
        "PaymentCharged",
        "OrderConfirmed",
        "OrderCancelled",
    ]
    starts_with = ["OrderPlaced"]

    def react(self, state: Data, event: RecordedEvent) -> list[Action]:
        data = event.data
        if event.event_type == "OrderPlaced":
            return [
                Command("ReserveStock", data["sku"], {"order": data["order"], "qty": data["qty"]})
            ]
        if event.event_type == "StockReserved":
            return [Command("ChargeCard", state["order"], {"amount": state["amount"]})]
        if event.event_type == "PaymentCharged":
            return [
                Command("ConfirmOrder", state["order"]),
                StartFlow(ShipOrder, {"order": state["order"], "qty": state["qty"]}),
            ]
        return []

    def apply(self, state: Data, event: RecordedEvent) -> Data:
        if event.event_type == "OrderPlaced":
            return {**event.data, "status": "placed"}
        if event.event_type == "StockReserved":
            return {**state, "status": "reserved"}
        if event.event_type == "PaymentCharged":
            return {**state, "status": "paid"}
        return {**state, "status": event.event_type.removeprefix("Order").lower()}

    def compensate(self, state: Data, command: Command, error: Exception) -> list[Command]:
        undo = []
        if state["status"] == "reserved":  # the card was refused: put the stock back
            undo.append(
                Command(
                    "ReleaseStock", state["sku"], {"order": state["order"], "qty": state["qty"]}
                )
            )
        undo.append(Command("CancelOrder", state["order"], {"reason": str(error)}))
        return undo

    def is_done(self, state: Data) -> bool:
        return state["status"] in ("confirmed", "cancelled")


ORDERS = [
    Command("PlaceOrder", "o-1", {"sku": "tea", "qty": 2, "amount": 120}, idempotency_key="o-1"),
    # card declined:
    Command("PlaceOrder", "o-2", {"sku": "tea", "qty": 1, "amount": 900}, idempotency_key="o-2"),
    # out of stock:
    Command("PlaceOrder", "o-3", {"sku": "tea", "qty": 5, "amount": 80}, idempotency_key="o-3"),
]


def shop(database_url: str | None = None) -> App:
    return App(
        database_url,
        flows=[ShipOrder],
        aggregates=[Order, Stock, Payment],
        handlers=[OrderFulfilment],
    )


app = shop()
"""For ``tideflow worker --app examples.order_saga`` (and ``tideflow sagas``)."""


def main(database_url: str | None = None) -> dict[str, str]:
    """Stock the shelf, place the orders, run the worker until all is done; print and return
    each order's fate. Without a URL: $TIDEFLOW_DATABASE_URL, else ./tideflow.db."""
    with shop(database_url) as the_shop:
        the_shop.dispatch(Command("AddStock", "tea", {"qty": 4}, idempotency_key="first-stock"))
        for order in ORDERS:
            the_shop.dispatch(order)
        the_shop.run_worker(until_idle=True, poll_interval=0.05)
        fates = {}
        for instance in the_shop.process_store.list_instances("order_fulfilment"):
            state = instance.state
            fates[state["order"]] = state["status"]
            why = f" ({instance.error})" if instance.error else ""
            print(f"  {state['order']}: {state['status']:<9} {instance.status}{why}")
        on_hand = the_shop.dispatcher.load(Stock, "tea").state["on_hand"]
        shipped = [r.run_id for r in the_shop.list_runs(flow="ship_order")]
    print(f"tea on hand: {on_hand}; shipments: {', '.join(shipped) or 'none'}")
    return dict(sorted(fates.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
