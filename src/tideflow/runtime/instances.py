"""One instance of a process manager, by id: the instance API of the seed (evoq's
``evoq_pm_instance``: ``start_link``, ``handle_event``, ``get_state``, ``compensate``), sync and
async.

An instance usually lives through the event log: a starting event creates it, the handler runner
delivers the rest. ``ProcessHandle`` reaches the same instance directly - to start one with a
config before any event (a scheduled job, an admin action), to feed it an event now (tests, a
replay), to read its state, to ask it to compensate a command that failed outside it, to stop it,
or to wait until it reaches a status. Every write is one event store transaction, under the same
row lock and the same rules as the log path (``tideflow.runtime.sagas``), so the two can be
mixed freely.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from tideflow.errors import TideflowError
from tideflow.events.aggregate import DomainError
from tideflow.events.commands import Command
from tideflow.events.model import RecordedEvent
from tideflow.jsonutil import loads
from tideflow.runtime.sagas import (
    ProcessBindings,
    _caused_by,
    _compensate,
    _encode_state,
    _react,
    _Reaction,
    initial_state,
    save_instance,
)
from tideflow.sagas.manager import SKIP, ProcessManager, _Skip
from tideflow.storage.event_contract import EventStore, EventTransaction
from tideflow.storage.process_contract import FINISHED, ProcessInstance, ProcessStatus


class ProcessNotFoundError(TideflowError, LookupError):
    """No instance of the manager has this process id (it never started, or it ended and was
    pruned)."""


class ProcessWaitTimeoutError(TideflowError, TimeoutError):
    """``ProcessHandle.wait`` gave up before the instance reached one of the statuses."""


class ProcessHandle:
    """An instance of ``manager`` with ``process_id``: see the module docstring. Cheap to make;
    holds no connection."""

    def __init__(
        self,
        manager: ProcessManager,
        process_id: str,
        bindings: ProcessBindings,
        events: EventStore,
    ) -> None:
        self.manager = manager
        self.process_id = process_id
        self._bindings = bindings
        self._events = events

    def __repr__(self) -> str:
        return f"<ProcessHandle {self.manager.name}/{self.process_id}>"

    # --- the seed's functions ----------------------------------------------------------------

    def start(self, config: Mapping[str, Any] | None = None) -> ProcessInstance:
        """Start the instance: its state is ``initial_state(process_id, config)``. An instance
        that is running is returned as it is, not replaced (config ignored); one that ended is
        replaced by a new one. It follows events appended from now on, not older ones."""
        manager = self.manager
        with self._events.transaction() as tx:
            instance = self._bindings.processes.load(tx, manager.name, self.process_id)
            if instance is not None and instance.status == "running":
                return instance
            state = initial_state(manager, self.process_id, config)
            save_instance(
                self._reaction(tx),
                "running",
                _encode_state(manager, self.process_id, state),
                0,
                self._events.head_position(),
                None,
                fresh=instance is not None,
            )
        return self.get()

    def handle_event(self, event: RecordedEvent) -> bool:
        """React to ``event`` now, as the log path would (the same transaction, row lock and
        rules: an event at or below the instance's last position is skipped, an unknown
        instance starts only on a starting event). Whether the instance reacted."""
        with self._events.transaction() as tx:
            return _react(self.manager, self._bindings, event, tx, self.process_id)

    def get(self) -> ProcessInstance:
        """The instance as committed; ``ProcessNotFoundError`` if there is none."""
        instance = self._bindings.processes.get(self.manager.name, self.process_id)
        if instance is None:
            raise ProcessNotFoundError(
                f"process manager {self.manager.name!r} has no instance {self.process_id!r}; "
                "list them with `tideflow sagas`"
            )
        return instance

    @property
    def state(self) -> Any:
        """The instance's state (``get_state``)."""
        return self.get().state

    def compensate(self, command: Command, error: Exception | None = None) -> list[Command] | _Skip:
        """``command`` failed (elsewhere, or ``error`` says how): compensate for it now, as a
        refusal in a reaction would - ``compensate()``'s commands, or the recorded undos newest
        first (the instance then ends ``compensated``). The commands dispatched, or ``SKIP``
        when there was nothing to undo."""
        manager, processes = self.manager, self._bindings.processes
        failure = error if error is not None else DomainError(f"{command.command_type} failed")
        with self._events.transaction() as tx:
            instance = processes.load(tx, manager.name, self.process_id)
            if instance is None:
                raise ProcessNotFoundError(
                    f"process manager {manager.name!r} has no instance {self.process_id!r} "
                    "to compensate"
                )
            reaction = self._reaction(tx, loads(instance.undo_json), loads(instance.sent_json))
            before = len(reaction.sent)
            message = f"{command.command_type} for {command.aggregate_id!r} failed: {failure}"
            status, kept = _compensate(
                reaction, instance.state, _caused_by(command, None), failure, message
            )
            dispatched = reaction.sent[before:]
            if not dispatched and status == "running":
                return SKIP
            self._save(reaction, instance, status, kept)
        return _sent_commands(dispatched)

    def stop(self) -> ProcessInstance:
        """End the instance now (``completed``; its timers dropped). It is kept for the
        manager's retention, for inspection; a starting event afterwards begins a new one."""
        manager, processes = self.manager, self._bindings.processes
        with self._events.transaction() as tx:
            instance = processes.load(tx, manager.name, self.process_id)
            if instance is None:
                raise ProcessNotFoundError(
                    f"process manager {manager.name!r} has no instance {self.process_id!r} to stop"
                )
            if instance.status == "running":
                reaction = self._reaction(tx, [], instance.sent)
                self._save(reaction, instance, "completed", instance.error)
        return self.get()

    def wait(
        self,
        statuses: ProcessStatus | Iterable[ProcessStatus] = FINISHED,
        timeout: float | None = None,
    ) -> ProcessInstance:
        """Block until the instance is in one of ``statuses`` (default: any ended status);
        ``ProcessWaitTimeoutError`` after ``timeout`` seconds. Woken when a transaction that
        saved an instance commits (``ProcessStore.on_change``: at once in this process,
        LISTEN/NOTIFY or SQLite's change counter from others), with a slow poll behind it in
        case a wake-up is lost."""
        wanted, deadline = _wanted(statuses), _deadline(timeout)
        started = time.monotonic()
        changed = threading.Event()
        key = (self.manager.name, self.process_id)
        stop = self._bindings.processes.on_change(changed.set, key, wanted)
        try:
            while True:
                changed.clear()
                instance = self._bindings.processes.get(self.manager.name, self.process_id)
                if instance is not None and instance.status in wanted:
                    return instance
                changed.wait(_pause(started, deadline, self, instance, wanted))
        finally:
            stop()

    def _reaction(
        self,
        tx: EventTransaction,
        undo: list[dict[str, Any]] | None = None,
        sent: list[dict[str, Any]] | None = None,
    ) -> _Reaction:
        """A reaction to no event: what the instance API does through the runtime."""
        return _Reaction(
            self.manager, self._bindings, None, tx, self.process_id, undo or [], sent or []
        )

    def _save(
        self,
        reaction: _Reaction,
        instance: ProcessInstance,
        status: ProcessStatus,
        error: str | None,
    ) -> None:
        """Save ``instance`` with a new status (its state and position unchanged)."""
        save_instance(
            reaction, status, instance.state_json, instance.version, instance.last_position, error
        )

    @property
    def aio(self) -> AsyncProcessHandle:
        """The same instance, awaitable."""
        return AsyncProcessHandle(self)


