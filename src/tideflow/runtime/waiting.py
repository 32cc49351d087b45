"""The async client's reads and waits, native: no thread is held while a coroutine waits.

A wait parks on an ``asyncio.Event`` that the run's end sets (``FlowStore.watch_run``: woken
from the thread that learns of it, through ``call_soon_threadsafe``), with a slow poll as the
fallback - the same loop as ``Client.wait_for_run``. Its reads are the store's awaitable ones
(``FlowStore.get_run_async``): on PostgreSQL through psycopg's async connections, on SQLite, whose
driver has no async API, a short call in a thread - never a thread held while waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from tideflow.errors import DatabaseUnavailableError, RunTimeoutError
from tideflow.jsonutil import check_id
from tideflow.retrying import Backoff
from tideflow.storage.flow_contract import RUN_FINAL, FlowStore, RunRecord

#: Seconds between a waiter's own looks at its run when no wake-up comes (a lost notification,
#: a listener reconnecting): the worst case, not the usual one.
FALLBACK_POLL = 1.0


def wait_pause(run: RunRecord, run_id: str, timeout: float | None, deadline: float | None) -> float:
    """How long a wait for ``run`` (not ended) sleeps before looking again unless woken:
    ``FALLBACK_POLL``, cut to the deadline; ``RunTimeoutError`` once it has passed."""
    now = time.monotonic()
    if deadline is not None and now >= deadline:
        raise RunTimeoutError(
            f"run {run_id} of flow {run.flow_slug!r} is still {run.status} after "
            f"{timeout:g}s; is a worker running for this flow?"
        )
    return FALLBACK_POLL if deadline is None else min(FALLBACK_POLL, deadline - now)


async def wait_for_run(store: FlowStore, run_id: str, timeout: float | None) -> RunRecord:
    """``Client.wait_for_run``, awaitable: the same semantics, no thread held."""
    check_id(run_id, "run_id", max_length=200)
    deadline = None if timeout is None else time.monotonic() + timeout
    loop = asyncio.get_running_loop()
    park = _Park(loop)
    outage = Backoff()
    stop = store.watch_run(run_id, park.wake_threadsafe)
    try:
        woken = False
        while True:
            park.rearm()
            try:
                # Woken, the run has most likely ended: read it whole at once.
                run = await store.get_run_async(run_id, with_steps=woken)
                if run.status in RUN_FINAL:
                    return run if woken else await store.get_run_async(run_id)
            except DatabaseUnavailableError:
                pause = outage.next_delay()
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
                continue
            outage.reset()
            woken = await park.wait(wait_pause(run, run_id, timeout, deadline))
    finally:
        stop()


class _Park:
    """Where a wait sleeps between its reads: a future that a wake-up (from any thread) or the
    pause's end resolves - one future and one timer per wait, the least the loop can carry for
    each of a thousand waits (``asyncio.wait_for`` would add a task each). A wake-up that
    arrives while the wait is reading is kept, so the wait reads again at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[bool] | None = None
        self._woken = False

    def wake_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed meanwhile
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._woken = True
        if self._future is not None and not self._future.done():
            self._future.set_result(True)

    def rearm(self) -> None:
        """Forget the wake-ups so far: the read that follows sees what they announced."""
        self._woken = False

    async def wait(self, pause: float) -> bool:
        """Until woken (True) or ``pause`` seconds have passed (False)."""
        if self._woken:
            return True
        future: asyncio.Future[bool] = self._loop.create_future()
        self._future = future
        timer = self._loop.call_later(pause, _resolve, future)
        try:
            return await future
        finally:
            timer.cancel()
            self._future = None


def _resolve(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)
