"""Dispatching commands: route, load, decide, append - exactly once per idempotency key.

    dispatcher = CommandDispatcher(store, aggregates=[Inventory], middleware=[Audit()])
    result = dispatcher.dispatch(Command("AddStock", "sku-1", {"qty": 3}, idempotency_key="r-1"))
    result.events, result.version, result.replayed

What one ``dispatch`` does, in order:

1. **route** the command by ``command_type`` to the one aggregate that handles it
   (``UnknownCommandError`` otherwise, before anything else runs);
2. run the middleware's ``before_dispatch`` hooks (``tideflow.events.middleware``);
3. **load** the aggregate's state: its latest snapshot if it takes them, then the events after
   it, folded with ``apply`` (the store upcasts old event shapes on the way);
4. **decide**: the aggregate's ``execute`` returns the new events, or raises a ``DomainError``,
   which is re-raised unchanged with nothing written;
5. **append** them with ``expected_version`` = the version loaded (``NO_STREAM`` for a new
   stream). Each event's ``causation_id`` is the command's id and its ``correlation_id`` the
   command's; its metadata is the command's, plus ``command_type`` and ``aggregate_type``.
   If another writer appended in between (``WrongExpectedVersionError``), go back to 3 - the
   decision is taken again on the new state - at most ``max_conflict_retries`` times, then
   raise ``ConcurrencyRetriesExhaustedError``;
6. take a **snapshot** if the stream crossed a multiple of ``snapshot_every`` (a failure is
   logged, never raised: the command has committed and snapshots are only an optimisation);
   inside a caller's transaction (``within``), in that transaction, so that a snapshot never
   outlives the events it folds in;
7. run the ``after_dispatch`` (or ``after_failure``) hooks - inside a caller's transaction,
   ``after_dispatch`` once it commits (``Tx.on_commit``).

**Idempotency.** A command with an ``idempotency_key`` is recorded under that key by the same
append - one transaction - as its events, so the key exists if and only if the events do, in the
database itself: it survives restarts and holds across every dispatcher on every machine. The
record holds the ids and versions of the events (the result) plus a fingerprint of the command;
dispatching the key again returns the original result - the same events, read back from the
stream - with ``replayed=True``, and writes nothing. Two dispatchers racing with one key cannot
both append: the store inserts the key first, so the second waits for the first to commit and is
told the key is taken (``DuplicateIdempotencyKeyError``), whereupon it returns the first one's
result. The key is not looked up before deciding - that would cost every command a round trip -
but whenever deciding fails, since a command that already happened may well be refused now
("already shipped") when the right answer is its original result. A key reused for a different
command (type, aggregate or payload) is refused with ``IdempotencyKeyConflictError``. A command
refused by a ``DomainError`` records nothing, so sending it again decides again.

A command without an ``idempotency_key`` is recorded under its ``command_id`` instead (key
``command:<command_id>``, ``command_key``): the same ``Command`` sent twice - a retry after a
timeout, a message delivered again - writes its events once, and the second dispatch replays the
first. A command that recorded no event records no key either (there is nothing to write twice),
so sending it again decides again. An explicit ``idempotency_key`` replaces the command id as the
key: two commands with different ids and one key are one command.

Why a plain ``store.append`` and not ``store.transaction()``: the contract's ``append`` with
``idempotency_key`` and ``result_json`` is already one transaction holding both; on PostgreSQL it
is one statement in autocommit, where an explicit transaction would add two round trips
(BEGIN and COMMIT; the append's savepoint travels with it) to every command.

``CommandDispatcher`` is the one implementation, blocking and safe to share between threads
(register aggregates before sharing it); ``AsyncCommandDispatcher`` (``dispatcher.aio``) runs
it in a thread, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tideflow.codec import is_plain, to_json_value
from tideflow.events.aggregate import (
    Aggregate,
    AggregateDefinitionError,
    apply_event,
    as_aggregate,
    decide,
    evolve,
    stamp_events,
)
from tideflow.events.commands import (
    Command,
    CommandError,
    ConcurrencyRetriesExhaustedError,
    DispatcherConfigurationError,
    DispatchResult,
    DuplicateCommandHandlerError,
    IdempotencyKeyConflictError,
    InvalidCommandError,
    UnknownAggregateError,
    UnknownCommandError,
)
from tideflow.events.errors import (
    DuplicateIdempotencyKeyError,
    UpcastingError,
    WrongExpectedVersionError,
)
from tideflow.events.middleware import DispatchContext, Middleware, log, run_pipeline
from tideflow.events.model import (
    MAX_ID_LENGTH,
    NO_STREAM,
    ExpectedVersion,
    IdempotencyRecord,
    NewEvent,
    RecordedEvent,
    Snapshot,
)
from tideflow.retrying import retry_briefly
from tideflow.runtime.aggregate_cache import DEFAULT_AGGREGATE_CACHE_SIZE, AggregateCache
from tideflow.storage.event_contract import append_retrying
from tideflow.telemetry import tracing

if TYPE_CHECKING:  # the store is passed in: its types only
    from tideflow.storage.event_contract import EventStore, EventTransaction

A = TypeVar("A", bound="type[Aggregate] | Aggregate")
T = TypeVar("T")

#: Version of the JSON a dispatcher records under an idempotency key (``_record``).
RESULT_FORMAT = 1
#: The prefix of the key a command without ``idempotency_key`` is recorded under.
COMMAND_KEY_PREFIX = "command:"


def command_key(command: Command) -> str:
    """The idempotency key ``command`` is recorded under: its ``idempotency_key``, else its
    ``command_id`` in a namespace of its own (an application's keys are not uuids with this
    prefix), so that the same command sent twice writes its events once."""
    return command.idempotency_key or COMMAND_KEY_PREFIX + command.command_id


# --- loading --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadedAggregate:
    """An aggregate's state as the dispatcher loads it before deciding."""

    state: Any
    version: int
    """The stream's version the state includes (0: no events)."""
    snapshot_version: int
    """The version of the snapshot loading started from; 0 if it replayed from the start."""
    events_replayed: int
    """How many events were read and applied on top of the snapshot (or initial state)."""


