"""The command dispatcher, on SQLite and PostgreSQL: routing, validation, domain errors,
optimistic concurrency, idempotency (across dispatchers, processes' stores and restarts),
causation, snapshots, middleware and the async facade.

Every test that touches a database runs on both backends (the ``events``/``open_events``
fixtures). Concurrency is forced, not hoped for: a handler waits at a barrier so that two
dispatchers both load the same version before either appends.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from typing import Any, cast
from uuid import UUID, uuid4

import pytest

from tideflow.errors import TideflowError
from tideflow.events import ExpectedVersion, NewEvent, RecordedEvent, Snapshot, Upcasters
from tideflow.events.aggregate import (
    Aggregate,
    AggregateDefinitionError,
    DomainError,
    applies,
    handles,
)
from tideflow.events.commands import (
    Command,
    CommandNotSerializableError,
    DispatchResult,
    InvalidCommandError,
    UnknownCommandError,
)
from tideflow.events.errors import EventNotSerializableError, StreamDeletedError
from tideflow.events.middleware import CommandRejectedError, DispatchContext, Middleware
from tideflow.runtime.dispatch import (
    CommandDispatcher,
    ConcurrencyRetriesExhaustedError,
    DispatcherConfigurationError,
    DuplicateCommandHandlerError,
    IdempotencyKeyConflictError,
    UnknownAggregateError,
)
from tideflow.storage.event_contract import EventStore

from .conftest import OpenStore

# --- the aggregates under test --------------------------------------------------------------------


class OutOfStock(DomainError):
    pass


class AlreadyRegistered(DomainError):
    pass


class Inventory(Aggregate):
    """A stock counter: the canonical small aggregate."""

    def initial_state(self, aggregate_id: str) -> dict[str, Any]:
        return {"sku": aggregate_id, "on_hand": 0, "registered": False}

    @handles("RegisterItem")
    def register_item(self, state: dict[str, Any], command: Command) -> Any:
        if state["registered"]:
            raise AlreadyRegistered(f"item {state['sku']} is already registered")
        return ("ItemRegistered", {"name": command.payload["name"]})

    @handles("AddStock")
    def add_stock(self, state: dict[str, Any], command: Command) -> Any:
        return ("StockAdded", {"qty": command.payload["qty"]})

    @handles("RemoveStock")
    def remove_stock(self, state: dict[str, Any], command: Command) -> Any:
        qty = command.payload["qty"]
        if qty > state["on_hand"]:
            raise OutOfStock(f"cannot remove {qty}: only {state['on_hand']} on hand")
        return [("StockRemoved", {"qty": qty})]

    @handles("Audit")
    def audit(self, state: dict[str, Any], command: Command) -> None:
        return None  # a command that records nothing

    @handles("AddBadly")
    def add_badly(self, state: dict[str, Any], command: Command) -> Any:
        return ("StockAdded", {"qty": {1, 2}})  # a set: not JSON

    @applies("ItemRegistered")
    def item_registered(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {**state, "registered": True}

    @applies("StockAdded")
    def stock_added(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {**state, "on_hand": state["on_hand"] + event.data["qty"]}

    @applies("StockRemoved")
    def stock_removed(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {**state, "on_hand": state["on_hand"] - event.data["qty"]}


class SnapshottedInventory(Inventory):
    snapshot_every = 3


class Counter(Aggregate):
    """Increments a counter; optionally waits at a barrier the first time it decides, so that
    two dispatchers interleave load -> load -> append -> append."""

    def __init__(self, barrier: threading.Barrier | None = None) -> None:
        self.barrier = barrier
        self.decisions = 0

    def initial_state(self, aggregate_id: str) -> dict[str, Any]:
        return {"n": 0, "seen": []}

    @handles("Increment")
    def increment(self, state: dict[str, Any], command: Command) -> Any:
        self.decisions += 1
        if self.barrier is not None and self.decisions == 1:
            self.barrier.wait(timeout=10)
        return ("Incremented", {"by": command.payload["by"], "after": state["n"]})

    @applies("Incremented")
    def incremented(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {"n": state["n"] + event.data["by"], "seen": [*state["seen"], event.data["by"]]}


def count(store: EventStore) -> int:
    """Events in the whole store (positions are not reset between tests on PostgreSQL)."""
    return sum(1 for _ in store.read_all())


def stream(store: EventStore, stream_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event_type, e.data) for e in store.read_stream(stream_id)]


@pytest.fixture
def dispatcher(events: EventStore) -> CommandDispatcher:
    return CommandDispatcher(events, [Inventory])


# --- routing --------------------------------------------------------------------------------------


def test_commands_are_routed_to_their_aggregate_and_recorded(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    first = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    second = dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 2}))
    other = dispatcher.dispatch(Command("AddStock", "sku-2", {"qty": 1}))

    assert (first.stream_id, first.version, first.replayed) == ("inventory-sku-1", 1, False)
    assert (first.aggregate_type, first.aggregate_id, first.command_type) == (
        "inventory",
        "sku-1",
        "AddStock",
    )
    assert second.version == 2 and other.version == 1
    assert [e.event_type for e in second.events] == ["StockRemoved"]
    assert first.positions[0] < second.positions[0] < other.positions[0]
    assert stream(events, "inventory-sku-1") == [
        ("StockAdded", {"qty": 5}),
        ("StockRemoved", {"qty": 2}),
    ]
    loaded = dispatcher.load(Inventory, "sku-1")
    assert (loaded.state["on_hand"], loaded.version) == (3, 2)
    assert dispatcher.load("inventory", "sku-9").version == 0
    assert dispatcher.command_types == [
        "AddBadly",
        "AddStock",
        "Audit",
        "RegisterItem",
        "RemoveStock",
    ]


def test_an_unknown_command_type_is_refused_naming_the_known_ones(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    with pytest.raises(
        UnknownCommandError,
        match=r"'AddStok'.*'AddStock', 'Audit'.*Did you mean "
        r"'AddStock'",
    ) as info:
        dispatcher.dispatch(Command("AddStok", "sku-1", {"qty": 5}))
    assert info.value.command_type == "AddStok" and "RemoveStock" in info.value.known
    assert count(events) == 0
    with pytest.raises(UnknownAggregateError, match=r"'warehouse'.*known: 'inventory'"):
        dispatcher.load("warehouse", "w-1")


def test_a_command_claimed_by_two_aggregates_is_refused_at_registration() -> None:
    class Shop(Aggregate):
        @handles("AddStock")
        def add(self, state: Any, command: Command) -> None:
            return None

    class Inventory2(Inventory):
        aggregate_type = "inventory"

    class Empty(Aggregate):
        pass

    store = cast(EventStore, None)  # registration never touches the store
    with pytest.raises(
        DuplicateCommandHandlerError,
        match=r"'AddStock' is handled by both "
        r"Inventory and Shop",
    ):
        CommandDispatcher(store, [Inventory, Shop])
    with pytest.raises(DuplicateCommandHandlerError, match=r"aggregate_type 'inventory'.*mix"):
        CommandDispatcher(store, [Inventory, Inventory2])
    with pytest.raises(AggregateDefinitionError, match=r"Empty handles no command type"):
        CommandDispatcher(store, [Empty])
    with pytest.raises(AggregateDefinitionError, match=r"is not an aggregate"):
        CommandDispatcher(store, [object])  # type: ignore[list-item]
    with pytest.raises(DispatcherConfigurationError, match=r"max_conflict_retries"):
        CommandDispatcher(store, [Inventory], max_conflict_retries=-1)
    with pytest.raises(DispatcherConfigurationError, match=r"subclass tideflow\.events"):
        CommandDispatcher(store, [Inventory], middleware=[object()])  # type: ignore[list-item]
    dispatcher = CommandDispatcher(store)
    assert dispatcher.register(Inventory) is Inventory  # works as a class decorator
    assert list(dispatcher.aggregates) == ["inventory"]


# --- malformed commands ---------------------------------------------------------------------------


def test_commands_are_checked_when_built() -> None:
    with pytest.raises(
        CommandNotSerializableError,
        match=r"payload of command 'AddStock'.*cannot be stored",
    ) as payload:
        Command("AddStock", "sku-1", {"when": object()})
    assert payload.value.field == "payload"
    assert isinstance(payload.value, InvalidCommandError) and isinstance(payload.value, TypeError)
    with pytest.raises(CommandNotSerializableError, match=r"metadata.*must be a dict") as bad:
        Command("AddStock", "sku-1", metadata=["user"])  # type: ignore[arg-type]
    assert bad.value.field == "metadata"
    with pytest.raises(CommandNotSerializableError, match=r"non-str keys|dict key of type int"):
        Command("AddStock", "sku-1", {1: "one"})  # type: ignore[dict-item]
    with pytest.raises(CommandNotSerializableError, match=r"NaN or infinity"):
        Command("AddStock", "sku-1", {"qty": float("nan")})
    for bad_id in ("", None, 42):
        with pytest.raises(InvalidCommandError, match=r"aggregate_id") as info:
            Command("AddStock", bad_id)  # type: ignore[arg-type]
        assert info.value.field == "aggregate_id"
    with pytest.raises(InvalidCommandError, match=r"command_type") as info:
        Command("", "sku-1")
    assert info.value.field == "command_type"
    with pytest.raises(InvalidCommandError, match=r"command_id.*must be a UUID") as info:
        Command("AddStock", "sku-1", command_id="not-a-uuid")
    assert info.value.field == "command_id"
    with pytest.raises(InvalidCommandError, match=r"idempotency_key") as info:
        Command("AddStock", "sku-1", idempotency_key="")
    assert isinstance(info.value, TideflowError)
    command_id = uuid4()
    command = Command("AddStock", "sku-1", command_id=command_id)  # type: ignore[arg-type]
    assert command.command_id == str(command_id) == command.correlation_id


def test_invalid_commands_and_events_write_nothing(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    with pytest.raises(InvalidCommandError, match=r"aggregate_type 'warehouse'.*'inventory'"):
        dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}, aggregate_type="warehouse"))
    with pytest.raises(InvalidCommandError, match=r"at most 190 fit in a stream id"):
        dispatcher.dispatch(Command("AddStock", "x" * 191, {"qty": 1}))
    with pytest.raises(InvalidCommandError, match=r"takes a tideflow.events.commands.Command"):
        dispatcher.dispatch({"command_type": "AddStock"})  # type: ignore[arg-type]
    with pytest.raises(EventNotSerializableError, match=r"StockAdded"):
        dispatcher.dispatch(Command("AddBadly", "sku-1", idempotency_key="k-bad"))
    assert count(events) == 0
    assert events.get_idempotent_result("k-bad") is None
    dispatcher.dispatch(Command("AddStock", "x" * 190, {"qty": 1}, aggregate_type="inventory"))


def test_a_domain_error_is_reraised_unchanged_and_writes_nothing(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 2}))
    with pytest.raises(OutOfStock, match=r"only 2 on hand"):
        dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 3}, idempotency_key="k-1"))
    assert events.stream_version("inventory-sku-1") == 1
    assert events.get_idempotent_result("k-1") is None  # a refusal records nothing: decide again
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    result = dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 3}, idempotency_key="k-1"))
    assert (result.version, result.replayed) == (3, False)


# --- concurrency ----------------------------------------------------------------------------------


class AttemptLog(Middleware):
    def __init__(self) -> None:
        self.attempts: list[int] = []

    def after_dispatch(self, ctx: DispatchContext, result: DispatchResult) -> None:
        self.attempts.append(ctx.attempts)


def _run_all(calls: list[Any]) -> list[Any]:
    """Run the calls in threads at once, one each; return their results (or exceptions)."""
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except Exception as exc:  # pragma: no cover - reported by the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_two_dispatchers_racing_on_one_aggregate_both_take_effect_in_order(
    events: EventStore, open_events: OpenStore
) -> None:
    barrier = threading.Barrier(2)
    log = AttemptLog()
    events.append(
        "counter-c1", [NewEvent("Incremented", {"by": 100, "after": 0})], ExpectedVersion.NO_STREAM
    )
    dispatchers = [
        CommandDispatcher(open_events(), [Counter(barrier)], middleware=[log]) for _ in range(2)
    ]
    results = _run_all(
        [
            lambda: dispatchers[0].dispatch(Command("Increment", "c1", {"by": 1})),
            lambda: dispatchers[1].dispatch(Command("Increment", "c1", {"by": 2})),
        ]
    )

    assert all(isinstance(r, DispatchResult) for r in results), results
    assert sorted(r.version for r in results) == [2, 3]
    assert sorted(log.attempts) == [1, 2]  # the loser reloaded and decided again
    recorded = list(events.read_stream("counter-c1"))
    # Both decisions were taken on the state they were appended to: the second one saw the first.
    assert recorded[1].data["after"] == 100
    assert recorded[2].data["after"] == 100 + recorded[1].data["by"]
    assert dispatchers[0].load(Counter, "c1").state["n"] == 103


def test_a_command_that_keeps_losing_the_race_gives_up_with_a_typed_error(
    events: EventStore, open_events: OpenStore
) -> None:
    intruder = open_events()

    class Contended(Counter):
        aggregate_type = "counter"

        def increment(self, state: dict[str, Any], command: Command) -> Any:
            # another writer appends between every load and append of this command
            intruder.append(
                "counter-c1", [NewEvent("Incremented", {"by": 0, "after": 0})], ExpectedVersion.ANY
            )
            return super().increment(state, command)

    dispatcher = CommandDispatcher(events, [Contended()], max_conflict_retries=2)
    with pytest.raises(
        ConcurrencyRetriesExhaustedError,
        match=r"'counter-c1' to other writers "
        r"3 times.*max_conflict_retries=2",
    ) as info:
        dispatcher.dispatch(Command("Increment", "c1", {"by": 1}, idempotency_key="k-hot"))
    assert info.value.attempts == 3 and info.value.stream_id == "counter-c1"
    assert isinstance(info.value.__cause__, Exception)
    assert [e.data["by"] for e in events.read_stream("counter-c1")] == [0, 0, 0]
    assert events.get_idempotent_result("k-hot") is None


# --- idempotency ----------------------------------------------------------------------------------


def test_a_repeated_key_returns_the_original_result_from_another_dispatcher(
    events: EventStore, open_events: OpenStore
) -> None:
    first = CommandDispatcher(events, [Inventory])
    second = CommandDispatcher(open_events(), [Inventory])  # another process's store
    original = first.dispatch(Command("AddStock", "sku-1", {"qty": 5}, idempotency_key="req-1"))
    first.dispatch(Command("AddStock", "sku-1", {"qty": 1}))

    again = second.dispatch(Command("AddStock", "sku-1", {"qty": 5}, idempotency_key="req-1"))

    assert again.replayed and not original.replayed
    assert again.events == original.events  # the same events, read back: ids, positions, data
    assert (again.version, again.command_id) == (1, original.command_id)
    assert events.stream_version("inventory-sku-1") == 2


def test_idempotency_survives_a_restart(open_events: OpenStore) -> None:
    store = open_events()
    store.migrate()
    original = CommandDispatcher(store, [Inventory]).dispatch(
        Command("RegisterItem", "sku-1", {"name": "bolt"}, idempotency_key="req-1")
    )
    store.close()

    reopened = open_events()
    again = CommandDispatcher(reopened, [Inventory]).dispatch(
        Command("RegisterItem", "sku-1", {"name": "bolt"}, idempotency_key="req-1")
    )

    # The repeat would be refused (AlreadyRegistered) if decided again: it is replayed instead.
    assert again.replayed and [e.event_id for e in again.events] == [
        e.event_id for e in original.events
    ]
    assert reopened.stream_version("inventory-sku-1") == 1


def test_two_dispatchers_racing_with_one_key_append_exactly_once(
    events: EventStore, open_events: OpenStore
) -> None:
    barrier = threading.Barrier(2)
    dispatchers = [CommandDispatcher(open_events(), [Counter(barrier)]) for _ in range(2)]

    def send(i: int) -> Any:
        return dispatchers[i].dispatch(
            Command("Increment", "c1", {"by": 1}, idempotency_key="req-7")
        )

    results = _run_all([lambda: send(0), lambda: send(1)])

    assert all(isinstance(r, DispatchResult) for r in results), results
    assert sorted(r.replayed for r in results) == [False, True]
    assert results[0].events == results[1].events and results[0].command_id == results[1].command_id
    assert [e.data for e in events.read_stream("counter-c1")] == [{"by": 1, "after": 0}]


def test_a_key_reused_for_another_command_is_refused(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}, idempotency_key="req-1"))
    for command, problem in [
        (Command("AddStock", "sku-1", {"qty": 6}, idempotency_key="req-1"), "different payload"),
        (Command("AddStock", "sku-2", {"qty": 5}, idempotency_key="req-1"), "'inventory-sku-1'"),
        (Command("Audit", "sku-1", idempotency_key="req-1"), "'AddStock'"),
    ]:
        with pytest.raises(IdempotencyKeyConflictError, match=problem):
            dispatcher.dispatch(command)
    events.append("elsewhere", [], ExpectedVersion.ANY, idempotency_key="raw", result_json="1")
    with pytest.raises(IdempotencyKeyConflictError, match=r"not by a command dispatcher"):
        dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}, idempotency_key="raw"))
    assert events.stream_version("inventory-sku-1") == 1
    assert events.stream_version("inventory-sku-2") == 0


def test_a_command_without_events_records_its_key(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    plain = dispatcher.dispatch(Command("Audit", "sku-1"))
    assert (plain.events, plain.version) == ((), 0)
    first = dispatcher.dispatch(Command("Audit", "sku-1", idempotency_key="audit-1"))
    again = dispatcher.dispatch(Command("Audit", "sku-1", idempotency_key="audit-1"))
    assert (first.replayed, again.replayed, again.events, again.version) == (False, True, (), 0)
    assert events.get_idempotent_result("audit-1") is not None


# --- causation and correlation --------------------------------------------------------------------


def test_events_carry_the_commands_causation_correlation_and_metadata(
    dispatcher: CommandDispatcher,
) -> None:
    plain = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}, metadata={"user": "u-1"}))
    event = plain.events[0]
    assert event.causation_id == event.correlation_id == UUID(plain.command_id)
    assert event.metadata == {
        "user": "u-1",
        "command_type": "AddStock",
        "aggregate_type": "inventory",
    }

    chained = Command("RemoveStock", "sku-1", {"qty": 1}).caused_by(event)
    assert chained.causation_id == str(event.event_id)
    assert chained.correlation_id == str(event.correlation_id)
    assert chained.command_id != plain.command_id
    caused = dispatcher.dispatch(chained).events[0]
    assert caused.causation_id == UUID(chained.command_id)
    assert caused.correlation_id == UUID(plain.command_id)  # the whole chain shares it
    assert caused.metadata["command_causation_id"] == str(event.event_id)


# --- snapshots ------------------------------------------------------------------------------------


class CountingStore:
    """An event store that counts the events read through ``read_stream``."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.events_read = 0
        self.snapshots_saved: list[int] = []

    def read_stream(self, *args: Any, **kwargs: Any) -> Iterator[RecordedEvent]:
        for event in self._store.read_stream(*args, **kwargs):
            self.events_read += 1
            yield event

    def save_snapshot(self, stream_id: str, version: int, *args: Any, **kwargs: Any) -> None:
        self.snapshots_saved.append(version)
        self._store.save_snapshot(stream_id, version, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def test_snapshots_give_the_state_of_a_full_replay_and_are_used(events: EventStore) -> None:
    counting = CountingStore(events)
    dispatcher = CommandDispatcher(cast(EventStore, counting), [SnapshottedInventory])
    for qty in (5, 3, 2, 7, 1, 4, 6):
        dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": qty}))
    dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 2}))  # version 8

    assert counting.snapshots_saved == [3, 6]
    snapshot = events.load_snapshot("snapshotted_inventory-sku-1")
    assert snapshot is not None and (snapshot.version, snapshot.snapshot_type) == (
        6,
        "snapshotted_inventory",
    )
    counting.events_read = 0
    loaded = dispatcher.load(SnapshottedInventory, "sku-1")
    assert (loaded.snapshot_version, loaded.events_replayed, counting.events_read) == (6, 2, 2)

    full = CommandDispatcher(events, [Inventory])  # the same decisions, without snapshots
    replayed = full._load(full.aggregates["inventory"], "snapshotted_inventory-sku-1", "sku-1")
    assert (replayed.snapshot_version, replayed.events_replayed) == (0, 8)
    assert loaded.state == replayed.state == {"sku": "sku-1", "on_hand": 26, "registered": False}
    assert loaded.version == replayed.version == 8


