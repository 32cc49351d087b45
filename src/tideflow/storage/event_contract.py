"""The event store contract: append to streams, read them back, in one store-wide order.

One implementation, ``storage/event_store.py``, runs on every backend's ``Database`` (its append
is the Database's hook), held to one behavioural suite (``tests/events``) on SQLite, PostgreSQL
and PostgreSQL without its fast path. This module imports no backend.

The contract is a small ladder, each rung what the next part of tideflow builds on:

1. ``append`` events to a stream if it is at the expected version - all of them or none;
2. read a stream (``read_stream``) or the whole store in position order (``read_all``), with the
   guarantee that a reader following ``read_all`` from its last position never misses an event
   and never sees one twice, however many writers commit in whatever order;
3. record "this command ran, with this result" (an idempotency key) atomically with its events;
4. record "this handler has processed up to here" (a checkpoint) atomically with the handler's own
   writes - projection rows through the driver connection, or new events - in
   ``store.transaction()``.

Every read path applies the store's upcasters, so readers only ever see current event shapes.
Timestamps (``recorded_at``, ``taken_at``, ``updated_at``) come from the store's ``Clock``.

``prepare_append`` is the validation both backends run before touching the database, so they
refuse the same inputs with the same errors.
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol
from uuid import UUID

from tideflow import jsonutil
from tideflow.clock import Clock
from tideflow.codec import find_tag_shaped, is_plain, may_hold_tags
from tideflow.errors import InvalidDataError
from tideflow.events.errors import (
    DuplicateEventIdError,
    DuplicateIdempotencyKeyError,
    EventNotSerializableError,
    InvalidCheckpointError,
    InvalidEventError,
    InvalidIdempotencyKeyError,
    InvalidSnapshotError,
    InvalidStreamIdError,
    WrongExpectedVersionError,
)
from tideflow.events.handling import Dialect
from tideflow.events.model import (
    ExpectedVersion,
    IdempotencyRecord,
    NewEvent,
    RecordedEvent,
    Snapshot,
    as_event_data_error,
    check_name,
    encode_json,
)
from tideflow.events.upcasting import Upcasters
from tideflow.jsonutil import MAX_DEPTH, check_text, too_deep
from tideflow.retrying import retry_briefly
from tideflow.storage.database import Tx

ExpectedKind = Literal["any", "no_stream", "exists", "exact"]

_KINDS: dict[ExpectedVersion, ExpectedKind] = {
    ExpectedVersion.ANY: "any",
    ExpectedVersion.NO_STREAM: "no_stream",
    ExpectedVersion.EXISTS: "exists",
}

#: Events per query when reading; a page is all a reader holds in memory.
DEFAULT_PAGE_SIZE = 1000


class EventTransaction(Tx, Protocol):
    """One open database transaction of an event store (``store.transaction()``).

    Everything done through it commits together when the ``with`` block ends, or not at all if
    it raises. A failed ``append`` (wrong version, duplicate key) writes nothing and leaves the
    transaction usable.

    Reading with the store's own methods inside the block is fine (a handler reads the events it
    processes with ``store.read_all(tx.lock_checkpoint(name))``); do not *write* with them: on
    PostgreSQL they use another connection, which would wait for this transaction's locks. There
    such reads see committed events only (on SQLite, whose one connection is this transaction's,
    also its writes); to see the transaction's own appends on both backends, read through it:
    ``tx.read_stream``. (``read_all`` stops at the horizon taken when it started, below them.)

    It is a storage ``Tx``: ``tx.connection`` and ``tx.execute_script`` run a projection's own
    SQL in it, and the other stores take it (``tx=``) to commit their writes with it.
    """

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int,
        *,
        idempotency_key: str | None = None,
        result_json: str | None = None,
    ) -> list[RecordedEvent]:
        """``EventStore.append`` inside this transaction. On PostgreSQL the events' positions
        stay in flight - holding back every ``read_all`` reader - until the block ends: keep
        transactions that append short."""
        ...

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        """``EventStore.get_idempotent_result`` inside this transaction."""
        ...

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        """``EventStore.read_stream`` inside this transaction: it sees the events this
        transaction appended, so that a second command to the same aggregate in one transaction
        (a process manager's batch) loads the state the first left. Consume the iterator inside
        the ``with`` block: its pages are read on the transaction's connection."""
        ...

    def save_snapshot(
        self,
        stream_id: str,
        version: int,
        state: Mapping[str, Any],
        *,
        snapshot_type: str = "snapshot",
        schema_version: int | None = None,
    ) -> None:
        """``EventStore.save_snapshot`` inside this transaction: the snapshot commits with the
        events it folds in, or not at all (a dispatcher recording into this transaction takes
        its snapshots here)."""
        ...

    def delete_stream(
        self,
        stream_id: str,
        expected_version: ExpectedVersion | int = ExpectedVersion.ANY,
        *,
        hard: bool = False,
    ) -> None:
        """``EventStore.delete_stream`` inside this transaction: e.g. with the deletion of a
        projection's rows about the stream, so that both happen or neither."""
        ...

    def lock_checkpoint(self, name: str) -> int:
        """The checkpoint ``name`` (0 if it never moved), locked until the transaction ends:
        another instance of the same handler calling this waits, so two instances never process
        the same events at once. Call it before reading the events to process."""
        ...

    def read_page_after_commit(
        self, after: int, event_types: Sequence[str] | None, limit: int
    ) -> Callable[[], tuple[list[RecordedEvent], int] | None]:
        """``EventStore.read_page(after, ...)``, read right after this transaction commits, in
        the COMMIT's round trip where the backend can (``Tx.page_after_commit``): call the
        result after the block for the page, or None - then read it the usual way. A handler
        whose batch appended events (a process manager's next step) reads its next page so."""
        ...

    def lock_checkpoint_soon(self, name: str) -> Callable[[], int]:
        """``lock_checkpoint``, sent with the transaction's next statement (``Tx.prefetch``):
        call the result for the position. A handler batch locks its checkpoint, holds its lease
        and loads its process instances in one round trip."""
        ...

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        """Move checkpoint ``name`` to ``position``, committing with this transaction.
        ``CheckpointConflictError`` if ``expected`` is given and the checkpoint is elsewhere,
        or if ``position`` is behind it (the transaction stays usable)."""
        ...


class EventStore(Protocol):
    """Streams of events on one database. Every method is one transaction unless noted; the
    store is safe to share between threads."""

    url: str
    clock: Clock
    upcasters: Upcasters
    dialect: Dialect
    """Which database the store is on (``"sqlite"`` or ``"postgresql"``)."""

    def is_unavailable(self, exc: BaseException) -> bool:
        """Whether ``exc``, or an exception it was raised from, means "the database cannot serve
        this now": a ``DatabaseUnavailableError``, or a driver error this backend counts as
        transient - raised by SQL the store did not run itself (a handler's ``ctx.execute``).
        The runtime asks the store, so that it never imports a driver."""
        ...

    def migrate(self) -> list[str]:
        """Apply pending schema migrations under a lock; return the versions applied. The event
        tables are migration 0002 of the backend's single migration sequence, so this is the
        same as the flow store's ``migrate``."""
        ...

    def close(self) -> None:
        """Release the connection(s), unless they belong to a flow store passed in."""
        ...

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int,
        *,
        idempotency_key: str | None = None,
        result_json: str | None = None,
    ) -> list[RecordedEvent]:
        """Append ``events`` to the end of stream ``stream_id`` in one transaction, if the stream
        is at ``expected_version``; return them as recorded (versions, positions, upcast).

        All events of one call commit together or not at all. Raises, having written nothing:
        ``WrongExpectedVersionError`` (``.stream_id``, ``.expected``, ``.actual``) when the stream
        is elsewhere; ``DuplicateIdempotencyKeyError`` when ``idempotency_key`` is already
        recorded; ``DuplicateEventIdError`` when an ``event_id`` is; ``StreamDeletedError`` when
        the stream was soft-deleted; ``InvalidStreamIdError``,
        ``InvalidEventError`` or ``EventNotSerializableError`` for malformed input (checked
        before the database is touched). With ``idempotency_key``, the key and ``result_json``
        (JSON text, the command's result) are recorded in the same transaction as the events.
        An empty ``events`` only checks the expectation (and records the key).
        """
        ...

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        """The events of one stream in version order, from ``from_version`` (default: the first
        event, or the last one when ``backwards``), at most ``limit``. Pages through the stream
        (``page_size`` events per query), so a long stream never sits in memory whole. A stream
        without events yields nothing. Arguments are checked when called, not when iterated."""
        ...

    def read_page(
        self, after: int, event_types: Sequence[str] | None, limit: int
    ) -> tuple[list[RecordedEvent], int]:
        """One page of ``read_all(after, event_types, limit)`` and the horizon it stopped at,
        from one look at the horizon: what a handler batch reads (it moves its checkpoint to
        the horizon when the page is not full, past events of other types). One round trip."""
        ...

    def read_page_from_checkpoint(
        self, name: str, event_types: Sequence[str] | None, limit: int
    ) -> tuple[int, list[RecordedEvent], int]:
        """``read_page`` after checkpoint ``name``, read in the same round trip: the checkpoint
        as read, the page and the horizon - for a handler that does not know where it is."""
        ...

    def read_all(
        self,
        from_position: int | None = None,
        event_types: Iterable[str] | None = None,
        limit: int | None = None,
        *,
        to_position: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        """Events with ``position > from_position`` (None: 0) in strictly increasing position
        order, only of ``event_types`` if given, at most ``limit``, none beyond ``to_position``;
        paged. Events of deleted streams are left out.

        ``backwards``: from the newest event down - positions below ``from_position`` (None:
        from the horizon, the newest event there is), down to ``to_position`` included (None:
        the first). Either way ``from_position`` is where a previous page ended (excluded) and
        ``to_position`` the last position wanted (included), so paging is passing the last
        event's position back.

        The iteration stops at the store's safe horizon (``head_position``) taken when it
        starts (at the first ``next``): every event at or below it is delivered, and no event
        that commits later can land below a position already delivered. So a reader that calls
        ``read_all(last_position)`` again and again sees every committed event exactly once, in
        order, whatever the number of concurrent writers. Events committed during the iteration
        are left for the next call. Arguments are checked when called.
        """
        ...

    def head_position(self) -> int:
        """The safe horizon: the highest position below which nothing can still appear. Events
        above it may exist but sit behind an append that is still in flight (PostgreSQL), so a
        handler may checkpoint at most this far after processing everything up to it."""
        ...

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event; 0 when it has none (or was deleted)."""
        ...

    def delete_stream(
        self,
        stream_id: str,
        expected_version: ExpectedVersion | int = ExpectedVersion.ANY,
        *,
        hard: bool = False,
    ) -> None:
        """Delete stream ``stream_id`` if it is at ``expected_version`` (``ANY``, ``EXISTS`` or
        its version), in one transaction.

        Soft (the default): its events stay stored but every read leaves them out -
        ``read_stream`` yields nothing, ``read_all`` skips them, ``stream_version`` is 0 - its
        snapshot is dropped, and appends to it raise ``StreamDeletedError``. Hard, for erasure
        requests: its events, snapshot, idempotency keys and the stream itself are deleted, as if
        it had never existed (a later append starts it afresh at version 1); a soft-deleted
        stream can be hard-deleted. Positions are never reused, so checkpoints stay valid; what
        handlers and projections already made of the events stays (docs/concepts/events.md).

        Raises, having deleted nothing: ``StreamNotFoundError`` (no such stream, or hard-deleted
        already), ``StreamDeletedError`` (soft-deleted already, and this delete is soft),
        ``WrongExpectedVersionError``, ``InvalidEventError`` for ``NO_STREAM``.
        """
        ...

    def save_snapshot(
        self,
        stream_id: str,
        version: int,
        state: Mapping[str, Any],
        *,
        snapshot_type: str = "snapshot",
        schema_version: int | None = None,
    ) -> None:
        """Store ``state`` as the stream's state after event ``version``, replacing an older
        snapshot (a snapshot older than the stored one is ignored: it would only slow loading).
        ``schema_version`` defaults to the upcasters' current version of ``snapshot_type``.
        ``InvalidSnapshotError`` if the stream has not reached ``version``."""
        ...

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        """The latest snapshot of the stream, upcast to the current schema version; None if
        there is none. Replay ``read_stream(stream_id, snapshot.version + 1)`` on top of it."""
        ...

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        """What an append with ``idempotency_key=key`` recorded, or None if none committed."""
        ...

    def expire_idempotency_keys(self, older_than: float, limit: int = 500) -> int:
        """Delete up to ``limit`` idempotency keys recorded more than ``older_than`` seconds
        ago, oldest first, in one short transaction; how many. An append that repeats an
        expired key is treated as new: its events are appended again."""
        ...

    def get_checkpoint(self, name: str) -> int:
        """The position handler ``name`` has processed up to; 0 if it never advanced."""
        ...

    def advance_checkpoint(self, name: str, position: int, *, expected: int | None = None) -> None:
        """Move checkpoint ``name`` forward to ``position`` in its own transaction (see
        ``EventTransaction.advance_checkpoint`` to do it atomically with other writes).
        ``CheckpointConflictError`` if ``expected`` is given and the checkpoint is elsewhere, or
        if it would move backwards; moving to where it already is does nothing."""
        ...

    def reset_checkpoint(self, name: str, position: int = 0) -> None:
        """Set checkpoint ``name`` to ``position`` even if that is backwards, to replay events
        (rebuilding a projection). Stop the handler first."""
        ...

    def transaction(self) -> AbstractContextManager[EventTransaction]:
        """Open one transaction for several operations that must commit together: appends,
        idempotency keys, checkpoints and the caller's own SQL on ``tx.connection``."""
        ...


# --- shared by the backends -----------------------------------------------------------------------


@dataclass(slots=True)
class PreparedAppend:
    """An append, validated and encoded, ready for either backend's SQL. Read-only by convention:
    not frozen, because a frozen dataclass of this size costs microseconds to build."""

    stream_id: str
    expected: ExpectedVersion | int
    expected_kind: ExpectedKind
    expected_number: int
    event_ids: list[UUID]
    event_types: list[str]
    schema_versions: list[int]
    data: list[str]
    metadata: list[str]
    causation_ids: list[UUID | None]
    correlation_ids: list[UUID | None]
    idempotency_key: str | None
    result_json: str | None
    read_as: list[tuple[str, int, dict[str, Any], dict[str, Any]]]
    """Per event, (type, schema version, data, metadata) as readers will see it: decoded from
    the JSON that is stored (a tuple comes back as a list here too) and upcast."""

    def recorded(
        self, first_version: int, positions: Sequence[int], recorded_at: datetime
    ) -> list[RecordedEvent]:
        """The events as a reader will see them, now that the database numbered them."""
        return [
            RecordedEvent(
                self.event_ids[i],
                event_type,
                self.stream_id,
                first_version + i,
                positions[i],
                data,
                metadata,
                self.causation_ids[i],
                self.correlation_ids[i],
                recorded_at,
                schema_version,
            )
            for i, (event_type, schema_version, data, metadata) in enumerate(self.read_as)
        ]


def duplicate_event_id(stream_id: str, detail: str | None) -> DuplicateEventIdError:
    return DuplicateEventIdError(
        f"an event appended to {stream_id!r} has an event_id that is already recorded "
        f"({detail}); nothing was written. Event ids are unique across the store: leave "
        "event_id out to get a fresh uuid4, and never reuse one."
    )


def decode_objects(texts: list[str]) -> list[Any]:
    """Decode many JSON texts with one parser call. For small objects the cost of ``json.loads``
    is mostly per call (and per-call garbage), so ``[a,b,c]`` decodes in a quarter of the time
    of three calls - it is most of what ``read_all`` spends per event. Each text is a complete
    JSON value (the database checked it), so joining them cannot shift one into another."""
    return jsonutil.loads("[" + ",".join(texts) + "]")  # type: ignore[no-any-return]


def check_stream_id(stream_id: object) -> str:
    return check_name(stream_id, "stream_id", InvalidStreamIdError)


def check_page_size(page_size: object) -> int:
    if type(page_size) is not int or page_size < 1:
        raise InvalidEventError(f"page_size must be an int >= 1, got {page_size!r}")
    return page_size


#: The largest version, position or limit a store takes: both backends keep them in 64-bit
#: integers (a larger Python int would overflow in the driver, not fail as bad input).
MAX_INT64 = 2**63 - 1


def check_limit(limit: object) -> int | None:
    if limit is not None and (type(limit) is not int or not 0 <= limit <= MAX_INT64):
        raise InvalidEventError(f"limit must be None or an int >= 0, got {limit!r}")
    return limit


def check_version(version: object) -> int | None:
    if version is not None and (type(version) is not int or not 1 <= version <= MAX_INT64):
        raise InvalidEventError(
            f"from_version must be None or an int >= 1 (versions start at 1), got {version!r}"
        )
    return version


def check_position(position: object, what: str) -> int:
    if type(position) is not int or not 0 <= position <= MAX_INT64:
        raise InvalidEventError(
            f"{what} must be an int >= 0 (a position from an event), got {position!r}"
        )
    return position


def check_event_types(event_types: Iterable[str] | None) -> list[str] | None:
    if event_types is None:
        return None
    if isinstance(event_types, str):
        raise InvalidEventError(
            f"event_types must be a collection of type names, got the str "
            f"{event_types!r}: pass [{event_types!r}]"
        )
    return [check_name(t, "event type") for t in event_types]


def check_checkpoint(name: object, position: object = 0) -> str:
    checked = check_name(name, "checkpoint name", InvalidCheckpointError)
    if type(position) is not int or not 0 <= position <= MAX_INT64:
        raise InvalidCheckpointError(
            f"checkpoint {checked!r}: position must be an int >= 0, got {position!r}"
        )
    return checked


@dataclass(frozen=True, slots=True)
class PreparedSnapshot:
    stream_id: str
    version: int
    snapshot_type: str
    schema_version: int
    state_json: str


def prepare_snapshot(
    stream_id: object,
    version: object,
    state: object,
    snapshot_type: object,
    schema_version: object,
    upcasters: Upcasters,
) -> PreparedSnapshot:
    """Validate and encode a snapshot before anything is written."""
    checked = check_stream_id(stream_id)
    if type(version) is not int or version < 1:
        raise InvalidSnapshotError(
            f"snapshot of stream {checked!r}: version must be the int "
            f"version of the last event folded in (>= 1), got {version!r}"
        )
    kind = check_name(snapshot_type, "snapshot_type", InvalidSnapshotError)
    if not isinstance(state, Mapping):
        raise InvalidSnapshotError(
            f"snapshot of stream {checked!r}: state must be a dict (a JSON "
            f"object), got {type(state).__name__}"
        )
    if schema_version is None:
        schema_version = upcasters.current_snapshot_version(kind)
    elif type(schema_version) is not int or schema_version < 1:
        raise InvalidSnapshotError(
            f"snapshot of stream {checked!r}: schema_version must be an "
            f"int >= 1 or None, got {schema_version!r}"
        )
    assert isinstance(schema_version, int)
    state_json = encode_json(state, f"the snapshot state of stream {checked!r}")
    return PreparedSnapshot(checked, version, kind, schema_version, state_json)


#: json's C encoder, configured exactly as ``encode_json``'s (compact separators, output not
#: ASCII-only so that ``check_text`` sees surrogates, no NaN, refusing what it cannot encode -
#: ``test_the_append_encoder_matches_encode_json``). Called directly, one instance per append,
#: it skips what ``JSONEncoder.encode`` redoes on every call (a closure, a new C encoder
#: object), which costs as much as encoding a small event.
_C_ENCODER: Callable[..., Callable[[Any, int], Iterable[str]]] | None = getattr(
    json.encoder, "c_make_encoder", None
)
_PLAIN_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def append_encoder() -> Callable[[Any], str]:
    """A JSON encoder for the data and metadata of one append: ``encode_json`` without its error
    handling. It raises TypeError or ValueError for what is not JSON; after that, take a new
    one (the C encoder's circular-reference bookkeeping is left half done)."""
    if _C_ENCODER is None:  # pragma: no cover - a Python without json's C accelerator
        return _PLAIN_ENCODER.encode
    chunks = _C_ENCODER(
        {},
        _PLAIN_ENCODER.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )

    def encode(value: Any) -> str:
        return "".join(chunks(value, 0))

    return encode


#: How far back from a stream's end ``append_retrying`` looks for events it may have appended.
_CONFIRM_WINDOW = 1000


def append_retrying(
    read_stream: Callable[..., Iterator[RecordedEvent]],
    stream_id: str,
    event_ids: Sequence[UUID],
    write: Callable[[], list[RecordedEvent]],
) -> list[RecordedEvent]:
    """``write()`` - one append of the events ``event_ids`` to ``stream_id``, in a transaction
    of its own - retried for a few seconds while the database is unavailable: the ``append``
    that clients call, and the dispatcher's.

    A repeat cannot append twice: it carries the same event ids (drawn before the first try),
    the same expected version and idempotency key. When the first try did commit but its answer
    was lost with the connection, the repeat is refused by one of those; then the events are
    read back from the end of the stream and, when they are ours (same ids, in order), returned
    as the first try's result."""
    tries = 0

    def attempt() -> list[RecordedEvent]:
        nonlocal tries
        tries += 1
        try:
            return write()
        except (WrongExpectedVersionError, DuplicateEventIdError, DuplicateIdempotencyKeyError):
            if tries > 1 and event_ids:
                ours = _find_appended(read_stream, stream_id, event_ids)
                if ours is not None:
                    return ours
            raise

    return retry_briefly(attempt)


def _find_appended(
    read_stream: Callable[..., Iterator[RecordedEvent]],
    stream_id: str,
    event_ids: Sequence[UUID],
) -> list[RecordedEvent] | None:
    """The events ``event_ids`` if the stream's last ``_CONFIRM_WINDOW`` events hold them."""
    recent = list(read_stream(stream_id, None, _CONFIRM_WINDOW, True))[::-1]
    ids = [e.event_id for e in recent]
    try:
        start = ids.index(event_ids[0])
    except ValueError:
        return None
    found = recent[start : start + len(event_ids)]
    return found if [e.event_id for e in found] == list(event_ids) else None


def check_expected(
    stream_id: str, expected_version: ExpectedVersion | int
) -> tuple[ExpectedKind, int]:
    """An expected version as (kind, number), the number 0 unless the kind is ``exact``."""
    if isinstance(expected_version, ExpectedVersion):
        return _KINDS[expected_version], 0
    if type(expected_version) is int and 0 <= expected_version <= MAX_INT64:
        return "exact", expected_version
    raise InvalidEventError(
        f"expected_version for stream {stream_id!r} must be ExpectedVersion.ANY, "
        f"NO_STREAM, EXISTS or an int >= 0 (the version the stream is at), got "
        f"{expected_version!r}"
    )


def prepare_append(
    stream_id: object,
    events: Sequence[NewEvent],
    expected_version: ExpectedVersion | int,
    idempotency_key: str | None,
    result_json: str | None,
    upcasters: Upcasters,
) -> PreparedAppend:
    """Validate and encode an append, raising the event store's typed errors before anything is
    written."""
    checked = check_stream_id(stream_id)
    kind, number = check_expected(checked, expected_version)
    if type(events) is not list and (  # a list is the common case: skip the ABC check
        isinstance(events, NewEvent | str | bytes) or not isinstance(events, Sequence)
    ):
        raise InvalidEventError(
            f"events appended to {checked!r} must be a list of NewEvent, got "
            f"{type(events).__name__}: wrap a single event in a list"
        )
    if idempotency_key is not None:
        check_name(idempotency_key, "idempotency_key", InvalidIdempotencyKeyError)
    if result_json is not None:
        if idempotency_key is None:
            raise InvalidIdempotencyKeyError(
                f"result_json was given for the append to {checked!r} without an "
                "idempotency_key to record it under; pass both or neither"
            )
        if not isinstance(result_json, str):
            raise EventNotSerializableError(
                f"result_json for idempotency key {idempotency_key!r} must be JSON text (a str), "
                f"got {type(result_json).__name__}: pass json.dumps(result)"
            )
        try:
            result = json.loads(result_json)
        except RecursionError:
            raise as_event_data_error(
                too_deep(f"result_json for idempotency key {idempotency_key!r}")
            ) from None
        except ValueError as exc:
            raise EventNotSerializableError(
                f"result_json for idempotency key {idempotency_key!r} is not valid JSON text "
                f"({exc}); pass json.dumps(result). Nothing was written."
            ) from exc
        # Re-encoded to check it as stored values are checked: the text may hide a NUL or a
        # surrogate behind an escape, which PostgreSQL would refuse when reading it as JSON.
        encode_json(result, f"the result_json for idempotency key {idempotency_key!r}")
    ids: list[UUID] = []
    types: list[str] = []
    versions: list[int] = []
    data: list[str] = []
    metadata: list[str] = []
    causes: list[UUID | None] = []
    correlations: list[UUID | None] = []
    encode = append_encoder()
    for i, event in enumerate(events):
        if not isinstance(event, NewEvent):
            raise InvalidEventError(
                f"event #{i} appended to {checked!r} must be a NewEvent, got {type(event).__name__}"
            )
        ids.append(event.event_id)
        types.append(event.event_type)
        versions.append(event.schema_version or upcasters.current_version(event.event_type))
        try:
            if not (is_plain(event.data) and is_plain(event.metadata)):
                raise TypeError("not plain JSON: tideflow's codec encodes it")
            data_json, metadata_json = encode(event.data), encode(event.metadata)
        except (TypeError, ValueError, RecursionError):
            # Not JSON, or too deep: encode_json refuses it with the error that names it.
            what = f"event #{i} ({event.event_type!r}) appended to {checked!r}"
            data_json = encode_json(event.data, f"the data of {what}")
            metadata_json = encode_json(event.metadata, f"the metadata of {what}")
            encode = append_encoder()
        data.append(data_json)
        metadata.append(metadata_json)
        causes.append(event.causation_id)
        correlations.append(event.correlation_id)
    n = len(ids)
    if n > 1 and len(set(ids)) != n:
        raise InvalidEventError(
            f"the events appended to {checked!r} repeat an event_id; each "
            "event needs its own (leave event_id out to get a fresh one)"
        )
    texts = data + metadata
    _check_texts(texts, events, checked)
    values = decode_objects(texts)
    data, metadata = texts[:n], texts[n:]
    read_as = []
    for i in range(n):
        read_type, read_version, read_data = upcasters.upcast_data(
            types[i], versions[i], values[i], f"event #{i} ({types[i]!r}) appended to {checked!r}"
        )
        read_as.append((read_type, read_version, read_data, values[n + i]))
    return PreparedAppend(
        checked,
        expected_version,
        kind,
        number,
        ids,
        types,
        versions,
        data,
        metadata,
        causes,
        correlations,
        idempotency_key,
        result_json,
        read_as,
    )


def _check_texts(texts: list[str], events: Sequence[NewEvent], stream_id: str) -> None:
    """Refuse, before anything is written, event data and metadata no backend may store
    (``tideflow.jsonutil.check_text``); rewrite big floats in place so that they read back as
    written. One scan of all the texts joined for the common case, each one only when that
    finds something: an append of small events stays a few microseconds."""
    joined = ",".join(texts)
    if (
        ("\\u0000" not in joined and joined.isascii())
        and joined.count("[") + joined.count("{") <= MAX_DEPTH
        and "e+" not in joined
        and not may_hold_tags(joined)
    ):
        return
    n = len(events)
    for j, text in enumerate(texts):
        i = j % n
        event = events[i]
        part = "data" if j < n else "metadata"
        what = f"the {part} of event #{i} ({event.event_type!r}) appended to {stream_id!r}"
        value = event.data if j < n else event.metadata
        try:
            texts[j] = check_text(text, value, what=what)
        except InvalidDataError as exc:
            raise as_event_data_error(exc) from None
        shaped = find_tag_shaped(value) if may_hold_tags(text) else None
        if shaped is not None:
            raise EventNotSerializableError(
                f"{what} cannot be stored: {shaped}. Nothing was written."
            )
