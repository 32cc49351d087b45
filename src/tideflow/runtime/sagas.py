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

import functools
import hashlib
import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from tideflow.client import Client
from tideflow.errors import InvalidDataError
from tideflow.events.aggregate import DomainError
from tideflow.events.commands import Command, ConcurrencyRetriesExhaustedError, DispatchResult
from tideflow.events.handling import HandlerContext
from tideflow.events.model import RecordedEvent, encode_json
from tideflow.jsonutil import bad_character, check_id, encode, loads, storable_text
from tideflow.runtime.dispatch import CommandDispatcher
from tideflow.runtime.instance_batch import InstanceBatch
from tideflow.sagas.manager import (
    SKIP,
    Action,
    CancelTimer,
    ProcessManager,
    ProcessNotBoundError,
    ProcessStateError,
    ScheduleTimer,
    StartFlow,
    Undoable,
    _Skip,
)
from tideflow.storage.database import Tx
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.flow_contract import RunReport
from tideflow.storage.process_contract import (
    FINISHED,
    InstanceWrite,
    ProcessStatus,
    ProcessStore,
)
from tideflow.storage.timer_contract import TIMER_METADATA, TimerStore

log = logging.getLogger(__name__)

MAX_PROCESS_ID_LENGTH = 200
#: How many of the commands an instance sent it keeps a record of (``tideflow saga``).
MAX_SENT = 100


@dataclass(frozen=True, slots=True)
class ProcessBindings:
    """What process managers act through. ``flows`` is needed only by those that start flows;
    its store must be the one the dispatcher's event store was opened on (``App`` sees to it):
    the run is created in the same transaction as the events."""

    dispatcher: CommandDispatcher
    processes: ProcessStore
    flows: Client | None = None
    timers: TimerStore | None = None

    batches: dict[str, InstanceBatch] = field(default_factory=dict, compare=False, repr=False)
    """The open batch of each manager (``instance_batch.py``), by name: each manager's batches
    run one at a time, in its handler's thread."""

    def react(self, manager: ProcessManager, event: RecordedEvent, ctx: HandlerContext) -> bool:
        """``ProcessManager.handle`` calls this (``ProcessRuntime``): ``react_to`` with these
        bindings."""
        return react_to(manager, self, event, ctx)

    def before_batch(
        self, manager: ProcessManager, events: Sequence[RecordedEvent], tx: EventTransaction
    ) -> None:
        """Read the instances ``events`` address in one statement, for the batch to react
        with. An event whose ``process_id()`` raises is left to its reaction, which raises it
        again - and is the one charged with the failure."""
        ids: list[str] = []
        for event in events:
            try:
                ids.extend(_process_ids(manager, event))
            except Exception:
                continue
        self.batches[manager.name] = InstanceBatch.read(tx, manager.name, self.processes, ids)

    def after_batch(self, manager: ProcessManager, tx: EventTransaction) -> None:
        """Save what the batch's reactions left, in its transaction, before its checkpoint."""
        batch = self.batches.pop(manager.name, None)
        if batch is not None and batch.tx is tx:
            batch.flush()


def react_to(
    manager: ProcessManager, bindings: ProcessBindings, event: RecordedEvent, ctx: HandlerContext
) -> bool:
    """Apply ``event`` to each instance of ``manager`` it addresses, in order, in ``ctx``'s
    transaction; False when none followed it (no process id, not a starting event, ended, or
    already applied)."""
    reacted = False
    for process_id in _process_ids(manager, event):
        reacted |= _react(manager, bindings, event, ctx.transaction, process_id)
    return reacted


@dataclass
class _Reaction:
    """One instance's reaction to one event, as it goes."""

    manager: ProcessManager
    bindings: ProcessBindings
    event: RecordedEvent | None  # None: compensation asked for through the instance API
    tx: EventTransaction
    process_id: str
    undo: list[dict[str, Any]]
    sent: list[dict[str, Any]]
    _dispatcher: CommandDispatcher | None = None  # bound to tx on the first command

    def dispatch(self, command: Command, *, undoes: str | None = None) -> DispatchResult:
        if self._dispatcher is None:
            # No command-id keys: the reaction makes its commands anew (new ids) each time it
            # runs, and its transaction commits them with the instance's position - they happen
            # once without a key, which could never match and would cost a row each.
            self._dispatcher = self.bindings.dispatcher.within(self.tx, command_ids_as_keys=False)
        result = self._dispatcher.dispatch(command)
        entry: dict[str, Any] = {
            "command_type": command.command_type,
            "aggregate_id": command.aggregate_id,
            "command_id": command.command_id,
            "position": None if self.event is None else self.event.position,
            "undo": undoes is not None,
        }
        self.sent = [*self.sent, entry][-MAX_SENT:]
        return result


