"""PostgreSQL process store: the instances of process managers (migration 0005).

It runs on a ``PostgresStore``'s pool - its own, or a flow store's passed to ``sharing`` - like
the PostgreSQL handler store. ``load`` and ``save`` run on the event store transaction's
connection: ``load`` locks the instance's row (FOR UPDATE) until that transaction ends, so that a
worker taking the handler over cannot apply an event to the instance before the batch in flight
has committed its state, and then reads the state that batch left.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError, StorageError
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.postgres.backend import PostgresStore
from tideflow.storage.process_contract import ProcessInstance, ProcessStatus
from tideflow.storage.sqlfile import load_queries

_QUERIES = load_queries("tideflow.storage.postgres", "process_queries.sql")

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


def _execute(conn: Conn, name: str, params: dict[str, Any]) -> list[Row]:
    """Run one of our named queries; a missing schema becomes ``SchemaNotReadyError``."""
    try:
        cur = conn.cursor(row_factory=dict_row).execute(_QUERIES[name], params)
    except (pg_errors.InvalidSchemaName, pg_errors.UndefinedTable) as exc:
        raise SchemaNotReadyError(
            "the tideflow process manager table is missing from this database; run `tideflow "
            f"migrate` (or store.migrate()) first: {exc}") from exc
    return cur.fetchall() if cur.description else []


class PostgresProcessStore:
    """``ProcessStore`` on PostgreSQL. Safe to share between threads."""

    url: str
    clock: Clock

    def __init__(self, url: str, clock: Clock | None = None, *, pool_size: int = 4) -> None:
        """Connect with a pool of up to ``pool_size`` connections (``StorageError`` if the
        server cannot be reached)."""
        self._setup(PostgresStore(url, clock, pool_size=pool_size), True)

    @classmethod
    def sharing(cls, flow_store: PostgresStore) -> PostgresProcessStore:
        """A process store on ``flow_store``'s pool and clock. Closing it leaves the flow store
        open."""
        store = cls.__new__(cls)
        store._setup(flow_store, False)
        return store

    def _setup(self, flows: PostgresStore, owns: bool) -> None:
        self._flows = flows
        self._owns_flows = owns
        self._pool: ConnectionPool[Conn] = flows.pool
        self.url = flows.url
        self.clock = flows.clock

    def migrate(self) -> list[str]:
        return self._flows.migrate()

    def close(self) -> None:
        if self._owns_flows:
            self._flows.close()

    @contextmanager
    def _connection(self) -> Iterator[Conn]:
        """A pooled connection in autocommit mode: each statement is its own transaction."""
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StorageError(f"PostgreSQL operation failed: {exc}") from exc

    def _run(self, query: str, /, **params: Any) -> list[Row]:
        with self._connection() as conn:
            return _execute(conn, query, params)

    @staticmethod
    def _in(tx: EventTransaction, query: str, /, **params: Any) -> list[Row]:
        return _execute(cast(Conn, tx.connection), query, params)

    def load(self, tx: EventTransaction, manager: str, process_id: str) -> ProcessInstance | None:
        rows = self._in(tx, "load", manager=manager, process_id=process_id)
        return ProcessInstance(**rows[0]) if rows else None

    def save(self, tx: EventTransaction, manager: str, process_id: str, *,
             status: ProcessStatus, state_json: str, version: int, last_position: int,
             error: str | None) -> None:
        self._in(tx, "save", manager=manager, process_id=process_id, status=status,
                 state=state_json, version=version, last_position=last_position, error=error,
                 now=self.clock.now())

    def get(self, manager: str, process_id: str) -> ProcessInstance | None:
        rows = self._run("get", manager=manager, process_id=process_id)
        return ProcessInstance(**rows[0]) if rows else None

    def list_instances(self, manager: str | None = None, status: ProcessStatus | None = None,
                       limit: int = 100) -> list[ProcessInstance]:
        return [ProcessInstance(**r) for r in self._run(
            "list_instances", manager=manager, status=status, limit=limit)]

    def counts(self) -> dict[tuple[str, ProcessStatus], int]:
        return {(r["manager"], r["status"]): r["instances"] for r in self._run("counts")}