def test_a_failing_snapshot_does_not_fail_the_command(
    events: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Unsnapshottable(SnapshottedInventory):
        def to_snapshot(self, state: Any) -> dict[str, Any]:
            return {"when": object()}

    dispatcher = CommandDispatcher(events, [Unsnapshottable])
    with caplog.at_level(logging.WARNING, "tideflow.runtime.dispatch"):
        for qty in (1, 2, 3):
            result = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": qty}))
    assert result.version == 3
    assert events.load_snapshot("unsnapshottable-sku-1") is None
    assert "could not snapshot 'unsnapshottable-sku-1' at version 3" in caplog.text


def test_snapshots_of_another_shape_are_ignored(events: EventStore) -> None:
    events.append(
        "snapshotted_inventory-sku-1",
        [NewEvent("StockAdded", {"qty": 4}), NewEvent("StockAdded", {"qty": 1})],
        ExpectedVersion.NO_STREAM,
    )
    events.save_snapshot(
        "snapshotted_inventory-sku-1",
        2,
        {"old": "shape"},
        snapshot_type="snapshotted_inventory",
        schema_version=7,
    )
    dispatcher = CommandDispatcher(events, [SnapshottedInventory])
    loaded = dispatcher.load(SnapshottedInventory, "sku-1")
    assert (loaded.snapshot_version, loaded.state["on_hand"]) == (0, 5)
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}))  # version 3: a new snapshot
    snapshot = events.load_snapshot("snapshotted_inventory-sku-1")
    assert isinstance(snapshot, Snapshot) and (snapshot.version, snapshot.schema_version) == (3, 1)