def _react(
    manager: ProcessManager,
    bindings: ProcessBindings,
    event: RecordedEvent,
    tx: EventTransaction,
    process_id: str,
) -> bool:
    batch = _batch(bindings, manager, tx)
    instance = (
        bindings.processes.load(tx, manager.name, process_id)
        if batch is None
        else batch.load(process_id)
    )
    ended = instance is not None and instance.status in FINISHED
    fresh = instance is None or (
        ended
        and bool(manager.starts_with)
        and event.event_type in manager.starts_with
        and event.position > instance.last_position
    )
    if fresh:
        if manager.starts_with and event.event_type not in manager.starts_with:
            return False
        state: Any = initial_state(manager, process_id, None)
        version, error, undo, sent = 0, None, [], []
        if manager.retention is not None:
            if batch is None:
                bindings.processes.prune_finished(tx, manager.name, manager.retention)
            else:
                batch.prune_after = manager.retention
    else:
        assert instance is not None
        if ended or event.position <= instance.last_position:
            return False
        if not _timer_is_current(bindings, manager, event, tx, process_id):
            return False
        state, version, error = instance.state, instance.version, instance.error
        undo, sent = loads(instance.undo_json), loads(instance.sent_json)

    reaction = _Reaction(manager, bindings, event, tx, process_id, undo, sent)
    status, error, new_state = _run(reaction, state, manager.react(state, event), error)
    state_json = _encode_state(manager, process_id, new_state)
    if status == "running" and (
        event.event_type in manager.stops_with or manager.is_done(new_state)
    ):
        status = "completed"
    save_instance(
        reaction,
        status,
        state_json,
        version + 1,
        event.position,
        error,
        fresh=fresh and instance is not None,
    )
    return True


def save_instance(
    reaction: _Reaction,
    status: ProcessStatus,
    state_json: str,
    version: int,
    last_position: int,
    error: str | None,
    *,
    fresh: bool = False,
) -> None:
    """Write the instance as ``reaction`` left it, in its transaction - the one way every path
    (a reaction, the instance API) saves one: an instance that ended keeps no undos and no
    timers, and gets its ``finished_at``."""
    bindings, name = reaction.bindings, reaction.manager.name
    ended = status != "running"
    if ended and bindings.timers is not None:
        bindings.timers.cancel_all(reaction.tx, name, reaction.process_id)
    write = InstanceWrite(
        name,
        reaction.process_id,
        status,
        state_json,
        version,
        last_position,
        error,
        undo_json=_encode_commands([] if ended else reaction.undo),
        sent_json=_encode_commands(reaction.sent),
        finished=ended,
        fresh=fresh,
    )
    batch = _batch(bindings, reaction.manager, reaction.tx)
    if batch is None:
        bindings.processes.save_many(reaction.tx, [write])
    else:
        batch.save(write)


def _batch(bindings: ProcessBindings, manager: ProcessManager, tx: Tx) -> InstanceBatch | None:
    """The open batch of ``manager`` in ``tx``, if ``tx`` is a handler batch's transaction
    (the instance API's transactions have none)."""
    batch = bindings.batches.get(manager.name)
    return batch if batch is not None and batch.tx is tx else None


def _run(
    reaction: _Reaction, state: Any, actions: Iterable[Any] | None, error: str | None
) -> tuple[ProcessStatus, str | None, Any]:
    """Do ``actions`` in order, then apply the event; on a refused command, stop there and
    compensate. The status, the error to keep and the new state."""
    manager, event, process_id = reaction.manager, reaction.event, reaction.process_id
    assert event is not None  # only compensation runs without one
    refused: tuple[Command, Exception] | None = None
    for index, action in enumerate(_actions(manager, actions)):
        if isinstance(action, StartFlow):
            _start_flow(manager, reaction.bindings, action, process_id, event, index, reaction.tx)
            continue
        if isinstance(action, ScheduleTimer | CancelTimer):
            _timer(manager, reaction.bindings, action, process_id, reaction.tx)
            continue
        command = _caused_by(action.command if isinstance(action, Undoable) else action, event)
        try:
            result = reaction.dispatch(command)
        except (DomainError, ConcurrencyRetriesExhaustedError) as exc:
            # Refused by its aggregate, or out of retries against other writers: either way the
            # command did not happen, and the process cannot go on as planned.
            error = (
                f"{command.command_type} for {command.aggregate_id!r} was refused: {_describe(exc)}"
            )
            refused = command, exc
            break  # the rest of the reaction depended on the refused command
        if isinstance(action, Undoable):
            reaction.undo.extend(_undo_entries(manager, action, command, result))

    new_state = manager.apply(state, event)
    if refused is None:
        return "running", error, new_state
    # After apply: compensating is about the process as it now stands, this event included
    # (the first event's refusal would otherwise see only the initial state).
    assert error is not None
    log.info("process manager %s, instance %s: %s; compensating", manager.name, process_id, error)
    status, error = _compensate(reaction, new_state, *refused, error)
    return status, error, new_state


