"""The handler store, written once over a ``Database``: leases, failures and dead letters of event
handlers (migration 0003 of each backend explains the lease model: the ``hold`` in each batch
transaction locks the handler's row to commit, which is what keeps a worker whose lease lapsed
from committing after another took over).

Methods that take a transaction run in it - the event store transaction of a handler's batch -
so that their locks and writes commit with its checkpoint; the others are one statement each,
committed on its own. Wake-ups come from the Database's ``EVENTS_CHANNEL``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from tideflow.clock import Clock
from tideflow.events.handling import DeadLetterNotFoundError, HandlerKind, LeaseLostError
from tideflow.events.model import RecordedEvent
from tideflow.storage.database import EVENTS_CHANNEL, Database, Tx
from tideflow.storage.handler_contract import DeadLetter, HandlerLease, HandlerRecord, HandlerStatus


class SqlHandlerStore:
    """``HandlerStore`` over a ``Database``. Safe to share between threads.

    ``owns_db``: ``close()`` closes the Database too (a store opened on its own)."""

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self.db = db
        self.url = db.url
        self.clock: Clock = db.clock
        self._owns_db = owns_db

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.db.subscribe(EVENTS_CHANNEL, callback)

    def _expires(self, ttl: float) -> datetime:
        return self.clock.now() + timedelta(seconds=ttl)

    # --- leases ---------------------------------------------------------------------------------

    def acquire(self, name: str, kind: HandlerKind, owner: str, ttl: float) -> HandlerLease | None:
        rows = self.db.rows(
            "acquire",
            name=name,
            kind=kind,
            owner=owner,
            expires=self._expires(ttl),
            now=self.clock.now(),
        )
        return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"]) if rows else None

    def hold(self, tx: Tx, name: str, owner: str, ttl: float) -> HandlerLease:
        return self.hold_soon(tx, name, owner, ttl)()

    def hold_soon(self, tx: Tx, name: str, owner: str, ttl: float) -> Callable[[], HandlerLease]:
        fetch = tx.prefetch(
            "hold", name=name, owner=owner, expires=self._expires(ttl), now=self.clock.now()
        )

        def lease() -> HandlerLease:
            rows = fetch()
            if not rows:
                raise LeaseLostError(
                    f"handler {name!r} is no longer held by worker {owner!r}: "
                    "another worker took it over, or it was stopped"
                )
            return HandlerLease(rows[0]["failing_position"], rows[0]["attempts"])

        return lease

    def renew(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        if not names:
            return set()
        rows = self.db.rows(
            "renew",
            names=list(names),
            owner=owner,
            expires=self._expires(ttl),
            now=self.clock.now(),
        )
        return {r["name"] for r in rows}

    def release(self, names: Sequence[str], owner: str) -> None:
        if names:
            self.db.rows("release", names=list(names), owner=owner, now=self.clock.now())

    # --- failures -------------------------------------------------------------------------------

    def record_failure(
        self, name: str, owner: str, position: int, attempts: int, error: str
    ) -> None:
        self.db.rows(
            "record_failure",
            name=name,
            owner=owner,
            position=position,
            attempts=attempts,
            error=error,
            now=self.clock.now(),
        )

    def clear_failure(self, tx: Tx, name: str) -> None:
        tx.run("clear_failure", name=name, now=self.clock.now())

    def record_dead_letter(
        self, tx: Tx, name: str, event: RecordedEvent, error: str, attempts: int
    ) -> int:
        rows = tx.rows(
            "insert_dead_letter",
            handler=name,
            position=event.position,
            event_id=str(event.event_id),
            event_type=event.event_type,
            stream_id=event.stream_id,
            error=error,
            attempts=attempts,
            now=self.clock.now(),
        )
        return int(rows[0]["id"])

    def stop(self, tx: Tx, name: str, reason: str, error: str) -> None:
        tx.run("stop_handler", name=name, reason=reason, error=error, now=self.clock.now())

    # --- administration -------------------------------------------------------------------------

    def lock_handler(
        self, tx: Tx, name: str, kind: HandlerKind
    ) -> tuple[HandlerKind, HandlerStatus]:
        row = tx.rows("lock_handler", name=name, kind=kind, now=self.clock.now())[0]
        return row["kind"], row["status"]

    def restart(self, name: str, tx: Tx | None = None) -> bool:
        if tx is not None:
            return bool(tx.rows("restart_handler", name=name, now=self.clock.now()))
        return bool(self.db.rows("restart_handler", name=name, now=self.clock.now()))

    def reset_checkpoint(self, tx: Tx, name: str, position: int = 0) -> None:
        # The event store's query: the checkpoint is its row (a reset moves it backwards).
        tx.run("reset_checkpoint", name=name, position=position, updated_at=self.clock.now())

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
            for r in self.db.rows("list_handlers")
        ]

    def list_dead_letters(
        self, handler: str | None = None, *, include_retried: bool = False, limit: int = 100
    ) -> list[DeadLetter]:
        return [
            DeadLetter(**r)
            for r in self.db.rows(
                "list_dead_letters", handler=handler, include_retried=include_retried, limit=limit
            )
        ]

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        rows = self.db.rows("get_dead_letter", id=dead_letter_id)
        if not rows:
            raise DeadLetterNotFoundError(
                f"no dead letter has id {dead_letter_id}; list them with `tideflow deadletters`"
            )
        return DeadLetter(**rows[0])

    def mark_dead_letter_retried(self, tx: Tx, dead_letter_id: int) -> None:
        tx.run("mark_dead_letter_retried", id=dead_letter_id, now=self.clock.now())

    def record_dead_letter_failure(self, dead_letter_id: int, error: str) -> None:
        self.db.rows("record_dead_letter_failure", id=dead_letter_id, error=error)

    def purge_retried_dead_letters(self, older_than: float, limit: int = 500) -> int:
        before = self.clock.now() - timedelta(seconds=older_than)
        with self.db.transaction() as tx:
            return tx.run("purge_retried_dead_letters", before=before, limit=limit)
