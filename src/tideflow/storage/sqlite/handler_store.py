"""SQLite handler store: leases, failures and dead letters of event handlers (migration 0003).

It runs on a ``SQLiteStore``'s connection and lock - its own, or a flow store's passed to
``sharing`` - like the SQLite event store. Methods that take an event store transaction run on
that transaction's connection instead: the event store holds SQLite's write lock for the whole
transaction (``BEGIN IMMEDIATE``), so they are as atomic with the checkpoint as PostgreSQL's row
locks make them there.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tideflow.events.handling import DeadLetterNotFoundError, HandlerKind, LeaseLostError
from tideflow.events.model import RecordedEvent
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.handler_contract import (
    DeadLetter,
    HandlerLease,
    HandlerRecord,
    HandlerStatus,
)
from tideflow.storage.sqlite.side_store import SQLiteSideStore, sqlite_queries

Row = dict[str, Any]


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _rows(cur: sqlite3.Cursor) -> list[Row]:
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


class SQLiteHandlerStore(SQLiteSideStore):
    """``HandlerStore`` on SQLite. Safe to share between threads."""

    _queries = sqlite_queries("handlers_queries.sql")
    _schema_missing = "the tideflow handler tables are missing"
    _store_name = "handler store"

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        # The flow store's watcher reports commits of every other connection to the file: the
        # event store's appends in this process (its own connection) and in other processes.
        return self._flows.subscribe(callback)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _expires(self, ttl: float) -> float:
        return (self.clock.now() + timedelta(seconds=ttl)).timestamp()

    def _read(self, name: str, **params: Any) -> list[Row]:
        with self._lock:
            return _rows(self._execute(self._conn, name, params))

    # --- leases ---------------------------------------------------------------------------------

    def acquire(self, name: str, kind: HandlerKind, owner: str, ttl: float) -> HandlerLease | None:
        with self._write() as conn:
            rows = _rows(
                self._execute(
                    conn,
                    "acquire",
                    {
                        "name": name,
                        "kind": kind,
                        "owner": owner,
                        "expires": self._expires(ttl),
                        "now": self._now(),
                    },
                )
            )
        return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"]) if rows else None

    def hold(self, tx: EventTransaction, name: str, owner: str, ttl: float) -> HandlerLease:
        rows = _rows(
            self._execute(
                self._tx(tx),
                "hold",
                {"name": name, "owner": owner, "expires": self._expires(ttl), "now": self._now()},
            )
        )
        if not rows:
            raise LeaseLostError(
                f"handler {name!r} is no longer held by worker {owner!r}: "
                "another worker took it over, or it was stopped"
            )
        return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"])

    def renew(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        if not names:
            return set()
        with self._write() as conn:
            rows = _rows(
                self._execute(
                    conn,
                    "renew",
                    {
                        "names": json.dumps(list(names)),
                        "owner": owner,
                        "expires": self._expires(ttl),
                        "now": self._now(),
                    },
                )
            )
        return {r["name"] for r in rows}

    def release(self, names: Sequence[str], owner: str) -> None:
        if names:
            with self._write() as conn:
                self._execute(
                    conn,
                    "release",
                    {"names": json.dumps(list(names)), "owner": owner, "now": self._now()},
                )

    # --- failures -------------------------------------------------------------------------------

    def record_failure(
        self, name: str, owner: str, position: int, attempts: int, error: str
    ) -> None:
        with self._write() as conn:
            self._execute(
                conn,
                "record_failure",
                {
                    "name": name,
                    "owner": owner,
                    "position": position,
                    "attempts": attempts,
                    "error": error,
                    "now": self._now(),
                },
            )

    def clear_failure(self, tx: EventTransaction, name: str) -> None:
        self._execute(self._tx(tx), "clear_failure", {"name": name, "now": self._now()})

    def record_dead_letter(
        self, tx: EventTransaction, name: str, event: RecordedEvent, error: str, attempts: int
    ) -> int:
        rows = _rows(
            self._execute(
                self._tx(tx),
                "insert_dead_letter",
                {
                    "handler": name,
                    "position": event.position,
                    "event_id": str(event.event_id),
                    "event_type": event.event_type,
                    "stream_id": event.stream_id,
                    "error": error,
                    "attempts": attempts,
                    "now": self._now(),
                },
            )
        )
        return int(rows[0]["id"])

    def stop(self, tx: EventTransaction, name: str, reason: str, error: str) -> None:
        self._execute(
            self._tx(tx),
            "stop_handler",
            {"name": name, "reason": reason, "error": error, "now": self._now()},
        )

    # --- administration -------------------------------------------------------------------------

    def lock_handler(
        self, tx: EventTransaction, name: str, kind: HandlerKind
    ) -> tuple[HandlerKind, HandlerStatus]:
        row = _rows(
            self._execute(
                self._tx(tx), "lock_handler", {"name": name, "kind": kind, "now": self._now()}
            )
        )[0]
        return row["kind"], row["status"]

    def restart(self, name: str, tx: EventTransaction | None = None) -> bool:
        params = {"name": name, "now": self._now()}
        if tx is not None:
            return bool(_rows(self._execute(self._tx(tx), "restart_handler", params)))
        with self._write() as conn:
            return bool(_rows(self._execute(conn, "restart_handler", params)))

    def reset_checkpoint(self, tx: EventTransaction, name: str, position: int = 0) -> None:
        self._execute(
            self._tx(tx),
            "reset_checkpoint",
            {"name": name, "position": position, "now": self._now()},
        )

    def list_handlers(self) -> list[HandlerRecord]:
        return [
            HandlerRecord(
                r["name"],
                r["kind"],
                r["status"],
                r["owner"],
                _time(r["lease_expires_at"]),
                r["failing_position"],
                r["attempts"],
                r["last_error"],
                r["stopped_reason"],
                r["position"],
                r["dead_letters"],
            )
            for r in self._read("list_handlers")
        ]

    def list_dead_letters(
        self, handler: str | None = None, *, include_retried: bool = False, limit: int = 100
    ) -> list[DeadLetter]:
        return [
            _dead_letter(r)
            for r in self._read(
                "list_dead_letters",
                handler=handler,
                include_retried=int(include_retried),
                limit=limit,
            )
        ]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        rows = self._read("get_dead_letter", id=dead_letter_id)
        if not rows:
            raise DeadLetterNotFoundError(
                f"no dead letter has id {dead_letter_id}; list them with `tideflow deadletters`"
            )
        return _dead_letter(rows[0])

    def mark_dead_letter_retried(self, tx: EventTransaction, dead_letter_id: int) -> None:
        self._execute(
            self._tx(tx), "mark_dead_letter_retried", {"id": dead_letter_id, "now": self._now()}
        )

    def record_dead_letter_failure(self, dead_letter_id: int, error: str) -> None:
        with self._write() as conn:
            self._execute(
                conn, "record_dead_letter_failure", {"id": dead_letter_id, "error": error}
            )


def _dead_letter(r: Row) -> DeadLetter:
    created_at = _time(r["created_at"])
    assert created_at is not None
    return DeadLetter(
        r["id"],
        r["handler"],
        r["position"],
        r["event_id"],
        r["event_type"],
        r["stream_id"],
        r["error"],
        r["attempts"],
        created_at,
        _time(r["retried_at"]),
    )