def _undo_entries(
    manager: ProcessManager, action: Undoable, command: Command, result: DispatchResult
) -> list[dict[str, Any]]:
    """The undo commands of a command that succeeded, as stored on the instance."""
    made: Command | Sequence[Command] | None = (
        action.undo if isinstance(action.undo, Command) else action.undo(result.events)
    )
    commands: list[Any] = (
        [] if made is None else [made] if isinstance(made, Command) else list(made)
    )
    for item in commands:
        if not isinstance(item, Command):
            raise ProcessStateError(
                f"process manager {manager.name!r}: the undo of {command.command_type} returned "
                f"{type(item).__name__} ({item!r}); return a Command, a list of them, or None"
            )
    return [{"undoes": command.command_id, "command": _command_json(c)} for c in commands]


def _compensate(
    reaction: _Reaction, state: Any, command: Command, exc: Exception, error: str
) -> tuple[ProcessStatus, str]:
    """What ``compensate`` says: its commands (the instance carries on), nothing (``SKIP``), or
    - by default - the recorded undos, newest first (the instance ends ``compensated``). A
    refused compensation fails the instance, both errors kept."""
    manager, process_id = reaction.manager, reaction.process_id
    override = manager.compensate(state, command, exc)
    if override is SKIP:
        return "running", error
    if override is not None:
        assert not isinstance(override, _Skip)
        commands = [(c, None) for c in _actions(manager, override, commands_only=True)]
        ends: ProcessStatus = "running"
    elif reaction.undo:
        commands = [(_command_from(e["command"]), e["undoes"]) for e in reversed(reaction.undo)]
        ends = "compensated"
    else:
        return "running", error
    for undo, undoes in commands:
        assert isinstance(undo, Command)  # _actions checked it
        compensation = _caused_by(undo, reaction.event)
        try:
            reaction.dispatch(compensation, undoes=undoes or command.command_id)
        except DomainError as again:
            failure = (
                f"{error}; then compensation {compensation.command_type} for "
                f"{compensation.aggregate_id!r} was refused too: {_describe(again)}"
            )
            log.warning(
                "process manager %s, instance %s failed: %s", manager.name, process_id, failure
            )
            return "failed", failure
        log.info(
            "process manager %s, instance %s: undo %s for %r dispatched",
            manager.name,
            process_id,
            compensation.command_type,
            compensation.aggregate_id,
        )
    reaction.undo = []
    return ends, error


def initial_state(manager: ProcessManager, process_id: str, config: Any) -> Any:
    """``manager.initial_state``, with ``config`` if it takes one (older overrides take the
    process id only)."""
    if config is None and _takes_process_id_only(type(manager).initial_state):
        return manager.initial_state(process_id)
    return manager.initial_state(process_id, config)


@functools.lru_cache(maxsize=256)
def _takes_process_id_only(function: Callable[..., Any]) -> bool:
    """Whether an ``initial_state`` (unbound: self first) takes no config; asked once per
    class, not once per new instance."""
    try:
        return len(inspect.signature(function).parameters) == 2
    except (TypeError, ValueError):  # pragma: no cover - a builtin: pass both
        return False


def _encode_commands(commands: list[dict[str, Any]]) -> str:
    """The undo or sent list as stored: payloads through tideflow's codec (a payload may hold
    datetimes, decimals...), checked when the command was built."""
    return encode(commands, what="the commands of a process instance")


def _command_json(command: Command) -> dict[str, Any]:
    return {
        "command_type": command.command_type,
        "aggregate_id": command.aggregate_id,
        "payload": command.payload,
        "metadata": dict(command.metadata),
        "idempotency_key": command.idempotency_key,
        "aggregate_type": command.aggregate_type,
        "command_id": command.command_id,
        "causation_id": command.causation_id,
        "correlation_id": command.correlation_id,
    }


def _command_from(data: dict[str, Any]) -> Command:
    return Command(**data)