def test_old_event_shapes_are_upcast_before_apply(open_events: OpenStore) -> None:
    upcasters = Upcasters()

    @upcasters.upcaster("StockAdded", from_version=1)
    def _quantity(data: dict[str, Any]) -> dict[str, Any]:
        return {"qty": data.pop("quantity")}

    store = open_events(upcasters=upcasters)
    store.migrate()
    store.append(
        "inventory-sku-1",
        [NewEvent("StockAdded", {"quantity": 4}, schema_version=1)],
        ExpectedVersion.NO_STREAM,
    )
    dispatcher = CommandDispatcher(store, [Inventory])
    result = dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 3}))
    assert result.version == 2 and dispatcher.load(Inventory, "sku-1").state["on_hand"] == 1


# --- middleware -----------------------------------------------------------------------------------


class Recorder(Middleware):
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls

    def before_dispatch(self, ctx: DispatchContext) -> DispatchResult | None:
        self.calls.append(f"{self.name}.before")
        return None

    def after_dispatch(self, ctx: DispatchContext, result: DispatchResult) -> None:
        self.calls.append(f"{self.name}.after v{result.version}")

    def after_failure(self, ctx: DispatchContext, error: Exception) -> None:
        self.calls.append(f"{self.name}.failure {type(error).__name__}")


