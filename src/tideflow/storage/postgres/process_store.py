"""PostgreSQL process store: the instances of process managers (migration 0005).

It runs on a ``PostgresStore``'s pool - its own, or a flow store's passed to ``sharing`` - like
the PostgreSQL handler store. ``load`` and ``save`` run on the event store transaction's
connection: ``load`` locks the instance's row (FOR UPDATE) until that transaction ends, so that a
worker taking the handler over cannot apply an event to the instance before the batch in flight
has committed its state, and then reads the state that batch left.
"""

from __future__ import annotations

from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.postgres.side_store import PostgresSideStore
from tideflow.storage.process_contract import ProcessInstance, ProcessStatus
from tideflow.storage.sqlfile import load_queries


class PostgresProcessStore(PostgresSideStore):
    """``ProcessStore`` on PostgreSQL. Safe to share between threads."""

    _queries = load_queries("tideflow.storage.postgres", "process_queries.sql")
    _schema_missing = "the tideflow process manager table is missing"

    def load(self, tx: EventTransaction, manager: str, process_id: str) -> ProcessInstance | None:
        rows = self._in(tx, "load", manager=manager, process_id=process_id)
        return ProcessInstance(**rows[0]) if rows else None

    def save(
        self,
        tx: EventTransaction,
        manager: str,
        process_id: str,
        *,
        status: ProcessStatus,
        state_json: str,
        version: int,
        last_position: int,
        error: str | None,
    ) -> None:
        self._in(
            tx,
            "save",
            manager=manager,
            process_id=process_id,
            status=status,
            state=state_json,
            version=version,
            last_position=last_position,
            error=error,
            now=self.clock.now(),
        )

    def get(self, manager: str, process_id: str) -> ProcessInstance | None:
        rows = self._run("get", manager=manager, process_id=process_id)
        return ProcessInstance(**rows[0]) if rows else None

    def list_instances(
        self, manager: str | None = None, status: ProcessStatus | None = None, limit: int = 100
    ) -> list[ProcessInstance]:
        return [
            ProcessInstance(**r)
            for r in self._run("list_instances", manager=manager, status=status, limit=limit)
        ]

    def counts(self) -> dict[tuple[str, ProcessStatus], int]:
        return {(r["manager"], r["status"]): r["instances"] for r in self._run("counts")}
