"""The event store's domain types: what is appended, what is read back, and how an append states
what it expects of the stream.

A *stream* is the history of one thing (an order, an account), named by a string id; its events
are numbered ``version`` 1, 2, 3... with no gaps. Every event also has a store-wide ``position``
that strictly increases in the order readers see events (``read_all``), so a handler that
remembers the last position it processed can resume exactly there. Positions may have gaps (an
append that rolled back used some); versions never do.

Data and metadata are JSON objects: the store encodes them once on append (refusing what JSON
cannot hold rather than guessing, see ``EventNotSerializableError``) and readers get fresh dicts.
``schema_version`` says which shape ``data`` has; upcasters (``tideflow.events.upcasting``) bring
old shapes up to date on every read.

This module imports nothing from storage: domain -> storage contract -> backends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from enum import Enum
from typing import Any
from uuid import UUID

from tideflow.codec import SUPPORTED
from tideflow.errors import InvalidDataError
from tideflow.events.errors import (
    EventDataError,
    EventNotSerializableError,
    InvalidEventError,
    InvalidEventTypeError,
)
from tideflow.jsonutil import bad_character, encode, too_deep

#: Longest stream id, event type, idempotency key or checkpoint name, in characters. Long enough
#: for "<aggregate type>-<uuid>" and namespaced names; short enough to index cheaply.
MAX_ID_LENGTH = 200


class ExpectedVersion(Enum):
    """What an append requires of the stream, besides an exact version number.

    Pass one of these or an ``int``: ``n`` means "the stream is at version n", so ``0`` means
    the same as ``NO_STREAM`` (versions start at 1).
    """

    ANY = "any"
    """Append whatever the stream's state: no concurrency check."""
    NO_STREAM = "no_stream"
    """The stream must have no events yet (creating it)."""
    EXISTS = "exists"
    """The stream must have at least one event."""

    def describe(self) -> str:
        """How an error message says what was expected."""
        return {
            "any": "any version",
            "no_stream": "no stream (version 0)",
            "exists": "an existing stream",
        }[self.value]


ANY = ExpectedVersion.ANY
NO_STREAM = ExpectedVersion.NO_STREAM
EXISTS = ExpectedVersion.EXISTS


def check_name(value: object, what: str, error: type[ValueError] = InvalidEventTypeError) -> str:
    """Validate an identifier (stream id, event type, key, checkpoint name): a non-empty str of
    at most ``MAX_ID_LENGTH`` characters without NUL or surrogates (PostgreSQL text cannot hold
    them, so SQLite must not either: ``tideflow.jsonutil.bad_character``)."""
    if not isinstance(value, str):
        raise error(f"{what} must be a str, got {type(value).__name__} {value!r}")
    if not value:
        raise error(f"{what} must not be empty: name the thing, e.g. 'order-42'")
    if len(value) > MAX_ID_LENGTH:
        raise error(
            f"{what} {value[:40]!r}... is {len(value)} characters long; the limit is "
            f"{MAX_ID_LENGTH}: use a shorter id (a uuid, a hash)"
        )
    bad = bad_character(value)
    if bad is not None:
        raise error(
            f"{what} {value[:60]!r} contains {bad}, which the database cannot store: remove it"
        )
    return value


def encode_json(value: Any, what: str) -> str:
    """Encode ``value`` for the event store (``tideflow.codec``: datetimes, decimals, UUIDs,
    enums as tagged objects), raising ``EventNotSerializableError`` naming ``what``.

    No ``default=str`` and no NaN: a value that would come back as something else (an object
    turned into a string, ``{1: "a"}`` into ``{"1": "a"}``, NaN that is not JSON) is refused
    instead of silently changed.
    """
    try:
        return encode(value, what=what)
    except RecursionError:
        raise as_event_data_error(too_deep(what)) from None
    except InvalidDataError as exc:
        raise as_event_data_error(exc) from None
    except (TypeError, ValueError) as exc:
        raise EventNotSerializableError(
            f"{what} cannot be stored: {exc}. Storable: {SUPPORTED}. Nothing was written."
        ) from exc


def as_event_data_error(exc: InvalidDataError) -> EventDataError:
    """``exc`` as the event store's kind of ``InvalidDataError``."""
    return EventDataError(str(exc), exc.field)


