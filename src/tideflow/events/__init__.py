"""Event sourcing for tideflow: the domain types of the event store.

    from tideflow.events import NewEvent, ExpectedVersion
    from tideflow.storage.event_contract import open_event_store

    store = open_event_store("postgresql://localhost/app")   # or sqlite:///app.db
    store.migrate()
    store.append("order-42", [NewEvent("OrderPlaced", {"total": 30})], ExpectedVersion.NO_STREAM)
    for event in store.read_stream("order-42"):
        ...

This package is the domain layer: it imports nothing from storage. The store itself - the
``EventStore`` contract, its backends and ``open_event_store`` - lives in ``tideflow.storage``.
"""

from tideflow.events.errors import (
    CheckpointConflictError,
    CheckpointError,
    DuplicateEventIdError,
    DuplicateIdempotencyKeyError,
    EventNotSerializableError,
    EventStoreError,
    InvalidCheckpointError,
    InvalidEventError,
    InvalidIdempotencyKeyError,
    InvalidSnapshotError,
    InvalidStreamIdError,
    InvalidUpcasterError,
    UpcastingError,
    WrongExpectedVersionError,
)
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
from tideflow.events.upcasting import Upcasters, UpcastFn

__all__ = [
    "ANY",
    "EXISTS",
    "MAX_ID_LENGTH",
    "NO_STREAM",
    "CheckpointConflictError",
    "CheckpointError",
    "DuplicateEventIdError",
    "DuplicateIdempotencyKeyError",
    "Event",
    "EventNotSerializableError",
    "EventStoreError",
    "ExpectedVersion",
    "IdempotencyRecord",
    "InvalidCheckpointError",
    "InvalidEventError",
    "InvalidIdempotencyKeyError",
    "InvalidSnapshotError",
    "InvalidStreamIdError",
    "InvalidUpcasterError",
    "NewEvent",
    "RecordedEvent",
    "Snapshot",
    "UpcastFn",
    "Upcasters",
    "UpcastingError",
    "WrongExpectedVersionError",
]
