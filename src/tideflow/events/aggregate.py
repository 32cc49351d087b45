"""Aggregates: the part of the domain that decides whether a command happens.

An aggregate is one consistency boundary (a stock item, an order, an account): its state is
folded from the events of its own stream, ``"<aggregate_type>-<aggregate_id>"``, and every
command to it is decided against that state. tideflow keeps the two halves of that separate,
because they run at different times:

* **execute** (the decision) runs once, when a command arrives: it reads the state and the
  command, checks the business rules - raising a ``DomainError`` subclass to refuse - and returns
  the events that record what happened. It changes nothing itself.
* **apply** (the evolution) runs every time the state is loaded, for every event of the stream:
  it returns the state after one event. It never refuses - an event is a fact - and never has
  side effects.

One design, written the Python way: a class with methods routed by decorator::

    class Inventory(Aggregate):
        snapshot_every = 100                       # optional: see "snapshots" below

        def initial_state(self, aggregate_id):
            return {"on_hand": 0}

        @handles("AddStock")
        def add_stock(self, state, command):
            if command.payload["qty"] <= 0:
                raise InvalidQuantity(f"qty must be positive, got {command.payload['qty']}")
            return ("StockAdded", {"qty": command.payload["qty"]})

        @applies("StockAdded")
        def stock_added(self, state, event):
            return {**state, "on_hand": state["on_hand"] + event.data["qty"]}

A handler returns one event or several: a ``NewEvent``, an ``("EventType", {data})`` pair, a
list (or generator) of those, or ``None`` for no event. Event types without an ``@applies``
method leave the state as it is (events that only record something). The aggregate is
stateless - the state is passed in and returned - so one instance serves every stream and every
thread; give it ``__init__`` arguments for services a decision needs (prices, clocks).

Under the decorators, the dispatcher only calls ``execute(state, command)``,
``apply(state, event)``, ``initial_state``, ``to_snapshot`` and ``from_snapshot``: override
``execute``/``apply`` directly (listing the types in ``command_types``) to route some other way.

The state must be a JSON object for snapshots (``snapshot_every``) - or override
``to_snapshot``/``from_snapshot`` to convert, e.g., a dataclass. Raise ``snapshot_version``
when the state's shape changes: older snapshots are then ignored (the stream is replayed from
its events) until a new one is taken, or upgraded by a snapshot upcaster registered for
``aggregate_type`` on the store's ``Upcasters``.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar
from uuid import UUID

from tideflow.events.commands import Command, CommandError, UnknownCommandError
from tideflow.events.model import NewEvent, RecordedEvent

F = TypeVar("F", bound=Callable[..., Any])

_HANDLES = "__tideflow_handles__"
_APPLIES = "__tideflow_applies__"
_SLUG = re.compile(r"^[a-z][a-z0-9_]*$")
MAX_AGGREGATE_TYPE_LENGTH = 64
"""Long enough for any real name, short enough that ``"<type>-<id>"`` leaves room for the id in
the store's 200-character stream ids."""


# --- errors ---------------------------------------------------------------------------------------


class DomainError(Exception):
    """Raise a subclass from a command handler when a business rule refuses the command
    (``class OutOfStock(DomainError)``). The dispatcher writes nothing and re-raises it
    unchanged, so callers catch exactly the refusals they understand.

    It does not derive from ``TideflowError`` on purpose, like ``NonRetryableError``: it is the
    application's own error, raised by its code; ``except TideflowError`` is for tideflow's.
    """


class AggregateError(CommandError):
    """Base class of the errors about an aggregate's code rather than a command."""


class AggregateDefinitionError(AggregateError):
    """An aggregate class is malformed; raised when its ``class`` statement runs (or when it is
    registered), before any command reaches it."""


class InvalidDecisionError(AggregateError):
    """A handler returned something that is not events, or ``apply`` returned ``None`` instead
    of the new state. A bug in the aggregate, reported before anything is written."""


# --- the decorators -------------------------------------------------------------------------------


def _check_type_names(names: tuple[str, ...], decorator: str) -> None:
    if not names:
        raise AggregateDefinitionError(
            f"@{decorator}() needs at least one type name, e.g. @{decorator}('StockAdded')"
        )
    for name in names:
        if not isinstance(name, str) or not name:
            raise AggregateDefinitionError(
                f"@{decorator}() takes type names as non-empty strs, got {name!r}"
            )


def handles(*command_types: str) -> Callable[[F], F]:
    """Mark a method ``(self, state, command) -> events`` as the handler of ``command_types``."""
    _check_type_names(command_types, "handles")

    def mark(fn: F) -> F:
        setattr(fn, _HANDLES, (*getattr(fn, _HANDLES, ()), *command_types))
        return fn

    return mark


def applies(*event_types: str) -> Callable[[F], F]:
    """Mark a method ``(self, state, event) -> state`` as how ``event_types`` change the
    state."""
    _check_type_names(event_types, "applies")

    def mark(fn: F) -> F:
        setattr(fn, _APPLIES, (*getattr(fn, _APPLIES, ()), *event_types))
        return fn

    return mark


