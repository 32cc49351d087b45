"""Process managers (sagas): long-running processes that react to events by sending commands.

    class OrderFulfilment(ProcessManager):
        name = "order_fulfilment"
        event_types = ["OrderPlaced", "StockReserved", "PaymentDeclined", "OrderShipped"]
        starts_with = ["OrderPlaced"]

        def react(self, state, event):
            if event.event_type == "OrderPlaced":
                return [Command("ReserveStock", event.data["sku"], {"qty": 1})]
            if event.event_type == "StockReserved":
                return [StartFlow("charge_and_ship", {"order": event.data["order"]})]
            return []

        def apply(self, state, event):
            return {**state, "last": event.event_type}

        def compensate(self, state, command, error):
            return [Command("CancelOrder", state["order"], {"reason": str(error)})]

        def is_done(self, state):
            return state["last"] in ("OrderShipped", "OrderCancelled")

One *instance* per process id - by default the events' correlation id, which every command the
instance sends carries on, so the events those commands cause come back to it. For each event an
instance follows, in log order: ``react(state, event)`` returns what to do (``Command``s to
dispatch, ``StartFlow``s to start), then ``apply(state, event)`` returns the state to keep.
A command refused by its aggregate (a ``DomainError``) stops the rest of that reaction; once the
event is applied, ``compensate(state, command, error)`` returns the commands that undo what was
done, or None to carry on without; if a compensating command is refused too, the instance is marked
``failed`` and follows no more events. Once ``is_done(state)`` is true the instance is
``completed``.

Exactly once. A process manager is an event handler whose batches are transactions: the
commands' events, the flows started, the instance's new state and the handler's checkpoint
commit together or not at all. A worker killed in the middle leaves nothing behind, and the next
one does the whole reaction again - so ``react`` and ``compensate`` must decide from ``state``
and ``event`` only, and do nothing outside the database (start a flow for that). Its errors
follow the handler's policy; the default is ``on_failure = "stop"``, because the instances of a
process manager that skipped an event would carry on from a state that never saw it.

This module is domain code: what a process manager is. ``tideflow.runtime.sagas`` runs it: an
App binds each process manager to a ``ProcessBindings`` (the runtime's ``ProcessRuntime``), and
``handle`` hands every event to it - the runtime calls the domain, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from tideflow.errors import NonRetryableError
from tideflow.events.commands import Command
from tideflow.events.handling import (
    EventHandler,
    FailurePolicy,
    HandlerContext,
    HandlerDefinitionError,
    HandlerError,
    HandlerKind,
)
from tideflow.events.model import RecordedEvent

if TYPE_CHECKING:
    from tideflow.flows.dsl import Flow
    from tideflow.storage.event_contract import EventTransaction


class ProcessManagerError(HandlerError):
    """Base class of the errors of process managers."""


class ProcessNotBoundError(ProcessManagerError):
    """A process manager was given an event before it was given a dispatcher to send commands
    with: register it with an ``App`` (``app.process_manager``), or call ``bind``."""


class ProcessStateError(ProcessManagerError, NonRetryableError):
    """A process manager returned something it may not (state that is not JSON, an action
    that is neither a Command nor a StartFlow). A bug in its code: not retried."""


@dataclass(frozen=True, slots=True)
class StartFlow:
    """An action of ``react``: start a run of ``flow`` (a Flow class or slug) with ``input``.

    The run is created in the reaction's transaction: it exists if and only if the instance's
    new state does. ``run_id`` defaults to one derived from the instance and the event, so the
    flow's steps can be traced back to what started them."""

    flow: type[Flow] | str
    input: object = None
    run_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    """An action of ``react``: deliver an event of type ``event_type`` to this instance after
    ``after`` seconds (a number or a ``timedelta``) or at ``at`` (an aware datetime) - exactly one
    of them. Its data is ``{"timer": name, **data}``. Scheduling a name that is pending replaces
    it. ``event_type`` must be one of the manager's ``event_types``. The timer is durable: it is
    written in the reaction's transaction and fires once, whatever workers die meanwhile; it is
    dropped when cancelled (``CancelTimer``) or when the instance ends."""

    name: str
    after: float | timedelta | None = None
    at: datetime | None = None
    event_type: str = "TimerElapsed"
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CancelTimer:
    """An action of ``react``: drop this instance's pending timer ``name`` (nothing if none)."""

    name: str


