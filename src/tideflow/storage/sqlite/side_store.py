"""The base of the SQLite stores that live beside a flow store: handlers and processes.

Such a store owns no connection: it runs on a ``SQLiteStore``'s connection and lock, one of its
own (opened by ``__init__``, closed by ``close``) or a flow store's (``sharing``, left open by
``close``), so that the threads of a process take turns on one connection to the file; its
tables come with the flow store's migrations. Its statements are named queries in a ``.sql`` file
of its own; the methods that take an event store transaction run them on that transaction's
connection, inside the write lock it already holds.

The event store has the same shape but is not built on this: its writes nest as savepoints inside
``transaction()`` (event_store.py).
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self, cast

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.sqlfile import load_queries
from tideflow.storage.sqlite.backend import SQLiteStore
from tideflow.storage.sqlite.errors import rollback_quietly, translate, translated

_PARAM = re.compile(r"%\((\w+)\)s")


def sqlite_queries(filename: str) -> dict[str, str]:
    """The named queries of one of our ``.sql`` files, parameters rewritten to ``:name``."""
    return {
        name: _PARAM.sub(r":\1", sql)
        for name, sql in load_queries("tideflow.storage.sqlite", filename).items()
    }


class SQLiteSideStore:
    """Base of a store on a ``SQLiteStore``'s connection. Safe to share between threads."""

    url: str
    clock: Clock
    #: Set by each subclass: its named queries; the start of the ``SchemaNotReadyError``
    #: message that names its tables; and its name in other errors of its queries.
    _queries: ClassVar[dict[str, str]]
    _schema_missing: ClassVar[str]
    _store_name: ClassVar[str]

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self._setup(SQLiteStore(path, clock), True)

    @classmethod
    def sharing(cls, flow_store: SQLiteStore) -> Self:
        """A store on ``flow_store``'s connection, lock and clock. Closing it leaves the flow
        store open."""
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

    def _execute(
        self, conn: sqlite3.Connection, name: str, params: dict[str, Any]
    ) -> sqlite3.Cursor:
        """Run one of our named queries; a missing table becomes ``SchemaNotReadyError``."""
        try:
            return conn.execute(self._queries[name], params)
        except (sqlite3.Error, UnicodeEncodeError) as exc:
            error = translate(exc, f"SQLite {self._store_name}: query {name}")
            if isinstance(error, SchemaNotReadyError):
                error = SchemaNotReadyError(
                    f"{self._schema_missing} from this database; run `tideflow migrate` (or "
                    f"store.migrate()) first: {exc}"
                )
            raise error from exc

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction of its own on the shared connection. ``BEGIN IMMEDIATE`` takes
        the write lock up front, so that a read followed by a write cannot fail half way with
        SQLITE_BUSY (backend.py)."""
        with self._lock:
            with translated(f"SQLite database {self._flows.path!r}: beginning a transaction"):
                self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                rollback_quietly(self._conn, ("ROLLBACK",))
                raise
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                rollback_quietly(self._conn, ("ROLLBACK",))
                raise translate(exc, f"SQLite database {self._flows.path!r}: committing") from exc

    @staticmethod
    def _tx(tx: EventTransaction) -> sqlite3.Connection:
        return cast(sqlite3.Connection, tx.connection)
