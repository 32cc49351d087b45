"""What every backend's error module shares: is this exception the database being away (a walk
of the exception chain), and a block whose driver errors leave as tideflow's.

Runtime code (the worker, the handler runner) never imports a driver, but a handler's own SQL
(``ctx.execute``) reaches it unwrapped: a ``psycopg.OperationalError`` or ``sqlite3``'s "database
is locked" raised inside ``handle`` is the database's weather, not the handler's failure, and must
not count as a failed attempt (with ``max_attempts = 1`` it would become a dead letter). The
runtime asks the store (``EventStore.is_unavailable``); each backend answers with this walk and
its own error module's ``is_transient`` (``storage/<backend>/errors.py``, the one place that
knows its driver). This module imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tideflow.errors import DatabaseUnavailableError


def is_unavailable(exc: BaseException, driver_transient: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc``, or an exception it was raised from, means "the database cannot serve
    this now" (``DatabaseUnavailableError``, or a driver error ``driver_transient`` accepts)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DatabaseUnavailableError) or driver_transient(current):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def translating(
    kinds: tuple[type[BaseException], ...],
    translate: Callable[[BaseException, str], Exception],
    what: str,
) -> Iterator[None]:
    """Run a block, raising the driver errors ``kinds`` as ``translate`` maps them."""
    try:
        yield
    except kinds as exc:
        raise translate(exc, what) from exc
