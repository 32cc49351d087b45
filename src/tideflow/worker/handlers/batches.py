"""One batch of one handler, in that handler's thread: read, deliver in a transaction, advance
the checkpoint; and what follows a failed delivery (a retry later, a dead letter, or a stop).

``HandlerRunner`` (``runner.py``) decides *when* a handler gets a batch; ``HandlerBatches`` does
the batch. The model (leases, exactly-once writes, rollback of the events before a failure) is
described in the package docstring.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from tideflow.clock import Clock
from tideflow.errors import DatabaseUnavailableError, NonRetryableError
from tideflow.events.errors import CheckpointConflictError
from tideflow.events.handling import Dialect, EventHandler, HandlerError
from tideflow.events.model import RecordedEvent
from tideflow.events.projections import Projection
from tideflow.retrying import backoff_delay
from tideflow.storage.event_contract import EventStore, EventTransaction
from tideflow.storage.handler_contract import HandlerLease, HandlerStore
from tideflow.telemetry import tracing
from tideflow.worker.handlers.context import DeliveryContext, HandleRaised, ThreadBridge, describe

log = logging.getLogger("tideflow.handlers")

#: How long ``HandlerBatches.run`` goes on from batch to batch before it returns to the runner.
FOLLOW_BUDGET = 0.05


def handler_thread_pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One thread: a handler's code and its transactions always run in the same thread."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tideflow-{name}")


class HandlerSlot:
    """A handler as one ``run()`` of the runner sees it: its thread, its lease, its state."""

    def __init__(self, handler: EventHandler) -> None:
        self.handler = handler
        self.name = handler.name
        self.is_async = inspect.iscoroutinefunction(type(handler).handle)
        self.executor = handler_thread_pool(handler.name)
        self.bridge = ThreadBridge()
        self.owned = False
        self.idle = False
        self.idle_at = -1
        """The runner's ``_generation`` when the look that found nothing to do began."""
        self.appended = False
        self.in_tx = False
        self.checkpoint: int | None = None
        """The checkpoint as this worker's last committed batch left it (None: read it)."""
        self.ahead: Callable[[], tuple[list[RecordedEvent], int] | None] | None = None
        """The page after ``checkpoint``, read with the last batch's COMMIT (None: read it)."""
        self.retry_at: datetime | None = None
        self.wake = asyncio.Event()


@dataclass
class Failure:
    event: RecordedEvent
    error: Exception
    attempts: int
    """Failed attempts on this event, this one included."""
    checkpoint: int
    """Where the checkpoint is: just before the event."""


@dataclass
class BatchOutcome:
    handled: int = 0
    more: bool = False
    failure: Failure | None = None
    appended: bool = False
    """The handler appended events (committed): the other handlers have new work."""