# --- the base class -------------------------------------------------------------------------------


class Aggregate:
    """Base class of aggregates; see the module docstring for the whole picture.

    Class options: ``aggregate_type`` (default: the class name in snake_case, ``InventoryItem``
    -> ``inventory_item``), ``snapshot_every`` (None: never), ``snapshot_version`` (1), and
    ``command_types`` (filled from the ``@handles`` methods; list extra ones only when you
    override ``execute``).
    """

    aggregate_type: ClassVar[str] = "aggregate"
    snapshot_every: ClassVar[int | None] = None
    snapshot_version: ClassVar[int] = 1
    command_types: ClassVar[frozenset[str]] = frozenset()
    _handlers: ClassVar[dict[str, str]] = {}
    _appliers: ClassVar[dict[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _define(cls)

    @classmethod
    def stream_id(cls, aggregate_id: str) -> str:
        """The stream holding the events of aggregate ``aggregate_id``."""
        return f"{cls.aggregate_type}-{aggregate_id}"

    def initial_state(self, aggregate_id: str) -> Any:
        """The state before the first event: ``{}`` unless overridden."""
        return {}

    def execute(self, state: Any, command: Command) -> Any:
        """Decide: the events ``command`` causes given ``state`` (see the module docstring for
        what may be returned), or raise a ``DomainError``. Routes to the ``@handles`` method."""
        name = self._handlers.get(command.command_type)
        if name is None:
            raise UnknownCommandError(
                command.command_type, list(self.command_types), f"aggregate {self.aggregate_type!r}"
            )
        return getattr(self, name)(state, command)

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        """Evolve: the state after ``event``. Routes to the ``@applies`` method; other event
        types leave the state unchanged."""
        name = self._appliers.get(event.event_type)
        if name is None:
            return state
        return getattr(self, name)(state, event)

    def to_snapshot(self, state: Any) -> Mapping[str, Any]:
        """The state as a JSON object to store as a snapshot; the state itself by default."""
        if not isinstance(state, Mapping):
            raise AggregateError(
                f"the state of aggregate {self.aggregate_type!r} is a {type(state).__name__}, "
                "not a dict, so it cannot be snapshotted as it is: override to_snapshot and "
                "from_snapshot to convert it to and from a JSON object"
            )
        return state

    def from_snapshot(self, data: dict[str, Any]) -> Any:
        """The state from what ``to_snapshot`` stored (decoded JSON); the dict itself by
        default."""
        return data


def _snake_case(name: str) -> str:
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _check_signature(cls: type, attr: str, fn: Any, third: str) -> None:
    if inspect.iscoroutinefunction(fn):
        raise AggregateDefinitionError(
            f"{cls.__name__}.{attr} is async; aggregate methods are plain functions of the state "
            "(fetch what a decision needs before dispatching, or give the aggregate a service "
            "in __init__)"
        )
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        raise AggregateDefinitionError(
            f"{cls.__name__}.{attr} must take (self, state, {third}); its signature is "
            f"{inspect.signature(fn)}"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): trust it
        pass


def _routes(cls: type, marker: str, third: str) -> dict[str, str]:
    """Type name -> method name, from the methods carrying ``marker``. Routes are inherited by
    name: a subclass that overrides ``add_stock`` (decorated or not) replaces the implementation
    and keeps the route; one that marks another method for the same type takes the type over."""
    routes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        local: dict[str, str] = {}
        for attr, fn in vars(klass).items():
            for type_name in getattr(fn, marker, ()):
                if local.get(type_name, attr) != attr:
                    kind = "command" if marker == _HANDLES else "event"
                    raise AggregateDefinitionError(
                        f"aggregate {klass.__name__}: {kind} type {type_name!r} is routed to both "
                        f"{local[type_name]}() and {attr}(); keep one"
                    )
                local[type_name] = attr
        routes.update(local)
    for attr in set(routes.values()):
        _check_signature(cls, attr, getattr(cls, attr), third)
    return routes


def _define(cls: type[Aggregate]) -> None:
    """Check an aggregate class and fill in its routing tables, when its class statement runs."""
    where = f"aggregate class {cls.__name__}"
    explicit = cls.__dict__.get("aggregate_type")
    aggregate_type = _snake_case(cls.__name__) if explicit is None else explicit
    if (
        not isinstance(aggregate_type, str)
        or not _SLUG.match(aggregate_type)
        or len(aggregate_type) > MAX_AGGREGATE_TYPE_LENGTH
    ):
        raise AggregateDefinitionError(
            f"{where}: aggregate_type {aggregate_type!r} is invalid: use lowercase letters, "
            f"digits and underscores, starting with a letter, at most "
            f"{MAX_AGGREGATE_TYPE_LENGTH} characters"
            + ("" if explicit is not None else " (set aggregate_type = '...' on the class)")
        )
    cls.aggregate_type = aggregate_type
    every = cls.snapshot_every
    if every is not None and (type(every) is not int or every < 1):
        raise AggregateDefinitionError(
            f"{where}: snapshot_every must be None (never) or an int >= 1 (take a snapshot "
            f"every that many events), got {every!r}"
        )
    if type(cls.snapshot_version) is not int or cls.snapshot_version < 1:
        raise AggregateDefinitionError(
            f"{where}: snapshot_version must be an int >= 1, got {cls.snapshot_version!r}"
        )
    listed = cls.__dict__.get("command_types", ())
    if isinstance(listed, str) or not all(isinstance(t, str) and t for t in listed):
        raise AggregateDefinitionError(
            f"{where}: command_types must be a collection of command type names, got "
            f"{listed!r}" + (f": write {{{listed!r}}}" if isinstance(listed, str) else "")
        )
    cls._handlers = _routes(cls, _HANDLES, "command")
    cls._appliers = _routes(cls, _APPLIES, "event")
    unrouted = set(listed) - set(cls._handlers)
    if unrouted and cls.execute is Aggregate.execute:
        raise AggregateDefinitionError(
            f"{where}: command_types lists {sorted(unrouted)} but no method is marked "
            "@handles for them; mark one, or override execute() to handle them"
        )
    cls.command_types = frozenset(listed) | frozenset(cls._handlers)


# --- what the dispatcher and the testing helper share -----------------------------------------


def as_aggregate(aggregate: type[Aggregate] | Aggregate) -> Aggregate:
    """An aggregate instance from a class (instantiated without arguments) or an instance."""
    if isinstance(aggregate, type) and issubclass(aggregate, Aggregate):
        return aggregate()
    if isinstance(aggregate, Aggregate):
        return aggregate
    raise AggregateDefinitionError(
        f"{aggregate!r} is not an aggregate: pass a subclass of "
        "tideflow.events.aggregate.Aggregate (or an instance of one)"
    )


def _is_pair(value: object) -> bool:
    return isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str)


def _to_event(item: object, where: str) -> NewEvent:
    if isinstance(item, NewEvent):
        return item
    if isinstance(item, tuple) and _is_pair(item):
        return NewEvent(item[0], item[1])
    raise InvalidDecisionError(
        f"{where} returned {type(item).__name__} {item!r:.100}; return NewEvent(...) or "
        "('EventType', {...data}) pairs, a list of them, or None for no event"
    )


def decide(aggregate: Aggregate, state: Any, command: Command) -> list[NewEvent]:
    """Run the aggregate's decision and normalise what it returned to a list of ``NewEvent``.
    A ``DomainError`` (or any other exception) from the handler propagates unchanged."""
    result = aggregate.execute(state, command)
    where = f"the handler of {command.command_type!r} in aggregate {aggregate.aggregate_type!r}"
    if result is None:
        return []
    if isinstance(result, NewEvent) or _is_pair(result):
        return [_to_event(result, where)]
    if isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
        raise InvalidDecisionError(
            f"{where} returned {type(result).__name__} {result!r:.100}; return NewEvent(...) "
            "or ('EventType', {...data}) pairs, a list of them, or None for no event"
        )
    return [_to_event(item, where) for item in result]


def apply_event(aggregate: Aggregate, state: Any, event: RecordedEvent) -> Any:
    """``aggregate.apply``, refusing a ``None`` result: an applier that changes a dict in place
    and forgets to return it would otherwise wipe the state out silently."""
    new_state = aggregate.apply(state, event)
    if new_state is None:
        raise InvalidDecisionError(
            f"aggregate {aggregate.aggregate_type!r} returned None from apply() for event "
            f"{event.event_type!r} (version {event.version} of {event.stream_id!r}); return the "
            "new state (`return state` after changing it in place)"
        )
    return new_state


def evolve(aggregate: Aggregate, state: Any, events: Iterable[RecordedEvent]) -> Any:
    """The state after applying ``events`` in order."""
    for event in events:
        state = apply_event(aggregate, state, event)
    return state


def stamp_events(events: list[NewEvent], command: Command, aggregate: Aggregate) -> list[NewEvent]:
    """The events as recorded: caused by the command, in its correlation, carrying its
    metadata (the event's own metadata wins over the command's, the dispatcher's keys -
    ``command_type``, ``aggregate_type``, ``command_causation_id`` - over both)."""
    causation = UUID(command.command_id)
    correlation = UUID(command.correlation_id or command.command_id)
    stamp = {"command_type": command.command_type, "aggregate_type": aggregate.aggregate_type}
    if command.causation_id is not None:
        stamp["command_causation_id"] = command.causation_id
    return [
        NewEvent(
            e.event_type,
            e.data,
            {**command.metadata, **e.metadata, **stamp},
            e.event_id,
            causation,
            correlation,
            e.schema_version,
        )
        for e in events
    ]
