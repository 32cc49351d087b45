"""The handler store contract: who runs each event handler, and the events it gave up on.

A handler's *progress* is its checkpoint in the event store (``EventStore.get_checkpoint``,
``EventTransaction.advance_checkpoint``). This contract keeps the rest of what running handlers on
many workers needs (migration 0003 of each backend):

* a lease per handler, so that exactly one worker runs it at a time: ``acquire`` takes it if no
  other worker holds a live lease, ``renew`` extends it, ``release`` lets go, and ``hold`` - the
  first statement of every batch transaction - proves the lease is still ours and locks it until
  that transaction ends;
* the failure being retried (``record_failure``), the stop policy's halt (``stop``), and
  ``restart`` (resume, reset);
* dead letters: recorded in the transaction that moves the checkpoint past the event, listed,
  and marked retried.

Methods that take ``tx`` run on that event store transaction's connection, so they commit or roll
back with the checkpoint and the handler's own writes; every other method is a transaction of its
own. Timestamps come from the store's ``Clock``. One implementation, ``storage/handler_store.py``,
over every backend's ``Database``, held to one suite on both (``tests/events/test_handlers.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from tideflow.clock import Clock
from tideflow.events.handling import HandlerKind
from tideflow.events.model import RecordedEvent
from tideflow.storage.database import EVENTS_CHANNEL, Tx

HandlerStatus = Literal["running", "stopped"]


@dataclass(frozen=True, slots=True)
class HandlerLease:
    """A lease this worker holds, with the failure the handler is retrying, if any."""

    failing_position: int | None
    """The event the handler failed on and has not got past yet (None: no failure pending)."""
    attempts: int
    """How many times it failed on that event, counted across workers."""

    def attempts_at(self, position: int) -> int:
        """Failed attempts so far on the event at ``position``."""
        return self.attempts if self.failing_position == position else 0


@dataclass(frozen=True, slots=True)
class HandlerRecord:
    """A handler as ``tideflow handlers`` shows it. ``kind`` and ``status`` are None for a
    checkpoint that no runner has used (advanced by application code, say)."""

    name: str
    kind: HandlerKind | None
    status: HandlerStatus | None
    owner: str | None
    lease_expires_at: datetime | None
    failing_position: int | None
    attempts: int
    last_error: str | None
    stopped_reason: str | None
    position: int
    dead_letters: int
    """Dead letters not retried yet."""

    def is_held(self, now: datetime) -> bool:
        """Whether a worker holds a live lease on it."""
        return (
            self.owner is not None
            and self.lease_expires_at is not None
            and self.lease_expires_at > now
        )


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a handler gave up on (then moved past), with the last error."""

    id: int
    handler: str
    position: int
    event_id: str
    event_type: str
    stream_id: str
    error: str
    attempts: int
    created_at: datetime
    retried_at: datetime | None
    """When a retry succeeded; None while the dead letter is pending."""


