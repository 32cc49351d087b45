"""The timer store contract: durable timers of process manager instances.

A process manager's reaction may schedule a timer (``tideflow.sagas.ScheduleTimer``): after a
delay, or at a time, an event is delivered to that instance - "if PaymentCharged has not arrived
within 15 minutes, undo". The timer is a row (``process_timers``), written in the reaction's
transaction, so it exists if and only if the reaction committed; cancelling it
(``CancelTimer``), or the instance ending, deletes it in the same way.

Firing is a worker's job (``fire_due``): in one transaction, take the due rows (locked, skipping
rows another worker holds), append each one's event, mark the rows fired. A timer therefore fires
exactly once across any number of workers, survives SIGKILL and restarts (an uncommitted firing
leaves the row for the next poll), and never fires once deleted. A fired row stays until the
instance meets its event (``take_fired``, in that batch's transaction): an event whose row was
cancelled or rescheduled after it fired is stale, so a cancellation holds even when the timer
fired before the instance reached the cancelling event (migration 0013). Times come from the
store's ``Clock``, so tests move a ``ManualClock`` past the due time instead of sleeping.

The fired event is appended to stream ``timer-<manager>-<process id>`` (hashed when too long),
caused by nothing, with metadata ``{TIMER_METADATA: {"manager": ..., "process_id": ...,
"timer": name, "token": ...}}``: the saga runtime routes an event carrying that key to that
instance of that manager, whatever ``process_id()`` would say. Its correlation id is the process
id when that is a uuid (the default process id is the correlation id of the instance's events),
so that the events of the commands sent in reply come back to the instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tideflow.clock import Clock
from tideflow.storage.database import Tx

#: The metadata key that addresses an event to one instance of one process manager.
TIMER_METADATA = "tideflow.process"


@dataclass(frozen=True, slots=True)
class TimerRecord:
    """One pending timer, as stored."""

    manager: str
    process_id: str
    name: str
    fire_at: datetime
    event_type: str
    data: dict[str, Any]
    scheduled_at: datetime
    token: str | None = None
    """Which scheduling of the name this is: the fired event carries it, and an event whose
    token is no longer the row's (rescheduled, cancelled) is stale (migration 0013)."""


class TimerStore(Protocol):
    """Timers on one database. Safe to share between threads."""

    url: str
    clock: Clock

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
        """Schedule (or reschedule: the name is unique per instance) a timer, in ``tx``."""
        ...

    def cancel(self, tx: Tx, manager: str, process_id: str, name: str) -> bool:
        """Delete the instance's timer ``name`` in ``tx``; whether there was one."""
        ...

    def cancel_all(self, tx: Tx, manager: str, process_id: str) -> None:
        """Delete every timer of the instance in ``tx`` (it ended). Deferred (``Tx.defer``):
        it goes to the server with the reaction's next statement or its COMMIT."""
        ...

    def take_fired(self, tx: Tx, manager: str, process_id: str, name: str, token: str) -> bool:
        """In the batch transaction of the instance a fired timer's event reached: delete the
        timer's row if it is still the one that fired (``token``) and say so. False: the event
        is stale - the timer was cancelled or rescheduled after it fired - and the instance
        must ignore it."""
        ...

    def pending(
        self, manager: str | None = None, process_id: str | None = None, limit: int = 1000
    ) -> list[TimerRecord]:
        """Timers not fired yet, soonest first."""
        ...

    def next_due(self) -> datetime | None:
        """When the soonest pending timer is due (perhaps already), or None: how long a worker
        may sleep."""
        ...

    def watch(self, callback: Callable[[datetime], None]) -> Callable[[], None]:
        """Call ``callback(fire_at)`` after a transaction of this process that scheduled a
        timer ended (so a worker sleeping past ``fire_at`` wakes up); returns the function that
        stops it. Other processes' timers are found by polling."""
        ...

    def fire_due(self, limit: int = 100) -> int:
        """Fire up to ``limit`` timers due by the clock's now, exactly once each (see the module
        docstring), appending their events through the event store the timer store was made
        with, in one transaction; how many fired."""
        ...
