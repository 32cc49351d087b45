"""Every exception the event store raises on purpose.

They follow ``tideflow.errors``: each names the thing that is wrong and what to do about it, and
the operation that raised it has written nothing (an append is all or nothing). Catch
``EventStoreError`` for all of them, or the specific class for the cases code handles - above
all ``WrongExpectedVersionError``, the optimistic-concurrency signal a command handler answers by
reloading the stream and deciding again.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from tideflow.errors import InvalidDataError, TideflowError

if TYPE_CHECKING:
    from tideflow.events.model import ExpectedVersion


class EventStoreError(TideflowError):
    """Base class of the event store's deliberate errors."""


class WrongExpectedVersionError(EventStoreError):
    """The stream was not in the state the append expected: another writer got there first.

    ``actual`` is the stream's version when the append was refused (0: the stream has no events).
    """

    def __init__(self, stream_id: str, expected: ExpectedVersion | int, actual: int) -> None:
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual
        wanted = expected.describe() if not isinstance(expected, int) else f"version {expected}"
        now = f"is at version {actual}" if actual else "does not exist (no events)"
        super().__init__(
            f"stream {stream_id!r} {now}, but the append expected {wanted}; nothing was written. "
            "Another writer appended first: read the stream again, decide again and retry "
            "(or pass ExpectedVersion.ANY if the order of writers does not matter)."
        )


class StreamDeletedError(EventStoreError):
    """The stream was soft-deleted (``delete_stream``): it takes no more events and cannot be
    deleted softly again. ``deleted_at`` is when, if known."""

    def __init__(self, stream_id: str, deleted_at: datetime | None = None) -> None:
        self.stream_id = stream_id
        self.deleted_at = deleted_at
        when = f" at {deleted_at.isoformat()}" if deleted_at is not None else ""
        super().__init__(
            f"stream {stream_id!r} was deleted{when}; nothing was written. A deleted stream "
            "takes no more events: write to a stream of another id, or erase this one for good "
            f"with delete_stream({stream_id!r}, hard=True), after which its id is free again."
        )


class StreamNotFoundError(EventStoreError, LookupError):
    """``delete_stream`` was asked for a stream that has no events: it never had any, or was
    hard-deleted already."""

    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id
        super().__init__(
            f"stream {stream_id!r} does not exist (it has no events, or was hard-deleted "
            "already); nothing was deleted. Check the stream id."
        )


class InvalidStreamIdError(EventStoreError, InvalidDataError):
    """A stream id is not a non-empty str of at most ``MAX_ID_LENGTH`` characters without NUL
    or surrogates."""


class InvalidEventError(EventStoreError, ValueError):
    """An event is malformed: its type is not a valid name, or its data or metadata is not a
    mapping, or an argument that shapes what is written (expected version, limit) is invalid."""


class EventNotSerializableError(EventStoreError, TypeError):
    """An event's data or metadata (or a snapshot's state, or an idempotent result) cannot be
    encoded as JSON, so it could not be read back as written."""


class InvalidEventTypeError(InvalidEventError, InvalidDataError):
    """An event type is not a non-empty str of at most ``MAX_ID_LENGTH`` characters without NUL
    or surrogates."""


class EventDataError(EventNotSerializableError, InvalidDataError):
    """An event's data or metadata (or a snapshot's state, a process manager's state, an
    idempotent result) is JSON that no backend may store: a NUL character or a lone surrogate
    in a string or key, or nesting deeper than ``tideflow.jsonutil.MAX_DEPTH``."""


class DuplicateEventIdError(EventStoreError):
    """An ``event_id`` given to append is already recorded; event ids are unique store-wide."""


class InvalidIdempotencyKeyError(EventStoreError, InvalidDataError):
    """An idempotency key is not a non-empty str of at most ``MAX_ID_LENGTH`` characters, or a
    result was given without a key to record it under."""


class DuplicateIdempotencyKeyError(EventStoreError):
    """The append's idempotency key is already recorded: the command it stands for already ran.

    ``result_json`` is the result recorded with the key the first time (None if none was given);
    return it to the caller instead of running the command again.
    """

    def __init__(self, key: str, stream_id: str | None, result_json: str | None) -> None:
        self.key = key
        self.stream_id = stream_id
        self.result_json = result_json
        where = f" (appended to stream {stream_id!r})" if stream_id is not None else ""
        super().__init__(
            f"idempotency key {key!r} is already recorded{where}; nothing was written. The "
            "command already ran: return the recorded result (this error's .result_json, or "
            "store.get_idempotent_result(key)) instead of running it again."
        )


class InvalidSnapshotError(EventStoreError, ValueError):
    """A snapshot names a version its stream has not reached (or a version below 1)."""


class CheckpointError(EventStoreError):
    """Base class of handler checkpoint failures."""


class CheckpointConflictError(CheckpointError):
    """A checkpoint was not where the caller expected, or would have moved backwards.

    Two instances of one handler processing the same events is the usual cause: let only one
    run, or process inside ``store.transaction()`` with ``tx.lock_checkpoint(name)``.
    """

    def __init__(self, name: str, wanted: int, actual: int, expected: int | None) -> None:
        self.name = name
        self.position = wanted
        self.actual = actual
        self.expected = expected
        if expected is not None and expected != actual:
            why = f"the caller expected it at {expected}"
        else:
            why = "checkpoints only move forward (use reset_checkpoint to replay)"
        super().__init__(
            f"checkpoint {name!r} is at position {actual}; cannot set it to {wanted}: {why}. "
            "Nothing was written."
        )


class InvalidCheckpointError(CheckpointError, ValueError):
    """A checkpoint name is not a valid id, or a position is negative."""


class UpcastingError(EventStoreError):
    """An upcaster is registered twice for one (type, schema version), or failed on a read."""


class InvalidUpcasterError(UpcastingError, ValueError):
    """An upcaster registration has an invalid argument (type name, version, function)."""
