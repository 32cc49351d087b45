"""SQLite handler store: leases, failures and dead letters of event handlers (migration 0003).

It runs on a ``SQLiteStore``'s connection and lock - its own, or a flow store's passed to
``sharing`` - like the SQLite event store. Methods that take an event store transaction run on
that transaction's connection instead: the event store holds SQLite's write lock for the whole
transaction (``BEGIN IMMEDIATE``), so they are as atomic with the checkpoint as PostgreSQL's row
locks make them there.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError, StorageError
from tideflow.events.handlers import DeadLetterNotFoundError, HandlerKind, LeaseLostError
from tideflow.events.model import RecordedEvent
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.handler_contract import (
    DeadLetter,
    HandlerLease,
    HandlerRecord,
    HandlerStatus,
)
from tideflow.storage.sqlfile import load_queries
from tideflow.storage.sqlite.backend import SQLiteStore

_PARAM = re.compile(r"%\((\w+)\)s")
_QUERIES = {name: _PARAM.sub(r":\1", sql) for name, sql in
            load_queries("tideflow.storage.sqlite", "handlers_queries.sql").items()}

Row = dict[str, Any]


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _execute(conn: sqlite3.Connection, name: str, params: dict[str, Any]) -> sqlite3.Cursor:
    try:
        return conn.execute(_QUERIES[name], params)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise SchemaNotReadyError(
                "the tideflow handler tables are missing from this database; run `tideflow "
                f"migrate` (or store.migrate()) first: {exc}") from exc
        raise StorageError(f"SQLite handler store failed: {exc}") from exc


def _rows(cur: sqlite3.Cursor) -> list[Row]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class SQLiteHandlerStore:
    """``HandlerStore`` on SQLite. Safe to share between threads."""

    url: str
    clock: Clock

    def __init__(self, path: str | Path, clock: Clock | None = None) -> None:
        self._setup(SQLiteStore(path, clock), True)

    @classmethod
    def sharing(cls, flow_store: SQLiteStore) -> SQLiteHandlerStore:
        """A handler store on ``flow_store``'s connection, lock and clock. Closing it leaves
        the flow store open."""
        store = cls.__new__(cls)
        store._setup(flow_store, False)
        return store

    def _setup(self, flows: SQLiteStore, owns: bool) -> None:
        self._flows = flows
        self._owns_flows = owns
        self._conn: sqlite3.Connection = flows._conn
        self._lock: threading.RLock = flows._lock
        self.url = flows.url
        self.clock = flows.clock

    def migrate(self) -> list[str]:
        return self._flows.migrate()

    def close(self) -> None:
        if self._owns_flows:
            self._flows.close()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        # The flow store's watcher reports commits of every other connection to the file: the
        # event store's appends in this process (its own connection) and in other processes.
        return self._flows.subscribe(callback)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _expires(self, ttl: float) -> float:
        return (self.clock.now() + timedelta(seconds=ttl)).timestamp()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StorageError(f"SQLite database {self._flows.path!r} is unavailable: "
                                   f"{exc}") from exc
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, name: str, **params: Any) -> list[Row]:
        with self._lock:
            return _rows(_execute(self._conn, name, params))

    @staticmethod
    def _tx(tx: EventTransaction) -> sqlite3.Connection:
        return cast(sqlite3.Connection, tx.connection)

    # --- leases ---------------------------------------------------------------------------------

    def acquire(self, name: str, kind: HandlerKind, owner: str,
                ttl: float) -> HandlerLease | None:
        with self._write() as conn:
            rows = _rows(_execute(conn, "acquire", {
                "name": name, "kind": kind, "owner": owner, "expires": self._expires(ttl),
                "now": self._now()}))
        return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"]) if rows else None

    def hold(self, tx: EventTransaction, name: str, owner: str, ttl: float) -> HandlerLease:
        rows = _rows(_execute(self._tx(tx), "hold", {
            "name": name, "owner": owner, "expires": self._expires(ttl), "now": self._now()}))
        if not rows:
            raise LeaseLostError(f"handler {name!r} is no longer held by worker {owner!r}: "
                                 "another worker took it over, or it was stopped")
        return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"])

    def renew(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        if not names:
            return set()
        with self._write() as conn:
            rows = _rows(_execute(conn, "renew", {
                "names": json.dumps(list(names)), "owner": owner,
                "expires": self._expires(ttl), "now": self._now()}))
        return {r["name"] for r in rows}

    def release(self, names: Sequence[str], owner: str) -> None:
        if names:
            with self._write() as conn:
                _execute(conn, "release", {"names": json.dumps(list(names)), "owner": owner,
                                           "now": self._now()})

    # --- failures -------------------------------------------------------------------------------

    def record_failure(self, name: str, owner: str, position: int, attempts: int,
                       error: str) -> None:
        with self._write() as conn:
            _execute(conn, "record_failure", {"name": name, "owner": owner, "position": position,
                                              "attempts": attempts, "error": error,
                                              "now": self._now()})

    def clear_failure(self, tx: EventTransaction, name: str) -> None:
        _execute(self._tx(tx), "clear_failure", {"name": name, "now": self._now()})

    def record_dead_letter(self, tx: EventTransaction, name: str, event: RecordedEvent,
                           error: str, attempts: int) -> int:
        rows = _rows(_execute(self._tx(tx), "insert_dead_letter", {
            "handler": name, "position": event.position, "event_id": str(event.event_id),
            "event_type": event.event_type, "stream_id": event.stream_id, "error": error,
            "attempts": attempts, "now": self._now()}))
        return int(rows[0]["id"])

    def stop(self, tx: EventTransaction, name: str, reason: str, error: str) -> None:
        _execute(self._tx(tx), "stop_handler", {"name": name, "reason": reason, "error": error,
                                                "now": self._now()})

    # --- administration -------------------------------------------------------------------------

    def lock_handler(self, tx: EventTransaction, name: str,
                     kind: HandlerKind) -> tuple[HandlerKind, HandlerStatus]:
        row = _rows(_execute(self._tx(tx), "lock_handler",
                             {"name": name, "kind": kind, "now": self._now()}))[0]
        return row["kind"], row["status"]

    def restart(self, name: str, tx: EventTransaction | None = None) -> bool:
        params = {"name": name, "now": self._now()}
        if tx is not None:
            return bool(_rows(_execute(self._tx(tx), "restart_handler", params)))
        with self._write() as conn:
            return bool(_rows(_execute(conn, "restart_handler", params)))

    def reset_checkpoint(self, tx: EventTransaction, name: str, position: int = 0) -> None:
        _execute(self._tx(tx), "reset_checkpoint",
                 {"name": name, "position": position, "now": self._now()})

    def list_handlers(self) -> list[HandlerRecord]:
        return [HandlerRecord(
            r["name"], r["kind"], r["status"], r["owner"], _time(r["lease_expires_at"]),
            r["failing_position"], r["attempts"], r["last_error"], r["stopped_reason"],
            r["position"], r["dead_letters"]) for r in self._read("list_handlers")]

    def list_dead_letters(self, handler: str | None = None, *, include_retried: bool = False,
                          limit: int = 100) -> list[DeadLetter]:
        return [_dead_letter(r) for r in self._read(
            "list_dead_letters", handler=handler, include_retried=int(include_retried),
            limit=limit)]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        rows = self._read("get_dead_letter", id=dead_letter_id)
        if not rows:
            raise DeadLetterNotFoundError(
                f"no dead letter has id {dead_letter_id}; list them with `tideflow deadletters`")
        return _dead_letter(rows[0])

    def mark_dead_letter_retried(self, tx: EventTransaction, dead_letter_id: int) -> None:
        _execute(self._tx(tx), "mark_dead_letter_retried",
                 {"id": dead_letter_id, "now": self._now()})

    def record_dead_letter_failure(self, dead_letter_id: int, error: str) -> None:
        with self._write() as conn:
            _execute(conn, "record_dead_letter_failure", {"id": dead_letter_id, "error": error})


def _dead_letter(r: Row) -> DeadLetter:
    created_at = _time(r["created_at"])
    assert created_at is not None
    return DeadLetter(r["id"], r["handler"], r["position"], r["event_id"], r["event_type"],
                      r["stream_id"], r["error"], r["attempts"], created_at,
                      _time(r["retried_at"]))