class DispatchStore(Protocol):
    """What the dispatcher needs of an event store: an ``EventStore``, or one transaction of it
    (``CommandDispatcher.within``)."""

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int,
        *,
        idempotency_key: str | None = None,
        result_json: str | None = None,
    ) -> list[RecordedEvent]: ...

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None: ...

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]: ...

    def load_snapshot(self, stream_id: str) -> Snapshot | None: ...

    def save_snapshot(
        self,
        stream_id: str,
        version: int,
        state: Mapping[str, Any],
        *,
        snapshot_type: str = "snapshot",
        schema_version: int | None = None,
    ) -> None: ...


class _TransactionStore:
    """A ``DispatchStore`` on an open transaction: appends, key lookups and stream reads go
    through the transaction, so a second command to the same aggregate in it sees the first
    one's events. Snapshots are read as committed (the events after one are read in the
    transaction, so a stale snapshot only costs replay) and taken in the transaction, under a
    savepoint: one saved on another connection would wait for this transaction's locks, or
    outlive events that roll back."""

    def __init__(self, store: DispatchStore, tx: EventTransaction) -> None:
        self._store = store
        self._tx = tx

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int,
        *,
        idempotency_key: str | None = None,
        result_json: str | None = None,
    ) -> list[RecordedEvent]:
        return self._tx.append(
            stream_id,
            events,
            expected_version,
            idempotency_key=idempotency_key,
            result_json=result_json,
        )

    def get_idempotent_result(self, key: str) -> IdempotencyRecord | None:
        return self._tx.get_idempotent_result(key)

    def read_stream(
        self,
        stream_id: str,
        from_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> Iterator[RecordedEvent]:
        return self._tx.read_stream(stream_id, from_version, limit, backwards)

    def load_snapshot(self, stream_id: str) -> Snapshot | None:
        return self._store.load_snapshot(stream_id)

    def save_snapshot(
        self,
        stream_id: str,
        version: int,
        state: Mapping[str, Any],
        *,
        snapshot_type: str = "snapshot",
        schema_version: int | None = None,
    ) -> None:
        with self._tx.savepoint():  # a failed snapshot must not cost the caller's transaction
            self._tx.save_snapshot(
                stream_id,
                version,
                state,
                snapshot_type=snapshot_type,
                schema_version=schema_version,
            )

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._tx.on_commit(callback)


def _fingerprint(command: Command) -> str:
    """What must match for a repeated key to be the same command: its payload, canonically."""
    payload = command.payload if is_plain(command.payload) else to_json_value(command.payload)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _record(
    command: Command, stream_id: str, first_version: int, events: Sequence[NewEvent]
) -> str:
    """The JSON recorded under the command's idempotency key: enough to rebuild the result (the
    events themselves are read back from the stream) and to recognise the same command again.
    The versions are known before the append: it succeeds at exactly ``first_version`` or not
    at all."""
    return json.dumps(
        {
            "format": RESULT_FORMAT,
            "command_id": command.command_id,
            "command_type": command.command_type,
            "stream_id": stream_id,
            "first_version": first_version,
            "event_ids": [str(e.event_id) for e in events],
            "payload_sha256": _fingerprint(command),
        },
        separators=(",", ":"),
    )


class CommandDispatcher:
    """Routes commands to aggregates and records their events; see the module docstring."""

    def __init__(
        self,
        event_store: EventStore,
        aggregates: Iterable[type[Aggregate] | Aggregate] = (),
        *,
        middleware: Iterable[Middleware] = (),
        max_conflict_retries: int = 5,
        aggregate_cache_size: int = DEFAULT_AGGREGATE_CACHE_SIZE,
    ) -> None:
        """``aggregate_cache_size``: how many aggregates' states to keep between commands
        (``aggregate_cache.py``: safe across processes, the append checks the version); 0
        reads every aggregate's stream for every command."""
        if type(aggregate_cache_size) is not int or aggregate_cache_size < 0:
            raise DispatcherConfigurationError(
                f"aggregate_cache_size must be an int >= 0 (0: keep no aggregate in memory), "
                f"got {aggregate_cache_size!r}"
            )
        self.cache = AggregateCache(aggregate_cache_size)
        self._command_ids_as_keys = True
        if type(max_conflict_retries) is not int or max_conflict_retries < 0:
            raise DispatcherConfigurationError(
                f"max_conflict_retries must be an int >= 0 (0: fail at the first version "
                f"conflict), got {max_conflict_retries!r}"
            )
        self.store: DispatchStore = event_store
        self.max_conflict_retries = max_conflict_retries
        self.middleware: list[Middleware] = []
        for m in middleware:
            missing = [
                hook
                for hook in ("before_dispatch", "after_dispatch", "after_failure")
                if not callable(getattr(m, hook, None))
            ]
            if missing:
                raise DispatcherConfigurationError(
                    f"middleware {m!r} has no {', '.join(missing)}; subclass "
                    "tideflow.events.middleware.Middleware and override the hooks you need"
                )
            self.middleware.append(m)
        self._routes: dict[str, Aggregate] = {}
        self._aggregates: dict[str, Aggregate] = {}
        for aggregate in aggregates:
            self.register(aggregate)

    def register(self, aggregate: A) -> A:
        """Route the aggregate's command types to it (a class is instantiated without
        arguments). Returns its argument, so it also works as a class decorator. Raises
        ``DuplicateCommandHandlerError`` if another aggregate already has one of its command
        types or its ``aggregate_type``."""
        instance = as_aggregate(aggregate)
        name = type(instance).__name__
        if not instance.command_types:
            raise AggregateDefinitionError(
                f"aggregate {name} handles no command type: mark a method @handles('...')"
            )
        other = self._aggregates.get(instance.aggregate_type)
        if other is not None:
            raise DuplicateCommandHandlerError(
                f"aggregate {name} has aggregate_type {instance.aggregate_type!r}, already used "
                f"by {type(other).__name__}: their streams would mix. Give one of them another "
                "aggregate_type"
            )
        for command_type in sorted(instance.command_types):
            if command_type in self._routes:
                raise DuplicateCommandHandlerError(
                    f"command type {command_type!r} is handled by both "
                    f"{type(self._routes[command_type]).__name__} and {name}; a command changes "
                    "exactly one aggregate, so keep the handler in one of them"
                )
        self._aggregates[instance.aggregate_type] = instance
        self._routes.update(dict.fromkeys(instance.command_types, instance))
        return aggregate

    @property
    def command_types(self) -> list[str]:
        """The command types this dispatcher routes, sorted."""
        return sorted(self._routes)

    @property
    def aggregates(self) -> dict[str, Aggregate]:
        """The registered aggregates by ``aggregate_type``."""
        return dict(self._aggregates)

    def within(
        self, tx: EventTransaction, *, command_ids_as_keys: bool = True
    ) -> CommandDispatcher:
        """This dispatcher, recording into the open transaction ``tx`` instead of committing
        each command on its own: the commands' events commit with whatever else ``tx`` holds
        (a process manager's state and checkpoint), or not at all. Same routes, middleware and
        retries; a version conflict re-reads the stream through ``tx``. Snapshots are taken in
        ``tx`` too, and ``after_dispatch`` hooks run once ``tx`` has committed (never if it
        rolls back). Keep such transactions short: on PostgreSQL their appends hold back every
        ``read_all``.

        ``command_ids_as_keys=False``: a command without an ``idempotency_key`` records no key
        (see the module docstring). For callers whose transaction already makes each command
        happen once - a process manager's reaction, which builds its commands anew (new ids)
        each time it runs and commits them with the instance's position - where the key could
        never match and would only cost a row per command."""
        bound = copy.copy(self)
        bound.store = _TransactionStore(self.store, tx)
        bound._command_ids_as_keys = command_ids_as_keys
        return bound

    @property
    def aio(self) -> AsyncCommandDispatcher:
        """The same dispatcher, awaitable: ``await dispatcher.aio.dispatch(command)``."""
        return AsyncCommandDispatcher(self)

    # --- dispatching ----------------------------------------------------------------------------

    def dispatch(self, command: Command) -> DispatchResult:
        """Dispatch ``command`` and return what it recorded; see the module docstring.

        Raises, having written nothing: ``UnknownCommandError``, ``InvalidCommandError``, the
        aggregate's ``DomainError`` (unchanged), ``ConcurrencyRetriesExhaustedError``,
        ``IdempotencyKeyConflictError``, a middleware's refusal, or the event store's errors
        (``EventNotSerializableError`` for event data that is not JSON...).

        While the database is unavailable (a restart), loading and appending are retried for
        about 5 s, then ``DatabaseUnavailableError`` is raised. The retry never records a
        command twice (same expected version, same event ids). Dispatching the same command
        again *yourself* after that error is safe: its ``idempotency_key``, or else its
        ``command_id``, is recorded with its events. A ``Command`` built anew (a new
        ``command_id``) without a key is another command: the first may have committed, and it
        decides again.
        """
        if not isinstance(command, Command):
            raise InvalidCommandError(
                f"dispatch() takes a tideflow.events.commands.Command, got "
                f"{type(command).__name__}: wrap it, e.g. "
                "Command('AddStock', 'sku-1', {'qty': 3})"
            )
        aggregate = self._route(command)
        ctx = DispatchContext(command, aggregate, aggregate.stream_id(command.aggregate_id))
        store = self.store
        after_commit = store.on_commit if isinstance(store, _TransactionStore) else None
        attributes = {"tideflow.command_type": command.command_type}
        with tracing.span(f"dispatch {command.command_type}", attributes):
            return run_pipeline(self.middleware, ctx, self._dispatch, after_commit)

    def _route(self, command: Command) -> Aggregate:
        aggregate = self._routes.get(command.command_type)
        if aggregate is None:
            raise UnknownCommandError(command.command_type, list(self._routes))
        expected = command.aggregate_type
        if expected is not None and expected != aggregate.aggregate_type:
            raise InvalidCommandError(
                f"command {command.command_type!r} says aggregate_type {expected!r}, but it is "
                f"handled by aggregate {aggregate.aggregate_type!r}; fix the command's "
                "aggregate_type (or leave it out)",
                "aggregate_type",
            )
        room = MAX_ID_LENGTH - len(aggregate.aggregate_type) - 1
        if len(command.aggregate_id) > room:
            raise InvalidCommandError(
                f"aggregate_id {command.aggregate_id[:40]!r}... of command "
                f"{command.command_type!r} is {len(command.aggregate_id)} characters; with the "
                f"aggregate_type prefix at most {room} fit in a stream id: use a shorter id "
                "(a uuid, a hash)",
                "aggregate_id",
            )
        return aggregate

    def _dispatch(self, ctx: DispatchContext) -> DispatchResult:
        """Steps 3 to 6, inside the middleware."""
        command = ctx.command
        aggregate, stream_id = ctx.aggregate, ctx.stream_id
        if (
            self._route(command) is not aggregate
            or aggregate.stream_id(command.aggregate_id) != stream_id
        ):
            raise InvalidCommandError(
                f"a middleware replaced command {command.command_type!r} with one for another "
                f"aggregate (stream {aggregate.stream_id(command.aggregate_id)!r} instead of "
                f"{stream_id!r}); middleware may change metadata, not the target: dispatch a "
                "new command instead",
                "command_type",
            )
        implicit = command.idempotency_key is None
        key = command_key(command) if self._command_ids_as_keys or not implicit else None
        conflict: WrongExpectedVersionError | None = None
        for attempt in range(1, self.max_conflict_retries + 2):
            ctx.attempts = attempt
            cached = self.cache.take(stream_id) if attempt == 1 else None
            loaded = (
                LoadedAggregate(cached[0], cached[1], cached[1], 0)
                if cached is not None
                else self._retrying(lambda: self._load(aggregate, stream_id, command.aggregate_id))
            )
            try:
                try:
                    decided = decide(aggregate, loaded.state, command)
                except Exception:
                    if cached is None:
                        raise
                    # Refused on a kept state, which may be stale (another process appended
                    # since): only what the stream holds may refuse a command.
                    loaded = self._retrying(
                        lambda: self._load(aggregate, stream_id, command.aggregate_id)
                    )
                    decided = decide(aggregate, loaded.state, command)
            except Exception:
                # A repeat of a command that already happened may be refused by the state it
                # produced; its key - committed with its events - says so, then replay it.
                if key is None:
                    raise
                record = self.store.get_idempotent_result(key)
                if record is None:
                    raise
                return self._replay(command, aggregate, stream_id, key, record.result_json)
            events = stamp_events(decided, command, aggregate)
            if not events and implicit:
                return DispatchResult(
                    command.command_id,
                    command.command_type,
                    aggregate.aggregate_type,
                    command.aggregate_id,
                    stream_id,
                    (),
                    loaded.version,
                )
            result_json = (
                None if key is None else _record(command, stream_id, loaded.version + 1, events)
            )
            try:
                with tracing.span(f"append {stream_id}", {"tideflow.events": len(events)}):
                    traced = tracing.trace_metadata()  # their handlers continue this trace
                    if traced:
                        events = [replace(e, metadata={**e.metadata, **traced}) for e in events]
                    recorded = self._append(stream_id, events, loaded.version, key, result_json)
            except DuplicateIdempotencyKeyError as exc:
                return self._replay(command, aggregate, stream_id, exc.key, exc.result_json)
            except WrongExpectedVersionError as exc:
                conflict = exc
                continue
            if recorded:
                self._after_append(aggregate, stream_id, loaded, recorded)
            return DispatchResult(
                command.command_id,
                command.command_type,
                aggregate.aggregate_type,
                command.aggregate_id,
                stream_id,
                tuple(recorded),
                loaded.version + len(recorded),
            )
        raise ConcurrencyRetriesExhaustedError(command, stream_id, ctx.attempts) from conflict

    def _retrying(self, call: Callable[[], T]) -> T:
        """``call()``, retried for a few seconds while the database is unavailable - unless
        this dispatcher records into a caller's transaction, which an outage has ended."""
        if isinstance(self.store, _TransactionStore):
            return call()
        return retry_briefly(call)

    def _append(
        self,
        stream_id: str,
        events: list[NewEvent],
        version: int,
        key: str | None,
        result_json: str | None,
    ) -> list[RecordedEvent]:
        """The append of a decided command, retried through a brief outage
        (``append_retrying``: it never appends twice, and recognises a first try whose answer
        was lost) - unless this dispatcher records into a caller's transaction."""

        def write() -> list[RecordedEvent]:
            return self.store.append(
                stream_id,
                events,
                version or NO_STREAM,
                idempotency_key=key,
                result_json=result_json,
            )

        if isinstance(self.store, _TransactionStore):
            return write()
        return append_retrying(
            self.store.read_stream, stream_id, [e.event_id for e in events], write
        )

    def _replay(
        self,
        command: Command,
        aggregate: Aggregate,
        stream_id: str,
        key: str,
        result_json: str | None,
    ) -> DispatchResult:
        """The result recorded under ``key`` the first time, its events read back."""
        fix = (
            None
            if command.idempotency_key is not None
            else "A command_id names one command: build a new Command (command_id left out) "
            "for another one"
        )
        try:
            record = json.loads(result_json) if result_json else None
        except ValueError:
            record = None
        if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT:
            raise IdempotencyKeyConflictError(
                key,
                "is recorded, but not by a command dispatcher (an append made with it "
                "directly?), so there is no command result to return",
                fix,
            )
        if (record["command_type"], record["stream_id"]) != (command.command_type, stream_id):
            raise IdempotencyKeyConflictError(
                key,
                f"was already used by command {record['command_type']!r} for stream "
                f"{record['stream_id']!r}, not {command.command_type!r} for {stream_id!r}",
                fix,
            )
        if record["payload_sha256"] != _fingerprint(command):
            raise IdempotencyKeyConflictError(
                key,
                f"was already used by command {command.command_type!r} for stream "
                f"{stream_id!r} with a different payload",
                fix,
            )
        ids: list[str] = record["event_ids"]
        first: int = record["first_version"]
        events = tuple(self.store.read_stream(stream_id, first, limit=len(ids))) if ids else ()
        if [str(e.event_id) for e in events] != ids:
            raise CommandError(
                f"idempotency key {key!r} records events {ids} at version {first} of stream "
                f"{stream_id!r}, but the stream holds others there: was the stream deleted or "
                "rewritten? Events are meant to be immutable"
            )
        return DispatchResult(
            record["command_id"],
            command.command_type,
            aggregate.aggregate_type,
            command.aggregate_id,
            stream_id,
            events,
            first - 1 + len(ids),
            replayed=True,
        )

    # --- loading and snapshots ------------------------------------------------------------------

    def load(self, aggregate: type[Aggregate] | str, aggregate_id: str) -> LoadedAggregate:
        """The current state of a registered aggregate (by class or ``aggregate_type``), loaded
        the way ``dispatch`` loads it before deciding: for queries, tests and debugging."""
        name = aggregate if isinstance(aggregate, str) else aggregate.aggregate_type
        instance = self._aggregates.get(name)
        if instance is None:
            known = ", ".join(repr(t) for t in sorted(self._aggregates)) or "none"
            raise UnknownAggregateError(
                f"no aggregate of type {name!r} is registered (known: "
                f"{known}); register it with the dispatcher first"
            )
        return self._load(instance, instance.stream_id(aggregate_id), aggregate_id)

    def _load(self, aggregate: Aggregate, stream_id: str, aggregate_id: str) -> LoadedAggregate:
        snapshot = self._load_snapshot(aggregate, stream_id) if aggregate.snapshot_every else None
        if snapshot is None:
            state, version = aggregate.initial_state(aggregate_id), 0
        else:
            state, version = snapshot
        start, replayed = version, 0
        for event in self.store.read_stream(stream_id, version + 1):
            state = apply_event(aggregate, state, event)
            version = event.version
            replayed += 1
        return LoadedAggregate(state, version, start, replayed)

    def _load_snapshot(self, aggregate: Aggregate, stream_id: str) -> tuple[Any, int] | None:
        """The state and version of the stream's snapshot, or None to replay from the start:
        when there is none, it is of another shape (``snapshot_version``) or it cannot be read
        - a snapshot is only a shortcut, never a reason to fail a command."""
        try:
            snapshot = self.store.load_snapshot(stream_id)
        except UpcastingError:
            log.warning(
                "the snapshot of %r cannot be upcast; replaying the stream instead",
                stream_id,
                exc_info=True,
            )
            return None
        if (
            snapshot is None
            or snapshot.snapshot_type != aggregate.aggregate_type
            or snapshot.schema_version != aggregate.snapshot_version
        ):
            return None
        try:
            return aggregate.from_snapshot(snapshot.state), snapshot.version
        except Exception:
            log.warning(
                "%s.from_snapshot failed on the snapshot of %r at version %d; replaying "
                "the stream instead",
                type(aggregate).__name__,
                stream_id,
                snapshot.version,
                exc_info=True,
            )
            return None

    def _after_append(
        self,
        aggregate: Aggregate,
        stream_id: str,
        loaded: LoadedAggregate,
        recorded: list[RecordedEvent],
    ) -> None:
        """Keep the state after ``recorded`` for the next command (once they have committed),
        and save it as the stream's snapshot if the stream just crossed a multiple of
        ``snapshot_every``. Never raising: the events are what counts - an ``apply`` that fails
        here fails the next load instead, which reports it. Without a cache and with no
        snapshot due, the new state is not even computed."""
        version = recorded[-1].version
        every = aggregate.snapshot_every
        due = every is not None and version // every != loaded.version // every
        if not (due or self.cache.size):
            return
        try:
            state = evolve(aggregate, loaded.state, recorded)
            if self.cache.size:
                cache, store = self.cache, self.store
                if isinstance(store, _TransactionStore):
                    store.on_commit(lambda: cache.put(stream_id, state, version))
                else:
                    cache.put(stream_id, state, version)
            if due:
                self.store.save_snapshot(
                    stream_id,
                    version,
                    aggregate.to_snapshot(state),
                    snapshot_type=aggregate.aggregate_type,
                    schema_version=aggregate.snapshot_version,
                )
        except Exception:
            if due:
                log.warning(
                    "could not snapshot %r at version %d; the command stands, the next "
                    "snapshot will be tried %d events later",
                    stream_id,
                    version,
                    every,
                    exc_info=True,
                )


class AsyncCommandDispatcher:
    """``CommandDispatcher.dispatch``, awaitable: each call runs the blocking one in a thread
    (``asyncio.to_thread``), so an event loop never waits on the database."""

    def __init__(self, dispatcher: CommandDispatcher) -> None:
        self.dispatcher = dispatcher

    async def dispatch(self, command: Command) -> DispatchResult:
        return await asyncio.to_thread(self.dispatcher.dispatch, command)

    async def load(self, aggregate: type[Aggregate] | str, aggregate_id: str) -> LoadedAggregate:
        return await asyncio.to_thread(self.dispatcher.load, aggregate, aggregate_id)
