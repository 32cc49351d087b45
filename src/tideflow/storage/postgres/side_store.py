"""The base of the PostgreSQL stores that live beside a flow store: handlers and processes.

Such a store owns no connections: it runs on a ``PostgresStore``'s pool, one of its own (opened
by ``__init__``, closed by ``close``) or a flow store's (``sharing``, left open by ``close``), so
that one process opens one pool; its tables come with the flow store's migrations. Its
statements are named queries in a ``.sql`` file of its own; the methods that take an event store
transaction run them on that transaction's connection, so that their locks and writes belong to
it.

The event store has the same shape but is not built on this: its connection checkout and
statements are tuned for the append hot path (event_store.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Self, cast

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.postgres.backend import PostgresStore
from tideflow.storage.postgres.errors import is_transient, translate

Conn = psycopg.Connection[Any]
Row = dict[str, Any]


class PostgresSideStore:
    """Base of a store on a ``PostgresStore``'s pool. Safe to share between threads."""

    url: str
    clock: Clock
    #: Set by each subclass: its named queries, and the start of the ``SchemaNotReadyError``
    #: message that names its tables.
    _queries: ClassVar[dict[str, str]]
    _schema_missing: ClassVar[str]

    def __init__(self, url: str, clock: Clock | None = None, *, pool_size: int = 4) -> None:
        """Connect with a pool of up to ``pool_size`` connections (``StorageError`` if the
        server cannot be reached)."""
        self._setup(PostgresStore(url, clock, pool_size=pool_size), True)

    @classmethod
    def sharing(cls, flow_store: PostgresStore) -> Self:
        """A store on ``flow_store``'s pool and clock. Closing it leaves the flow store open."""
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
        except psycopg.Error as exc:
            if is_transient(exc):  # other errors here are the caller's, raised in its block
                raise translate(exc) from exc
            raise

    def _execute(self, conn: Conn, name: str, params: dict[str, Any]) -> list[Row]:
        """Run one of our named queries, its driver errors mapped (``errors.translate``)."""
        try:
            cur = conn.cursor(row_factory=dict_row).execute(self._queries[name], params)
        except (psycopg.Error, UnicodeEncodeError) as exc:  # a surrogate never reaches psycopg
            error = translate(exc, f"query {name}")
            if isinstance(error, SchemaNotReadyError):
                error = type(error)(  # SchemaMissingError stays one
                    f"{self._schema_missing} from this database; run `tideflow migrate` (or "
                    f"store.migrate()) first: {exc}"
                )
            raise error from exc
        return cur.fetchall() if cur.description else []

    def _run(self, query: str, /, **params: Any) -> list[Row]:
        """A named query on a pooled connection, committed on its own."""
        with self._connection() as conn:
            return self._execute(conn, query, params)

    def _in(self, tx: EventTransaction, query: str, /, **params: Any) -> list[Row]:
        """A named query in ``tx``, committed (or rolled back) with it."""
        return self._execute(cast(Conn, tx.connection), query, params)
