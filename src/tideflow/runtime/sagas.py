"""How a process manager reacts to one event, inside its handler batch's transaction.

``react_to`` is the whole algorithm; ``ProcessManager.handle`` calls it, through the
``ProcessBindings`` the manager was bound to, for every event the handler runner delivers.
Everything it writes goes through the batch's transaction ``tx``:

* the instance row, read locked (``ProcessStore.load``) and written back (``save``);
* the commands, through ``CommandDispatcher.within(tx)`` - their events are appended in ``tx``;
* the flows, through ``Client.start_flow(..., tx=tx)`` - their runs are created in ``tx``.

So the reaction commits with the handler's checkpoint or vanishes with it, and an event the
instance has already applied (``position <= last_position``: a reset handler replaying the log)
is skipped. Commands get the event as their cause and keep its correlation id, unless they
carry their own.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any

from tideflow.client import Client
from tideflow.events.aggregate import DomainError
from tideflow.events.commands import Command
from tideflow.events.handling import HandlerContext
from tideflow.events.model import RecordedEvent, encode_json
from tideflow.jsonutil import bad_character, check_id, storable_text
from tideflow.runtime.dispatch import CommandDispatcher
from tideflow.sagas.manager import (
    Action,
    CancelTimer,
    ProcessManager,
    ProcessNotBoundError,
    ProcessStateError,
    ScheduleTimer,
    StartFlow,
)
from tideflow.storage.database import Tx
from tideflow.storage.process_contract import ProcessStatus, ProcessStore
from tideflow.storage.timer_contract import TIMER_METADATA, TimerStore

log = logging.getLogger(__name__)

MAX_PROCESS_ID_LENGTH = 200


@dataclass(frozen=True, slots=True)
class ProcessBindings:
    """What process managers act through. ``flows`` is needed only by those that start flows;
    its store must be the one the dispatcher's event store was opened on (``App`` sees to it):
    the run is created in the same transaction as the events."""

    dispatcher: CommandDispatcher
    processes: ProcessStore
    flows: Client | None = None
    timers: TimerStore | None = None

    def react(self, manager: ProcessManager, event: RecordedEvent, ctx: HandlerContext) -> bool:
        """``ProcessManager.handle`` calls this (``ProcessRuntime``): ``react_to`` with these
        bindings."""
        return react_to(manager, self, event, ctx)


def react_to(
    manager: ProcessManager, bindings: ProcessBindings, event: RecordedEvent, ctx: HandlerContext
) -> bool:
    """Apply ``event`` to its instance of ``manager``; False when no instance follows it (no
    process id, not a starting event, finished, or already applied)."""
    process_id = _process_id(manager, event)
    if process_id is None:
        return False
    tx = ctx.transaction
    instance = bindings.processes.load(tx, manager.name, process_id)
    if instance is None:
        if manager.starts_with and event.event_type not in manager.starts_with:
            return False
        state: Any = manager.initial_state(process_id)
        version, error = 0, None
    else:
        if instance.status != "running" or event.position <= instance.last_position:
            return False
        state, version, error = instance.state, instance.version, instance.error

    status: ProcessStatus = "running"
    dispatcher = bindings.dispatcher.within(tx)
    refused: tuple[Command, DomainError] | None = None
    for index, action in enumerate(_actions(manager, manager.react(state, event))):
        if isinstance(action, StartFlow):
            _start_flow(manager, bindings, action, process_id, event, index, ctx)
            continue
        if isinstance(action, ScheduleTimer | CancelTimer):
            _timer(manager, bindings, action, process_id, tx)
            continue
        command = _caused_by(action, event)
        try:
            dispatcher.dispatch(command)
        except DomainError as exc:
            error = (
                f"{command.command_type} for {command.aggregate_id!r} was refused: {_describe(exc)}"
            )
            refused = command, exc
            break  # the rest of the reaction depended on the refused command

    new_state = manager.apply(state, event)
    if refused is not None:
        # After apply: compensating is about the process as it now stands, this event
        # included (the first event's refusal would otherwise see only the initial state).
        assert error is not None
        log.info(
            "process manager %s, instance %s: %s; compensating", manager.name, process_id, error
        )
        status, error = _compensate(
            manager, dispatcher, new_state, *refused, event, process_id, error
        )
    state_json = _encode_state(manager, process_id, new_state)
    if status == "running" and manager.is_done(new_state):
        status = "completed"
    if status != "running" and bindings.timers is not None:
        bindings.timers.cancel_all(tx, manager.name, process_id)  # an ended instance has none
    bindings.processes.save(
        tx,
        manager.name,
        process_id,
        status=status,
        state_json=state_json,
        version=version + 1,
        last_position=event.position,
        error=error,
    )
    return True


def _compensate(
    manager: ProcessManager,
    dispatcher: CommandDispatcher,
    state: Any,
    command: Command,
    exc: DomainError,
    event: RecordedEvent,
    process_id: str,
    error: str,
) -> tuple[ProcessStatus, str]:
    """Dispatch ``compensate``'s commands; a refused one fails the instance."""
    undo = manager.compensate(state, command, exc)
    for action in _actions(manager, undo, commands_only=True):
        assert isinstance(action, Command)  # _actions checked it
        compensation = _caused_by(action, event)
        try:
            dispatcher.dispatch(compensation)
        except DomainError as again:
            failure = (
                f"{error}; then compensation {compensation.command_type} for "
                f"{compensation.aggregate_id!r} was refused too: {_describe(again)}"
            )
            log.warning(
                "process manager %s, instance %s failed: %s", manager.name, process_id, failure
            )
            return "failed", failure
    return "running", error