class HandlerBatches:
    """Batches and failures of the handlers of one ``HandlerRunner.run()``; every method runs in
    the handler's own thread (``HandlerSlot.executor``)."""

    def __init__(
        self,
        event_store: EventStore,
        handler_store: HandlerStore,
        *,
        worker_id: str,
        lease_ttl: float,
        clock: Clock,
        dialect: Dialect,
        loop: asyncio.AbstractEventLoop,
        stopping: Callable[[], bool],
        batch_size: int | None = None,
    ) -> None:
        """``stopping`` tells whether the runner is shutting down (a non-transactional handler
        then stops after the event in hand); ``loop`` runs ``async`` handlers."""
        self.event_store = event_store
        self.handler_store = handler_store
        self.worker_id = worker_id
        self.lease_ttl = lease_ttl
        self.clock = clock
        self.dialect = dialect
        self._loop = loop
        self._stopping = stopping
        self._batch_size = batch_size  # the runner's override of every handler's batch_size

    def _size(self, h: EventHandler) -> int:
        return self._batch_size or h.batch_size

    def set_up(self, slot: HandlerSlot, projection: Projection) -> None:
        """Create a projection's tables before it runs (under its lease)."""
        with self.event_store.transaction() as tx:
            self.handler_store.hold(tx, slot.name, self.worker_id, self.lease_ttl)
            try:
                projection.setup(tx)
            except Exception as exc:
                if self.event_store.is_unavailable(exc):
                    # The database went away under the setup, not a fault of the schema: the
                    # runner waits it out like any outage.
                    raise DatabaseUnavailableError(
                        f"projection {slot.name!r}: setting up its tables failed: {describe(exc)}"
                    ) from exc
                raise HandlerError(
                    f"projection {slot.name!r}: setup(tx) failed, so it "
                    f"cannot run: {describe(exc)}; fix its schema"
                ) from exc

    def run(self, slot: HandlerSlot, budget: float = FOLLOW_BUDGET) -> BatchOutcome:
        """Handle the next batch of ``slot``'s handler - and, while each batch handles events
        and leaves more (a full page, or events it appended itself: a process manager's next
        step), the batches after it, for up to ``budget`` seconds. Each trip back to the
        runner's loop and out again costs two thread hand-offs per batch (a tenth of a
        three-step saga's latency); the other handlers hear of its appends at each commit, as
        from any appender (the event store wakes its Database's subscribers). A failure ends
        the run and comes back in the outcome."""
        slot.bridge.thread_id = threading.get_ident()
        total = BatchOutcome()
        until = time.monotonic() + budget
        while True:
            slot.appended = False
            try:
                outcome = self._handle_batch(slot)
            except Exception:
                if not total.handled:
                    raise
                # What went wrong (a lost lease, an outage) rolled this batch back; it comes
                # again on the runner's next call, which deals with it. Report what committed.
                total.more = True
                return total
            outcome.appended = slot.appended and outcome.handled > 0
            total.handled += outcome.handled
            total.appended |= outcome.appended
            total.more, total.failure = outcome.more, outcome.failure
            if (
                outcome.failure is not None
                or not outcome.handled
                or not (outcome.more or outcome.appended)
                or not slot.owned
                or slot.retry_at is not None
                or self._stopping()
                or time.monotonic() >= until
            ):
                # A run that found nothing after handling some says so: the runner looks again
                # (new events may have come meanwhile), as after any batch that handled events.
                total.more = total.more or (total.handled > 0 and total.failure is None)
                return total

    def failed(self, slot: HandlerSlot, failure: Failure) -> None:
        """After a failed attempt: schedule a retry, or apply the handler's ``on_failure``."""
        h, event = slot.handler, failure.event
        error = describe(failure.error)
        what = (
            f"handler {slot.name!r} failed on event {event.position} ({event.event_type} "
            f"in stream {event.stream_id!r}), attempt {failure.attempts}/{h.max_attempts}"
        )
        final = failure.attempts >= h.max_attempts or isinstance(failure.error, NonRetryableError)
        if not final:
            delay = backoff_delay(failure.attempts, h.base_delay, h.max_delay)
            # Counted from the failure, before anything else takes time (or a test moves the
            # clock on seeing the failure recorded).
            slot.retry_at = self.clock.now() + timedelta(seconds=delay)
            log.warning("%s: %s; retrying in %.2fs", what, error, delay)
            self.handler_store.record_failure(
                slot.name, self.worker_id, event.position, failure.attempts, error
            )
            return
        log.error(
            "%s: %s; giving up (%s)",
            what,
            error,
            h.on_failure.replace("_", " "),
            exc_info=failure.error,
        )
        with self.event_store.transaction() as tx:
            self.handler_store.hold(tx, slot.name, self.worker_id, self.lease_ttl)
            if tx.lock_checkpoint(slot.name) != failure.checkpoint:
                return  # reset meanwhile: the event will come again
            if h.on_failure == "dead_letter":
                self.handler_store.record_dead_letter(tx, slot.name, event, error, failure.attempts)
                tx.advance_checkpoint(slot.name, event.position)
                self.handler_store.clear_failure(tx, slot.name)
            else:
                reason = (
                    f"event {event.position} ({event.event_type} in stream "
                    f"{event.stream_id!r}) failed {failure.attempts} time(s): {error}"
                )
                self.handler_store.stop(tx, slot.name, reason, error)
        if h.on_failure == "stop":
            slot.owned = False

    # --- a batch --------------------------------------------------------------------------------

    def _handle_batch(self, slot: HandlerSlot) -> BatchOutcome:
        h = slot.handler
        # Where the last batch of this lease left the checkpoint - or read it. A stale value
        # (a reset by an operator meanwhile) is caught in the batch's transaction, which locks
        # the checkpoint and compares.
        position, ahead = slot.checkpoint, slot.ahead
        slot.checkpoint = slot.ahead = None  # known again only once this batch has committed
        position, events, upto = self._read(h, slot.name, position, ahead)
        if upto <= position:
            return BatchOutcome()
        more = len(events) == self._size(h)
        if h.transactional:
            return self._transactional_batch(slot, position, events, upto, more)
        return self._plain_batch(slot, position, events, upto, more)

    def _read(
        self,
        h: EventHandler,
        name: str,
        position: int | None,
        ahead: Callable[[], tuple[list[RecordedEvent], int] | None] | None,
    ) -> tuple[int, list[RecordedEvent], int]:
        """Where the batch starts (``position``, or the checkpoint read with the page), its
        events, and the position the checkpoint may move to once they are handled: the last
        event's if the batch is full, else the head (so that a handler of rare types does not
        scan the same unrelated events again). ``ahead``: the page read with the last batch's
        COMMIT, if it was."""
        page = ahead() if ahead is not None and position is not None else None
        if page is not None:
            assert position is not None
            events, head = page
        elif position is None:
            position, events, head = self.event_store.read_page_from_checkpoint(
                name, h.event_types, self._size(h)
            )
        else:
            events, head = self.event_store.read_page(position, h.event_types, self._size(h))
        if head <= position:
            return position, [], position
        full = len(events) == self._size(h)
        return position, events, events[-1].position if full else head

    def _transactional_batch(
        self, slot: HandlerSlot, position: int, events: list[RecordedEvent], upto: int, more: bool
    ) -> BatchOutcome:
        h = slot.handler
        failure: Failure | None = None
        lease = HandlerLease(None, 0)
        while True:
            slot.in_tx = True
            slot.appended = False  # what a rolled-back attempt appended is gone
            try:
                with self.event_store.transaction() as tx:
                    # The lease, the checkpoint and what before_batch reads (a process manager's
                    # instances) go to the server in one round trip; nothing of the batch counts
                    # until both are checked, and a batch that fails either rolls back.
                    held = self.handler_store.hold_soon(
                        tx, slot.name, self.worker_id, self.lease_ttl
                    )
                    locked = tx.lock_checkpoint_soon(slot.name)
                    try:
                        self._before_batch(slot, tx, events)
                    finally:
                        lease = held()  # LeaseLostError first: it outranks a failed hook
                        if locked() != position:
                            raise _CheckpointMoved from None  # reset meanwhile: read again
                    self._deliver(slot, tx, lease, events, before=False)
                    tx.advance_checkpoint(slot.name, upto)
                    if lease.failing_position is not None and lease.failing_position <= upto:
                        self.handler_store.clear_failure(tx, slot.name)
                    # Events it appended may be its own next step: read on, with the COMMIT.
                    ahead = (
                        tx.read_page_after_commit(upto, h.event_types, self._size(h))
                        if slot.appended and failure is None
                        else None
                    )
                if failure is None:
                    slot.checkpoint, slot.ahead = upto, ahead
                return BatchOutcome(len(events), more and failure is None, failure)
            except _CheckpointMoved:  # rolled back
                return BatchOutcome(more=True)
            except HandleRaised as raised:  # rolled back
                event = events[raised.index]
                checkpoint = events[raised.index - 1].position if raised.index else position
                failure = Failure(
                    event, raised.error, lease.attempts_at(event.position) + 1, checkpoint
                )
                if not raised.index:
                    return BatchOutcome(failure=failure)
                events, upto = events[: raised.index], checkpoint
            finally:
                slot.in_tx = False

    def _plain_batch(
        self, slot: HandlerSlot, position: int, events: list[RecordedEvent], upto: int, more: bool
    ) -> BatchOutcome:
        with self.event_store.transaction() as tx:
            lease = self.handler_store.hold(tx, slot.name, self.worker_id, self.lease_ttl)
        failure: Failure | None = None
        try:
            done = self._deliver(slot, None, lease, events)
        except HandleRaised as raised:
            done = raised.index
            event = events[done]
            checkpoint = events[done - 1].position if done else position
            failure = Failure(
                event, raised.error, lease.attempts_at(event.position) + 1, checkpoint
            )
        if done < len(events):
            upto, more = (events[done - 1].position if done else position), False
        if upto > position:
            try:
                with self.event_store.transaction() as tx:
                    self.handler_store.hold(tx, slot.name, self.worker_id, self.lease_ttl)
                    tx.advance_checkpoint(slot.name, upto, expected=position)
                    if lease.failing_position is not None and lease.failing_position <= upto:
                        self.handler_store.clear_failure(tx, slot.name)
            except CheckpointConflictError:
                return BatchOutcome(more=True)  # reset meanwhile: start again from where it is
        return BatchOutcome(done, more, failure)

    # --- delivering events to handle() ---------------------------------------------------------

    def _deliver(
        self,
        slot: HandlerSlot,
        tx: EventTransaction | None,
        lease: HandlerLease,
        events: Sequence[RecordedEvent],
        *,
        before: bool = True,
    ) -> int:
        """Handle ``events`` in order; raise ``HandleRaised`` at the first failure. A
        non-transactional handler stops early (returning how many it handled) if its lease is
        lost or the runner is stopping: nothing holds its batch together, so it commits what it
        did. ``before=False``: the caller ran ``before_batch`` already."""
        if tx is None:
            return self._deliver_each(slot, None, lease, events)
        if before:
            self._before_batch(slot, tx, events)
        done = self._deliver_each(slot, tx, lease, events)
        _batch_hook(self.event_store, done - 1, lambda: slot.handler.after_batch(tx))
        return done

    def _before_batch(
        self, slot: HandlerSlot, tx: EventTransaction, events: Sequence[RecordedEvent]
    ) -> None:
        _batch_hook(self.event_store, 0, lambda: slot.handler.before_batch(events, tx))

    def _deliver_each(
        self,
        slot: HandlerSlot,
        tx: EventTransaction | None,
        lease: HandlerLease,
        events: Sequence[RecordedEvent],
    ) -> int:
        """``_deliver`` without the batch hooks."""
        if slot.is_async:
            # One trip to the loop per batch, not per event (a trip costs ~70 us).
            return slot.bridge.wait_for(self._loop, self._deliver_async(slot, tx, lease, events))
        for i, event in enumerate(events):
            if tx is None and (not slot.owned or self._stopping()):
                return i
            ctx = self._context(slot, tx, lease, event)
            try:
                with tracing.handler_span(slot.handler.name, slot.handler.kind, event):
                    self._invoke(slot, event, ctx)
            except concurrent.futures.CancelledError:
                raise  # the loop is shutting down: not the handler's failure
            except Exception as exc:
                _raise_if_unavailable(self.event_store, exc)
                raise HandleRaised(i, exc) from exc
            slot.appended |= ctx.appended
        return len(events)

    async def _deliver_async(
        self,
        slot: HandlerSlot,
        tx: EventTransaction | None,
        lease: HandlerLease,
        events: Sequence[RecordedEvent],
    ) -> int:
        """``_deliver`` for an ``async def handle``, on the loop."""
        handle = slot.handler.handle
        for i, event in enumerate(events):
            if tx is None and (not slot.owned or self._stopping()):
                return i
            ctx = self._context(slot, tx, lease, event)
            try:
                with tracing.handler_span(slot.handler.name, slot.handler.kind, event):
                    await handle(event, ctx)  # type: ignore[misc]
            except Exception as exc:
                _raise_if_unavailable(self.event_store, exc)
                raise HandleRaised(i, exc) from exc
            slot.appended |= ctx.appended
        return len(events)

    def _invoke(self, slot: HandlerSlot, event: RecordedEvent, ctx: DeliveryContext) -> None:
        result = slot.handler.handle(event, ctx)
        if result is not None and inspect.isawaitable(result):
            slot.bridge.wait_for(self._loop, result)

    def _context(
        self,
        slot: HandlerSlot,
        tx: EventTransaction | None,
        lease: HandlerLease,
        event: RecordedEvent,
    ) -> DeliveryContext:
        return DeliveryContext(
            slot.handler,
            event,
            lease.attempts_at(event.position) + 1,
            tx,
            self.event_store,
            self.dialect,
            slot.bridge.call,
        )


class _CheckpointMoved(Exception):
    """The checkpoint is not where the batch read from (reset meanwhile): roll back, read
    again."""


def _batch_hook(event_store: EventStore, index: int, hook: Callable[[], None]) -> None:
    """Run a handler's ``before_batch`` / ``after_batch``; a failure is the failure of the
    batch's event at ``index`` (its first, its last), so the batch rolls back as for any
    event."""
    try:
        hook()
    except concurrent.futures.CancelledError:
        raise
    except Exception as exc:
        _raise_if_unavailable(event_store, exc)
        raise HandleRaised(max(index, 0), exc) from exc


def _raise_if_unavailable(event_store: EventStore, exc: Exception) -> None:
    """A handler that failed because the database went away (its ``ctx.execute`` met a lost
    connection, a locked SQLite file) did not fail: the batch rolls back and the runner waits the
    outage out, without counting an attempt."""
    if event_store.is_unavailable(exc):
        if isinstance(exc, DatabaseUnavailableError):
            raise exc
        raise DatabaseUnavailableError(
            f"the database became unavailable while a handler ran: {exc}"
        ) from exc
