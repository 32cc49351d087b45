"""``HandlerRunner``: when each handler runs - leases, wake-ups, retries, idleness, shutdown.

The batches themselves are ``HandlerBatches``' (``batches.py``); the model is described in the
package docstring (``tideflow.worker.handlers``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tideflow.clock import Clock
from tideflow.errors import SchemaNotReadyError
from tideflow.events.handling import (
    EventHandler,
    HandlerDefinitionError,
    HandlerNotFoundError,
    LeaseLostError,
    check_handler,
)
from tideflow.events.projections import Projection
from tideflow.retrying import Backoff
from tideflow.storage.event_contract import EventStore
from tideflow.storage.handler_contract import DeadLetter, HandlerStore
from tideflow.storage.timer_contract import TimerStore
from tideflow.worker.handlers.admin import reset_handler, retry_dead_letter
from tideflow.worker.handlers.batches import HandlerBatches, HandlerSlot, handler_thread_pool
from tideflow.worker.handlers.context import describe
from tideflow.worker.handlers.timers import TimerLoop
from tideflow.worker.outage import WAIT_OUT, Outage, retrying

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
    batch_size: int | None = None
    """Events per batch transaction for every handler of this runner, overriding their own
    ``batch_size`` (more: throughput; fewer: latency and shorter transactions)."""

    def __post_init__(self) -> None:
        size = self.batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"batch_size must be a positive int or None, got {size!r}")


class HandlerRunner:
    """Runs event handlers until ``stop()``: see the package docstring for the model."""

    def __init__(
        self,
        event_store: EventStore,
        handler_store: HandlerStore,
        handlers: Iterable[EventHandler | type[EventHandler]],
        *,
        worker_id: str | None = None,
        clock: Clock | None = None,
        options: HandlerRunnerOptions | None = None,
        timers: TimerStore | None = None,
    ) -> None:
        """``clock`` (default: the handler store's) times retries; lease times come from the
        handler store's clock. ``worker_id`` must differ between runners: two runners with one
        id would share leases. ``timers``: fire the due timers of process managers too (the
        App passes its timer store when it has a process manager; see ``timers.py``)."""
        self.event_store = event_store
        self.handler_store = handler_store
        self.handlers = [check_handler(h) for h in handlers]
        self._by_name: dict[str, EventHandler] = {}
        for h in self.handlers:
            if h.name in self._by_name:
                raise HandlerDefinitionError(
                    f"two handlers are named {h.name!r} ({type(self._by_name[h.name]).__qualname__}"
                    f" and {type(h).__qualname__}); a name is a checkpoint: give each its own"
                )
            self._by_name[h.name] = h
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock or handler_store.clock
        self.options = options or HandlerRunnerOptions()
        self.dialect = event_store.dialect
        self._slots: list[HandlerSlot] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._forced = False
        self._forced_event: asyncio.Event | None = None
        self._until_idle = False
        self._generation = 0
        """Counts batches that appended events, so that ``until_idle`` does not stop on a
        handler that found nothing just before another one appended events for it."""
        self.handled = 0
        """Events handled and committed since the runner was made (all handlers)."""
        self.timers = timers
        self.timers_fired = 0
        """Timers this runner fired since it was made."""
        self._timer_loop: TimerLoop | None = None
        self._schema_error: SchemaNotReadyError | None = None
        self._timers_idle_at = -1
        #: Logs database outages once for all of this runner's handlers.
        self.outage = Outage(log, f"handler runner {self.worker_id}")

    # --- public ---------------------------------------------------------------------------------

    def handler(self, name: str) -> EventHandler:
        try:
            return self._by_name[name]
        except KeyError:
            raise HandlerNotFoundError(
                f"this runner has no handler named {name!r}; it runs "
                f"{sorted(self._by_name) or 'none'}"
            ) from None

    def stop(self, *, force: bool = False) -> None:
        """Ask the runner to shut down gracefully (batches in hand get ``shutdown_grace`` to
        finish); with ``force``, abandon them now (their transactions roll back or their leases
        expire). Safe from any thread or signal handler, and again to force."""
        self._stopping = True
        self._forced = self._forced or force
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
        self._forced_event = asyncio.Event()
        if self._forced:
            self._forced_event.set()
        self._until_idle = until_idle
        self._schema_error = None
        self._timers_idle_at = -1
        self._slots = [HandlerSlot(h) for h in self.handlers]
        if not self._slots:
            if not until_idle:
                while not self._stopping:
                    await asyncio.sleep(self.options.poll_interval)
            return
        batches = HandlerBatches(
            self.event_store,
            self.handler_store,
            worker_id=self.worker_id,
            lease_ttl=self.options.lease_ttl,
            clock=self.clock,
            dialect=self.dialect,
            loop=self._loop,
            stopping=lambda: self._stopping,
            batch_size=self.options.batch_size,
        )
        unsubscribe = self.handler_store.subscribe(self.wake)
        admin = handler_thread_pool("handlers")
        heartbeat = asyncio.create_task(self._heartbeat(admin))
        timer_jobs: list[asyncio.Task[None]] = []
        self._timer_loop = None
        if self.timers is not None:
            self._timer_loop = TimerLoop(
                self.timers,
                self.outage,
                self.options.poll_interval,
                stopping=lambda: self._stopping,
                generation=lambda: self._generation,
                fired=self._timers_fired,
                idle=self._timers_idle,
            )
            timer_jobs.append(asyncio.create_task(self._timer_loop.run()))
        tasks = [asyncio.create_task(self._drive(slot, batches)) for slot in self._slots]
        log.info("handler runner %s started: %s", self.worker_id, [s.name for s in self._slots])
        try:
            await asyncio.wait([*tasks, *timer_jobs])
        finally:
            self._stopping = True
            self._wake_all()
            late: set[asyncio.Task[None]] = set()
            # The timer loop too: a firing in hand commits (or not) before the stores close.
            pending = [t for t in (*tasks, *timer_jobs) if not t.done()]
            if pending:
                late = await self._wait_or_force(pending)
                for task in late:
                    task.cancel()
            heartbeat.cancel()
            await asyncio.gather(heartbeat, *tasks, *timer_jobs, return_exceptions=True)
            unsubscribe()
            held = [
                s.name for s, t in zip(self._slots, tasks, strict=True) if s.owned and t not in late
            ]
            try:  # one try: a database that is away lets the leases expire instead
                await self._loop.run_in_executor(
                    admin, self.handler_store.release, held, self.worker_id
                )
            except Exception:
                log.exception("releasing handlers %s failed; their leases will expire", held)
            for slot in self._slots:
                slot.executor.shutdown(wait=False)
            admin.shutdown(wait=False)
            # A later run() starts afresh (a stop() before run() holds).
            self._stopping = self._forced = False
            log.info("handler runner %s stopped", self.worker_id)
        if self._schema_error is not None:
            raise self._schema_error

    async def _wait_or_force(self, pending: list[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        """Wait up to ``shutdown_grace`` for ``pending``, less if forced; the tasks still
        running then."""
        assert self._forced_event is not None
        forced = asyncio.create_task(self._forced_event.wait())
        finished = asyncio.create_task(asyncio.wait(pending))
        try:
            await asyncio.wait(
                [finished, forced],
                timeout=self.options.shutdown_grace,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            forced.cancel()
            finished.cancel()
        return {t for t in pending if not t.done()}

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
        return retry_dead_letter(
            self.event_store, self.handler_store, self.handler(dead.handler), dead_letter_id
        )

    # --- the loop of one handler ----------------------------------------------------------------

    async def _drive(self, slot: HandlerSlot, batches: HandlerBatches) -> None:
        opts = self.options
        every = opts.acquire_interval or opts.lease_ttl / 3
        backoff = Backoff()
        while not self._stopping:
            slot.wake.clear()
            generation = self._generation
            try:
                if not slot.owned and not await self._acquire(slot, batches):
                    self._reached_database(slot, backoff)
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
                outcome = await self._in_thread(slot, batches.run, slot)
                self._reached_database(slot, backoff)
                self.handled += outcome.handled
                if outcome.appended:
                    # The other handlers were woken at each commit (the event store wakes its
                    # Database's subscribers, this runner among them); this marks the new work
                    # for run-until-idle.
                    self._generation += 1
                    self._wake_all()
                if outcome.failure is not None:
                    self._set_idle(slot, False)
                    await self._in_thread(slot, batches.failed, slot, outcome.failure)
                elif not outcome.handled and not outcome.more:
                    self._set_idle(slot, True, generation)
                    await self._nap(slot, opts.poll_interval)
                else:
                    self._set_idle(slot, False)
            except LeaseLostError as exc:
                slot.owned = False
                log.warning("%s", exc)
            except WAIT_OUT as exc:
                if self._until_idle and isinstance(exc, SchemaNotReadyError):
                    # Run until idle (a script, a test) on a database nobody migrated: waiting
                    # for a migration would never end; say so instead.
                    self._schema_error = exc
                    self.stop()
                    return
                # The batch rolled back (or never began): nothing counted, nothing lost. Its
                # lease may lapse meanwhile; then hold() says so and another worker goes on.
                self._set_idle(slot, False)
                self.outage.failed(f"handler {slot.name}", exc)
                await self._nap(slot, backoff.next_delay())
            except Exception as exc:
                # Not the database's weather: the handler's own code outside handle() (a
                # projection's setup, an upcaster) or a bug. Logged in full, retried; it must
                # not stop the other handlers or the flows of this worker.
                log.exception(
                    "handler %s: %s; trying again in %gs",
                    slot.name,
                    describe(exc),
                    opts.poll_interval,
                )
                await self._nap(slot, opts.poll_interval)

    def _reached_database(self, slot: HandlerSlot, backoff: Backoff) -> None:
        backoff.reset()
        self.outage.recovered(f"handler {slot.name}")

    async def _acquire(self, slot: HandlerSlot, batches: HandlerBatches) -> bool:
        h = slot.handler
        lease = await self._in_thread(
            slot,
            self.handler_store.acquire,
            slot.name,
            h.kind,
            self.worker_id,
            self.options.lease_ttl,
        )
        if lease is None:
            return False
        if isinstance(h, Projection):  # before it counts as running: no table, no batches
            await self._in_thread(slot, batches.set_up, slot, h)
        slot.owned = True
        slot.checkpoint = None  # the lease is new: the checkpoint may have moved meanwhile
        log.info("handler %s: running on worker %s", slot.name, self.worker_id)
        return True

    async def _in_thread(self, slot: HandlerSlot, fn: Callable[..., T], *args: Any) -> T:
        assert self._loop is not None
        return await self._loop.run_in_executor(slot.executor, fn, *args)

    async def _nap(self, slot: HandlerSlot, seconds: float) -> None:
        if not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(slot.wake.wait(), seconds)

    def _wake_all(self) -> None:
        for slot in self._slots:
            slot.wake.set()
        if self._timer_loop is not None and (self._until_idle or self._stopping):
            # Not on every append when serving: the timer loop would read the database for each.
            # Run until idle, it must look again after the handlers' appends (a reaction may
            # schedule a timer that is due already).
            self._timer_loop.wake.set()
        if self._forced and self._forced_event is not None:
            self._forced_event.set()

    def _set_idle(self, slot: HandlerSlot, idle: bool, generation: int = -1) -> None:
        slot.idle, slot.idle_at = idle, generation
        if idle:
            self._stop_if_idle()

    def _timers_fired(self, fired: int) -> None:
        self.timers_fired += fired
        self._generation += 1  # new events in the log: the handlers are not idle any more
        self._wake_all()

    def _timers_idle(self, generation: int) -> None:
        self._timers_idle_at = generation
        self._stop_if_idle()

    def _stop_if_idle(self) -> None:
        """With ``until_idle``: stop once every handler, and the timer loop, found nothing to do
        since the last batch that appended events."""
        if (
            self._until_idle
            and all(s.idle and s.idle_at == self._generation for s in self._slots)
            and (self._timer_loop is None or self._timers_idle_at == self._generation)
        ):
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
                held = await retrying(
                    self.outage,
                    "renewing handler leases",
                    functools.partial(
                        self.handler_store.renew, names, self.worker_id, opts.lease_ttl
                    ),
                    executor=admin,
                )
            except Exception:
                log.exception("renewing handler leases failed; retrying")
                continue
            for slot in self._slots:
                if slot.name in names and slot.name not in held and slot.owned:
                    slot.owned = False
                    log.warning(
                        "handler %s: lease lost (another worker took over, or it was stopped)",
                        slot.name,
                    )
