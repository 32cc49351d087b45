"""SQLite process store: the instances of process managers (migration 0005).

It runs on a ``SQLiteStore``'s connection and lock - its own, or a flow store's passed to
``sharing`` - like the SQLite handler store. ``load`` and ``save`` run on the event store
transaction's connection: that transaction holds SQLite's write lock (``BEGIN IMMEDIATE``) from
before the instance is read until its new state commits, which is all the locking ``load``
promises - no other writer can apply an event to the instance meanwhile.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError, StorageError
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.process_contract import ProcessInstance, ProcessStatus
from tideflow.storage.sqlfile import load_queries
from tideflow.storage.sqlite.backend import SQLiteStore

_PARAM = re.compile(r"%\((\w+)\)s")
_QUERIES = {name: _PARAM.sub(r":\1", sql) for name, sql in
            load_queries("tideflow.storage.sqlite", "process_queries.sql").items()}


def _execute(conn: sqlite3.Connection, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
    try:
        return conn.execute(_QUERIES[name], params)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise SchemaNotReadyError(
                "the tideflow process manager table is missing from this database; run "
                f"`tideflow migrate` (or store.migrate()) first: {exc}") from exc
        raise StorageError(f"SQLite process store failed: {exc}") from exc


def _instance(row: tuple[Any, ...]) -> ProcessInstance:
    manager, process_id, status, state, version, last_position, error, started, updated = row
    return ProcessInstance(manager, process_id, status, state, version, last_position, error,
                           datetime.fromtimestamp(started, UTC),
                           datetime.fromtimestamp(updated, UTC))


class SQLiteProcessStore:
    """``ProcessStore`` on SQLite. Safe to share between threads."""

    url: str
    clock: Clock

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self._setup(SQLiteStore(path, clock), True)

    @classmethod
    def sharing(cls, flow_store: SQLiteStore) -> SQLiteProcessStore:
        """A process store on ``flow_store``'s connection, lock and clock. Closing it leaves
        the flow store open."""
        store = cls.__new__(cls)
        store._setup(flow_store, False)
        return store

    def _setup(self, flows: SQLiteStore, owns: bool) -> None:
        self._flows = flows
        self._owns_flows = owns
        self._conn: sqlite3.Connection = flows.connection
        self._lock: threading.RLock = flows.lock
        self.url = flows.url
        self.clock = flows.clock

    def migrate(self) -> list[str]:
        return self._flows.migrate()

    def close(self) -> None:
        if self._owns_flows:
            self._flows.close()

    @staticmethod
    def _tx(tx: EventTransaction) -> sqlite3.Connection:
        return cast(sqlite3.Connection, tx.connection)

    def load(self, tx: EventTransaction, manager: str, process_id: str) -> ProcessInstance | None:
        row = _execute(self._tx(tx), "load",
                       {"manager": manager, "process_id": process_id}).fetchone()
        return None if row is None else _instance(row)

    def save(self, tx: EventTransaction, manager: str, process_id: str, *,
             status: ProcessStatus, state_json: str, version: int, last_position: int,
             error: str | None) -> None:
        _execute(self._tx(tx), "save", {
            "manager": manager, "process_id": process_id, "status": status, "state": state_json,
            "version": version, "last_position": last_position, "error": error,
            "now": self.clock.now().timestamp()})

    def get(self, manager: str, process_id: str) -> ProcessInstance | None:
        with self._lock:
            row = _execute(self._conn, "get",
                           {"manager": manager, "process_id": process_id}).fetchone()
        return None if row is None else _instance(row)

    def list_instances(self, manager: str | None = None, status: ProcessStatus | None = None,
                       limit: int = 100) -> list[ProcessInstance]:
        with self._lock:
            rows = _execute(self._conn, "list_instances",
                            {"manager": manager, "status": status, "limit": limit}).fetchall()
        return [_instance(r) for r in rows]

    def counts(self) -> dict[tuple[str, ProcessStatus], int]:
        with self._lock:
            rows = _execute(self._conn, "counts", {}).fetchall()
        return {(manager, status): count for manager, status, count in rows}