UndoFunction = Callable[[Sequence[RecordedEvent]], "Command | Sequence[Command] | None"]


@dataclass(frozen=True, slots=True)
class Undoable:
    """An action of ``react``: dispatch ``command``, and if it succeeds, remember how to undo
    it - ``undo`` is the compensating command, or a function of the events the command recorded
    that returns the compensating command(s) (None: nothing to undo). When a later command of
    the instance is refused, the runtime dispatches the remembered undos, newest first, and the
    instance ends ``compensated`` (unless ``compensate`` decides otherwise)."""

    command: Command
    undo: Command | UndoFunction


class _Skip:
    """``SKIP``: what ``compensate`` returns to say "nothing to undo"."""

    _instance: ClassVar[_Skip | None] = None

    def __new__(cls) -> _Skip:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SKIP"


#: Returned by ``compensate``: nothing to undo - the instance carries on (the error is kept).
SKIP = _Skip()

Action = Command | StartFlow | ScheduleTimer | CancelTimer | Undoable


class ProcessRuntime(Protocol):
    """What a process manager reacts through, given by ``bind``: ``tideflow.sagas.ProcessBindings``
    (the runtime's dispatcher, process store and flow client). Declared here so that the domain
    names what it needs without importing the runtime."""

    def react(self, manager: ProcessManager, event: RecordedEvent, ctx: HandlerContext) -> bool:
        """Apply ``event`` to its instance of ``manager`` in ``ctx``'s transaction."""
        ...

    def before_batch(
        self, manager: ProcessManager, events: Sequence[RecordedEvent], tx: EventTransaction
    ) -> None:
        """A batch of ``events`` is about to be delivered in ``tx``."""
        ...

    def after_batch(self, manager: ProcessManager, tx: EventTransaction) -> None:
        """The batch's events have been delivered; ``tx`` has not committed yet."""
        ...


