"""Event sourcing for tideflow: the domain types of the event store.

    from tideflow.events import NewEvent, ExpectedVersion
    from tideflow.storage import open_event_store

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

This package is the domain layer: it imports nothing from storage or the runtime at run time.
The store itself - the ``EventStore`` contract, its backends and ``open_event_store`` - lives in
``tideflow.storage``; the dispatcher, which runs commands against a store, in
``tideflow.runtime.dispatch``. ``CommandDispatcher`` and ``AsyncCommandDispatcher`` are still
importable from here, where users have always found them, but lazily (``__getattr__`` below):
no domain module depends on the runtime (``tests/test_layers.py`` allows exactly these two names).
Python still runs ``tideflow/__init__.py`` - which re-exports the App, and with it everything -
before this package: the layering is about what depends on what, not what gets loaded.
"""

from typing import TYPE_CHECKING

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
    ConcurrencyRetriesExhaustedError,
    DispatcherConfigurationError,
    DispatchResult,
    DuplicateCommandHandlerError,
    IdempotencyKeyConflictError,
    InvalidCommandDataError,
    InvalidCommandError,
    UnknownAggregateError,
    UnknownCommandError,
    as_payload,
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
    StreamDeletedError,
    StreamNotFoundError,
    UpcastingError,
    WrongExpectedVersionError,
)
from tideflow.events.handling import (
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

if TYPE_CHECKING:  # for type checkers; at run time ``__getattr__`` imports them when first used
    from tideflow.runtime.dispatch import AsyncCommandDispatcher, CommandDispatcher


def __getattr__(name: str) -> object:
    """``tideflow.events.CommandDispatcher`` without the domain importing the runtime: the
    dispatcher runs commands against a store, so it lives in ``tideflow.runtime.dispatch``."""
    if name in ("AsyncCommandDispatcher", "CommandDispatcher"):
        from tideflow.runtime import dispatch  # the one runtime import tests/test_layers.py allows

        return getattr(dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "StreamDeletedError",
    "StreamNotFoundError",
    "UnknownAggregateError",
    "UnknownCommandError",
    "UpcastFn",
    "Upcasters",
    "UpcastingError",
    "WrongExpectedVersionError",
    "applies",
    "as_payload",
    "handles",
]
