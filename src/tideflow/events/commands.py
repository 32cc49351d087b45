"""Commands: a request to change one aggregate, and what dispatching one produced.

A command says what someone wants done (``AddStock``), to which aggregate (``sku-1``), with
what (``{"qty": 3}``). It is not a fact yet: the aggregate decides, from its current state,
whether it happens and which events record it. The dispatcher (``tideflow.runtime.dispatch``)
routes a command by ``command_type`` to the one aggregate class that handles it.

    Command("AddStock", "sku-1", {"qty": 3}, idempotency_key="req-8841")

Everything about a command is checked when it is built, so a malformed one fails in the code
that made it, with nothing written: ``payload`` and ``metadata`` must be JSON objects (commands
arrive over HTTP or queues, and the events they cause are stored as JSON), ``aggregate_id`` a
non-empty str, the ids UUIDs (they become the events' ``causation_id``/``correlation_id``).

This module also holds the errors of the command side that are not tied to one part of it.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from uuid import UUID

from tideflow.codec import SUPPORTED, is_pydantic_model
from tideflow.errors import InvalidDataError, TideflowError
from tideflow.events.model import RecordedEvent, check_name, new_event_id
from tideflow.jsonutil import encode, too_deep
from tideflow.typed import InputTypeError, coerce

T = TypeVar("T")

# --- errors ---------------------------------------------------------------------------------------


class CommandError(TideflowError):
    """Base class of the errors tideflow raises while building, routing or dispatching a
    command. A command that raised one has written nothing (except where noted)."""


class InvalidCommandError(CommandError, ValueError):
    """A command is malformed: ``field`` names the part that is wrong (``"aggregate_id"``,
    ``"payload"``...), so an API layer can report it against the right input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class CommandNotSerializableError(InvalidCommandError, TypeError):
    """A command's ``payload`` or ``metadata`` is not a JSON object (a dict with str keys of
    JSON values)."""


