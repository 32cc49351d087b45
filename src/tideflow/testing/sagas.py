"""Given / when / then for process managers: one instance, its events, what it sent.

    from tideflow.testing import saga

    def test_a_declined_payment_releases_the_stock():
        (saga(OrderFulfilment)
            .given(("OrderPlaced", {"order": "o-1", "sku": "tea", "qty": 2}),
                   ("StockReserved", {"order": "o-1"}))
            .when(("PaymentDeclined", {"order": "o-1"}))
            .then_commands(("ReleaseStock", "tea", {"order": "o-1", "qty": 2}),
                           ("CancelOrder", "o-1"))
            .then_status("running"))

The instance reacts through the real runtime - routing, ``starts_with``/``stops_with``,
``Undoable`` and the automatic undo newest first, ``compensate``, timers, the JSON round trip of
its state - in transactions of a private in-memory SQLite database. Only the commands are
scripted: each is recorded and accepted without an aggregate (``refusing=`` makes a command type
refused with a ``DomainError``, to test compensation), unless ``aggregates=`` routes its type to
an aggregate, which then decides for real. Given events are applied (and their commands sent)
before the scenario's; ``then_commands`` sees only what the ``when`` event caused. Events are
written as ``("Type", {data})``, a ``NewEvent`` or a ``RecordedEvent``; all of a scenario's
events share one correlation id unless they bring their own, so the default ``process_id`` puts
them in one instance.

Failures are ``AssertionError`` naming the event, what was expected and what happened.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, TypeAlias
from uuid import UUID

from tideflow.app import App
from tideflow.clock import ManualClock
from tideflow.events.aggregate import Aggregate, DomainError
from tideflow.events.commands import Command, DispatchResult
from tideflow.events.model import ANY, NewEvent, RecordedEvent, new_event_id
from tideflow.runtime.dispatch import CommandDispatcher
from tideflow.runtime.sagas import ProcessBindings, _process_ids, _react
from tideflow.sagas.manager import ProcessManager
from tideflow.storage.process_contract import ProcessInstance

EventLike: TypeAlias = "tuple[str, dict[str, Any]] | NewEvent | RecordedEvent"
CommandLike: TypeAlias = "Command | tuple[str, str] | tuple[str, str, dict[str, Any]]"
"""An expected command: a ``Command`` (its type, aggregate id and payload are compared), or
``(type, aggregate_id)``, or ``(type, aggregate_id, payload)``."""


def saga(
    manager: type[ProcessManager] | ProcessManager,
    *,
    aggregates: Iterable[type[Aggregate] | Aggregate] = (),
    refusing: Mapping[str, str | Exception] | None = None,
) -> SagaScenario:
    """A scenario for one instance of ``manager``. ``refusing``: command types refused (with
    that message, or that ``DomainError``) whenever sent - in the given part too."""
    return SagaScenario(
        manager() if isinstance(manager, type) else manager, list(aggregates), dict(refusing or {})
    )


class _ScriptedDispatcher(CommandDispatcher):
    """Real dispatch for the aggregates' command types; the others recorded and accepted, or
    refused as scripted."""

    def __init__(self, scenario: SagaScenario, app: App) -> None:
        super().__init__(app.event_store, scenario.aggregates)
        self._scenario = scenario

    def dispatch(self, command: Command) -> DispatchResult:
        self._scenario.sent.append(command)
        refusal = self._scenario.refusing.get(command.command_type)
        if refusal is not None:
            raise refusal if isinstance(refusal, Exception) else DomainError(refusal)
        if command.command_type in self.command_types:
            return super().dispatch(command)
        return DispatchResult(
            command.command_id,
            command.command_type,
            "scripted",
            command.aggregate_id,
            f"scripted-{command.aggregate_id}",
            (),
            0,
        )


class SagaScenario:
    """What ``saga`` returns: ``given`` events, then ``when`` one, then check."""

    def __init__(
        self,
        manager: ProcessManager,
        aggregates: list[type[Aggregate] | Aggregate],
        refusing: dict[str, str | Exception],
    ) -> None:
        self.manager = manager
        self.aggregates = aggregates
        self.refusing = refusing
        self.sent: list[Command] = []
        self.clock = ManualClock()
        self.app = App("sqlite:///:memory:", clock=self.clock)
        self.app.migrate()
        self.correlation = new_event_id()
        self.bindings = ProcessBindings(
            dispatcher=_ScriptedDispatcher(self, self.app),
            processes=self.app.process_store,
            timers=self.app.timer_store,
        )
        self.process_ids: list[str] = []
        self._events = 0

    def given(self, *events: EventLike) -> SagaScenario:
        """Deliver ``events`` (oldest first) as history."""
        for event in events:
            self._deliver(event)
        return self

    def when(self, event: EventLike) -> SagaOutcome:
        """Deliver ``event``; what it caused is checked on the outcome."""
        before = len(self.sent)
        recorded = self._deliver(event)
        return SagaOutcome(self, recorded, self.sent[before:])

    def _deliver(self, event: EventLike) -> RecordedEvent:
        recorded = self._record(event)
        ids = _process_ids(self.manager, recorded)
        with self.app.event_store.transaction() as tx:
            for process_id in ids:
                _react(self.manager, self.bindings, recorded, tx, process_id)
        self.process_ids.extend(p for p in ids if p not in self.process_ids)
        return recorded

    def _record(self, event: object) -> RecordedEvent:
        """The event as the log would deliver it: stored (the JSON round trip), numbered."""
        if isinstance(event, RecordedEvent):
            new = NewEvent(
                event.event_type,
                event.data,
                event.metadata,
                causation_id=event.causation_id,
                correlation_id=event.correlation_id or self.correlation,
            )
        elif isinstance(event, NewEvent):
            new = event if event.correlation_id else _with_correlation(event, self.correlation)
        elif isinstance(event, tuple) and len(event) == 2 and isinstance(event[0], str):
            new = NewEvent(event[0], event[1], correlation_id=self.correlation)
        else:
            raise TypeError(
                f"an event of a saga scenario is ('Type', {{data}}), a NewEvent or a "
                f"RecordedEvent, got {event!r}"
            )
        self._events += 1
        [recorded] = self.app.event_store.append(f"scenario-{self._events}", [new], ANY)
        return recorded

    def instance(self, process_id: str | None = None) -> ProcessInstance:
        """The instance (the only one, or ``process_id``'s) as stored."""
        if process_id is None:
            if len(self.process_ids) != 1:
                raise AssertionError(
                    f"the scenario's events addressed instances {self.process_ids}: name one"
                )
            process_id = self.process_ids[0]
        found = self.app.process_store.get(self.manager.name, process_id)
        if found is None:
            raise AssertionError(
                f"process manager {self.manager.name!r} has no instance {process_id!r}: was "
                "the first event one of its starts_with?"
            )
        return found


def _with_correlation(event: NewEvent, correlation: UUID) -> NewEvent:
    return NewEvent(
        event.event_type,
        event.data,
        event.metadata,
        event.event_id,
        event.causation_id,
        correlation,
        event.schema_version,
    )


def _key(command: object) -> tuple[Any, ...]:
    if isinstance(command, Command):
        return (command.command_type, command.aggregate_id, dict(command.payload))
    if isinstance(command, tuple) and len(command) in (2, 3):
        return tuple(command) if len(command) == 3 else (*command, None)
    raise TypeError(
        f"an expected command is a Command, ('Type', 'aggregate_id') or "
        f"('Type', 'aggregate_id', {{payload}}), got {command!r}"
    )


def _matches(wanted: list[tuple[Any, ...]], actual: list[tuple[Any, ...]]) -> bool:
    """Same commands in the same order; an expectation without a payload takes any."""
    return len(wanted) == len(actual) and all(
        w[:2] == a[:2] and (w[2] is None or w[2] == a[2])
        for w, a in zip(wanted, actual, strict=False)
    )


def _show(keys: Iterable[tuple[Any, ...]]) -> str:
    lines = [f"  {t}({a!r}{'' if p is None else ', ' + json.dumps(p)})" for t, a, p in keys]
    return "\n".join(lines) or "  (none)"


class SagaOutcome:
    """What the ``when`` event did, to check with ``then_*`` (each returns the outcome)."""

    def __init__(self, scenario: SagaScenario, event: RecordedEvent, sent: list[Command]) -> None:
        self.scenario = scenario
        self.event = event
        self.sent = sent

    def _fail(self, what: str, expected: str, actual: str) -> AssertionError:
        return AssertionError(
            f"after {self.event.event_type} {json.dumps(self.event.data)}: {what}\n"
            f"expected:\n{expected}\nactual:\n{actual}"
        )

    def then_commands(self, *expected: CommandLike) -> SagaOutcome:
        """The commands the event caused - undos included - in the order they were sent. An
        expectation without a payload matches any payload."""
        wanted, actual = [_key(c) for c in expected], [_key(c) for c in self.sent]
        if not _matches(wanted, actual):
            raise self._fail("the commands sent differ", _show(wanted), _show(actual))
        return self

    def then_undone(self, *expected: CommandLike) -> SagaOutcome:
        """The undos the event caused (a refused command's recorded undos, newest first)."""
        instance = self.scenario.instance()
        undo_ids = {e["command_id"] for e in instance.sent if e.get("undo")}
        undos = [c for c in self.sent if c.command_id in undo_ids]
        wanted, actual = [_key(c) for c in expected], [_key(c) for c in undos]
        if not _matches(wanted, actual):
            raise self._fail("the undos differ", _show(wanted), _show(actual))
        return self

    def then_state(self, expected: Any, *, process_id: str | None = None) -> SagaOutcome:
        """The instance's state after the event equals ``expected``."""
        state = self.scenario.instance(process_id).state
        if state != expected:
            raise self._fail("the state differs", json.dumps(expected), json.dumps(state))
        return self

    def then_status(self, expected: str, *, process_id: str | None = None) -> SagaOutcome:
        """The instance's status: running, completed, compensated or failed."""
        instance = self.scenario.instance(process_id)
        if instance.status != expected:
            detail = instance.status + (f" ({instance.error})" if instance.error else "")
            raise self._fail("the status differs", expected, detail)
        return self

    def then_timers(self, *names: str, process_id: str | None = None) -> SagaOutcome:
        """The names of the instance's pending timers, soonest first."""
        pid = process_id or self.scenario.instance().process_id
        pending = [
            t.name for t in self.scenario.app.timer_store.pending(self.scenario.manager.name, pid)
        ]
        if pending != list(names):
            raise self._fail("the pending timers differ", repr(list(names)), repr(pending))
        return self