class StampUser(Middleware):
    def before_dispatch(self, ctx: DispatchContext) -> DispatchResult | None:
        ctx.command = dataclasses.replace(
            ctx.command, metadata={**ctx.command.metadata, "user": "u-9"}
        )
        return None


class RequireUser(Middleware):
    def before_dispatch(self, ctx: DispatchContext) -> DispatchResult | None:
        if "user" not in ctx.command.metadata:
            raise CommandRejectedError(ctx.command, "commands need a user in their metadata")
        return None


def test_middleware_runs_around_the_dispatch_like_an_onion(events: EventStore) -> None:
    calls: list[str] = []
    dispatcher = CommandDispatcher(
        events,
        [Inventory],
        middleware=[Recorder("a", calls), StampUser(), RequireUser(), Recorder("b", calls)],
    )
    result = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    assert calls == ["a.before", "b.before", "b.after v1", "a.after v1"]
    assert result.events[0].metadata["user"] == "u-9"

    calls.clear()
    with pytest.raises(OutOfStock):
        dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 9}))
    assert calls == ["a.before", "b.before", "b.failure OutOfStock", "a.failure OutOfStock"]


def test_a_before_hook_halts_with_an_error_or_a_result(events: EventStore) -> None:
    calls: list[str] = []
    dispatcher = CommandDispatcher(
        events, [Inventory], middleware=[Recorder("a", calls), RequireUser(), Recorder("b", calls)]
    )
    with pytest.raises(CommandRejectedError, match=r"need a user.*nothing was written"):
        dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    assert calls == ["a.before", "a.failure CommandRejectedError"]

    canned = DispatchResult(
        str(uuid4()), "AddStock", "inventory", "sku-1", "inventory-sku-1", (), 41
    )

    class Cache(Middleware):
        def before_dispatch(self, ctx: DispatchContext) -> DispatchResult | None:
            return canned

    calls.clear()
    dispatcher = CommandDispatcher(
        events, [Inventory], middleware=[Recorder("a", calls), Cache(), Recorder("b", calls)]
    )
    assert dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1})) is canned
    assert calls == ["a.before", "a.after v41"]
    assert count(events) == 0