def _start_flow(
    manager: ProcessManager,
    bindings: ProcessBindings,
    action: StartFlow,
    process_id: str,
    event: RecordedEvent,
    index: int,
    ctx: HandlerContext,
) -> str:
    client = bindings.flows
    if client is None:
        raise ProcessNotBoundError(
            f"process manager {manager.name!r} started a flow, but it was bound without a flow "
            "client: register it with the App that has the flow, or pass flows=Client(...) to "
            "ProcessBindings"
        )
    run_id = action.run_id or _run_id(manager, process_id, event, index)
    return client.start_flow(action.flow, action.input, run_id=run_id, tx=ctx.transaction)


def _timer(
    manager: ProcessManager,
    bindings: ProcessBindings,
    action: ScheduleTimer | CancelTimer,
    process_id: str,
    tx: Tx,
) -> None:
    timers = bindings.timers
    if timers is None:
        raise ProcessNotBoundError(
            f"process manager {manager.name!r} used a timer, but it was bound without a timer "
            "store: register it with an App, or pass timers=... to ProcessBindings"
        )
    name = check_id(action.name, "timer name", max_length=MAX_PROCESS_ID_LENGTH)
    if isinstance(action, CancelTimer):
        timers.cancel(tx, manager.name, process_id, name)
        return
    if action.event_type not in (manager.event_types or ()):
        raise ProcessStateError(
            f"process manager {manager.name!r}: timer {name!r} would deliver "
            f"{action.event_type!r}, which is not in its event_types; add it there, or pass "
            "event_type= one of them"
        )
    now = timers.clock.now()
    if (action.after is None) == (action.at is None):
        raise ProcessStateError(
            f"process manager {manager.name!r}: timer {name!r} needs exactly one of after= "
            "(seconds or a timedelta) and at= (an aware datetime)"
        )
    if action.at is not None:
        if action.at.tzinfo is None:
            raise ProcessStateError(
                f"process manager {manager.name!r}: timer {name!r} has a naive at= datetime; "
                "pass an aware one (datetime.now(UTC) + ...)"
            )
        fire_at = action.at
    else:
        after = action.after
        delay = after if isinstance(after, timedelta) else timedelta(seconds=float(after or 0))
        fire_at = now + delay
    data = encode_json(
        {"timer": name, **action.data},
        f"the data of timer {name!r} of process manager {manager.name!r}",
    )
    timers.schedule(tx, manager.name, process_id, name, fire_at, action.event_type, data)


