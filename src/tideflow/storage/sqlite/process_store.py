"""SQLite process store: the instances of process managers (migration 0005).

It runs on a ``SQLiteStore``'s connection and lock - its own, or a flow store's passed to
``sharing`` - like the SQLite handler store. ``load`` and ``save`` run on the event store
transaction's connection: that transaction holds SQLite's write lock (``BEGIN IMMEDIATE``) from
before the instance is read until its new state commits, which is all the locking ``load``
promises - no other writer can apply an event to the instance meanwhile.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.process_contract import ProcessInstance, ProcessStatus
from tideflow.storage.sqlite.side_store import SQLiteSideStore, sqlite_queries


def _instance(row: tuple[Any, ...]) -> ProcessInstance:
    manager, process_id, status, state, version, last_position, error, started, updated = row
    return ProcessInstance(
        manager,
        process_id,
        status,
        state,
        version,
        last_position,
        error,
        datetime.fromtimestamp(started, UTC),
        datetime.fromtimestamp(updated, UTC),
    )


class SQLiteProcessStore(SQLiteSideStore):
    """``ProcessStore`` on SQLite. Safe to share between threads."""

    _queries = sqlite_queries("process_queries.sql")
    _schema_missing = "the tideflow process manager table is missing"
    _store_name = "process store"

    def load(self, tx: EventTransaction, manager: str, process_id: str) -> ProcessInstance | None:
        row = self._execute(
            self._tx(tx), "load", {"manager": manager, "process_id": process_id}
        ).fetchone()
        return None if row is None else _instance(row)

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
        self._execute(
            self._tx(tx),
            "save",
            {
                "manager": manager,
                "process_id": process_id,
                "status": status,
                "state": state_json,
                "version": version,
                "last_position": last_position,
                "error": error,
                "now": self.clock.now().timestamp(),
            },
        )

    def get(self, manager: str, process_id: str) -> ProcessInstance | None:
        with self._lock:
            row = self._execute(
                self._conn, "get", {"manager": manager, "process_id": process_id}
            ).fetchone()
        return None if row is None else _instance(row)

    def list_instances(
        self, manager: str | None = None, status: ProcessStatus | None = None, limit: int = 100
    ) -> list[ProcessInstance]:
        with self._lock:
            rows = self._execute(
                self._conn, "list_instances", {"manager": manager, "status": status, "limit": limit}
            ).fetchall()
        return [_instance(r) for r in rows]

    def counts(self) -> dict[tuple[str, ProcessStatus], int]:
        with self._lock:
            rows = self._execute(self._conn, "counts", {}).fetchall()
        return {(manager, status): count for manager, status, count in rows}
