"""The one way tests wait for something another thread or process does: poll a predicate.

A test that sleeps a fixed time and then asserts is either slow (the sleep is long) or flaky (it
is not). ``wait_until`` returns as soon as the predicate holds and fails - saying what it was
waiting for and what it saw last - only after ``timeout``, which is generous because it is only
spent when the test fails. To show that something did *not* happen, wait for a positive event
that proves the code had its chance (a later log line, a retry decision, a ManualClock reading),
never for a quiet period.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds before a wait is a failure: far above any healthy run, on a loaded 2-core machine.
TIMEOUT = 20.0


def wait_until(
    predicate: Callable[[], T],
    *,
    what: str,
    timeout: float = TIMEOUT,
    interval: float = 0.01,
    details: Callable[[], str] | None = None,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that; after ``timeout``
    seconds raise AssertionError naming ``what`` was awaited and the predicate's last value,
    followed by ``details()`` (a log tail, the rows still pending) if given."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout, value, details))
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T],
    *,
    what: str,
    timeout: float = TIMEOUT,
    interval: float = 0.01,
    details: Callable[[], str] | None = None,
) -> T:
    """``wait_until`` for a coroutine: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(_timed_out(what, timeout, value, details))
        await asyncio.sleep(interval)


def _timed_out(what: str, timeout: float, value: object, details: Callable[[], str] | None) -> str:
    message = f"timed out after {timeout:g}s waiting for {what} (last seen: {value!r})"
    return f"{message}\n{details()}" if details is not None else message