def _run_id(manager: ProcessManager, process_id: str, event: RecordedEvent, index: int) -> str:
    """Readable where it fits (manager, instance, event position, action index); hashed when
    the process id is too long for a run id."""
    run_id = f"{manager.name}-{process_id}-{event.position}-{index}"
    if len(run_id) <= MAX_PROCESS_ID_LENGTH:
        return run_id
    digest = hashlib.sha256(process_id.encode()).hexdigest()[:16]
    return f"{manager.name[:100]}-{digest}-{event.position}-{index}"


def _process_id(manager: ProcessManager, event: RecordedEvent) -> str | None:
    addressed = event.metadata.get(TIMER_METADATA)
    if isinstance(addressed, dict):  # a timer's event: for one instance of one manager
        return str(addressed["process_id"]) if addressed.get("manager") == manager.name else None
    process_id = manager.process_id(event)
    if process_id is None:
        return None
    if (
        not isinstance(process_id, str)
        or not process_id
        or len(process_id) > MAX_PROCESS_ID_LENGTH
        or bad_character(process_id)
    ):
        raise ProcessStateError(
            f"process manager {manager.name!r}: process_id() returned {process_id!r} for event "
            f"{event.event_type!r} at position {event.position}; return a non-empty str of at "
            f"most {MAX_PROCESS_ID_LENGTH} characters without NUL or surrogates, or None to "
            "ignore the event"
        )
    return process_id


def _actions(
    manager: ProcessManager, actions: Iterable[Any] | None, *, commands_only: bool = False
) -> list[Action]:
    """The actions returned by ``react`` (or ``compensate``), checked before any is done."""
    if actions is None:
        return []
    what = "compensate()" if commands_only else "react()"
    if isinstance(actions, Command | StartFlow):
        actions = [actions]
    if isinstance(actions, str | bytes | dict) or not isinstance(actions, Iterable):
        raise ProcessStateError(
            f"process manager {manager.name!r}: {what} returned {type(actions).__name__}; "
            "return a list of Command" + ("" if commands_only else " and StartFlow") + " (or None)"
        )
    out = list(actions)
    allowed: tuple[type, ...] = (
        (Command,) if commands_only else (Command, StartFlow, ScheduleTimer, CancelTimer)
    )
    for item in out:
        if not isinstance(item, allowed):
            raise ProcessStateError(
                f"process manager {manager.name!r}: {what} returned a "
                f"{type(item).__name__} ({item!r}); it may return only "
                + ("Command" if commands_only else "Command, StartFlow and timer")
                + " objects"
            )
    return out


def _caused_by(command: Command, event: RecordedEvent) -> Command:
    """The command as sent by an instance: caused by the event, in its correlation - unless
    it names its own (a correlation id other than its command id, the default)."""
    own = command.correlation_id != command.command_id
    return replace(
        command,
        causation_id=command.causation_id or str(event.event_id),
        correlation_id=(
            command.correlation_id if own else str(event.correlation_id or event.event_id)
        ),
    )


def _encode_state(manager: ProcessManager, process_id: str, state: Any) -> str:
    try:
        return encode_json(
            state, f"the state of process manager {manager.name!r}, instance {process_id!r}"
        )
    except Exception as exc:
        raise ProcessStateError(
            f"{exc} (apply() must return JSON: dicts with str keys, lists, "
            "str, numbers, bool, None)"
        ) from exc


def _describe(exc: BaseException) -> str:
    text = storable_text(" ".join(str(exc).split()))  # a user's message may hold NUL
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