class HandlerStore(Protocol):
    """Leases, failures and dead letters of event handlers on one database. Safe to share
    between threads."""

    url: str
    clock: Clock

    def migrate(self) -> list[str]:
        """Apply pending schema migrations (the handler tables are migration 0003 of the
        backend's single sequence: the same as the flow and event stores' ``migrate``)."""
        ...

    def close(self) -> None:
        """Release the connection(s), unless they belong to a flow store passed in."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) when events may have been appended, by this
        process or another; return a function that unsubscribes. A hint only: runners also poll.
        SQLite: any commit to the database file by another connection. PostgreSQL: a NOTIFY on
        channel ``EVENTS_CHANNEL``."""
        ...

    # --- leases ---------------------------------------------------------------------------------

    def acquire(self, name: str, kind: HandlerKind, owner: str, ttl: float) -> HandlerLease | None:
        """Take handler ``name`` for ``owner`` until now + ``ttl`` seconds, creating its row,
        unless another owner holds a live lease or the handler is stopped (then None). Taking
        a handler whose owner's lease expired is how a dead worker is replaced."""
        ...

    def hold(self, tx: Tx, name: str, owner: str, ttl: float) -> HandlerLease:
        """In a batch transaction, before reading events: check that ``owner`` still holds
        the handler and that it should run, extend the lease, and lock the row until the
        transaction ends, so that no other worker can take it over meanwhile. Raises
        ``LeaseLostError`` otherwise: roll the batch back."""
        ...

    def hold_soon(self, tx: Tx, name: str, owner: str, ttl: float) -> Callable[[], HandlerLease]:
        """``hold``, sent with the transaction's next statement (``Tx.prefetch``): the result
        returns the lease or raises ``LeaseLostError``. Call it before anything the batch does
        counts."""
        ...

    def renew(self, names: Sequence[str], owner: str, ttl: float) -> set[str]:
        """Extend ``owner``'s leases on ``names``; return those still held (a lease lost to
        another worker, or a handler stopped, is missing from the result)."""
        ...

    def release(self, names: Sequence[str], owner: str) -> None:
        """Let go of ``owner``'s leases on ``names`` (graceful shutdown), so that another
        worker can take the handlers at once instead of after the lease expires."""
        ...

    # --- failures -------------------------------------------------------------------------------

    def record_failure(
        self, name: str, owner: str, position: int, attempts: int, error: str
    ) -> None:
        """Remember that the handler has failed ``attempts`` times on the event at
        ``position`` (so a worker taking over goes on counting), with the last error."""
        ...

    def clear_failure(self, tx: Tx, name: str) -> None:
        """Forget the pending failure: the handler got past the event."""
        ...

    def record_dead_letter(
        self, tx: Tx, name: str, event: RecordedEvent, error: str, attempts: int
    ) -> int:
        """Record that the handler gave up on ``event``, in the transaction that moves its
        checkpoint past it; return the dead letter's id. One dead letter per (handler, event):
        giving up on it again (after a reset) updates it."""
        ...

    def stop(self, tx: Tx, name: str, reason: str, error: str) -> None:
        """Halt the handler (status ``stopped``, with ``reason``) and release its lease: no
        worker runs it until ``restart``."""
        ...

    # --- administration -------------------------------------------------------------------------

    def lock_handler(
        self, tx: Tx, name: str, kind: HandlerKind
    ) -> tuple[HandlerKind, HandlerStatus]:
        """Lock the handler's row for an administrative change (creating it with ``kind`` if it
        has none), waiting for a batch in flight to commit; return its kind and status."""
        ...

    def restart(self, name: str, tx: Tx | None = None) -> bool:
        """Let a stopped handler run again and forget its pending failure (resume; part of a
        reset). False if the handler has no row."""
        ...

    def reset_checkpoint(self, tx: Tx, name: str, position: int = 0) -> None:
        """Set the handler's checkpoint to ``position`` (backwards too) in ``tx``, so that a
        projection's table is emptied in the same transaction."""
        ...

    def list_handlers(self) -> list[HandlerRecord]:
        """Every handler that has a row or a checkpoint, by name."""
        ...

    def list_dead_letters(
        self, handler: str | None = None, *, include_retried: bool = False, limit: int = 100
    ) -> list[DeadLetter]:
        """Dead letters, oldest first: only ``handler``'s if given, pending ones unless
        ``include_retried``, at most ``limit``."""
        ...

    def get_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """One dead letter; ``DeadLetterNotFoundError`` if there is no such id."""
        ...

    def mark_dead_letter_retried(self, tx: Tx, dead_letter_id: int) -> None:
        """Record, in the transaction of the successful retry, that it succeeded."""
        ...

    def record_dead_letter_failure(self, dead_letter_id: int, error: str) -> None:
        """A retry failed again: keep the new error and count the attempt."""
        ...

    def purge_retried_dead_letters(self, older_than: float, limit: int = 500) -> int:
        """Delete up to ``limit`` dead letters whose retry succeeded more than ``older_than``
        seconds ago, oldest first, in one short transaction; how many. Pending ones stay."""
        ...


__all__ = ["EVENTS_CHANNEL", "DeadLetter", "HandlerLease", "HandlerRecord", "HandlerStore"]
