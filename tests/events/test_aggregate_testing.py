"""Aggregate classes and the given/when/then helper (``tideflow.events.testing``): no database.

The helper runs the dispatcher's own decision code, so these tests also pin down how aggregates
are declared (routing, naming, the checks made when a class statement runs) and how what a
handler returns becomes events.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tideflow.errors import TideflowError
from tideflow.events import NewEvent, RecordedEvent, Upcasters
from tideflow.events.aggregate import (
    Aggregate,
    AggregateDefinitionError,
    DomainError,
    InvalidDecisionError,
    applies,
    handles,
)
from tideflow.events.commands import Command, UnknownCommandError
from tideflow.events.testing import given


class OutOfStock(DomainError):
    pass


class InventoryItem(Aggregate):
    def initial_state(self, aggregate_id: str) -> dict[str, Any]:
        return {"on_hand": 0}

    @handles("AddStock")
    def add_stock(self, state: dict[str, Any], command: Command) -> Any:
        return ("StockAdded", {"qty": command.payload["qty"]})

    @handles("RemoveStock")
    def remove_stock(self, state: dict[str, Any], command: Command) -> Any:
        qty = command.payload["qty"]
        if qty > state["on_hand"]:
            raise OutOfStock(f"cannot remove {qty}: only {state['on_hand']} on hand")
        yield ("StockRemoved", {"qty": qty})
        if qty == state["on_hand"]:
            yield NewEvent("SoldOut", {}, {"alert": True})

    @handles("Tag")
    def tag(self, state: dict[str, Any], command: Command) -> Any:
        return ("Tagged", {"tags": tuple(command.payload["tags"])})  # a tuple: stored as a list

    @handles("Stamp")
    def stamp(self, state: dict[str, Any], command: Command) -> Any:
        return ("Stamped", {"at": datetime(2030, 1, 1, tzinfo=UTC), "bad": {1: "a"}})

    @handles("Garble")
    def garble(self, state: dict[str, Any], command: Command) -> Any:
        return {"StockAdded": 3}

    @applies("StockAdded")
    def stock_added(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {**state, "on_hand": state["on_hand"] + event.data["qty"]}

    @applies("StockRemoved")
    def stock_removed(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        state["on_hand"] -= event.data["qty"]  # in place is fine, as long as it is returned
        return state

    @applies("Tagged")
    def tagged(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {**state, "tags": event.data["tags"]}


# --- the helper -----------------------------------------------------------------------------------


def test_given_when_then_events_and_state() -> None:
    (
        given(InventoryItem, [("StockAdded", {"qty": 5})])
        .when(Command("RemoveStock", "sku-1", {"qty": 2}))
        .then(("StockRemoved", {"qty": 2}))
        .then_state({"on_hand": 3})
    )
    (
        given(InventoryItem, [("StockAdded", {"qty": 2})])
        .when(Command("RemoveStock", "sku-1", {"qty": 2}))
        .then([("StockRemoved", {"qty": 2}), NewEvent("SoldOut", {}, {"alert": True})])
    )
    given(InventoryItem).when(Command("AddStock", "sku-1", {"qty": 1})).then_state({"on_hand": 1})


def test_events_are_compared_as_the_store_would_return_them() -> None:
    outcome = given(InventoryItem).when(Command("Tag", "sku-1", {"tags": ["a", "b"]}))
    outcome.then(("Tagged", {"tags": ["a", "b"]}))  # the tuple came back as a list
    outcome.then_state({"on_hand": 0, "tags": ["a", "b"]})
    assert outcome.events is not None
    assert outcome.events[0].metadata == {"command_type": "Tag", "aggregate_type": "inventory_item"}
    with pytest.raises(
        AssertionError,
        match=r"data of produced event #1 .*'Stamped'.*cannot be stored: a dict key of type int",
    ):
        given(InventoryItem).when(Command("Stamp", "sku-1")).then(("Stamped", {"at": "x"}))


def test_then_shows_expected_and_actual_events() -> None:
    outcome = given(InventoryItem, [("StockAdded", {"qty": 2})]).when(
        Command("RemoveStock", "sku-1", {"qty": 2})
    )
    with pytest.raises(AssertionError) as info:
        outcome.then(("StockRemoved", {"qty": 3}))
    assert str(info.value) == (
        "the events differ from event #1 on\n"
        "given:\n"
        '    1. StockAdded {"qty": 2}\n'
        "when:\n"
        "    RemoveStock {\"qty\": 2} -> aggregate 'sku-1'\n"
        "expected:\n"
        '    1. StockRemoved {"qty": 3}\n'
        "actual:\n"
        '    1. StockRemoved {"qty": 2}\n'
        "    2. SoldOut {}"
    )
    with pytest.raises(
        AssertionError,
        match=r"from event #2 on(.|\n)*expected:\n    1\. "
        r"StockRemoved",
    ):
        outcome.then(("StockRemoved", {"qty": 2}))
    with pytest.raises(
        AssertionError,
        match=r"event #2 \(SoldOut\) has metadata .*include "
        r"\{'alert': False\}",
    ):
        outcome.then(("StockRemoved", {"qty": 2}), NewEvent("SoldOut", {}, {"alert": False}))
    with pytest.raises(
        AssertionError,
        match=r"expected 1 event.*raised OutOfStock: cannot remove "
        r"3: only 0 on hand",
    ):
        given(InventoryItem).when(Command("RemoveStock", "sku-1", {"qty": 3})).then(
            ("StockRemoved", {"qty": 3})
        )


def test_then_error() -> None:
    error = (
        given(InventoryItem, [("StockAdded", {"qty": 1})])
        .when(Command("RemoveStock", "sku-1", {"qty": 3}))
        .then_error(OutOfStock, match=r"only \d on hand")
    )
    assert isinstance(error, OutOfStock)
    outcome = given(InventoryItem).when(Command("RemoveStock", "sku-1", {"qty": 3}))
    outcome.then_error(DomainError)
    with pytest.raises(
        AssertionError,
        match=r"expected KeyError, but the command raised "
        r"OutOfStock",
    ):
        outcome.then_error(KeyError)
    with pytest.raises(AssertionError, match=r"does not match 'sold out'"):
        outcome.then_error(OutOfStock, match=r"sold out")
    with pytest.raises(
        AssertionError,
        match=r"expected OutOfStock, but the command succeeded "
        r"with:\n    1\. StockAdded",
    ):
        given(InventoryItem).when(Command("AddStock", "sku-1", {"qty": 1})).then_error(OutOfStock)
    given(InventoryItem).when(Command("Garble", "sku-1")).then_error(
        InvalidDecisionError, match=r"returned dict.*\('EventType', \{...data\}\) pairs"
    )


def test_then_state_and_applier_failures() -> None:
    class Fragile(InventoryItem):
        @applies("StockAdded")
        def stock_added(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
            return {**state, "on_hand": state["on_hand"] + event.data["quantity"]}

    class Forgetful(InventoryItem):
        @applies("StockAdded")
        def stock_added(  # type: ignore[override]
            self, state: dict[str, Any], event: RecordedEvent
        ) -> None:
            state["on_hand"] += event.data["qty"]

    with pytest.raises(
        AssertionError,
        match=r"apply\(\) failed on produced event StockAdded "
        r"\{\"qty\": 1\}: KeyError",
    ):
        given(Fragile).when(Command("AddStock", "sku-1", {"qty": 1})).then(
            ("StockAdded", {"qty": 1})
        )
    with pytest.raises(InvalidDecisionError, match=r"returned None from apply"):
        given(Forgetful, [("StockAdded", {"qty": 1})]).when(
            Command("AddStock", "sku-1", {"qty": 1})
        )
    with pytest.raises(
        AssertionError,
        match=r"expected state:\n    \{'on_hand': 9\}\nactual "
        r"state:\n    \{'on_hand': 1\}",
    ):
        given(InventoryItem).when(Command("AddStock", "sku-1", {"qty": 1})).then_state(
            {"on_hand": 9}
        )


def test_a_handler_that_changes_the_state_it_was_given_fails_the_test() -> None:
    class Sloppy(InventoryItem):
        def add_stock(self, state: dict[str, Any], command: Command) -> Any:
            state["on_hand"] += command.payload["qty"]
            return ("StockAdded", {"qty": command.payload["qty"]})

    given(Sloppy).when(Command("AddStock", "s", {"qty": 1})).then_error(
        InvalidDecisionError,
        match=r"handler of 'AddStock' changed the state it was given \(from "
        r"\{'on_hand': 0\} to \{'on_hand': 1\}\)",
    )


def test_a_command_the_aggregate_does_not_handle_is_a_mistake_in_the_test() -> None:
    with pytest.raises(
        UnknownCommandError,
        match=r"'AddStok' in aggregate 'inventory_item'.*Did "
        r"you mean 'AddStock'",
    ):
        given(InventoryItem).when(Command("AddStok", "sku-1"))
    with pytest.raises(TypeError, match=r"given: an event must be"):
        given(InventoryItem, ["StockAdded"])  # type: ignore[list-item]


def test_given_events_are_read_through_upcasters() -> None:
    upcasters = Upcasters()
    upcasters.register("StockAdded", 1, lambda data: {"qty": data["quantity"]})
    (
        given(
            InventoryItem,
            [NewEvent("StockAdded", {"quantity": 4}, schema_version=1)],
            upcasters=upcasters,
        )
        .when(Command("RemoveStock", "sku-1", {"qty": 1}))
        .then(("StockRemoved", {"qty": 1}))
    )


def test_snapshot_round_trips_are_checked() -> None:
    @dataclass
    class Stock:
        on_hand: int

    class Plain(InventoryItem):
        snapshot_every = 10

    class Typed(Aggregate):
        snapshot_every = 10

        def initial_state(self, aggregate_id: str) -> Stock:
            return Stock(0)

        @handles("AddStock")
        def add(self, state: Stock, command: Command) -> Any:
            return ("StockAdded", {"qty": command.payload["qty"]})

        @applies("StockAdded")
        def added(self, state: Stock, event: RecordedEvent) -> Stock:
            return Stock(state.on_hand + event.data["qty"])

    class Converted(Typed):
        def to_snapshot(self, state: Stock) -> dict[str, Any]:
            return {"on_hand": state.on_hand}

        def from_snapshot(self, data: dict[str, Any]) -> Stock:
            return Stock(data["on_hand"])

    given(Plain).when(Command("AddStock", "sku-1", {"qty": 1})).then(("StockAdded", {"qty": 1}))
    given(Converted).when(Command("AddStock", "s", {"qty": 1})).then_state(Stock(1))
    with pytest.raises(
        AssertionError,
        match=r"Typed takes snapshots.*cannot be snapshotted.*"
        r"override to_snapshot",
    ):
        given(Typed).when(Command("AddStock", "s", {"qty": 1})).then(("StockAdded", {"qty": 1}))


# --- declaring aggregates -------------------------------------------------------------------------


def test_aggregate_types_default_to_the_class_name_in_snake_case() -> None:
    class HTTPCacheEntry(Aggregate):
        pass

    class Order(Aggregate):
        aggregate_type = "sales_order"

    assert InventoryItem.aggregate_type == "inventory_item"
    assert HTTPCacheEntry.aggregate_type == "http_cache_entry"
    assert Order.aggregate_type == "sales_order" and Order.stream_id("42") == "sales_order-42"

    class Renamed(Order):  # a subclass is another aggregate: it does not inherit the type
        pass

    assert Renamed.aggregate_type == "renamed"
    assert InventoryItem.command_types == {"AddStock", "RemoveStock", "Tag", "Stamp", "Garble"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"aggregate_type": "Sales-Order"}, "aggregate_type 'Sales-Order' is invalid"),
        ({"aggregate_type": "x" * 65}, "at most 64 characters"),
        ({"snapshot_every": 0}, "snapshot_every must be None .* or an int >= 1"),
        ({"snapshot_every": True}, "snapshot_every must be"),
        ({"snapshot_version": 0}, "snapshot_version must be an int >= 1"),
        (
            {"command_types": "AddStock"},
            "command_types must be a collection.*write \\{'AddStock'\\}",
        ),
        ({"command_types": {"Ship"}}, "lists \\['Ship'\\] but no method is marked @handles"),
    ],
)
def test_malformed_aggregate_classes_are_refused_when_declared(
    body: dict[str, Any], message: str
) -> None:
    with pytest.raises(AggregateDefinitionError, match=message):
        type("Broken", (Aggregate,), body)


def test_handler_routing_is_checked_when_declared() -> None:
    with pytest.raises(
        AggregateDefinitionError,
        match=r"'AddStock' is routed to both a\(\) and "
        r"b\(\)",
    ):

        class Twice(Aggregate):
            @handles("AddStock")
            def a(self, state: Any, command: Command) -> None: ...

            @handles("AddStock")
            def b(self, state: Any, command: Command) -> None: ...

    with pytest.raises(AggregateDefinitionError, match=r"Async.add is async"):

        class Async(Aggregate):
            @handles("AddStock")
            async def add(self, state: Any, command: Command) -> None: ...

    with pytest.raises(
        AggregateDefinitionError,
        match=re.escape(
            "Narrow.added must take (self, state, event); its signature is (self, event:"
        ),
    ):

        class Narrow(Aggregate):
            @applies("StockAdded")
            def added(self, event: Any) -> None: ...

    with pytest.raises(AggregateDefinitionError, match=r"at least one type name"):
        handles()
    with pytest.raises(AggregateDefinitionError, match=r"non-empty strs, got 3"):
        applies(3)  # type: ignore[arg-type]


def test_subclasses_inherit_and_override_routes() -> None:
    class Strict(InventoryItem):
        def add_stock(self, state: dict[str, Any], command: Command) -> Any:  # keeps its route
            if command.payload["qty"] > 100:
                raise DomainError("too many")
            return super().add_stock(state, command)

        @handles("RemoveStock")  # another method takes the type over
        def remove_nothing(self, state: dict[str, Any], command: Command) -> None:
            return None

    given(Strict).when(Command("AddStock", "s", {"qty": 101})).then_error(DomainError)
    given(Strict).when(Command("AddStock", "s", {"qty": 1})).then(("StockAdded", {"qty": 1}))
    given(Strict, [("StockAdded", {"qty": 1})]).when(Command("RemoveStock", "s", {"qty": 1})).then()


def test_execute_and_apply_can_be_overridden_for_other_routing() -> None:
    class Ledger(Aggregate):
        command_types = frozenset({"Credit", "Debit"})

        def initial_state(self, aggregate_id: str) -> int:
            return 0

        def execute(self, state: int, command: Command) -> Any:
            sign = 1 if command.command_type == "Credit" else -1
            return NewEvent("Posted", {"amount": sign * command.payload["amount"]})

        def apply(self, state: int, event: RecordedEvent) -> int:
            return state + int(event.data["amount"])

        def to_snapshot(self, state: int) -> dict[str, Any]:
            return {"balance": state}

    assert Ledger.command_types == {"Credit", "Debit"}
    (
        given(Ledger, [("Posted", {"amount": 10})])
        .when(Command("Debit", "acct-1", {"amount": 4}))
        .then(("Posted", {"amount": -4}))
        .then_state(6)
    )


def test_domain_errors_are_the_applications_own() -> None:
    assert not issubclass(DomainError, TideflowError)
    assert issubclass(AggregateDefinitionError, TideflowError)
