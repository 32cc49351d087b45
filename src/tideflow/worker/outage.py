"""Riding out a database that is briefly gone: how the worker's loops wait, and what they log.

Every loop of a worker (claim, flush, heartbeat, reap, each handler's batches) talks to the
database and must survive it restarting, a lost connection or a SQLite file locked by another
process. They all do it the same way:

* the store raises ``DatabaseUnavailableError`` (or ``SchemaNotReadyError``: the schema is being
  migrated, or was dropped - waiting is the only thing a worker can do about that either);
* the loop sleeps ``Backoff.next_delay()`` (0.1 s doubling to 5 s, jittered, so a fleet of
  workers does not reconnect in one burst) and tries the same thing again;
* the first failure of an outage logs one WARNING line; the first success after it logs
  "database back" at INFO. An outage of a minute is two lines, not a traceback a second.

Any other exception is not the database's weather but a bug (in tideflow, or a corrupt
database): it propagates, and the worker process stops with its traceback and exit code 1
rather than limping on half-dead.

``Outage`` is shared by the loops of one worker (so that four loops noticing one restart log it
once); each loop keeps its own ``Backoff``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from tideflow.errors import DatabaseUnavailableError, SchemaNotReadyError
from tideflow.retrying import Backoff

T = TypeVar("T")

#: What a loop waits out instead of failing.
WAIT_OUT: tuple[type[Exception], ...] = (DatabaseUnavailableError, SchemaNotReadyError)


class Outage:
    """Which of one worker's loops cannot reach the database; logs when the first one fails
    (WARNING) and when the last one got through again (INFO). Thread-safe (handler batches
    report from their own threads)."""

    def __init__(self, log: logging.Logger, who: str) -> None:
        self._log = log
        self._who = who
        self._lock = threading.Lock()
        self._failing: set[str] = set()
        self.outages = 0
        """Outages seen so far (for tests and metrics)."""

    @property
    def down(self) -> bool:
        return bool(self._failing)

    def failed(self, what: str, exc: BaseException) -> None:
        """Loop ``what`` could not reach the database; warns if it is the first one."""
        with self._lock:
            first = not self._failing
            self._failing.add(what)
            if first:
                self.outages += 1
        if first:
            self._log.warning(
                "%s: %s failed: %s; retrying with backoff until the database is back",
                self._who,
                what,
                _one_line(exc),
            )

    def recovered(self, what: str) -> None:
        """Loop ``what`` reached the database; "database back" once no loop is failing."""
        if not self._failing:
            return
        with self._lock:
            if what not in self._failing:
                return
            self._failing.discard(what)
            back = not self._failing
        if back:
            self._log.info("%s: database back", self._who)


async def retrying(
    outage: Outage,
    what: str,
    call: Callable[[], T],
    *,
    backoff: Backoff | None = None,
    give_up: Callable[[], bool] = lambda: False,
    interrupt: asyncio.Event | None = None,
    executor: concurrent.futures.Executor | None = None,
) -> T:
    """``call()`` in a thread until it does not raise a ``WAIT_OUT`` error, sleeping by
    ``backoff`` between tries (cut short when ``interrupt`` is set); re-raises the last error
    once ``give_up()`` says so (shutting down). Other exceptions propagate at once. ``executor``:
    where to run ``call`` (default: the loop's default thread pool)."""
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    while True:
        try:
            result = await loop.run_in_executor(executor, call)
        except WAIT_OUT as exc:
            if give_up():
                raise
            outage.failed(what, exc)
            await pause(backoff.next_delay(), interrupt)
            continue
        outage.recovered(what)
        backoff.reset()
        return result


async def pause(seconds: float, interrupt: asyncio.Event | None = None) -> None:
    """Sleep ``seconds``, or until ``interrupt`` is set."""
    if interrupt is None:
        await asyncio.sleep(seconds)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(interrupt.wait(), seconds)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__