class ProcessManager(EventHandler):
    """Base class of process managers; see the module docstring. Options are those of
    ``EventHandler`` (``name``, ``event_types``, retries, ``batch_size``), plus ``starts_with``."""

    starts_with: ClassVar[Sequence[str]] = ()
    """Event types that create an instance when none exists for their process id - or when the
    one that exists has ended: a new instance replaces it. Events of other types for an unknown
    process id are ignored. Empty: every followed type may start an instance where none exists
    (and none replaces an ended one)."""
    stops_with: ClassVar[Sequence[str]] = ()
    """Event types after which the instance ends (``completed``), once the event is applied -
    Commanded's ``:stop``. ``is_done`` can end it too."""
    retention: ClassVar[float | None] = 7 * 24 * 3600.0
    """Seconds an ended instance is kept for inspection (``tideflow saga``) before it is
    deleted; None keeps them forever. Pruned a few at a time when new instances start."""
    kind: ClassVar[HandlerKind] = "process_manager"
    on_failure: ClassVar[FailurePolicy] = "stop"
    batch_size: ClassVar[int] = 50
    """Half a handler's: the batch's transaction also holds the commands' appends, which hold
    back every reader of the log until it commits (50 steps take ~25 ms on PostgreSQL here;
    20 cost a quarter of the throughput in per-batch round trips)."""
    transactional: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        named = "name" in cls.__dict__  # before EventHandler derives one
        super().__init_subclass__(**kwargs)
        where = f"process manager {cls.__qualname__}"
        if "handle" in cls.__dict__:
            raise HandlerDefinitionError(
                f"{where} defines handle(); a process manager defines react(state, event) and "
                "apply(state, event) instead - handle() is how the runner calls it"
            )
        if not cls.transactional:
            raise HandlerDefinitionError(
                f"{where} sets transactional = False; a process manager's commands, state and "
                "checkpoint commit together, so it runs in a transaction: remove the option"
            )
        if not cls.event_types:
            raise HandlerDefinitionError(
                f"{where} has no event_types: list the event types it follows, e.g. "
                "event_types = ['OrderPlaced', 'PaymentCharged']"
            )
        if isinstance(cls.starts_with, str) or not all(isinstance(t, str) for t in cls.starts_with):
            raise HandlerDefinitionError(
                f"{where}: starts_with must be a list of event types, got {cls.starts_with!r}"
            )
        for option in ("starts_with", "stops_with"):
            value = getattr(cls, option)
            if isinstance(value, str) or not all(isinstance(t, str) for t in value):
                raise HandlerDefinitionError(
                    f"{where}: {option} must be a list of event types, got {value!r}"
                )
        parents = [
            base
            for base in cls.__mro__[1:]
            if isinstance(base, type)
            and issubclass(base, ProcessManager)
            and base is not ProcessManager
        ]
        if parents and not named:
            raise HandlerDefinitionError(
                f"{where} subclasses process manager {parents[0].__qualname__} "
                f"({parents[0].name!r}) without a name of its own. A derived name would make it "
                "a new manager that replays the whole log and sends every command again: set "
                f"name = {parents[0].name!r} to carry on as the same manager (same instances, "
                "same checkpoint), or a new name to start one from the beginning of the log"
            )
        for option, verb in (("starts_with", "start"), ("stops_with", "stop")):
            missing = sorted(set(getattr(cls, option)) - set(cls.event_types))
            if missing:
                raise HandlerDefinitionError(
                    f"{where}: {option} names {missing}, which are not in event_types; an "
                    f"instance cannot {verb} on an event it is not given: add them to event_types"
                )

    _bindings: ProcessRuntime | Callable[[], ProcessRuntime] | None = None  # by bind()

    # --- what subclasses define -------------------------------------------------------------

    def process_id(self, event: RecordedEvent) -> str | Sequence[str] | None:
        """Which instance ``event`` belongs to - or a list of them, each of which reacts to it
        in turn (Commanded's multi-instance routing); None or [] to ignore it. Default: its
        correlation id (the commands an instance sends carry it, so their events come back)."""
        cause = event.correlation_id or event.event_id
        return str(cause)

    def initial_state(self, process_id: str, config: Mapping[str, Any] | None = None) -> Any:
        """The state of a new instance, before its first event is applied. ``config`` is what
        ``start`` was given (the instance API: ``App.process(...).start(config)``); None for an
        instance a starting event created. (Overrides may take ``process_id`` alone.)"""
        return {}

    def react(self, state: Any, event: RecordedEvent) -> Sequence[Action] | None:
        """What to do about ``event``: commands to dispatch and flows to start, in order."""
        return None

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        """The state after ``event`` (must be JSON: it is stored). Default: unchanged."""
        return state

    def compensate(
        self, state: Any, command: Command, error: Exception
    ) -> Sequence[Command] | _Skip | None:
        """``command`` was refused with ``error``: what to undo. The default, None, dispatches
        the undos the instance recorded (``Undoable`` actions), newest first, and ends it
        ``compensated`` - or, with none recorded, carries on (the error is kept). Return
        commands to dispatch those instead (the instance carries on), or ``SKIP`` for nothing
        to undo. ``state`` is the state after the event whose reaction was refused."""
        return None

    def is_done(self, state: Any) -> bool:
        """Whether the process has reached its end: its instance then follows no more events."""
        return False

    # --- wiring -------------------------------------------------------------------------------

    def bind(self, bindings: ProcessRuntime | Callable[[], ProcessRuntime]) -> ProcessManager:
        """Give the process manager what it sends commands and starts flows with - or a
        function that makes it, called at the first event (an ``App`` binds its process
        managers that way, so that listing them opens no database)."""
        self._bindings = bindings
        return self

    def bindings(self) -> ProcessRuntime:
        """What the manager was bound to (made now, if ``bind`` was given a function)."""
        if callable(self._bindings):
            self._bindings = self._bindings()
        if self._bindings is None:
            raise ProcessNotBoundError(
                f"process manager {self.name!r} has no dispatcher to send commands with: "
                "register it with the App (app.process_manager(...)) or call "
                "manager.bind(ProcessBindings(...)) before running it"
            )
        return self._bindings

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        self.bindings().react(self, event, ctx)

    def before_batch(self, events: Sequence[RecordedEvent], tx: EventTransaction) -> None:
        self.bindings().before_batch(self, events, tx)

    def after_batch(self, tx: EventTransaction) -> None:
        self.bindings().after_batch(self, tx)

    def __repr__(self) -> str:
        return f"<{type(self).__qualname__} process manager {self.name!r}>"
