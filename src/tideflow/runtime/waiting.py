"""The async client's reads and waits, native: no thread is held while a coroutine waits.

A wait parks on a future that the run's end resolves (``FlowStore.watch_run``: woken from the
thread that learns of it), with a slow poll as the fallback - the same loop as
``Client.wait_for_run``. Its reads are the store's awaitable ones: on PostgreSQL through
psycopg's async connections, on SQLite, whose driver has no async API, a short call in a
thread - never a thread held while waiting.

A thousand waits must not stall the event loop they share - the service around them answers
its own requests meanwhile (issue 12: within 50 ms, every time). What would stall it is work
done per wait, all at once: a completion batch of 256 runs wakes 256 waits in one
notification, and a fallback poll that came due for a thousand waits started together
fires a thousand timers in one turn. So per event loop:

* wake-ups come in through one ``call_soon_threadsafe`` per notification, not one per wait,
  and are handed out ``WAKE_CHUNK`` per turn of the loop (``_Wakes``);
* the waits' looks at their runs are read together (``_Looks``): one round trip and one
  decoding pass per ``LOOK_BATCH`` runs (``FlowStore.look_runs_async``) instead of a read of
  its own per wait, whose driver work on the loop - a pipeline of six statements - is what
  took the time; the runs are handed out ``LOOK_CHUNK`` per turn.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref

from tideflow.errors import DatabaseUnavailableError, RunTimeoutError
from tideflow.jsonutil import check_id
from tideflow.retrying import Backoff
from tideflow.storage.flow_contract import RUN_FINAL, FlowStore, RunRecord, run_not_found

#: Seconds between a waiter's own looks at its run when no wake-up comes (a lost notification,
#: a listener reconnecting): the worst case, not the usual one.
FALLBACK_POLL = 1.0
#: Waits woken per turn of the event loop; the rest in the turns after.
WAKE_CHUNK = 64
#: Runs read in one look (one round trip); more wait for the next.
LOOK_BATCH = 128
#: Waits handed their run per turn of the event loop.
LOOK_CHUNK = 32


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
    park = _Park(loop, _Wakes.of(loop))
    looks = _Looks.of(store, loop)
    outage = Backoff()
    stop = store.watch_run(run_id, park.wake_threadsafe)
    try:
        while True:
            park.rearm()
            try:
                # Whole if it has ended: one read either way.
                run = await looks.look(run_id)
                if run.status in RUN_FINAL:
                    return run
            except DatabaseUnavailableError:
                pause = outage.next_delay()
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                await asyncio.sleep(pause)
                continue
            outage.reset()
            await park.wait(wait_pause(run, run_id, timeout, deadline))
    finally:
        stop()


class _Wakes:
    """The wake-ups of one event loop's waits, from any thread: collected under a lock and
    handed to the loop with one ``call_soon_threadsafe`` per batch (a notification's 256
    waiters cost one write to the loop's self-pipe, not 256), then woken ``WAKE_CHUNK`` per
    turn of the loop so that other callbacks run in between."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wakes] = (
        weakref.WeakKeyDictionary()
    )
    _by_loop_lock = threading.Lock()

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Wakes:
        with cls._by_loop_lock:
            found = cls._by_loop.get(loop)
            if found is None:
                found = cls._by_loop[loop] = cls(loop)
            return found

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weakly: this is the value of a weak-keyed table whose key is the loop.
        self._loop = weakref.ref(loop)
        self._lock = threading.Lock()
        self._due: list[_Park] = []
        self._scheduled = False

    def wake_threadsafe(self, park: _Park) -> None:
        with self._lock:
            self._due.append(park)
            if self._scheduled:
                return
            self._scheduled = True
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the loop is gone")
            loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop has closed meanwhile: its waits are gone with it
            with self._lock:
                self._scheduled = False
                self._due.clear()

    def _run(self) -> None:
        with self._lock:
            chunk, self._due = self._due[:WAKE_CHUNK], self._due[WAKE_CHUNK:]
            more = bool(self._due)
            self._scheduled = more
        for park in chunk:
            park.wake()
        if more:
            asyncio.get_running_loop().call_soon(self._run)


class _Park:
    """Where a wait sleeps between its reads: a future that a wake-up (from any thread) or the
    pause's end resolves - one future and one timer per wait, the least the loop can carry for
    each of a thousand waits (``asyncio.wait_for`` would add a task each). A wake-up that
    arrives while the wait is reading is kept, so the wait reads again at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, wakes: _Wakes) -> None:
        self._loop = loop
        self._wakes = wakes
        self._future: asyncio.Future[bool] | None = None
        self._woken = False

    def wake_threadsafe(self) -> None:
        self._wakes.wake_threadsafe(self)

    def wake(self) -> None:
        """On the loop's thread."""
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


class _Looks:
    """The looks of one store's waits on one event loop, read together: a wait asks for its run
    and gets a future; one task reads the runs asked for so far - up to ``LOOK_BATCH`` at a
    time, one round trip - and resolves their futures ``LOOK_CHUNK`` per turn of the loop.
    A lone wait pays one ``call_soon`` more than reading on its own."""

    _by_key: weakref.WeakKeyDictionary[
        asyncio.AbstractEventLoop, weakref.WeakKeyDictionary[FlowStore, _Looks]
    ] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, store: FlowStore, loop: asyncio.AbstractEventLoop) -> _Looks:
        # Only ever touched on ``loop``'s own thread: no lock.
        stores = cls._by_key.setdefault(loop, weakref.WeakKeyDictionary())
        found = stores.get(store)
        if found is None:
            found = stores[store] = cls(store)
        return found

    def __init__(self, store: FlowStore) -> None:
        # Weakly, and no loop held: this is the value of tables weakly keyed by both.
        self._store = weakref.ref(store)
        self._asked: dict[str, list[asyncio.Future[RunRecord]]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def look(self, run_id: str) -> RunRecord:
        """The run now: whole if it has ended, alone otherwise (``look_runs_async``)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RunRecord] = loop.create_future()
        self._asked.setdefault(run_id, []).append(future)
        if self._reader is None:
            self._reader = loop.create_task(self._read())
        return await future

    async def _read(self) -> None:
        try:
            while self._asked:
                run_ids = list(self._asked)[:LOOK_BATCH]
                waiting = [(r, self._asked.pop(r)) for r in run_ids]
                store = self._store()
                try:
                    if store is None:  # pragma: no cover - a wait holds its store
                        raise RuntimeError("the store has been closed")
                    found = await store.look_runs_async(run_ids)
                except BaseException as exc:
                    for _, futures in waiting:
                        _settle(futures, exc=exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for i, (run_id, futures) in enumerate(waiting):
                    if i and i % LOOK_CHUNK == 0:
                        await asyncio.sleep(0)  # let the loop answer others in between
                    run = found.get(run_id)
                    if run is None:
                        _settle(futures, exc=run_not_found(run_id))
                    else:
                        _settle(futures, run=run)
        finally:
            self._reader = None
            if self._asked:  # cancelled with looks still asked for: they fail with it
                asked, self._asked = self._asked, {}
                for futures in asked.values():
                    for future in futures:
                        future.cancel()


def _settle(
    futures: list[asyncio.Future[RunRecord]],
    *,
    run: RunRecord | None = None,
    exc: BaseException | None = None,
) -> None:
    for future in futures:
        if future.done():  # its wait was cancelled meanwhile
            continue
        if isinstance(exc, asyncio.CancelledError):
            future.cancel()
        elif exc is not None:
            future.set_exception(exc)
        else:
            assert run is not None
            future.set_result(run)
