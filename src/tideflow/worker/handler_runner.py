"""The handler runner: feeds event handlers the log, in order, one worker per handler.

    runner = HandlerRunner(event_store, handler_store, handlers=[OrderTotals(), OrderMailer()])
    await runner.run()              # beside the flow Worker; runner.stop() to shut down

Shape (one asyncio task per handler, plus a heartbeat):

* **lease** - a handler runs on one worker at a time, across processes and machines: the worker
  that ``acquire``s its row (no owner, or the owner's lease expired) runs it and renews the lease
  every ``heartbeat_interval``; the others try again every ``acquire_interval``. A worker that
  dies (SIGKILL, lost machine) stops renewing; once its lease expires another worker takes the
  handler and resumes from the checkpoint of the last batch that committed.
* **batches** - the task reads up to ``batch_size`` events after the handler's checkpoint (before
  any transaction, so a batch holds one connection), then opens ONE transaction that ``hold``s
  the lease (proving it is still ours and locking it to commit: a worker whose lease lapsed
  cannot commit after a new owner started), checks the checkpoint did not move, calls ``handle``
  on each event and advances the checkpoint. Handler writes through ``ctx`` are in that
  transaction: exactly once. A handler with ``transactional = False`` is called outside any
  transaction and the checkpoint advanced after it: at least once.
* **failures** - when ``handle`` raises on event k, the transaction rolls back and the events
  before k are handled again and committed (no savepoint per event: they cost a round trip each
  on the happy path); event k is retried after a backoff, its attempts counted in the handler's
  row so that a new owner goes on counting. After ``max_attempts`` the handler's ``on_failure``
  applies, in one transaction with the checkpoint: a dead letter and the checkpoint moved past
  the event, or the handler stopped where it is.
* **wake-ups** - the handler store's ``subscribe`` (SQLite: commits of other connections;
  PostgreSQL: NOTIFY on ``EVENTS_CHANNEL``), ``wake()``, or the poll interval.

Plain ``handle`` methods run in the handler's own thread (one per handler, so a handler's code
always runs in the same thread); ``async`` ones on the runner's event loop while the batch's
transaction waits in that thread, which also runs the database calls the coroutine makes through
``ctx`` (on SQLite the transaction's lock belongs to that thread).

Shutdown (``stop()``): handlers finish the batch in hand (a non-transactional one stops after the
event in hand), leases are released so that another worker takes over at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import inspect
import logging
import os
import queue
import re
import socket
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from tideflow.clock import Clock
from tideflow.errors import NonRetryableError
from tideflow.events.errors import CheckpointConflictError
from tideflow.events.handlers import (
    Cursor,
    Dialect,
    EventHandler,
    HandlerDefinitionError,
    HandlerError,
    HandlerFailedError,
    HandlerNotFoundError,
    HandlerUsageError,
    LeaseLostError,
    check_handler,
)
from tideflow.events.model import ExpectedVersion, NewEvent, RecordedEvent
from tideflow.events.projections import Projection
from tideflow.storage.engine import backoff_delay
from tideflow.storage.event_contract import EventStore, EventTransaction
from tideflow.storage.handler_contract import DeadLetter, HandlerLease, HandlerStore

log = logging.getLogger("tideflow.handlers")

T = TypeVar("T")


@dataclass(frozen=True)
class HandlerRunnerOptions:
    poll_interval: float = 1.0
    """Seconds between looks for new events when no wake-up arrives."""
    lease_ttl: float = 30.0
    """How long a handler stays with a worker that stopped renewing: the failover delay."""
    heartbeat_interval: float | None = None
    """Seconds between lease renewals; default ``lease_ttl / 3``."""
    acquire_interval: float | None = None
    """Seconds between attempts to take a handler another worker holds (or that is stopped);
    default ``lease_ttl / 3``."""
    shutdown_grace: float = 30.0
    """How long ``stop()`` waits for batches in hand before abandoning them to their leases."""


# --- the context handlers get ---------------------------------------------------------------------

_PYFORMAT = re.compile(r"%\((\w+)\)s|%s|%%")


@functools.lru_cache(maxsize=512)
def sqlite_sql(sql: str) -> str:
    """``%(name)s`` / ``%s`` / ``%%`` placeholders (psycopg's, tideflow's SQL style) in SQLite's
    style, so that a handler writes its SQL once for both backends."""
    return _PYFORMAT.sub(lambda m: f":{m.group(1)}" if m.group(1)
                         else "?" if m.group(0) == "%s" else "%", sql)


def _direct(fn: Callable[[], T]) -> T:
    return fn()


class _Context:
    """``HandlerContext`` for one event. ``call`` runs database work in the thread that owns the
    transaction (see ``_Bridge``)."""

    __slots__ = ("_call", "_store", "_tx", "appended", "attempt", "dialect", "event",
                 "handler", "transactional")

    def __init__(self, handler: EventHandler, event: RecordedEvent, attempt: int,
                 tx: EventTransaction | None, store: EventStore, dialect: Dialect,
                 call: Callable[[Callable[[], Any]], Any] = _direct) -> None:
        self.handler = handler.name
        self.event = event
        self.attempt = attempt
        self.dialect = dialect
        self.transactional = tx is not None
        self.appended = False
        self._tx = tx
        self._store = store
        self._call = call

    @property
    def connection(self) -> Any:
        if self._tx is None:
            raise HandlerUsageError(
                f"handler {self.handler!r} is not transactional, so there is no transaction "
                "whose connection it could write in: set transactional = True on the handler "
                "class to write atomically with its checkpoint")
        return self._tx.connection

    def execute(self, sql: str, params: Any = None) -> Cursor:
        conn = self.connection
        if params is None:
            return self._call(lambda: conn.execute(sql))  # type: ignore[no-any-return]
        text = sqlite_sql(sql) if self.dialect == "sqlite" else sql
        return self._call(lambda: conn.execute(text, params))  # type: ignore[no-any-return]

    def append(self, stream_id: str, events: Sequence[NewEvent],
               expected_version: ExpectedVersion | int = ExpectedVersion.ANY, *,
               idempotency_key: str | None = None) -> list[RecordedEvent]:
        if not isinstance(events, NewEvent) and isinstance(events, Sequence):
            events = [e.caused_by(self.event)
                      if isinstance(e, NewEvent) and e.causation_id is None else e
                      for e in events]
        target: EventTransaction | EventStore = self._tx if self._tx is not None else self._store
        self.appended = True
        return self._call(  # type: ignore[no-any-return]
            lambda: target.append(stream_id, events, expected_version,
                                  idempotency_key=idempotency_key))


_LEAKED_CTX = ("a handler's ctx was used after its handle() returned (from a task or thread it "
               "started?): use ctx only while handle() runs, or the transaction is gone")


class _Bridge:
    """Lets an async ``handle`` run on the event loop while its transaction stays in the
    handler's thread: that thread waits for the coroutine *and* serves the database calls the
    coroutine makes through ``ctx`` (``call``), so they run where the transaction's lock is."""

    def __init__(self) -> None:
        self.thread_id: int | None = None
        self.serving = False
        self._requests: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.get_ident() == self.thread_id:
            return fn()
        if not self.serving:
            raise HandlerUsageError(_LEAKED_CTX)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._requests.put((fn, done))
        return done.result()

    def wait_for(self, loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
        self.serving = True  # before the coroutine can start and call ctx
        try:
            future = asyncio.run_coroutine_threadsafe(_coroutine(awaitable), loop)
            future.add_done_callback(lambda _: self._requests.put(None))
            while (request := self._requests.get()) is not None:
                fn, done = request
                try:
                    done.set_result(fn())
                except BaseException as exc:
                    done.set_exception(exc)
        finally:
            self.serving = False
            while not self._requests.empty():  # a late call (a leaked ctx) must not hang
                late = self._requests.get_nowait()
                if late is not None:
                    late[1].set_exception(HandlerUsageError(_LEAKED_CTX))
        return future.result()


async def _coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def dialect_of_url(url: str) -> Dialect:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


class _Raised(Exception):
    """``handle`` raised ``error`` on the event at ``index`` of the batch: roll back."""

    def __init__(self, index: int, error: Exception) -> None:
        self.index = index
        self.error = error


def _invoke_inline(handler: EventHandler, event: RecordedEvent, ctx: _Context) -> None:
    """Call ``handle`` outside a runner (administrative calls): a coroutine runs to completion
    on a loop of its own in this thread, where the transaction is."""
    result = handler.handle(event, ctx)
    if result is not None and inspect.isawaitable(result):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_coroutine(result))
            return
        if inspect.iscoroutine(result):
            result.close()
        raise HandlerUsageError(
            f"handler {handler.name!r} is async and this call is synchronous: call it from a "
            "thread without a running event loop (await asyncio.to_thread(...))")


