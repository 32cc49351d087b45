"""Waiting out a database that is briefly gone: one backoff policy for every loop and client.

A PostgreSQL restart takes from under a second (fast shutdown) to however long an operator
needs; a SQLite file can stay locked while another process checkpoints. Workers must ride out
both without dying and without hammering the server when it comes back, so every loop that talks
to the database sleeps by ``Backoff`` after a ``DatabaseUnavailableError``: exponential from about
0.1 s, capped at about 5 s, with full jitter so that a hundred workers reconnecting after a
restart do not arrive in one burst.

Clients are different: a web request that calls ``start_flow`` would rather fail in a few
seconds than hang. ``retry_briefly`` retries for a short, bounded time, then lets the typed
``DatabaseUnavailableError`` reach the caller.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from tideflow.errors import DatabaseUnavailableError

T = TypeVar("T")

#: How long a client call keeps retrying a database that is unavailable before it raises.
CLIENT_RETRY_SECONDS = 5.0


class Backoff:
    """Capped exponential backoff with jitter: delays of ``initial * 2**n``, at most
    ``maximum``, each drawn between half and all of that (so never zero, never in lockstep)."""

    def __init__(
        self, initial: float = 0.1, maximum: float = 5.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self._rng = rng
        self.failures = 0

    def next_delay(self) -> float:
        """The pause before the next try; each call counts one more failure."""
        ceiling: float = min(self.maximum, self.initial * 2.0 ** min(self.failures, 30))
        self.failures += 1
        return ceiling * (0.5 + 0.5 * self._rng())

    def reset(self) -> None:
        """The database answered: the next failure starts from ``initial`` again."""
        self.failures = 0


def retry_briefly(
    call: Callable[[], T],
    *,
    seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``call()``, retried with ``Backoff`` while it raises ``DatabaseUnavailableError``, for at
    most about ``seconds`` (default ``CLIENT_RETRY_SECONDS``); then the last error propagates.
    Only for calls that are safe to repeat: ones that wrote nothing when they failed, or whose
    repeat is recognised (an idempotency key, a run id chosen before the first try, event ids
    drawn before the first try).

    Nested calls collapse into the outermost: a dispatch retries its append, and the store's
    ``append`` it calls retries too - the inner one then tries once and leaves the waiting to
    the outer, so an outage costs a caller one budget, not one per layer."""
    if getattr(_retrying_here, "active", False):
        return call()
    _retrying_here.active = True
    try:
        backoff = Backoff()
        deadline = time.monotonic() + (CLIENT_RETRY_SECONDS if seconds is None else seconds)
        while True:
            try:
                return call()
            except DatabaseUnavailableError:
                delay = backoff.next_delay()
                if time.monotonic() + delay > deadline:
                    raise
                sleep(delay)
    finally:
        _retrying_here.active = False


#: Whether this thread is inside ``retry_briefly`` (see its docstring).
_retrying_here = threading.local()


def backoff_delay(
    attempt: int, base_delay: float, max_delay: float, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based) of a flow step or an event
    handler: exponential, capped, minus up to 25% jitter so that tasks failing together do not
    retry together. Here, below storage and the runtime, because both use it."""
    delay: float = min(max_delay, base_delay * 2 ** (attempt - 1))
    return delay * (1 - 0.25 * rng())
