"""The process instances of one handler batch: read in one statement, written in one.

A process manager's batch (``ProcessManager.batch_size`` events in one transaction) used to
read and write each event's instance on its own: two round trips per event on PostgreSQL, the
largest share of a saga step's time. ``InstanceBatch`` is the batch's view of its instances
instead, kept for the batch's transaction only:

* ``before_batch`` reads (and locks) every instance the batch's events address, at once;
* each reaction reads its instance from here - as the previous reaction in the batch left it,
  so two events of one instance in one batch see each other, as they did through the table;
* each reaction's write replaces the instance here, and the last write of each instance is
  saved when the batch ends (``after_batch``), before its checkpoint moves, in the same
  transaction: what commits is exactly what committed before, one statement later.

Anything outside the batch (the instance API, ``ProcessHandle``) reads and writes the table
directly, in transactions of its own. A batch that rolls back drops its InstanceBatch with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from tideflow.storage.database import Tx
from tideflow.storage.process_contract import InstanceWrite, ProcessInstance, ProcessStore


@dataclass
class InstanceBatch:
    """The instances of ``manager`` that one batch transaction ``tx`` has read or written."""

    tx: Tx
    manager: str
    processes: ProcessStore
    instances: dict[str, ProcessInstance | None] = field(default_factory=dict)
    """By process id; None: known not to exist."""
    writes: dict[str, InstanceWrite] = field(default_factory=dict)
    prune_after: float | None = None
    """Set when a new instance started: prune ended ones older than this retention at the end
    (once per batch, not once per new instance)."""

    @classmethod
    def read(
        cls, tx: Tx, manager: str, processes: ProcessStore, process_ids: Sequence[str]
    ) -> InstanceBatch:
        """The batch, with the instances of ``process_ids`` read and locked in one statement."""
        found = processes.load_many(tx, manager, process_ids)
        instances: dict[str, ProcessInstance | None] = dict.fromkeys(process_ids)
        instances.update(found)
        return cls(tx, manager, processes, instances)

    def load(self, process_id: str) -> ProcessInstance | None:
        """The instance as this batch has it; read (and locked) now if the batch's first read
        did not know of it (a process id only the reaction could tell)."""
        if process_id not in self.instances:
            self.instances[process_id] = self.processes.load(self.tx, self.manager, process_id)
        return self.instances[process_id]

    def save(self, write: InstanceWrite) -> None:
        """Keep ``write`` as the instance's state for the rest of the batch, and to be saved at
        its end."""
        before = self.instances.get(write.process_id)
        earlier = self.writes.get(write.process_id)
        fresh = write.fresh or (earlier is not None and earlier.fresh)
        if earlier is None and before is None:
            fresh = False  # a new row: started now whatever ``fresh`` says
        now = self.processes.clock.now()
        started = now if before is None or write.fresh else before.started_at
        self.writes[write.process_id] = (
            write if fresh == write.fresh else replace(write, fresh=fresh)
        )
        self.instances[write.process_id] = ProcessInstance(
            write.manager,
            write.process_id,
            write.status,
            write.state_json,
            write.version,
            write.last_position,
            write.error,
            started,
            now,
            write.undo_json,
            write.sent_json,
            now if write.finished else None,
        )

    def flush(self) -> None:
        """Save what the batch wrote (and prune, if a new instance started), in its
        transaction."""
        if self.prune_after is not None:
            self.processes.prune_finished_later(self.tx, self.manager, self.prune_after)
        self.processes.save_many(self.tx, list(self.writes.values()))
        self.writes.clear()
