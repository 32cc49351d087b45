"""Is this exception the database being away? For code above the storage layer.

Runtime code (the worker, the handler runner) never imports a driver, but a handler's own SQL
(``ctx.execute``) reaches it unwrapped: a ``psycopg.OperationalError`` or ``sqlite3``'s "database
is locked" raised inside ``handle`` is the database's weather, not the handler's failure, and must
not count as a failed attempt (with ``max_attempts = 1`` it would become a dead letter). This
asks each backend's error module (``storage/<backend>/errors.py``), the one place that knows.
"""

from __future__ import annotations

from tideflow.errors import DatabaseUnavailableError


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from, means "the database cannot serve
    this now" (``DatabaseUnavailableError``, or a driver error a backend counts as transient)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DatabaseUnavailableError) or _driver_transient(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _driver_transient(exc: BaseException) -> bool:
    module = type(exc).__module__
    if module.startswith(("psycopg", "psycopg_pool")):
        from tideflow.storage.postgres.errors import is_transient as pg_transient

        return pg_transient(exc)
    if module.startswith("sqlite3"):
        from tideflow.storage.sqlite.errors import is_transient as sqlite_transient

        return sqlite_transient(exc)
    return False