class AsyncProcessHandle:
    """``ProcessHandle``, awaitable: each call runs in a thread, and ``wait`` sleeps on the
    event loop between polls (it holds no thread while waiting)."""

    def __init__(self, handle: ProcessHandle) -> None:
        self.handle = handle

    async def start(self, config: Mapping[str, Any] | None = None) -> ProcessInstance:
        return await asyncio.to_thread(self.handle.start, config)

    async def handle_event(self, event: RecordedEvent) -> bool:
        return await asyncio.to_thread(self.handle.handle_event, event)

    async def get(self) -> ProcessInstance:
        return await asyncio.to_thread(self.handle.get)

    async def state(self) -> Any:
        return (await self.get()).state

    async def compensate(
        self, command: Command, error: Exception | None = None
    ) -> list[Command] | _Skip:
        return await asyncio.to_thread(self.handle.compensate, command, error)

    async def stop(self) -> ProcessInstance:
        return await asyncio.to_thread(self.handle.stop)

    async def wait(
        self,
        statuses: ProcessStatus | Iterable[ProcessStatus] = FINISHED,
        timeout: float | None = None,
    ) -> ProcessInstance:
        handle = self.handle
        wanted, deadline = _wanted(statuses), _deadline(timeout)
        started = time.monotonic()
        processes = handle._bindings.processes
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
                loop.call_soon_threadsafe(changed.set)

        stop = processes.on_change(wake, (handle.manager.name, handle.process_id), wanted)
        try:
            while True:
                changed.clear()
                instance = await asyncio.to_thread(
                    processes.get, handle.manager.name, handle.process_id
                )
                if instance is not None and instance.status in wanted:
                    return instance
                pause = _pause(started, deadline, handle, instance, wanted)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), pause)
        finally:
            stop()


def _wanted(statuses: ProcessStatus | Iterable[ProcessStatus]) -> frozenset[str]:
    return frozenset([statuses] if isinstance(statuses, str) else statuses)


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _pause(
    started: float,
    deadline: float | None,
    handle: ProcessHandle,
    instance: ProcessInstance | None,
    wanted: frozenset[str],
) -> float:
    now = time.monotonic()
    if deadline is not None and now >= deadline:
        now_status = "absent" if instance is None else instance.status
        raise ProcessWaitTimeoutError(
            f"instance {handle.process_id!r} of process manager {handle.manager.name!r} is "
            f"{now_status}, not {' or '.join(sorted(wanted))}, after the timeout; is a worker "
            "running the process manager?"
        )
    # The fallback when no wake-up comes: a lost NOTIFY, a LISTEN not yet in place.
    pause = min(0.5, 0.02 + 0.1 * (now - started))
    return pause if deadline is None else min(pause, max(deadline - now, 0.0))


def _sent_commands(entries: list[dict[str, Any]]) -> list[Command]:
    """The commands a compensation dispatched, as recorded (type and aggregate; the full
    commands were appended as events)."""
    return [
        Command(e["command_type"], e["aggregate_id"], command_id=e["command_id"]) for e in entries
    ]