# --- per-handler state ----------------------------------------------------------------------------


@dataclass
class _Failure:
    event: RecordedEvent
    error: Exception
    attempts: int
    """Failed attempts on this event, this one included."""
    checkpoint: int
    """Where the checkpoint is: just before the event."""


@dataclass
class _Outcome:
    handled: int = 0
    more: bool = False
    failure: _Failure | None = None
    appended: bool = False
    """The handler appended events (committed): the other handlers have new work."""


class _Slot:
    def __init__(self, handler: EventHandler) -> None:
        self.handler = handler
        self.name = handler.name
        self.is_async = inspect.iscoroutinefunction(type(handler).handle)
        self.executor = _thread_pool(handler.name)
        self.bridge = _Bridge()
        self.owned = False
        self.idle = False
        self.idle_at = -1
        """The runner's ``_generation`` when the look that found nothing to do began."""
        self.appended = False
        self.in_tx = False
        self.retry_at: datetime | None = None
        self.wake = asyncio.Event()


def _thread_pool(name: str) -> concurrent.futures.ThreadPoolExecutor:
    """One thread: a handler's code and its transactions always run in the same thread."""
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"tideflow-{name}")


# --- the runner -----------------------------------------------------------------------------------


class HandlerRunner:
    """Runs event handlers until ``stop()``: see the module docstring for the model."""

    def __init__(self, event_store: EventStore, handler_store: HandlerStore,
                 handlers: Iterable[EventHandler | type[EventHandler]], *,
                 worker_id: str | None = None, clock: Clock | None = None,
                 options: HandlerRunnerOptions | None = None) -> None:
        """``clock`` (default: the handler store's) times retries; lease times come from the
        handler store's clock. ``worker_id`` must differ between runners: two runners with one
        id would share leases."""
        self.event_store = event_store
        self.handler_store = handler_store
        self.handlers = [check_handler(h) for h in handlers]
        self._by_name: dict[str, EventHandler] = {}
        for h in self.handlers:
            if h.name in self._by_name:
                raise HandlerDefinitionError(
                    f"two handlers are named {h.name!r} ({type(self._by_name[h.name]).__qualname__}"
                    f" and {type(h).__qualname__}); a name is a checkpoint: give each its own")
            self._by_name[h.name] = h
        self.worker_id = (worker_id
                          or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")
        self.clock = clock or handler_store.clock
        self.options = options or HandlerRunnerOptions()
        self.dialect = dialect_of_url(event_store.url)
        self._slots: list[_Slot] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._until_idle = False
        self._generation = 0
        """Counts batches that appended events, so that ``until_idle`` does not stop on a
        handler that found nothing just before another one appended events for it."""
        self.handled = 0
        """Events handled and committed since the runner was made (all handlers)."""

    # --- public ---------------------------------------------------------------------------------

    def handler(self, name: str) -> EventHandler:
        try:
            return self._by_name[name]
        except KeyError:
            raise HandlerNotFoundError(
                f"this runner has no handler named {name!r}; it runs "
                f"{sorted(self._by_name) or 'none'}") from None

    def stop(self) -> None:
        """Ask the runner to shut down gracefully; safe from any thread or signal handler."""
        self._stopping = True
        self.wake()

    def wake(self) -> None:
        """Tell the handlers that events may have been appended; safe from any thread."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(self._wake_all)

    async def run(self, *, until_idle: bool = False) -> None:
        """Run the handlers until ``stop()``. With ``until_idle``, return once every handler
        has caught up with the log (or is stopped, or held by another worker) - for tests,
        scripts and rebuilds."""
        self._loop = asyncio.get_running_loop()
        self._until_idle = until_idle
        self._slots = [_Slot(h) for h in self.handlers]
        if not self._slots:
            if not until_idle:
                while not self._stopping:
                    await asyncio.sleep(self.options.poll_interval)
            return
        unsubscribe = self.handler_store.subscribe(self.wake)
        admin = _thread_pool("handlers")
        heartbeat = asyncio.create_task(self._heartbeat(admin))
        tasks = [asyncio.create_task(self._drive(slot)) for slot in self._slots]
        log.info("handler runner %s started: %s", self.worker_id, [s.name for s in self._slots])
        try:
            await asyncio.wait(tasks)
        finally:
            self._stopping = True
            self._wake_all()
            late: set[asyncio.Task[None]] = set()
            pending = [t for t in tasks if not t.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=self.options.shutdown_grace)
                for task in late:
                    task.cancel()
            heartbeat.cancel()
            await asyncio.gather(heartbeat, *tasks, return_exceptions=True)
            unsubscribe()
            held = [s.name for s, t in zip(self._slots, tasks, strict=True)
                    if s.owned and t not in late]
            try:
                await self._loop.run_in_executor(admin, self.handler_store.release, held,
                                                 self.worker_id)
            except Exception:
                log.exception("releasing handlers %s failed; their leases will expire", held)
            for slot in self._slots:
                slot.executor.shutdown(wait=False)
            admin.shutdown(wait=False)
            self._stopping = False  # a later run() starts afresh; a stop() before run() holds
            log.info("handler runner %s stopped", self.worker_id)

    def run_until_idle(self) -> None:
        """``run(until_idle=True)`` for synchronous code (not inside a running event loop)."""
        asyncio.run(self.run(until_idle=True))

    def reset(self, name: str) -> None:
        """``reset_handler`` for one of this runner's handlers (a projection's table too)."""
        reset_handler(self.event_store, self.handler_store, self.handler(name))

    def resume(self, name: str) -> bool:
        """Let a stopped handler run again; False if it never ran."""
        return self.handler_store.restart(self.handler(name).name)

    def retry_dead_letter(self, dead_letter_id: int) -> DeadLetter:
        """``retry_dead_letter`` with the handler the dead letter belongs to."""
        dead = self.handler_store.get_dead_letter(dead_letter_id)
        return retry_dead_letter(self.event_store, self.handler_store, self.handler(dead.handler),
                                 dead_letter_id)

    # --- the loop of one handler ----------------------------------------------------------------

    async def _drive(self, slot: _Slot) -> None:
        opts = self.options
        every = opts.acquire_interval or opts.lease_ttl / 3
        while not self._stopping:
            slot.wake.clear()
            generation = self._generation
            try:
                if not slot.owned and not await self._acquire(slot):
                    self._set_idle(slot, True, generation)
                    await self._nap(slot, every)
                    continue
                if slot.retry_at is not None:
                    wait = (slot.retry_at - self.clock.now()).total_seconds()
                    if wait > 0:
                        self._set_idle(slot, False)
                        await self._nap(slot, min(wait, opts.poll_interval))
                        continue
                    slot.retry_at = None
                outcome = await self._in_thread(slot, self._batch, slot)
                self.handled += outcome.handled
                if outcome.appended:
                    self._generation += 1
                    self._wake_all()
                if outcome.failure is not None:
                    self._set_idle(slot, False)
                    await self._in_thread(slot, self._failed, slot, outcome.failure)
                elif not outcome.handled and not outcome.more:
                    self._set_idle(slot, True, generation)
                    await self._nap(slot, opts.poll_interval)
                else:
                    self._set_idle(slot, False)
            except LeaseLostError as exc:
                slot.owned = False
                log.warning("%s", exc)
            except Exception as exc:
                log.exception("handler %s: %s; trying again in %gs", slot.name, describe(exc),
                              opts.poll_interval)
                await self._nap(slot, opts.poll_interval)

    async def _acquire(self, slot: _Slot) -> bool:
        h = slot.handler
        lease = await self._in_thread(slot, self.handler_store.acquire, slot.name, h.kind,
                                      self.worker_id, self.options.lease_ttl)
        if lease is None:
            return False
        if isinstance(h, Projection):  # before it counts as running: no table, no batches
            await self._in_thread(slot, self._set_up, slot, h)
        slot.owned = True
        log.info("handler %s: running on worker %s", slot.name, self.worker_id)
        return True

    def _set_up(self, slot: _Slot, projection: Projection) -> None:
        with self.event_store.transaction() as tx:
            self.handler_store.hold(tx, slot.name, self.worker_id, self.options.lease_ttl)
            try:
                projection.setup(tx.connection)
            except Exception as exc:
                raise HandlerError(f"projection {slot.name!r}: setup(connection) failed, so it "
                                   f"cannot run: {describe(exc)}; fix its schema") from exc

    async def _in_thread(self, slot: _Slot, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(slot.executor, fn, *args)

    async def _nap(self, slot: _Slot, seconds: float) -> None:
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.wake.wait(), seconds)

    def _wake_all(self) -> None:
        for slot in self._slots:
            slot.wake.set()

    def _set_idle(self, slot: _Slot, idle: bool, generation: int = -1) -> None:
        slot.idle, slot.idle_at = idle, generation
        if idle and self._until_idle and all(s.idle and s.idle_at == self._generation
                                             for s in self._slots):
            self.stop()

    async def _heartbeat(self, admin: concurrent.futures.Executor) -> None:
        """Renew the leases of handlers not inside a transaction (a batch's ``hold`` renews its
        own; on PostgreSQL renewing it here would wait for the batch's row lock)."""
        assert self._loop is not None
        opts = self.options
        while True:
            await asyncio.sleep(opts.heartbeat_interval or opts.lease_ttl / 3)
            names = [s.name for s in self._slots if s.owned and not s.in_tx]
            try:
                held = await self._loop.run_in_executor(
                    admin, self.handler_store.renew, names, self.worker_id, opts.lease_ttl)
            except Exception:
                log.exception("renewing handler leases failed; retrying")
                continue
            for slot in self._slots:
                if slot.name in names and slot.name not in held and slot.owned:
                    slot.owned = False
                    log.warning("handler %s: lease lost (another worker took over, or it was "
                                "stopped)", slot.name)

    # --- batches (in the handler's thread) ------------------------------------------------------

    def _read(self, h: EventHandler, position: int) -> tuple[list[RecordedEvent], int]:
        """Events after ``position`` for one batch, and the position the checkpoint may move to
        once they are handled: the last event's if the batch is full, else the head (so that a
        handler of rare types does not scan the same unrelated events again)."""
        head = self.event_store.head_position()
        if head <= position:
            return [], position
        events = list(self.event_store.read_all(position, h.event_types, limit=h.batch_size,
                                                to_position=head))
        full = len(events) == h.batch_size
        return events, events[-1].position if full else head

    def _invoke(self, slot: _Slot, event: RecordedEvent, ctx: _Context) -> None:
        result = slot.handler.handle(event, ctx)
        if result is not None and inspect.isawaitable(result):
            assert self._loop is not None
            slot.bridge.wait_for(self._loop, result)

    def _deliver(self, slot: _Slot, tx: EventTransaction | None, lease: HandlerLease,
                 events: Sequence[RecordedEvent]) -> int:
        """Handle ``events`` in order; raise ``_Raised`` at the first failure. A non-transactional
        handler stops early (returning how many it handled) if its lease is lost or the runner
        is stopping: nothing holds its batch together, so it commits what it did."""
        if slot.is_async:
            # One trip to the loop per batch, not per event (a trip costs ~70 us).
            assert self._loop is not None
            return slot.bridge.wait_for(self._loop,
                                        self._deliver_async(slot, tx, lease, events))
        for i, event in enumerate(events):
            if tx is None and (not slot.owned or self._stopping):
                return i
            ctx = self._context(slot, tx, lease, event)
            try:
                self._invoke(slot, event, ctx)
            except concurrent.futures.CancelledError:
                raise  # the loop is shutting down: not the handler's failure
            except Exception as exc:
                raise _Raised(i, exc) from exc
            slot.appended |= ctx.appended
        return len(events)

    async def _deliver_async(self, slot: _Slot, tx: EventTransaction | None,
                             lease: HandlerLease, events: Sequence[RecordedEvent]) -> int:
        """``_deliver`` for an ``async def handle``, on the loop."""
        handle = slot.handler.handle
        for i, event in enumerate(events):
            if tx is None and (not slot.owned or self._stopping):
                return i
            ctx = self._context(slot, tx, lease, event)
            try:
                await handle(event, ctx)  # type: ignore[misc]
            except Exception as exc:
                raise _Raised(i, exc) from exc
            slot.appended |= ctx.appended
        return len(events)

    def _context(self, slot: _Slot, tx: EventTransaction | None, lease: HandlerLease,
                 event: RecordedEvent) -> _Context:
        return _Context(slot.handler, event, lease.attempts_at(event.position) + 1, tx,
                        self.event_store, self.dialect, slot.bridge.call)

    def _batch(self, slot: _Slot) -> _Outcome:
        slot.bridge.thread_id = threading.get_ident()
        slot.appended = False
        outcome = self._handle_batch(slot)
        outcome.appended = slot.appended and outcome.handled > 0
        return outcome

    def _handle_batch(self, slot: _Slot) -> _Outcome:
        h = slot.handler
        position = self.event_store.get_checkpoint(slot.name)
        events, upto = self._read(h, position)
        if upto <= position:
            return _Outcome()
        more = len(events) == h.batch_size
        if h.transactional:
            return self._transactional_batch(slot, position, events, upto, more)
        return self._plain_batch(slot, position, events, upto, more)

    def _transactional_batch(self, slot: _Slot, position: int, events: list[RecordedEvent],
                             upto: int, more: bool) -> _Outcome:
        failure: _Failure | None = None
        lease = HandlerLease(None, 0)
        while True:
            slot.in_tx = True
            slot.appended = False  # what a rolled-back attempt appended is gone
            try:
                with self.event_store.transaction() as tx:
                    lease = self.handler_store.hold(tx, slot.name, self.worker_id,
                                                    self.options.lease_ttl)
                    if tx.lock_checkpoint(slot.name) != position:
                        return _Outcome(more=True)  # reset meanwhile: read again
                    self._deliver(slot, tx, lease, events)
                    tx.advance_checkpoint(slot.name, upto)
                    if lease.failing_position is not None and lease.failing_position <= upto:
                        self.handler_store.clear_failure(tx, slot.name)
                return _Outcome(len(events), more and failure is None, failure)
            except _Raised as raised:  # rolled back
                event = events[raised.index]
                checkpoint = events[raised.index - 1].position if raised.index else position
                failure = _Failure(event, raised.error, lease.attempts_at(event.position) + 1,
                                   checkpoint)
                if not raised.index:
                    return _Outcome(failure=failure)
                events, upto = events[:raised.index], checkpoint
            finally:
                slot.in_tx = False

    def _plain_batch(self, slot: _Slot, position: int, events: list[RecordedEvent], upto: int,
                     more: bool) -> _Outcome:
        with self.event_store.transaction() as tx:
            lease = self.handler_store.hold(tx, slot.name, self.worker_id,
                                            self.options.lease_ttl)
        failure: _Failure | None = None
        try:
            done = self._deliver(slot, None, lease, events)
        except _Raised as raised:
            done = raised.index
            event = events[done]
            checkpoint = events[done - 1].position if done else position
            failure = _Failure(event, raised.error, lease.attempts_at(event.position) + 1,
                               checkpoint)
        if done < len(events):
            upto, more = (events[done - 1].position if done else position), False
        if upto > position:
            try:
                with self.event_store.transaction() as tx:
                    self.handler_store.hold(tx, slot.name, self.worker_id, self.options.lease_ttl)
                    tx.advance_checkpoint(slot.name, upto, expected=position)
                    if lease.failing_position is not None and lease.failing_position <= upto:
                        self.handler_store.clear_failure(tx, slot.name)
            except CheckpointConflictError:
                return _Outcome(more=True)  # reset meanwhile: start again from where it is now
        return _Outcome(done, more, failure)

    def _failed(self, slot: _Slot, failure: _Failure) -> None:
        """After a failed attempt: schedule a retry, or apply the handler's ``on_failure``."""
        h, event = slot.handler, failure.event
        error = describe(failure.error)
        what = (f"handler {slot.name!r} failed on event {event.position} ({event.event_type} "
                f"in stream {event.stream_id!r}), attempt {failure.attempts}/{h.max_attempts}")
        final = (failure.attempts >= h.max_attempts
                 or isinstance(failure.error, NonRetryableError))
        if not final:
            delay = backoff_delay(failure.attempts, h.base_delay, h.max_delay)
            # Counted from the failure, before anything else takes time (or a test moves the
            # clock on seeing the failure recorded).
            slot.retry_at = self.clock.now() + timedelta(seconds=delay)
            log.warning("%s: %s; retrying in %.2fs", what, error, delay)
            self.handler_store.record_failure(slot.name, self.worker_id, event.position,
                                              failure.attempts, error)
            return
        log.error("%s: %s; giving up (%s)", what, error, h.on_failure.replace("_", " "),
                  exc_info=failure.error)
        with self.event_store.transaction() as tx:
            self.handler_store.hold(tx, slot.name, self.worker_id, self.options.lease_ttl)
            if tx.lock_checkpoint(slot.name) != failure.checkpoint:
                return  # reset meanwhile: the event will come again
            if h.on_failure == "dead_letter":
                self.handler_store.record_dead_letter(tx, slot.name, event, error,
                                                      failure.attempts)
                tx.advance_checkpoint(slot.name, event.position)
                self.handler_store.clear_failure(tx, slot.name)
            else:
                reason = (f"event {event.position} ({event.event_type} in stream "
                          f"{event.stream_id!r}) failed {failure.attempts} time(s): {error}")
                self.handler_store.stop(tx, slot.name, reason, error)
        if h.on_failure == "stop":
            slot.owned = False


# --- administration -------------------------------------------------------------------------------


def reset_handler(event_store: EventStore, handler_store: HandlerStore,
                  handler: EventHandler | str) -> None:
    """Set a handler's checkpoint back to 0 so that it processes the whole log again, and let it
    run if it was stopped. A projection's tables are emptied in the same transaction (the
    Projection is needed for that: a name alone is refused for a projection). Safe while a
    worker runs the handler: it waits for the batch in hand, and the next batch starts at 0."""
    if isinstance(handler, str):
        name, kind = handler, None
        if name not in {r.name for r in handler_store.list_handlers()}:
            raise HandlerNotFoundError(
                f"no handler named {name!r} has run on this database; `tideflow handlers` "
                "lists those that have")
    else:
        name, kind = handler.name, handler.kind
    with event_store.transaction() as tx:
        stored_kind, _ = handler_store.lock_handler(tx, name, kind or "handler")
        if isinstance(handler, Projection):
            handler.setup(tx.connection)
            handler.reset(tx.connection)
        elif stored_kind == "projection":
            raise HandlerUsageError(
                f"handler {name!r} is a projection: resetting its checkpoint without emptying "
                "its table would apply every event to it twice. Reset it with its code: "
                f"`tideflow handlers reset {name} --app module:attr`, or pass the Projection")
        handler_store.reset_checkpoint(tx, name, 0)
        handler_store.restart(name, tx)
    log.info("handler %s: reset to position 0", name)


def retry_dead_letter(event_store: EventStore, handler_store: HandlerStore,
                      handler: EventHandler, dead_letter_id: int) -> DeadLetter:
    """Run ``handler`` again on the event of a dead letter, now, in this thread; on success mark
    the dead letter retried (in the handler's transaction, if it is transactional) and return
    it. ``HandlerFailedError`` if the handler fails again (the dead letter keeps the new error).
    It holds the handler's row meanwhile, so it never overlaps a batch of the same handler."""
    handler = check_handler(handler)
    dead = handler_store.get_dead_letter(dead_letter_id)
    if dead.handler != handler.name:
        raise HandlerUsageError(f"dead letter {dead.id} belongs to handler {dead.handler!r}, "
                                f"not {handler.name!r}")
    if dead.retried_at is not None:
        raise HandlerUsageError(f"dead letter {dead.id} was already retried successfully "
                                f"({dead.retried_at:%Y-%m-%d %H:%M:%S}); nothing to do")
    found = list(event_store.read_all(dead.position - 1, limit=1, to_position=dead.position))
    if not found or str(found[0].event_id) != dead.event_id:
        raise HandlerError(f"the event of dead letter {dead.id} (position {dead.position}, "
                           f"id {dead.event_id}) is no longer in the event store")
    event = found[0]
    dialect = dialect_of_url(event_store.url)
    try:
        with event_store.transaction() as tx:
            handler_store.lock_handler(tx, handler.name, handler.kind)
            ctx = _Context(handler, event, dead.attempts + 1,
                           tx if handler.transactional else None, event_store, dialect)
            try:
                _invoke_inline(handler, event, ctx)
            except HandlerUsageError:
                raise
            except Exception as exc:
                raise _Raised(0, exc) from exc
            handler_store.mark_dead_letter_retried(tx, dead.id)
    except _Raised as raised:
        error = describe(raised.error)
        handler_store.record_dead_letter_failure(dead.id, error)
        raise HandlerFailedError(
            f"handler {handler.name!r} failed again on dead letter {dead.id} (event "
            f"{event.position}, {event.event_type} in stream {event.stream_id!r}): {error}",
            raised.error) from raised.error
    log.info("handler %s: dead letter %d (event %d) retried", handler.name, dead.id,
             event.position)
    return handler_store.get_dead_letter(dead.id)


__all__ = [
    "HandlerRunner",
    "HandlerRunnerOptions",
    "reset_handler",
    "retry_dead_letter",
]