class InvalidCommandDataError(InvalidCommandError, InvalidDataError):
    """A command's id is empty, too long or holds a NUL or surrogate, or its ``payload`` or
    ``metadata`` is JSON that no backend may store (a NUL or lone surrogate in a string or key,
    nesting deeper than ``tideflow.jsonutil.MAX_DEPTH``): ``field`` names which."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message, field)
        self.field = field  # InvalidDataError.__init__, next in the MRO, reset it


class UnknownCommandError(CommandError, LookupError):
    """No registered aggregate handles this command type. ``command_type`` is the one asked
    for, ``known`` the types that are handled."""

    def __init__(self, command_type: str, known: list[str], where: str = "the dispatcher") -> None:
        self.command_type = command_type
        self.known = sorted(known)
        close = difflib.get_close_matches(command_type, self.known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        listed = ", ".join(repr(t) for t in self.known) or "none"
        super().__init__(
            f"no aggregate handles command type {command_type!r} in {where} (known command "
            f"types: {listed}).{hint} Register the aggregate that handles it (a method marked "
            f"@handles({command_type!r})); nothing was written."
        )


# --- the command ----------------------------------------------------------------------------------


def _check_object(value: object, what: str, name: str) -> None:
    if not isinstance(value, Mapping):
        raise CommandNotSerializableError(
            f"{name} of {what} must be a dict (a JSON object), got {type(value).__name__}: "
            f"wrap it, e.g. {{'items': [...]}}. Nothing was dispatched.",
            name,
        )
    bad_keys = [k for k in value if not isinstance(k, str)]
    if bad_keys:
        # json would turn 1 into "1" silently; the handler would then read a different key
        raise CommandNotSerializableError(
            f"{name} of {what} has non-str keys {bad_keys[:3]!r}; JSON object keys are "
            "strings: convert them (str(key)) first. Nothing was dispatched.",
            name,
        )
    try:
        encode(value, what=f"{name} of {what}")
    except RecursionError:
        raise InvalidCommandDataError(str(too_deep(f"{name} of {what}")), name) from None
    except InvalidDataError as exc:
        # Checked here, not only when its events are appended: an aggregate may copy the
        # payload into its events, and the command fails in the code that built it.
        raise InvalidCommandDataError(str(exc), name) from None
    except (TypeError, ValueError) as exc:
        raise CommandNotSerializableError(
            f"{name} of {what} cannot be stored: {exc}. Storable: {SUPPORTED}. Nothing was "
            "dispatched.",
            name,
        ) from exc


def _check_name(value: object, what: str, name: str) -> str:
    """``check_name`` (non-empty str, at most ``MAX_ID_LENGTH``, no NUL), tagging the error with
    the field it is about."""
    try:
        return check_name(value, what, InvalidCommandDataError)
    except InvalidCommandError as exc:
        exc.field = name
        raise


def _check_uuid(value: object, what: str, name: str) -> str:
    """A UUID given as a ``uuid.UUID`` or its text, as canonical text."""
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str):
        try:
            return str(UUID(value))
        except ValueError:
            pass
    raise InvalidCommandError(
        f"{name} of {what} must be a UUID (uuid.UUID or its text), got {value!r}: it becomes "
        "the causation/correlation id of the events the command causes, which are UUIDs. "
        "Leave command_id out to get a fresh one.",
        name,
    )


@dataclass(frozen=True, slots=True)
class Command:
    """A request to change aggregate ``aggregate_id``, routed by ``command_type``.

    ``aggregate_type`` may be left out: the dispatcher knows which aggregate handles each
    command type; if given, it must match (a cheap guard for commands built from external
    input). ``metadata`` is copied into every event the command causes (who asked, from where).

    ``causation_id`` is what caused this command (the event a process manager reacted to);
    ``correlation_id`` ties together everything one original request set off, and defaults to
    ``command_id``, so a command nobody caused starts its own chain. Use ``caused_by`` to build
    a command in reaction to an event.

    ``idempotency_key`` makes the command safe to send again: the first dispatch records the key
    with its events, any later one with the same key returns that first result (see
    ``CommandDispatcher.dispatch``). Without one, ``command_id`` is the key: the same Command
    object (or a copy keeping its ``command_id``) sent twice writes its events once.
    """

    command_type: str
    aggregate_id: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None
    aggregate_type: str | None = None
    command_id: str = field(default_factory=lambda: str(new_event_id()))
    causation_id: str | None = None
    correlation_id: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.command_type, "command_type", "command_type")
        what = f"command {self.command_type!r}"
        if not isinstance(self.aggregate_id, str) or not self.aggregate_id:
            raise InvalidCommandDataError(
                f"aggregate_id of {what} must be a non-empty str naming the aggregate to change "
                f"(e.g. 'sku-1' or a uuid), got {self.aggregate_id!r}",
                "aggregate_id",
            )
        _check_name(self.aggregate_id, f"aggregate_id of {what}", "aggregate_id")
        what = f"command {self.command_type!r} for aggregate {self.aggregate_id!r}"
        _check_object(self.payload, what, "payload")
        _check_object(self.metadata, what, "metadata")
        if self.idempotency_key is not None:
            _check_name(self.idempotency_key, f"idempotency_key of {what}", "idempotency_key")
        if self.aggregate_type is not None:
            _check_name(self.aggregate_type, f"aggregate_type of {what}", "aggregate_type")
        # Normalise the ids to canonical text (frozen: set through object.__setattr__).
        command_id = _check_uuid(self.command_id, what, "command_id")
        object.__setattr__(self, "command_id", command_id)
        if self.causation_id is not None:
            object.__setattr__(
                self, "causation_id", _check_uuid(self.causation_id, what, "causation_id")
            )
        correlation = (
            command_id
            if self.correlation_id is None
            else _check_uuid(self.correlation_id, what, "correlation_id")
        )
        object.__setattr__(self, "correlation_id", correlation)

    def payload_as(self, cls: type[T]) -> T:
        """The payload as an instance of ``cls`` (a dataclass or pydantic model - built from
        the payload's fields -, or a TypedDict - checked): what a handler calls to work with a
        typed payload. ``InvalidCommandDataError`` (field ``payload``, naming the wrong field)
        when the payload does not fit; raised in a handler, it writes nothing."""
        try:
            return coerce(self.payload, cls, what=f"payload of command {self.command_type!r}")  # type: ignore[no-any-return]
        except InputTypeError as exc:
            raise InvalidCommandDataError(str(exc), "payload") from None

    def caused_by(self, cause: RecordedEvent) -> Command:
        """This command as a reaction to ``cause`` (what a process manager sends): causation is
        the event, correlation carries on the event's chain, and the command gets a fresh id."""
        return replace(
            self,
            command_id=str(new_event_id()),
            causation_id=str(cause.event_id),
            correlation_id=str(cause.correlation_id or cause.event_id),
        )


def as_payload(value: object) -> dict[str, Any]:
    """A dataclass or pydantic model instance as a command payload (the dict of its fields,
    values unchanged: the codec stores datetimes, decimals...): ``Command("AddStock", "sku-1",
    as_payload(AddStock(qty=3)))``, so that mypy checks the payload's fields where the command
    is built. ``payload_as`` turns it back."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _field_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if is_pydantic_model(type(value)):
        dumped: dict[str, Any] = value.model_dump(mode="python", by_alias=True)  # type: ignore[attr-defined]
        return dumped
    if isinstance(value, Mapping):
        return dict(value)
    raise CommandNotSerializableError(
        f"as_payload takes a dataclass, a pydantic model or a dict, got {type(value).__name__}",
        "payload",
    )


def _field_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_payload(value)
    if isinstance(value, list | tuple):
        return [_field_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _field_value(v) for k, v in value.items()}
    return value


# --- the result -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DispatchResult:
    """What a dispatched command did: the events it recorded, as the store holds them.

    ``replayed`` is True when the command's idempotency key had already been handled: the result
    is then the *first* dispatch's (its ``command_id``, its events) and nothing was written.
    ``version`` is the stream's version right after the command's events (the version it was at
    when the command recorded none).
    """

    command_id: str
    command_type: str
    aggregate_type: str
    aggregate_id: str
    stream_id: str
    events: tuple[RecordedEvent, ...]
    version: int
    replayed: bool = False

    @property
    def positions(self) -> list[int]:
        """The store-wide positions of the events, e.g. to wait for a projection to reach
        ``max(result.positions)`` before reading it (read-your-writes)."""
        return [event.position for event in self.events]


# --- dispatch errors ------------------------------------------------------------------------------


class DispatcherConfigurationError(CommandError, ValueError):
    """The dispatcher was built or wired wrongly (an argument, an aggregate, a middleware)."""


class DuplicateCommandHandlerError(DispatcherConfigurationError):
    """Two aggregates claim one command type (or one ``aggregate_type``, whose streams would
    mix); raised when the second is registered."""


class ConcurrencyRetriesExhaustedError(CommandError):
    """Other writers appended to the aggregate's stream between every load and append, more
    than ``max_conflict_retries`` times in a row; nothing was written.

    ``command``, ``stream_id`` and ``attempts`` say which; the last ``WrongExpectedVersionError``
    is the ``__cause__``."""

    def __init__(self, command: Command, stream_id: str, attempts: int) -> None:
        self.command = command
        self.stream_id = stream_id
        self.attempts = attempts
        super().__init__(
            f"command {command.command_type!r} (id {command.command_id}) lost the race for "
            f"stream {stream_id!r} to other writers {attempts} times in a row "
            f"(max_conflict_retries={attempts - 1}); nothing was written. The aggregate is "
            "too busy for optimistic concurrency: raise max_conflict_retries, send its commands "
            "through one worker, or split it into smaller aggregates."
        )


class UnknownAggregateError(CommandError, LookupError):
    """``load`` was asked for an aggregate type that is not registered."""


class IdempotencyKeyConflictError(CommandError):
    """An idempotency key was already used for a different command, or by something other than
    a dispatcher; the command was not run and nothing was written."""

    def __init__(self, key: str, problem: str, fix: str | None = None) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} {problem}; nothing was written. "
            + (
                fix
                or "Use one key per distinct command (e.g. a uuid made when the request is created)"
            )
        )
