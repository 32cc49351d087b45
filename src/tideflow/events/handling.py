"""Event handlers: code that follows the event log, in position order, from where it left off.

    class OrderMailer(EventHandler):
        name = "order_mailer"
        event_types = ["OrderPlaced"]
        transactional = False          # it calls a mail server: keep no transaction open
        max_attempts = 5

        def handle(self, event, ctx):
            send_confirmation(event.data["email"], event.stream_id)

A handler is a class with a ``name`` (its checkpoint: how far it got, stored with the events), the
``event_types`` it wants (None: all) and a ``handle(event, ctx)`` method, plain or ``async``. A
``HandlerRunner`` (``tideflow.worker.handlers``) feeds it every event after its checkpoint,
a batch at a time, and moves the checkpoint after each batch.

Delivery. By default (``transactional = True``) a batch runs inside one database transaction that
also advances the checkpoint, and ``ctx.connection`` / ``ctx.execute`` / ``ctx.append`` write in
that transaction: what the handler does *in the database* happens exactly once, however often a
worker crashes. Effects outside the database (mail, HTTP) happen at least once: a crash after the
call and before the commit repeats the batch. Set ``transactional = False`` for handlers whose
work is slow and external - the batch then holds no transaction open (on SQLite an open
transaction blocks every other writer) and the checkpoint is advanced after it.

Errors. A failing event is retried up to ``max_attempts`` times, waiting ``min(max_delay,
base_delay * 2**(attempt - 1))`` minus up to 25% jitter between attempts, like flow steps. Raising
``tideflow.NonRetryableError`` skips the remaining attempts. Then ``on_failure`` decides:
``"dead_letter"`` records the event in the dead letters (``tideflow deadletters``) and moves on;
``"stop"`` halts the handler at that event, with the reason shown by ``tideflow handlers``, until
it is resumed or reset - for handlers whose later events make no sense without the failed one.

This module is domain code: it imports nothing from storage or the runtime.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from tideflow.errors import TideflowError
from tideflow.events.model import ExpectedVersion, NewEvent, RecordedEvent, check_name

if TYPE_CHECKING:  # a type only: this module imports nothing from storage at run time
    from tideflow.storage.event_contract import EventTransaction

FailurePolicy = Literal["dead_letter", "stop"]
Dialect = Literal["sqlite", "postgresql"]
HandlerKind = Literal["handler", "projection", "process_manager"]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_NAME_LENGTH = 128
_POLICIES = ("dead_letter", "stop")


# --- errors ---------------------------------------------------------------------------------------


class HandlerError(TideflowError):
    """Base class of the errors of event handlers, their runner and their store."""


class HandlerDefinitionError(HandlerError, ValueError):
    """A handler class is malformed (name, event types, retry options); raised when its class
    statement runs, or when a runner is given it, before anything is stored."""


class HandlerUsageError(HandlerError):
    """A handler used its context in a way its options do not allow (``ctx.connection`` in a
    handler that is not transactional), or an administrative call lacks what it needs."""


class HandlerNotFoundError(HandlerError, LookupError):
    """No handler of this name is known here (to the runner, or in the database)."""


class DeadLetterNotFoundError(HandlerError, LookupError):
    """No dead letter has this id."""


class LeaseLostError(HandlerError):
    """Another worker holds the handler now (this worker's lease expired), or the handler was
    stopped: the batch in progress is rolled back and the handler left to its new owner."""


class HandlerFailedError(HandlerError):
    """A dead letter was retried and the handler failed on its event again; ``cause`` is what
    it raised. The dead letter stays, with the new error and one more attempt counted."""

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


# --- what a handler sees --------------------------------------------------------------------------


class Cursor(Protocol):
    """The part of a DB-API cursor (``sqlite3.Cursor``, ``psycopg.Cursor``) that ``ctx.execute``
    promises."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class HandlerContext(Protocol):
    """What ``handle`` gets beside the event. The runner implements it; handlers only read it.

    Inside a transactional handler everything written through it commits with the handler's
    checkpoint, or not at all.
    """

    handler: str
    """The handler's name."""
    event: RecordedEvent
    """The event being handled (the same as ``handle``'s first argument)."""
    attempt: int
    """1 on first delivery; n on the n-th try of an event that failed before."""
    dialect: Dialect
    """Which database ``connection`` talks to, for handlers that write backend-specific SQL (the
    event store says; nothing here inspects the driver)."""
    transactional: bool

    @property
    def connection(self) -> Any:
        """The driver connection of the batch's transaction (``sqlite3.Connection`` or
        ``psycopg.Connection``), for the handler's own SQL. Do not commit or roll it back.
        ``HandlerUsageError`` in a handler with ``transactional = False``."""
        ...

    @property
    def transaction(self) -> EventTransaction:
        """The batch's event store transaction itself, for library code that works through the
        storage contract (process managers dispatch commands into it). ``HandlerUsageError`` in
        a non-transactional handler."""
        ...

    def execute(self, sql: str, params: Any = None) -> Cursor:
        """Run one statement in the batch's transaction, written once for both backends:
        parameters as ``%(name)s`` with a mapping (or ``%s`` with a sequence), which SQLite gets
        rewritten to its own style. ``HandlerUsageError`` in a non-transactional handler."""
        ...

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int = ExpectedVersion.ANY,
        *,
        idempotency_key: str | None = None,
    ) -> list[RecordedEvent]:
        """Append events caused by the current event (causation and correlation ids are set
        from it, unless an event has its own). Transactional handlers append in the batch's
        transaction - exactly once; others append at once, in a transaction of their own - at
        least once, so give those an ``idempotency_key`` derived from the event's id."""
        ...


