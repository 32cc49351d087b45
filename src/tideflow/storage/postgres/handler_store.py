"""PostgreSQL handler store: leases, failures and dead letters of event handlers (migration 0003).

It runs on a ``PostgresStore``'s pool - its own, or a flow store's passed to ``sharing`` - like the
PostgreSQL event store; methods that take an event store transaction run on that transaction's
connection, so that their row locks and writes belong to it. Migration 0003 explains the lease
model: the ``hold`` in each batch transaction locks the handler's row to commit, which is what
keeps a worker whose lease lapsed from committing after another took over.

Wake-ups: a listener thread (started by the first ``subscribe``) LISTENs on ``EVENTS_CHANNEL``,
which every PostgreSQL event store NOTIFYs shortly after its appends commit (notifier.py).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import psycopg

from tideflow.errors import StorageError
from tideflow.events.handling import DeadLetterNotFoundError, HandlerKind, LeaseLostError
from tideflow.events.model import RecordedEvent
from tideflow.storage.event_contract import EventTransaction
from tideflow.storage.handler_contract import (
    EVENTS_CHANNEL,
    DeadLetter,
    HandlerLease,
    HandlerRecord,
    HandlerStatus,
)
from tideflow.storage.postgres.backend import PostgresStore, listen_forever
from tideflow.storage.postgres.side_store import PostgresSideStore
from tideflow.storage.sqlfile import load_queries

log = logging.getLogger(__name__)


class PostgresHandlerStore(PostgresSideStore):
    """``HandlerStore`` on PostgreSQL. Safe to share between threads."""

    _queries = load_queries("tideflow.storage.postgres", "handlers_queries.sql")
    _schema_missing = "the tideflow handler tables are missing"

    def _setup(self, flows: PostgresStore, owns: bool) -> None:
        super()._setup(flows, owns)
        self._subscribers: list[Callable[[], None]] = []
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()

    def close(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            # Wake the listener now rather than at its next timeout, so close() is quick.
            with contextlib.suppress(psycopg.Error, StorageError):
                self._run("wake_listeners", channel=EVENTS_CHANNEL)
            self._listener.join(timeout=2.0)
        super().close()

    # --- wake-ups -------------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        if self._listener is None:
            self._listener = threading.Thread(
                target=self._listen, daemon=True, name="tideflow-events-listen"
            )
            self._listener.start()

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def _listen(self) -> None:
        """Forward NOTIFYs on the events channel to subscribers; reconnect on failure (and
        wake the subscribers once then: appends made meanwhile sent no NOTIFY they heard)."""
        listen_forever(
            self.url,
            EVENTS_CHANNEL,
            self._wake_subscribers,
            self._stopping,
            "handler runners poll until it is back",
        )

    def _wake_subscribers(self) -> None:
        for callback in list(self._subscribers):
            callback()

    def _expires(self, ttl: float) -> Any:
        return self.clock.now() + timedelta(seconds=ttl)

    # --- leases ---------------------------------------------------------------------------------

    def acquire(self, name: str, kind: HandlerKind, owner: str, ttl: float) -> HandlerLease | None:
        rows = self._run(
            "acquire",
            name=name,
            kind=kind,
            owner=owner,
            expires=self._expires(ttl),
            now=self.clock.now(),
        )
        return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"]) if rows else None

    def hold(self, tx: EventTransaction, name: str, owner: str, ttl: float) -> HandlerLease:
        rows = self._in(
            tx, "hold", name=name, owner=owner, expires=self._expires(ttl), now=self.clock.now()
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
        rows = self._run(
            "renew",
            names=list(names),
            owner=owner,
            expires=self._expires(ttl),
            now=self.clock.now(),
        )
        return {r["name"] for r in rows}

    def release(self, names: Sequence[str], owner: str) -> None:
        if names:
            self._run("release", names=list(names), owner=owner, now=self.clock.now())

    # --- failures -------------------------------------------------------------------------------

    def record_failure(
        self, name: str, owner: str, position: int, attempts: int, error: str
    ) -> None:
        self._run(
            "record_failure",
            name=name,
            owner=owner,
            position=position,
            attempts=attempts,
            error=error,
            now=self.clock.now(),
        )

    def clear_failure(self, tx: EventTransaction, name: str) -> None:
        self._in(tx, "clear_failure", name=name, now=self.clock.now())

    def record_dead_letter(
        self, tx: EventTransaction, name: str, event: RecordedEvent, error: str, attempts: int
    ) -> int:
        rows = self._in(
            tx,
            "insert_dead_letter",
            handler=name,
            position=event.position,
            event_id=event.event_id,
            event_type=event.event_type,
            stream_id=event.stream_id,
            error=error,
            attempts=attempts,
            now=self.clock.now(),
        )
        return int(rows[0]["id"])

    def stop(self, tx: EventTransaction, name: str, reason: str, error: str) -> None:
        self._in(tx, "stop_handler", name=name, reason=reason, error=error, now=self.clock.now())

    # --- administration -------------------------------------------------------------------------

    def lock_handler(
        self, tx: EventTransaction, name: str, kind: HandlerKind
    ) -> tuple[HandlerKind, HandlerStatus]:
        row = self._in(tx, "lock_handler", name=name, kind=kind, now=self.clock.now())[0]
        return row["kind"], row["status"]

    def restart(self, name: str, tx: EventTransaction | None = None) -> bool:
        if tx is not None:
            return bool(self._in(tx, "restart_handler", name=name, now=self.clock.now()))
        return bool(self._run("restart_handler", name=name, now=self.clock.now()))

    def reset_checkpoint(self, tx: EventTransaction, name: str, position: int = 0) -> None:
        self._in(tx, "reset_checkpoint", name=name, position=position, now=self.clock.now())

    def list_handlers(self) -> list[HandlerRecord]:
        return [
            HandlerRecord(
                r["name"],
                r["kind"],
                r["status"],
                r["owner"],
                r["lease_expires_at"],
                r["failing_position"],
                r["attempts"],
                r["last_error"],
                r["stopped_reason"],
                r["position"],
                r["dead_letters"],
            )
            for r in self._run("list_handlers")
        ]

    def list_dead_letters(
        self, handler: str | None = None, *, include_retried: bool = False, limit: int = 100
    ) -> list[DeadLetter]:
        return [
            DeadLetter(**r)
            for r in self._run(
                "list_dead_letters", handler=handler, include_retried=include_retried, limit=limit
            )
        ]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        rows = self._run("get_dead_letter", id=dead_letter_id)
        if not rows:
            raise DeadLetterNotFoundError(
                f"no dead letter has id {dead_letter_id}; list them with `tideflow deadletters`"
            )
        return DeadLetter(**rows[0])

    def mark_dead_letter_retried(self, tx: EventTransaction, dead_letter_id: int) -> None:
        self._in(tx, "mark_dead_letter_retried", id=dead_letter_id, now=self.clock.now())

    def record_dead_letter_failure(self, dead_letter_id: int, error: str) -> None:
        self._run("record_dead_letter_failure", id=dead_letter_id, error=error)
