"""Event sourcing for tideflow: the domain types of the event store.

    from tideflow.events import NewEvent, ExpectedVersion
    from tideflow.storage.event_contract import open_event_store

    store = open_event_store("postgresql://localhost/app")   # or sqlite:///app.db
    store.migrate()
    store.append("order-42", [NewEvent("OrderPlaced", {"total": 30})], ExpectedVersion.NO_STREAM)
    for event in store.read_stream("order-42"):
        ...

Commands go to aggregates through a ``CommandDispatcher`` (or ``App.dispatch``):

    class Inventory(Aggregate):
        @handles("AddStock")
        def add(self, state, command): return [("StockAdded", command.payload)]

        @applies("StockAdded")
        def added(self, state, event): return {"qty": state.get("qty", 0) + event.data["qty"]}

This package is the domain layer: it imports nothing from storage at run time. The store itself
- the ``EventStore`` contract, its backends and ``open_event_store`` - lives in
``tideflow.storage``.
"""

from tideflow.events.aggregate import (
    Aggregate,
    AggregateDefinitionError,
    AggregateError,
    DomainError,
    InvalidDecisionError,
    applies,
    handles,
)
from tideflow.events.commands import (
    Command,
    CommandError,
    CommandNotSerializableError,
    DispatchResult,
    InvalidCommandDataError,
    InvalidCommandError,
    UnknownCommandError,
)
from tideflow.events.dispatch import (
    AsyncCommandDispatcher,
    CommandDispatcher,
    ConcurrencyRetriesExhaustedError,
    DispatcherConfigurationError,
    DuplicateCommandHandlerError,
    IdempotencyKeyConflictError,
    UnknownAggregateError,
)
from tideflow.events.errors import (
    CheckpointConflictError,
    CheckpointError,
    DuplicateEventIdError,
    DuplicateIdempotencyKeyError,
    EventDataError,
    EventNotSerializableError,
    EventStoreError,
    InvalidCheckpointError,
    InvalidEventError,
    InvalidEventTypeError,
    InvalidIdempotencyKeyError,
    InvalidSnapshotError,
    InvalidStreamIdError,
    InvalidUpcasterError,
    UpcastingError,
    WrongExpectedVersionError,
)
from tideflow.events.handlers import (
    DeadLetterNotFoundError,
    EventHandler,
    HandlerContext,
    HandlerDefinitionError,
    HandlerError,
    HandlerFailedError,
    HandlerNotFoundError,
    HandlerUsageError,
    LeaseLostError,
)
from tideflow.events.middleware import CommandRejectedError, DispatchContext, Middleware
from tideflow.events.model import (
    ANY,
    EXISTS,
    MAX_ID_LENGTH,
    NO_STREAM,
    Event,
    ExpectedVersion,
    IdempotencyRecord,
    NewEvent,
    RecordedEvent,
    Snapshot,
)
from tideflow.events.projections import Projection
from tideflow.events.upcasting import Upcasters, UpcastFn

__all__ = [
    "ANY",
    "EXISTS",
    "MAX_ID_LENGTH",
    "NO_STREAM",
    "Aggregate",
    "AggregateDefinitionError",
    "AggregateError",
    "AsyncCommandDispatcher",
    "CheckpointConflictError",
    "CheckpointError",
    "Command",
    "CommandDispatcher",
    "CommandError",
    "CommandNotSerializableError",
    "CommandRejectedError",
    "ConcurrencyRetriesExhaustedError",
    "DeadLetterNotFoundError",
    "DispatchContext",
    "DispatchResult",
    "DispatcherConfigurationError",
    "DomainError",
    "DuplicateCommandHandlerError",
    "DuplicateEventIdError",
    "DuplicateIdempotencyKeyError",
    "Event",
    "EventDataError",
    "EventHandler",
    "EventNotSerializableError",
    "EventStoreError",
    "ExpectedVersion",
    "HandlerContext",
    "HandlerDefinitionError",
    "HandlerError",
    "HandlerFailedError",
    "HandlerNotFoundError",
    "HandlerUsageError",
    "IdempotencyKeyConflictError",
    "IdempotencyRecord",
    "InvalidCheckpointError",
    "InvalidCommandDataError",
    "InvalidCommandError",
    "InvalidDecisionError",
    "InvalidEventError",
    "InvalidEventTypeError",
    "InvalidIdempotencyKeyError",
    "InvalidSnapshotError",
    "InvalidStreamIdError",
    "InvalidUpcasterError",
    "LeaseLostError",
    "Middleware",
    "NewEvent",
    "Projection",
    "RecordedEvent",
    "Snapshot",
    "UnknownAggregateError",
    "UnknownCommandError",
    "UpcastFn",
    "Upcasters",
    "UpcastingError",
    "WrongExpectedVersionError",
    "applies",
    "handles",
]