def test_hooks_cannot_break_a_committed_command_or_retarget_one(
    events: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Middleware):
        def after_dispatch(self, ctx: DispatchContext, result: DispatchResult) -> None:
            raise RuntimeError("metrics backend down")

    class Retarget(Middleware):
        def before_dispatch(self, ctx: DispatchContext) -> DispatchResult | None:
            ctx.command = dataclasses.replace(ctx.command, aggregate_id="sku-2")
            return None

    class BadReturn(Middleware):
        def before_dispatch(self, ctx: DispatchContext) -> Any:
            return "ok"

    with caplog.at_level(logging.ERROR, "tideflow.runtime.dispatch"):
        result = CommandDispatcher(events, [Inventory], middleware=[Broken()]).dispatch(
            Command("AddStock", "sku-1", {"qty": 1})
        )
    assert result.version == 1 and "Broken.after_dispatch raised" in caplog.text
    with pytest.raises(
        InvalidCommandError,
        match=r"middleware may change metadata, not the "
        r"target",
    ):
        CommandDispatcher(events, [Inventory], middleware=[Retarget()]).dispatch(
            Command("AddStock", "sku-1", {"qty": 1})
        )
    with pytest.raises(TideflowError, match=r"BadReturn.before_dispatch returned str"):
        CommandDispatcher(events, [Inventory], middleware=[BadReturn()]).dispatch(
            Command("AddStock", "sku-1", {"qty": 1})
        )
    assert count(events) == 1


# --- async ----------------------------------------------------------------------------------------


async def test_the_async_facade_dispatches_in_a_thread(dispatcher: CommandDispatcher) -> None:
    result = await dispatcher.aio.dispatch(
        Command("AddStock", "sku-1", {"qty": 2}, idempotency_key="req-a")
    )
    again = await dispatcher.aio.dispatch(
        Command("AddStock", "sku-1", {"qty": 2}, idempotency_key="req-a")
    )
    assert (result.version, again.replayed, again.events) == (1, True, result.events)
    with pytest.raises(OutOfStock):
        await dispatcher.aio.dispatch(Command("RemoveStock", "sku-1", {"qty": 3}))
    assert (await dispatcher.aio.load(Inventory, "sku-1")).state["on_hand"] == 2


# --- dispatching inside a transaction -------------------------------------------------------------


