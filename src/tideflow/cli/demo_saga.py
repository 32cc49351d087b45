"""The order saga ``tideflow demo`` runs after its flows: three orders, three endings.

``DemoOrders`` reserves the stock of each order (an ``Undoable``: its undo releases it), then
charges the card. Order ``A`` is paid and confirmed. Order ``B``'s card is declined: the refusal
undoes the reservation automatically and the instance ends ``compensated``. Order ``C`` pays by
bank transfer: the charge is pending, a timer gives the money ``PAYMENT_WINDOW`` seconds, and
when it fires the capture is refused - the transfer never came - so the reservation is undone by
the timer's reaction. Everything is in-process, on the demo's database.
"""

from __future__ import annotations

from typing import Any

from tideflow.events import Aggregate, Command, DomainError, RecordedEvent, applies, handles
from tideflow.sagas import Action, ProcessManager, ScheduleTimer, Undoable

#: Seconds order C's bank transfer gets before the timer gives up on it.
PAYMENT_WINDOW = 0.3
CARD_LIMIT = 500

Data = dict[str, Any]


class Declined(DomainError):
    pass


class DemoStock(Aggregate):
    def initial_state(self, aggregate_id: str) -> Data:
        return {"on_hand": 10}

    @handles("ReserveStock")
    def reserve(self, state: Data, command: Command) -> tuple[str, Data]:
        return ("StockReserved", dict(command.payload))

    @handles("ReleaseStock")
    def release(self, state: Data, command: Command) -> tuple[str, Data]:
        return ("StockReleased", dict(command.payload))

    @applies("StockReserved")
    def reserved(self, state: Data, event: RecordedEvent) -> Data:
        return {"on_hand": state["on_hand"] - event.data["qty"]}

    @applies("StockReleased")
    def released(self, state: Data, event: RecordedEvent) -> Data:
        return {"on_hand": state["on_hand"] + event.data["qty"]}


class DemoPayment(Aggregate):
    def initial_state(self, aggregate_id: str) -> Data:
        return {"status": "none"}

    @handles("Charge")
    def charge(self, state: Data, command: Command) -> tuple[str, Data]:
        payload = command.payload
        if payload["method"] == "transfer":
            return ("PaymentPending", {"order": payload["order"]})
        if payload["amount"] > CARD_LIMIT:
            raise Declined(f"{payload['amount']} is over the card's limit of {CARD_LIMIT}")
        return ("PaymentCharged", {"order": payload["order"]})

    @handles("Capture")
    def capture(self, state: Data, command: Command) -> tuple[str, Data]:
        if state["status"] == "pending":
            raise Declined("the bank transfer never arrived")
        return ("PaymentCaptured", {"order": command.payload["order"]})

    @applies("PaymentPending")
    def pending(self, state: Data, event: RecordedEvent) -> Data:
        return {"status": "pending"}


class DemoOrder(Aggregate):
    @handles("PlaceOrder")
    def place(self, state: Any, command: Command) -> tuple[str, Data]:
        return ("OrderPlaced", {"order": command.aggregate_id, **command.payload})

    @handles("ConfirmOrder")
    def confirm(self, state: Any, command: Command) -> tuple[str, Data]:
        return ("OrderConfirmed", {"order": command.aggregate_id})


class DemoOrders(ProcessManager):
    """One instance per order: reserve (undoable), charge, confirm - or undo."""

    name = "demo_orders"
    event_types = ["OrderPlaced", "PaymentCharged", "PaymentPending", "PaymentDue"]
    starts_with = ["OrderPlaced"]

    def process_id(self, event: RecordedEvent) -> str:
        return str(event.data["order"]) if "order" in event.data else str(event.correlation_id)

    def react(self, state: Data, event: RecordedEvent) -> list[Action]:
        data = event.data
        if event.event_type == "OrderPlaced":
            order, qty = data["order"], data["qty"]
            return [
                Undoable(
                    Command("ReserveStock", data["sku"], {"order": order, "qty": qty}),
                    Command("ReleaseStock", data["sku"], {"order": order, "qty": qty}),
                ),
                Command(
                    "Charge",
                    order,
                    {"order": order, "amount": data["amount"], "method": data["method"]},
                ),
            ]
        if event.event_type == "PaymentCharged":
            return [Command("ConfirmOrder", state["order"])]
        if event.event_type == "PaymentPending":
            return [ScheduleTimer("payment", after=PAYMENT_WINDOW, event_type="PaymentDue")]
        if event.event_type == "PaymentDue":  # the transfer had its window
            return [Command("Capture", state["order"], {"order": state["order"]})]
        return []

    def apply(self, state: Data, event: RecordedEvent) -> Data:
        if event.event_type == "OrderPlaced":
            return {"order": event.data["order"], "step": "placed"}
        return {**state, "step": event.event_type}

    def is_done(self, state: Data) -> bool:
        return bool(state["step"] == "PaymentCharged")


DEMO_ORDERS: list[tuple[Command, str, str]] = [
    (
        Command("PlaceOrder", "A", {"sku": "tea", "qty": 2, "amount": 120, "method": "card"}),
        "completed",
        "paid by card: confirmed",
    ),
    (
        Command("PlaceOrder", "B", {"sku": "tea", "qty": 1, "amount": 900, "method": "card"}),
        "compensated",
        "card declined: the stock reservation undone automatically",
    ),
    (
        Command("PlaceOrder", "C", {"sku": "tea", "qty": 3, "amount": 80, "method": "transfer"}),
        "compensated",
        f"transfer not there after {PAYMENT_WINDOW:g}s: a timer fired, the reservation undone",
    ),
]
