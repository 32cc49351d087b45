"""The timer store, written once over a ``Database``: durable timers of process manager instances
(migration 0008 of each backend; ``timer_contract`` describes the design).

``schedule``, ``cancel`` and ``cancel_all`` run in the caller's transaction - the reaction's
batch - so a timer exists if and only if the reaction that scheduled it committed. ``fire_due``
is a transaction of its own on the event store it was given: the due rows are marked fired
(locked, skipping rows others hold, on PostgreSQL) and their events appended in it, so the event
and the mark commit together or not at all; ``take_fired`` deletes a fired row in the batch of
the instance its event reached.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

from tideflow import jsonutil
from tideflow.clock import Clock
from tideflow.events.model import ANY, MAX_ID_LENGTH, NewEvent
from tideflow.storage.database import Database, Row, Tx
from tideflow.storage.event_contract import EventStore
from tideflow.storage.timer_contract import TIMER_METADATA, TimerRecord

#: Timers fired per transaction when the caller does not say: a backlog (workers were down for
#: a while) drains in short transactions rather than one long one.
DEFAULT_FIRE_LIMIT = 100


def timer_stream(manager: str, process_id: str) -> str:
    """The stream an instance's timer events go to: ``timer-<manager>-<process id>`` where that
    fits a stream id, else a hash of both (a manager's name and a process id can each be nearly
    as long as a stream id)."""
    stream = f"timer-{manager}-{process_id}"
    if len(stream) <= MAX_ID_LENGTH:
        return stream
    digest = hashlib.sha256(f"{manager}\x00{process_id}".encode()).hexdigest()
    return f"timer-{digest}"


def _correlation(process_id: str) -> UUID | None:
    """The fired event's correlation id. An instance's process id is, by default, the
    correlation id of its events; the timer's event carries it too, so the commands the instance
    sends in reply (which carry the event's correlation) cause events that come back to the same
    instance. A process id that is not a uuid came from ``process_id()``, which finds the
    instance in the events' data instead: no correlation then."""
    try:
        return UUID(process_id)
    except ValueError:
        return None


class SqlTimerStore:
    """``TimerStore`` over a ``Database``; fires through ``events``, an event store on the same
    Database (its transaction is the Database's). Safe to share between threads.

    ``owns_db``: ``close()`` closes the Database too (a store opened on its own)."""

    def __init__(self, db: Database, events: EventStore, *, owns_db: bool = False) -> None:
        self.db = db
        self.url = db.url
        self.clock: Clock = db.clock
        self.events = events
        self._owns_db = owns_db
        self._lock = threading.Lock()
        self._watchers: list[Callable[[datetime], None]] = []

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    # --- in a reaction's transaction ------------------------------------------------------------

    def schedule(
        self,
        tx: Tx,
        manager: str,
        process_id: str,
        name: str,
        fire_at: datetime,
        event_type: str,
        data_json: str,
    ) -> None:
        tx.run(
            "schedule",
            manager=manager,
            process_id=process_id,
            name=name,
            fire_at=fire_at,
            event_type=event_type,
            data=data_json,
            now=self.clock.now(),
            token=uuid4().hex,
        )
        if self._watchers:  # a worker of this process sleeps until its next due time
            tx.on_end(lambda: self._scheduled(fire_at))

    def cancel(self, tx: Tx, manager: str, process_id: str, name: str) -> bool:
        return tx.run("cancel", manager=manager, process_id=process_id, name=name) > 0

    def cancel_all(self, tx: Tx, manager: str, process_id: str) -> None:
        tx.defer("cancel_all", manager=manager, process_id=process_id)

    def take_fired(self, tx: Tx, manager: str, process_id: str, name: str, token: str) -> bool:
        taken = tx.run("take_fired", manager=manager, process_id=process_id, name=name, token=token)
        return taken > 0

    # --- reads ----------------------------------------------------------------------------------

    def pending(
        self, manager: str | None = None, process_id: str | None = None, limit: int = 1000
    ) -> list[TimerRecord]:
        rows = self.db.rows("pending", manager=manager, process_id=process_id, limit=limit)
        return [_record(r) for r in rows]

    def next_due(self) -> datetime | None:
        fire_at: datetime | None = self.db.rows("next_due")[0]["fire_at"]
        return fire_at

    def watch(self, callback: Callable[[datetime], None]) -> Callable[[], None]:
        with self._lock:
            self._watchers.append(callback)

        def unwatch() -> None:
            with self._lock:
                if callback in self._watchers:
                    self._watchers.remove(callback)

        return unwatch

    def _scheduled(self, fire_at: datetime) -> None:
        for callback in list(self._watchers):
            callback(fire_at)

    # --- firing ---------------------------------------------------------------------------------

    def fire_due(self, limit: int = DEFAULT_FIRE_LIMIT) -> int:
        now = self.clock.now()
        with self.events.transaction() as tx:
            taken = [_record(r) for r in tx.rows("take_due", now=now, limit=limit)]
            # One append per stream, streams in a fixed order: two workers firing timers of the
            # same instances lock their streams in the same order, so neither waits for the other
            # in a cycle.
            by_stream: dict[str, list[TimerRecord]] = {}
            for timer in sorted(taken, key=lambda t: (t.fire_at, t.name)):
                by_stream.setdefault(timer_stream(timer.manager, timer.process_id), []).append(
                    timer
                )
            for stream in sorted(by_stream):
                tx.append(stream, [_event(t) for t in by_stream[stream]], ANY)
        return len(taken)


def _record(row: Row) -> TimerRecord:
    return TimerRecord(
        manager=row["manager"],
        process_id=row["process_id"],
        name=row["name"],
        fire_at=row["fire_at"],
        event_type=row["event_type"],
        data=jsonutil.loads(row["data_json"]),
        scheduled_at=row["scheduled_at"],
        token=row["token"],
    )


def _event(timer: TimerRecord) -> NewEvent:
    address: dict[str, Any] = {
        "manager": timer.manager,
        "process_id": timer.process_id,
        "timer": timer.name,
    }
    if timer.token is not None:  # None: scheduled before migration 0013
        address["token"] = timer.token
    return NewEvent(
        timer.event_type,
        timer.data,
        metadata={TIMER_METADATA: address},
        correlation_id=_correlation(timer.process_id),
    )