def test_commands_dispatched_within_a_transaction_commit_or_vanish_together(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    with events.transaction() as tx:
        inside = dispatcher.within(tx)
        # The second command decides on the first one's uncommitted event: same stream, read
        # through the transaction (on PostgreSQL another connection would not see it yet).
        inside.dispatch(Command("RemoveStock", "sku-1", {"qty": 4}))
        with pytest.raises(OutOfStock, match="only 1 on hand"):
            inside.dispatch(Command("RemoveStock", "sku-1", {"qty": 2}))
        removed = inside.dispatch(
            Command("RemoveStock", "sku-1", {"qty": 1}, idempotency_key="last-one")
        )
        assert removed.version == 3
    assert dispatcher.load(Inventory, "sku-1").state["on_hand"] == 0
    # The key was recorded in the same transaction: a repeat outside it is a replay.
    again = dispatcher.dispatch(
        Command("RemoveStock", "sku-1", {"qty": 1}, idempotency_key="last-one")
    )
    assert again.replayed and again.version == 3

    with pytest.raises(RuntimeError, match="crash"), events.transaction() as tx:
        dispatcher.within(tx).dispatch(Command("AddStock", "sku-1", {"qty": 7}))
        raise RuntimeError("crash before commit")
    assert stream(events, "inventory-sku-1")[-1] == ("StockRemoved", {"qty": 1})
    assert dispatcher.load(Inventory, "sku-1").version == 3


def test_commands_within_a_transaction_take_snapshots_that_commit_with_their_events(
    events: EventStore,
) -> None:
    """Issue 9, defect: a process manager's commands never took snapshots."""
    dispatcher = CommandDispatcher(events, [SnapshottedInventory])
    with pytest.raises(RuntimeError, match="crash"), events.transaction() as tx:
        inside = dispatcher.within(tx)
        for _ in range(3):
            inside.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
        raise RuntimeError("crash before commit")
    # Rolled back: no events, and no snapshot of a version that never was.
    assert events.load_snapshot("snapshotted_inventory-sku-1") is None

    with events.transaction() as tx:
        inside = dispatcher.within(tx)
        for _ in range(4):
            inside.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    snapshot = events.load_snapshot("snapshotted_inventory-sku-1")
    assert snapshot is not None and (snapshot.version, snapshot.state["on_hand"]) == (3, 3)
    loaded = dispatcher.load(SnapshottedInventory, "sku-1")
    assert (loaded.snapshot_version, loaded.events_replayed, loaded.state["on_hand"]) == (3, 1, 4)


def test_a_failing_snapshot_within_a_transaction_costs_neither_command_nor_transaction(
    events: EventStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Unsnapshottable(SnapshottedInventory):
        def to_snapshot(self, state: Any) -> dict[str, Any]:
            return {"bad": {1, 2}}  # not JSON

    dispatcher = CommandDispatcher(events, [Unsnapshottable])
    with events.transaction() as tx:
        inside = dispatcher.within(tx)
        for _ in range(4):
            inside.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    assert events.stream_version("unsnapshottable-sku-1") == 4
    assert events.load_snapshot("unsnapshottable-sku-1") is None
    assert "could not snapshot 'unsnapshottable-sku-1' at version 3" in caplog.text


def test_after_dispatch_within_a_transaction_runs_once_after_it_commits(
    events: EventStore,
) -> None:
    """Issue 9, defect: after_dispatch ran inside the uncommitted batch, and again for every
    retried batch. Now: never for a transaction that rolls back, once after the one that
    commits - when the events can be read by others."""
    calls: list[str] = []
    seen_committed: list[int] = []

    class Observe(Recorder):
        def after_dispatch(self, ctx: DispatchContext, result: DispatchResult) -> None:
            super().after_dispatch(ctx, result)
            seen_committed.append(events.stream_version("inventory-sku-1"))

    dispatcher = CommandDispatcher(events, [Inventory], middleware=[Observe("m", calls)])
    command = Command("AddStock", "sku-1", {"qty": 2})
    for attempt in range(3):  # a batch that fails twice, then commits (a retried batch)
        try:
            with events.transaction() as tx:
                dispatcher.within(tx).dispatch(command)
                dispatcher.within(tx).dispatch(Command("AddStock", "sku-1", {"qty": 1}))
                assert calls.count("m.after v1") == 0  # not inside the transaction
                if attempt < 2:
                    raise RuntimeError("the batch fails")
        except RuntimeError:
            continue
    assert [c for c in calls if "after" in c] == ["m.after v1", "m.after v2"]
    assert calls.count("m.before") == 6  # before_dispatch runs with every attempt
    assert seen_committed == [2, 2]  # the hooks ran after the commit: both events visible

    # A savepoint that rolls back drops the hooks of what it did; the transaction goes on.
    calls.clear()
    with events.transaction() as tx:
        with pytest.raises(RuntimeError), tx.savepoint():
            dispatcher.within(tx).dispatch(Command("AddStock", "sku-1", {"qty": 9}))
            raise RuntimeError("undo this part")
        dispatcher.within(tx).dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    assert [c for c in calls if "after" in c] == ["m.after v3"]


def test_after_failure_within_a_transaction_runs_at_once(events: EventStore) -> None:
    calls: list[str] = []
    dispatcher = CommandDispatcher(events, [Inventory], middleware=[Recorder("m", calls)])
    with events.transaction() as tx:
        with pytest.raises(OutOfStock):
            dispatcher.within(tx).dispatch(Command("RemoveStock", "sku-1", {"qty": 1}))
        assert calls == ["m.before", "m.failure OutOfStock"]


# --- the command id as idempotency key ------------------------------------------------------------


def test_the_same_command_sent_twice_writes_its_events_once(
    events: EventStore, dispatcher: CommandDispatcher, open_events: OpenStore
) -> None:
    command = Command("AddStock", "sku-1", {"qty": 5})
    first = dispatcher.dispatch(command)
    again = dispatcher.dispatch(command)
    assert not first.replayed and again.replayed
    assert again.events == first.events and again.command_id == command.command_id
    # A copy that keeps the id is the same command (a message delivered again), from another
    # dispatcher on other connections too; a middleware's metadata does not make it another.
    copy = dataclasses.replace(command, metadata={"delivery": 2})
    other = CommandDispatcher(open_events(), [Inventory]).dispatch(copy)
    assert other.replayed and other.events == first.events
    assert stream(events, "inventory-sku-1") == [("StockAdded", {"qty": 5})]
    record = events.get_idempotent_result(f"command:{command.command_id}")
    assert record is not None and record.stream_id == "inventory-sku-1"
    # Another command - a new id - is another change.
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    assert dispatcher.load(Inventory, "sku-1").state["on_hand"] == 10


def test_a_repeated_command_refused_by_the_state_it_made_returns_its_first_result(
    dispatcher: CommandDispatcher,
) -> None:
    register = Command("RegisterItem", "sku-1", {"name": "bolt"})
    first = dispatcher.dispatch(register)
    again = dispatcher.dispatch(register)  # AlreadyRegistered now: the key says it happened
    assert again.replayed and again.events == first.events


def test_a_command_id_reused_for_another_command_is_refused(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    command = Command("AddStock", "sku-1", {"qty": 5})
    dispatcher.dispatch(command)
    for other, why in (
        (dataclasses.replace(command, payload={"qty": 6}), "different payload"),
        (dataclasses.replace(command, aggregate_id="sku-2"), "'inventory-sku-1'"),
        (
            dataclasses.replace(command, command_type="RegisterItem", payload={"name": "x"}),
            "'AddStock'",
        ),
    ):
        with pytest.raises(IdempotencyKeyConflictError, match=why) as info:
            dispatcher.dispatch(other)
        assert "command_id names one command" in str(info.value)
    assert stream(events, "inventory-sku-1") == [("StockAdded", {"qty": 5})]
    assert events.stream_version("inventory-sku-2") == 0


def test_an_explicit_key_replaces_the_command_id_as_key(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    first = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}, idempotency_key="k"))
    # A new command id, the same key: the same command.
    again = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}, idempotency_key="k"))
    assert again.replayed and again.command_id == first.command_id
    # The same command id under another key: a key of its own, so a new command.
    command = Command("AddStock", "sku-1", {"qty": 1}, idempotency_key="k2")
    third = dispatcher.dispatch(dataclasses.replace(command, command_id=first.command_id))
    assert not third.replayed
    assert events.get_idempotent_result(f"command:{first.command_id}") is None
    assert events.stream_version("inventory-sku-1") == 2