def _start_flow(
    manager: ProcessManager,
    bindings: ProcessBindings,
    action: StartFlow,
    process_id: str,
    event: RecordedEvent,
    index: int,
    tx: EventTransaction,
) -> str:
    client = bindings.flows
    if client is None:
        raise ProcessNotBoundError(
            f"process manager {manager.name!r} started a flow, but it was bound without a flow "
            "client: register it with the App that has the flow, or pass flows=Client(...) to "
            "ProcessBindings"
        )
    run_id = action.run_id or _run_id(manager, process_id, event, index)
    # The run reports its end back to this instance: correlated to the process, caused by the
    # event that started it, addressed to the instance whatever process_id() would say.
    report = RunReport(
        correlation_id=str(event.correlation_id or event.event_id),
        causation_id=str(event.event_id),
        metadata={TIMER_METADATA: {"manager": manager.name, "process_id": process_id}},
    )
    return client.start_flow(action.flow, action.input, run_id=run_id, tx=tx, report=report)


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
    try:
        name = check_id(action.name, "timer name", max_length=MAX_PROCESS_ID_LENGTH)
    except InvalidDataError as exc:  # a bug in the manager: not worth retrying
        raise ProcessStateError(f"process manager {manager.name!r}: {exc}") from exc
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


def _timer_is_current(
    bindings: ProcessBindings,
    manager: ProcessManager,
    event: RecordedEvent,
    tx: Tx,
    process_id: str,
) -> bool:
    """Whether ``event`` is not a fired timer's, or is the fired timer the instance still has:
    its row is taken now. A timer cancelled or rescheduled after it fired - while its event
    waited in the log behind the event whose reaction cancelled it - is stale, and ignored."""
    address = event.metadata.get(TIMER_METADATA)
    if not isinstance(address, dict) or "token" not in address or bindings.timers is None:
        return True  # not a timer's event, or one fired before timers had tokens
    return bindings.timers.take_fired(
        tx, manager.name, process_id, str(address["timer"]), str(address["token"])
    )


def _process_ids(manager: ProcessManager, event: RecordedEvent) -> list[str]:
    """The instances ``event`` addresses: a timer's event its own instance (by its metadata),
    any other what ``process_id`` says - one id, a list of them, or None."""
    addressed = event.metadata.get(TIMER_METADATA)
    if isinstance(addressed, dict):  # a timer's event: for one instance of one manager
        if addressed.get("manager") != manager.name:
            return []
        return [str(addressed["process_id"])]
    found = manager.process_id(event)
    if found is None:
        return []
    many = isinstance(found, Iterable) and not isinstance(found, str | bytes | dict)
    ids: list[Any] = list(found) if many else [found]
    out: list[str] = []
    for process_id in ids:
        if (
            not isinstance(process_id, str)
            or not process_id
            or len(process_id) > MAX_PROCESS_ID_LENGTH
            or bad_character(process_id)
        ):
            raise ProcessStateError(
                f"process manager {manager.name!r}: process_id() returned {found!r} for event "
                f"{event.event_type!r} at position {event.position}; return a non-empty str of "
                f"at most {MAX_PROCESS_ID_LENGTH} characters without NUL or surrogates (or a "
                "list of them), or None to ignore the event"
            )
        if process_id not in out:
            out.append(process_id)
    return out


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
        (Command,) if commands_only else (Command, StartFlow, ScheduleTimer, CancelTimer, Undoable)
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


def _caused_by(command: Command, event: RecordedEvent | None) -> Command:
    """The command as sent by an instance: caused by the event, in its correlation - unless
    it names its own (a correlation id other than its command id, the default) - and with the
    event's metadata (who asked, from where: Commanded copies it too), the command's own keys
    winning; a timer's address is not copied. Without an event (the instance API), as it is."""
    if event is None:
        return command
    own = command.correlation_id != command.command_id
    inherited = {k: v for k, v in event.metadata.items() if k != TIMER_METADATA}
    return _derived(
        command,
        metadata={**inherited, **command.metadata},
        causation_id=command.causation_id or str(event.event_id),
        correlation_id=(
            command.correlation_id if own else str(event.correlation_id or event.event_id)
        ),
    )


_COMMAND_FIELDS = tuple(f.name for f in fields(Command))


def _derived(command: Command, **changes: Any) -> Command:
    """``dataclasses.replace`` without checking the command again (a twentieth of a saga
    step): ``command`` was checked when it was made, and what changes is known to be valid -
    metadata merged from two JSON objects, ids taken from a recorded event."""
    new = object.__new__(Command)
    for name in _COMMAND_FIELDS:
        object.__setattr__(new, name, changes[name] if name in changes else getattr(command, name))
    return new


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
