"""The process store contract: the persistent instances of process managers (sagas).

A process manager (``tideflow.sagas``) runs as an event handler; each *instance* - one per
process id, e.g. one per order - keeps its state between events in a row of its own
(``process_instances``, migration 0005 of each backend). The row is read and written inside the
handler's batch transaction (the methods that take ``tx``), so an instance's new state commits
together with the commands it dispatched, the flows it started and the handler's checkpoint, or
none of them does.

``last_position`` is the position of the last event the instance applied: an event at or below
it has already been handled (a reset of the handler replays the log), and the runtime skips it.
That is what makes a replay harmless.

One implementation, ``storage/process_store.py``, over every backend's ``Database``, held to one
suite on both (``tests/sagas/test_process_store.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from tideflow import jsonutil
from tideflow.clock import Clock
from tideflow.storage.database import Tx

ProcessStatus = Literal["running", "completed", "compensated", "failed"]
PROCESS_STATUSES: tuple[ProcessStatus, ...] = ("running", "completed", "compensated", "failed")
#: The statuses of an instance that has ended: it follows no more events.
FINISHED: tuple[ProcessStatus, ...] = ("completed", "compensated", "failed")


@dataclass(frozen=True, slots=True)
class ProcessInstance:
    """One instance of a process manager, as stored."""

    manager: str
    """The process manager's name (its handler name)."""
    process_id: str
    """Which instance: by default the correlation id of the events it follows."""
    status: ProcessStatus
    """running: it follows its events; completed: it reached its end (``is_done``,
    ``stops_with``, or stopped); compensated: a command was refused and the instance undid what
    it had done (its recorded undos, newest first), then ended; failed: an undo or a
    compensation was refused too - ``error`` keeps both errors."""
    state_json: str
    version: int
    """How many events the instance has applied."""
    last_position: int
    """The position of the last event it applied (0: none yet)."""
    error: str | None
    """Why it failed, or the last command failure it compensated."""
    started_at: datetime
    updated_at: datetime
    undo_json: str = "[]"
    """The undo commands of the commands it sent that declared one, oldest first (JSON)."""
    sent_json: str = "[]"
    """What it sent, and undid, in order (JSON; the most recent ``MAX_SENT``)."""
    finished_at: datetime | None = None
    """When it ended; None while running."""

    @property
    def state(self) -> Any:
        """The state, decoded from JSON."""
        return jsonutil.loads(self.state_json)

    @property
    def sent(self) -> list[dict[str, Any]]:
        """The commands it sent (and undid), oldest first: ``command_type``, ``aggregate_id``,
        ``command_id``, ``position`` (of the event it reacted to) and ``undo`` (True for an
        undo)."""
        sent: list[dict[str, Any]] = jsonutil.loads(self.sent_json)
        return sent


@dataclass(frozen=True, slots=True)
class InstanceWrite:
    """One instance as ``ProcessStore.save_many`` writes it: ``save``'s arguments."""

    manager: str
    process_id: str
    status: ProcessStatus
    state_json: str
    version: int
    last_position: int
    error: str | None
    undo_json: str = "[]"
    sent_json: str = "[]"
    finished: bool = False
    fresh: bool = False


class ProcessStore(Protocol):
    """Process manager instances on one database. Safe to share between threads."""

    url: str
    clock: Clock

    def migrate(self) -> list[str]:
        """Apply pending schema migrations (the backend's single sequence)."""
        ...

    def close(self) -> None:
        """Release the connection(s), unless they belong to a flow store passed in."""
        ...

    def load(self, tx: Tx, manager: str, process_id: str) -> ProcessInstance | None:
        """The instance, locked until ``tx`` ends (PostgreSQL: the row, FOR UPDATE; SQLite: the
        transaction holds the database's write lock), or None if it does not exist."""
        ...

    def save(
        self,
        tx: Tx,
        manager: str,
        process_id: str,
        *,
        status: ProcessStatus,
        state_json: str,
        version: int,
        last_position: int,
        error: str | None,
        undo_json: str = "[]",
        sent_json: str = "[]",
        finished: bool = False,
        fresh: bool = False,
    ) -> None:
        """Create or replace the instance in ``tx``. ``started_at`` is set when it is created
        (or ``fresh``: a new instance replacing an ended one), ``updated_at`` every time, and
        ``finished_at`` when ``finished`` (all from the store's clock)."""
        ...

    def load_many(
        self, tx: Tx, manager: str, process_ids: Sequence[str]
    ) -> dict[str, ProcessInstance]:
        """The instances of ``manager`` among ``process_ids`` that exist, locked as ``load``
        locks one: one statement for a whole handler batch instead of one per event."""
        ...

    def save_many(self, tx: Tx, writes: Sequence[InstanceWrite]) -> None:
        """``save`` each of ``writes`` in ``tx`` (one round trip on PostgreSQL); at most one
        write per instance."""
        ...

    def prune_finished(self, tx: Tx, manager: str, retention: float, limit: int = 100) -> int:
        """Delete up to ``limit`` instances of ``manager`` that ended more than ``retention``
        seconds ago, in ``tx``; how many."""
        ...

    def prune_finished_later(
        self, tx: Tx, manager: str, retention: float, limit: int = 100
    ) -> None:
        """``prune_finished`` deferred (``Tx.defer``) to the transaction's next statement or
        its COMMIT: for a process manager's batch, which does not need the count."""
        ...

    def delete(self, tx: Tx, manager: str, process_id: str) -> bool:
        """Delete the instance in ``tx``; whether there was one."""
        ...

    def get(self, manager: str, process_id: str) -> ProcessInstance | None:
        """The instance as committed, or None."""
        ...

    def list_instances(
        self, manager: str | None = None, status: ProcessStatus | None = None, limit: int = 100
    ) -> list[ProcessInstance]:
        """Instances, most recently updated first, optionally of one manager and one status."""
        ...

    def counts(self) -> dict[tuple[str, ProcessStatus], int]:
        """How many instances each manager has in each status (absent: none)."""
        ...

    def on_change(
        self,
        callback: Callable[[], None],
        key: tuple[str, str] | None = None,
        statuses: Collection[str] | None = None,
    ) -> Callable[[], None]:
        """Call ``callback`` (from another thread) soon after a transaction that saved an
        instance commits, in this process or another (LISTEN/NOTIFY; SQLite's change counter);
        returns the function that stops it. For waits that would otherwise poll. With ``key``
        (manager, process id) and ``statuses``, this process's saves call it only for that
        instance in one of those statuses (other processes' saves always do: their wake-up
        does not say which instance)."""
        ...