# --- handlers -------------------------------------------------------------------------------------


class EventHandler:
    """Base class of event handlers. Options are class attributes, checked when the class
    statement runs (``HandlerDefinitionError``).

    ``handle`` may be ``async``: it then runs on the runner's event loop while its batch's
    transaction waits in the handler's thread; a plain ``handle`` runs in that thread.
    """

    name: ClassVar[str]
    """A slug (``^[a-z][a-z0-9_]*$``), unique among the handlers of a database: the name of the
    handler's checkpoint and row. Default: the class name in snake_case. Renaming a handler
    starts it from the beginning of the log under the new name."""
    event_types: ClassVar[Sequence[str] | None] = None
    """Event types to deliver; None delivers every event."""
    max_attempts: ClassVar[int] = 3
    base_delay: ClassVar[float] = 1.0
    max_delay: ClassVar[float] = 60.0
    on_failure: ClassVar[FailurePolicy] = "dead_letter"
    batch_size: ClassVar[int] = 100
    """Events per transaction: larger batches commit less often (faster catch-up); smaller ones
    repeat less after a crash and hold a transaction open for less time."""
    transactional: ClassVar[bool] = True
    kind: ClassVar[HandlerKind] = "handler"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
        check_handler_options(cls)

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> Awaitable[None] | None:
        """Process one event. Raise to have it retried (``NonRetryableError``: not retried)."""
        raise NotImplementedError(
            f"handler {self.name!r} ({type(self).__qualname__}) must "
            "define handle(self, event, ctx)"
        )

    def before_batch(self, events: Sequence[RecordedEvent], tx: EventTransaction) -> None:
        """A transactional handler's batch is about to be delivered in ``tx``: a chance to read
        what the whole batch needs in one statement (a process manager reads its instances).
        Runs in the handler's thread, even for an ``async def handle``; raising fails the
        batch's first event. Default: nothing."""

    def after_batch(self, tx: EventTransaction) -> None:
        """Every event of the batch was handled; ``tx`` commits next, with the checkpoint: a
        chance to write what the batch gathered in one statement (a process manager saves its
        instances). Raising rolls the batch back and fails its last event. Default: nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} handler {self.name!r}>"


def check_handler_options(cls: type[EventHandler]) -> None:
    """Validate a handler class's options, raising ``HandlerDefinitionError`` that names the
    class, the option and what would be valid."""
    where = f"handler class {cls.__qualname__}"

    def bad(message: str) -> HandlerDefinitionError:
        return HandlerDefinitionError(f"{where}: {message}")

    name = cls.name
    if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_NAME_LENGTH:
        raise bad(
            f"name {name!r} is invalid: use lowercase letters, digits and underscores, "
            f"starting with a letter, at most {MAX_NAME_LENGTH} characters"
        )
    types = cls.event_types
    if types is not None:
        if isinstance(types, str) or not isinstance(types, Sequence | set | frozenset):
            raise bad(
                f"event_types must be a list of event type names or None, got "
                f"{type(types).__name__} {types!r}: write [{types!r}]"
            )
        for event_type in types:
            check_name(event_type, f"{where}: event type", HandlerDefinitionError)
        cls.event_types = tuple(types)
    attempts = cls.max_attempts
    if type(attempts) is not int or attempts < 1:
        raise bad(f"max_attempts must be an int >= 1, got {attempts!r}")
    for option in ("base_delay", "max_delay"):
        value = getattr(cls, option)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise bad(f"{option} must be a number of seconds >= 0, got {value!r}")
    if cls.on_failure not in _POLICIES:
        raise bad(f"on_failure must be 'dead_letter' or 'stop', got {cls.on_failure!r}")
    size = cls.batch_size
    if type(size) is not int or size < 1:
        raise bad(f"batch_size must be an int >= 1, got {size!r}")
    if not isinstance(cls.transactional, bool):
        raise bad(f"transactional must be True or False, got {cls.transactional!r}")


def check_handler(handler: object) -> EventHandler:
    """A handler ready to run: an ``EventHandler`` instance (a class is instantiated) that
    defines ``handle``."""
    if isinstance(handler, type) and issubclass(handler, EventHandler):
        handler = handler()
    if not isinstance(handler, EventHandler):
        raise HandlerDefinitionError(
            f"{handler!r} is not an event handler: pass an instance (or subclass) of "
            "tideflow.events.handling.EventHandler"
        )
    if type(handler).handle is EventHandler.handle:
        raise HandlerDefinitionError(
            f"handler class {type(handler).__qualname__} does not define "
            "handle(self, event, ctx): subclass EventHandler and define it"
        )
    return handler
