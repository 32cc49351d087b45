"""Firing process managers' timers: one loop beside a handler runner's handlers.

Any number of workers may run it on one database: ``TimerStore.fire_due`` takes each due timer
in one transaction with its event, so each fires once whoever gets there first (the timer store
contract says how). The loop looks at when the soonest timer is due (one indexed read) and opens
a firing transaction only once one is, so an idle worker writes nothing; it sleeps until then or
``poll_interval``, whichever comes first, and is woken early when this process schedules a
timer due sooner (``TimerStore.watch``). Timers scheduled by other processes are found by the
poll, so one may fire up to ``poll_interval`` late.

The fired events are events like any other: the runner's handlers (the process managers) pick
them up from the log and route them to their instances. Database outages are waited out as in
every loop of a worker (``tideflow.worker.outage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from tideflow.retrying import Backoff
from tideflow.storage.timer_contract import TimerStore
from tideflow.worker.handlers.batches import handler_thread_pool
from tideflow.worker.outage import WAIT_OUT, Outage

log = logging.getLogger("tideflow.handlers")

#: Timers fired per transaction: a backlog drains in short transactions.
FIRE_BATCH = 100
#: Seconds before looking again at due timers that other transactions hold.
BUSY_RETRY = 0.05


class TimerLoop:
    """Fires due timers until ``stopping()`` says so. On the event loop: ``fired(n)`` after n
    timers fired, ``idle(g)`` once nothing was due, ``g`` being ``generation()`` as it was
    before looking (the runner's count of batches that appended events)."""

    def __init__(
        self,
        timers: TimerStore,
        outage: Outage,
        poll_interval: float,
        *,
        stopping: Callable[[], bool],
        generation: Callable[[], int],
        fired: Callable[[int], None],
        idle: Callable[[int], None],
    ) -> None:
        self.timers = timers
        self.outage = outage
        self.poll_interval = poll_interval
        self._stopping = stopping
        self._generation = generation
        self._fired = fired
        self._idle = idle
        self.wake = asyncio.Event()
        self._sleeping_until: datetime | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        executor = handler_thread_pool("timers")

        def scheduled(fire_at: datetime) -> None:  # a transaction's thread
            until = self._sleeping_until
            if until is None or fire_at < until:
                with contextlib.suppress(RuntimeError):  # the loop is closed
                    loop.call_soon_threadsafe(self.wake.set)

        unwatch = self.timers.watch(scheduled)
        backoff = Backoff()
        try:
            while not self._stopping():
                self.wake.clear()
                generation = self._generation()
                try:
                    fired, nap = await loop.run_in_executor(executor, self._fire)
                except WAIT_OUT as exc:
                    self.outage.failed("firing timers", exc)
                    await self._nap(backoff.next_delay())
                    continue
                except Exception:
                    # A bug (or a corrupt row): logged in full, tried again; it must not stop
                    # the handlers of this worker.
                    log.exception("firing timers failed; trying again in %gs", self.poll_interval)
                    await self._nap(self.poll_interval)
                    continue
                backoff.reset()
                self.outage.recovered("firing timers")
                if fired:  # their events are in the log; look again at once
                    self._fired(fired)
                    continue
                self._idle(generation)
                await self._nap(nap)
        finally:
            unwatch()
            executor.shutdown(wait=False)

    def _fire(self) -> tuple[int, float]:
        """Fire what is due: how many fired, and else how long to sleep."""
        timers = self.timers
        due = timers.next_due()
        now = timers.clock.now()
        if due is not None and due <= now:
            fired = timers.fire_due(FIRE_BATCH)
            if fired:
                log.debug("fired %d timer(s)", fired)
                return fired, 0.0
            # Due, yet none was taken: another worker is firing it, or a reaction rewriting it
            # (rows locked, skipped). Look again shortly rather than spin until they commit.
            due = max(timers.next_due() or now, now + timedelta(seconds=BUSY_RETRY))
        wait = self.poll_interval
        if due is not None:
            wait = min(wait, max((due - now).total_seconds(), 0.0))
        self._sleeping_until = now + timedelta(seconds=wait)
        return 0, wait

    async def _nap(self, seconds: float) -> None:
        if not self._stopping():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), seconds)
        self._sleeping_until = None