def new_event_id() -> UUID:
    """A fresh time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, then 74
    random bits. Random (v4) ids scatter every insert across the whole ``event_id`` index, so a
    large store reads and rewrites a random index page per event; ids that grow with time
    append to its right edge like positions do. Still unique without coordination."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    return UUID(int=value & _V7_CLEAR | _V7_SET)


_V7_CLEAR = ~(0xF << 76 | 0x3 << 62)  # version and variant bits
_V7_SET = 0x7 << 76 | 0x2 << 62


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event to append. ``event_id`` defaults to a fresh time-ordered uuid (``new_event_id``);
    ``schema_version`` defaults to the current version of ``event_type`` known to the store's
    upcasters (1 without upcasters), because code that appends writes the shape it knows today."""

    event_type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    event_id: UUID = field(default_factory=new_event_id)
    causation_id: UUID | None = None
    correlation_id: UUID | None = None
    schema_version: int | None = None

    def __post_init__(self) -> None:
        check_name(self.event_type, "event_type")
        for name, mapping in (("data", self.data), ("metadata", self.metadata)):
            if not isinstance(mapping, Mapping):
                raise InvalidEventError(
                    f"{name} of event {self.event_type!r} must be a dict (a JSON object), got "
                    f"{type(mapping).__name__}: wrap it, e.g. {{'items': [...]}}"
                )
        for name, value in (
            ("event_id", self.event_id),
            ("causation_id", self.causation_id),
            ("correlation_id", self.correlation_id),
        ):
            if not isinstance(value, UUID) and (value is not None or name == "event_id"):
                raise InvalidEventError(
                    f"{name} of event {self.event_type!r} must be a uuid.UUID, got "
                    f"{type(value).__name__} {value!r}: pass uuid.UUID(text) for a string id"
                )
        version = self.schema_version
        if version is not None and (type(version) is not int or version < 1):
            raise InvalidEventError(
                f"schema_version of event {self.event_type!r} must be an "
                f"int >= 1 (or None for the current one), got {version!r}"
            )

    def caused_by(self, cause: RecordedEvent) -> NewEvent:
        """This event as a consequence of ``cause``: causation is the cause's id, correlation is
        carried over from it (or starts at it), so a whole chain can be traced."""
        return replace(
            self, causation_id=cause.event_id, correlation_id=cause.correlation_id or cause.event_id
        )


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """An event as the store holds it, after upcasting to the current schema version."""

    event_id: UUID
    event_type: str
    stream_id: str
    version: int
    """Place in its stream: 1, 2, 3... without gaps."""
    position: int
    """Place in the whole store: strictly increasing in ``read_all`` order, maybe with gaps."""
    data: dict[str, Any]
    metadata: dict[str, Any]
    causation_id: UUID | None
    correlation_id: UUID | None
    recorded_at: datetime
    schema_version: int = 1


Event = RecordedEvent
"""The short name handlers usually write."""

# ``recorded_event``'s slot setters, in field order (a test holds it to ``RecordedEvent(...)``).
(
    _set_event_id,
    _set_event_type,
    _set_stream_id,
    _set_version,
    _set_position,
    _set_data,
    _set_metadata,
    _set_causation_id,
    _set_correlation_id,
    _set_recorded_at,
    _set_schema_version,
) = (RecordedEvent.__dict__[f.name].__set__ for f in fields(RecordedEvent))


def recorded_event(
    event_id: UUID,
    event_type: str,
    stream_id: str,
    version: int,
    position: int,
    data: dict[str, Any],
    metadata: dict[str, Any],
    causation_id: UUID | None,
    correlation_id: UUID | None,
    recorded_at: datetime,
    schema_version: int,
) -> RecordedEvent:
    """``RecordedEvent(...)`` for the store's reads, at less than half the cost: a frozen
    dataclass's ``__init__`` goes through ``object.__setattr__`` by name for each field, about
    1 µs an event - a quarter of what ``read_all`` spends per event. The same object."""
    event = object.__new__(RecordedEvent)
    _set_event_id(event, event_id)
    _set_event_type(event, event_type)
    _set_stream_id(event, stream_id)
    _set_version(event, version)
    _set_position(event, position)
    _set_data(event, data)
    _set_metadata(event, metadata)
    _set_causation_id(event, causation_id)
    _set_correlation_id(event, correlation_id)
    _set_recorded_at(event, recorded_at)
    _set_schema_version(event, schema_version)
    return event


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A stream's state folded up to ``version``, so loading it replays only later events."""

    stream_id: str
    version: int
    state: dict[str, Any]
    snapshot_type: str
    schema_version: int
    taken_at: datetime


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What an idempotent append recorded under its key, in the same transaction as its events."""

    key: str
    stream_id: str
    result_json: str | None
    recorded_at: datetime
