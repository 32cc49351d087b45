"""Is this exception the database being away? The chain walk every backend's store shares.

Runtime code (the worker, the handler runner) never imports a driver, but a handler's own SQL
(``ctx.execute``) reaches it unwrapped: a ``psycopg.OperationalError`` or ``sqlite3``'s "database
is locked" raised inside ``handle`` is the database's weather, not the handler's failure, and must
not count as a failed attempt (with ``max_attempts = 1`` it would become a dead letter). The
runtime asks the store (``EventStore.is_unavailable``); each backend answers with this walk and
its own error module's ``is_transient`` (``storage/<backend>/errors.py``, the one place that
knows its driver). This module imports no backend.
"""

from __future__ import annotations

from collections.abc import Callable

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