def test_a_command_without_events_records_no_command_id(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    command = Command("Audit", "sku-1")
    assert dispatcher.dispatch(command).events == ()
    assert not dispatcher.dispatch(command).replayed  # nothing to write twice: decided again
    assert events.get_idempotent_result(f"command:{command.command_id}") is None


def test_one_command_sent_by_many_dispatchers_at_once_is_recorded_once(
    events: EventStore, open_events: OpenStore
) -> None:
    command = Command("Increment", "c1", {"by": 1})
    barrier = threading.Barrier(4)
    dispatchers = [CommandDispatcher(open_events(), [Counter(barrier)]) for _ in range(4)]
    results = _run_all([lambda d=d: d.dispatch(command) for d in dispatchers])
    assert all(isinstance(r, DispatchResult) for r in results), results
    assert sorted(r.replayed for r in results) == [False, True, True, True]
    assert len({tuple(e.event_id for e in r.events) for r in results}) == 1
    assert [e.data for e in events.read_stream("counter-c1")] == [{"by": 1, "after": 0}]


def test_the_same_command_twice_in_one_transaction_is_recorded_once(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    command = Command("AddStock", "sku-1", {"qty": 5})
    with events.transaction() as tx:
        first = dispatcher.within(tx).dispatch(command)
        again = dispatcher.within(tx).dispatch(command)
    assert again.replayed and again.events == first.events
    assert dispatcher.dispatch(command).replayed
    assert stream(events, "inventory-sku-1") == [("StockAdded", {"qty": 5})]


def test_a_command_to_a_deleted_stream_is_refused_with_a_typed_error(
    events: EventStore, dispatcher: CommandDispatcher
) -> None:
    first = Command("AddStock", "sku-1", {"qty": 5})
    dispatcher.dispatch(first)
    events.delete_stream("inventory-sku-1")
    with pytest.raises(StreamDeletedError, match="'inventory-sku-1' was deleted"):
        dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    # Its first result can no longer be read back: said, not returned empty.
    with pytest.raises(TideflowError, match="was the stream deleted"):
        dispatcher.dispatch(first)


# --- through a process manager --------------------------------------------------------------------


class CommandLog(Middleware):
    def __init__(self) -> None:
        self.reported: list[str] = []

    def after_dispatch(self, ctx: DispatchContext, result: DispatchResult) -> None:
        self.reported.append(ctx.command.command_type)


def test_a_process_managers_commands_take_snapshots_and_are_reported_once(
    db_url: str,
) -> None:
    """Both defects of issue 9 through the saga runtime: a batch that fails after dispatching
    and is retried reports each command once, after its commit, and the commands take
    snapshots like directly dispatched ones."""
    from examples.order_saga import Order, OrderFulfilment, Payment, ShipOrder, Stock

    from tideflow import App
    from tideflow.worker.handlers import HandlerRunnerOptions

    class SnapshottedStock(Stock):
        aggregate_type = "stock"
        snapshot_every = 2

    class FailsOnce(OrderFulfilment):
        name = "fails_once_after_charging"
        base_delay = 0.0
        max_attempts = 3
        failures = 0

        def apply(self, state: Any, event: RecordedEvent) -> Any:
            if event.event_type == "StockReserved" and FailsOnce.failures == 0:
                FailsOnce.failures += 1
                raise RuntimeError("crash after dispatching ChargeCard")
            return super().apply(state, event)

    log = CommandLog()
    app = App(
        db_url,
        flows=[ShipOrder],
        aggregates=[Order, SnapshottedStock, Payment],
        handlers=[FailsOnce],
        command_middleware=[log],
    )
    try:
        app.dispatch(Command("AddStock", "tea", {"qty": 4}))
        app.dispatch(Command("PlaceOrder", "o-1", {"sku": "tea", "qty": 1, "amount": 100}))
        options = HandlerRunnerOptions(poll_interval=0.02, acquire_interval=0.05)
        app.handler_runner(options=options).run_until_idle()
        assert FailsOnce.failures == 1
        assert sorted(log.reported) == sorted(
            ["AddStock", "PlaceOrder", "ReserveStock", "ChargeCard", "ConfirmOrder"]
        )
        assert [e.event_type for e in app.event_store.read_stream("payment-o-1")] == [
            "PaymentCharged"
        ]
        snapshot = app.event_store.load_snapshot("stock-tea")  # version 2: ReserveStock's
        assert snapshot is not None and (snapshot.version, snapshot.state) == (2, {"on_hand": 3})
    finally:
        app.close()


# --- the aggregate cache --------------------------------------------------------------------------


class MutatingInventory(Inventory):
    """An aggregate whose apply changes its state in place (allowed: the dispatcher must not
    let that leak from one command into the next)."""

    aggregate_type = "inventory"

    @applies("StockAdded")
    def stock_added(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        state["on_hand"] += event.data["qty"]
        return state


def test_a_cached_aggregate_decides_without_reading_its_stream_and_a_stale_one_retries(
    events: EventStore, open_events: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    read_stream = events.read_stream

    def counted(stream_id: str, *args: Any, **kwargs: Any) -> Iterator[RecordedEvent]:
        reads.append(stream_id)
        return read_stream(stream_id, *args, **kwargs)

    monkeypatch.setattr(events, "read_stream", counted)
    mine = CommandDispatcher(events, [Inventory])
    theirs = CommandDispatcher(open_events(), [Inventory])  # another process
    mine.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    mine.dispatch(Command("AddStock", "sku-1", {"qty": 0}))
    assert reads == ["inventory-sku-1"]  # the second command decided on the cached state
    assert len(mine.cache) == 1
    theirs.dispatch(Command("RemoveStock", "sku-1", {"qty": 4}))  # mine's entry is stale now
    # Decided on the cached state (5 on hand, version 2) it would pass; the append finds version
    # 3, and the dispatcher decides again on what the stream holds: 1 on hand.
    with pytest.raises(OutOfStock, match="only 1 on hand"):
        mine.dispatch(Command("RemoveStock", "sku-1", {"qty": 3}))
    assert [t for t, _ in stream(events, "inventory-sku-1")][-1] == "StockRemoved"
    result = mine.dispatch(Command("AddStock", "sku-1", {"qty": 2}))
    assert result.version == 4
    assert mine.dispatch(Command("RemoveStock", "sku-1", {"qty": 3})).version == 5
    assert mine.load(Inventory, "sku-1").state["on_hand"] == 0


def test_a_rolled_back_command_leaves_nothing_in_the_cache(events: EventStore) -> None:
    dispatcher = CommandDispatcher(events, [Inventory])
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    with pytest.raises(RuntimeError, match="crash"), events.transaction() as tx:
        dispatcher.within(tx).dispatch(Command("AddStock", "sku-1", {"qty": 100}))
        raise RuntimeError("crash before commit")
    assert len(dispatcher.cache) == 0  # taken by the command, not put back
    with pytest.raises(OutOfStock, match="only 5 on hand"):
        dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 6}))
    with events.transaction() as tx:
        dispatcher.within(tx).dispatch(Command("AddStock", "sku-1", {"qty": 1}))
        assert len(dispatcher.cache) == 0  # not before the commit
    assert len(dispatcher.cache) == 1
    assert dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 6})).version == 3


def test_an_apply_that_mutates_its_state_cannot_corrupt_the_cache(events: EventStore) -> None:
    dispatcher = CommandDispatcher(events, [MutatingInventory])
    dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 5}))
    with pytest.raises(OutOfStock):
        dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 9}))
    for _ in range(3):
        dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    assert dispatcher.load(MutatingInventory, "sku-1").state["on_hand"] == 8
    with pytest.raises(OutOfStock, match="only 8 on hand"):
        dispatcher.dispatch(Command("RemoveStock", "sku-1", {"qty": 9}))


def test_the_cache_is_bounded_and_can_be_turned_off(events: EventStore) -> None:
    small = CommandDispatcher(events, [Inventory], aggregate_cache_size=2)
    for sku in ("a", "b", "c"):
        small.dispatch(Command("AddStock", sku, {"qty": 1}))
    assert len(small.cache) == 2
    off = CommandDispatcher(events, [Inventory], aggregate_cache_size=0)
    off.dispatch(Command("AddStock", "a", {"qty": 1}))
    assert len(off.cache) == 0
    for bad in (-1, 1.5, "10"):
        with pytest.raises(DispatcherConfigurationError, match="aggregate_cache_size"):
            CommandDispatcher(events, [Inventory], aggregate_cache_size=bad)  # type: ignore[arg-type]


def test_within_can_leave_command_ids_unrecorded_for_callers_that_send_once(
    events: EventStore,
) -> None:
    """What a process manager's reaction uses: its transaction already sends each command once
    (and makes new ids each time it runs), so a command-id key would only cost a row. Explicit
    idempotency keys are recorded all the same."""
    dispatcher = CommandDispatcher(events, [Inventory])
    plain = Command("AddStock", "sku-1", {"qty": 1})
    keyed = Command("AddStock", "sku-1", {"qty": 2}, idempotency_key="restock-7")
    with events.transaction() as tx:
        quiet = dispatcher.within(tx, command_ids_as_keys=False)
        quiet.dispatch(plain)
        quiet.dispatch(keyed)
    assert events.get_idempotent_result(f"command:{plain.command_id}") is None
    assert events.get_idempotent_result("restock-7") is not None
    with events.transaction() as tx:
        dispatcher.within(tx).dispatch(again := Command("AddStock", "sku-1", {"qty": 3}))
    assert events.get_idempotent_result(f"command:{again.command_id}") is not None


def test_a_stale_cached_state_cannot_refuse_a_command_the_stream_allows(
    events: EventStore, open_events: OpenStore
) -> None:
    """The other direction of a stale entry: the kept state says 1 on hand, another process has
    added 10 since; removing 5 is decided again on the stream and succeeds."""
    mine = CommandDispatcher(events, [Inventory])
    theirs = CommandDispatcher(open_events(), [Inventory])
    mine.dispatch(Command("AddStock", "sku-1", {"qty": 1}))
    theirs.dispatch(Command("AddStock", "sku-1", {"qty": 10}))
    removed = mine.dispatch(Command("RemoveStock", "sku-1", {"qty": 5}))
    assert removed.version == 3
    assert mine.load(Inventory, "sku-1").state["on_hand"] == 6
    with pytest.raises(OutOfStock, match="only 6 on hand"):  # a real refusal still stands
        mine.dispatch(Command("RemoveStock", "sku-1", {"qty": 7}))
