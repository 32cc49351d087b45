"""PostgreSQL's errors, in tideflow's error tree: the one place where psycopg's exceptions are
read.

Callers catch tideflow errors only. Whether an error is worth waiting out is decided here, by its
SQLSTATE class, because that is what the server promises to keep stable across versions:

* ``DatabaseUnavailableError`` (transient: workers back off and retry, clients retry briefly):
  no connection at all (psycopg's own ``OperationalError``/``InterfaceError`` without a
  SQLSTATE, a pool timeout), class 08 connection exceptions, 40 transaction rollbacks
  (serialization failure, deadlock), 53 insufficient resources (disk full, out of memory, too
  many connections), 57 operator intervention (admin/crash shutdown, cannot connect now, query
  cancelled), 58 system errors (I/O), 55P03 lock not available.
* ``SchemaNotReadyError``: 3F000 / 42P01 / 42883 - the schema, a table or a function is missing.
* ``InvalidDataError``: class 22 data exceptions, and psycopg refusing a NUL byte in a text
  parameter. tideflow checks values before they reach SQL (``tideflow.jsonutil``), so this is
  the backstop for what slipped past, not the rule.
* ``StorageError`` for the rest: a bug, or a constraint tideflow did not expect.

Semantic signals - a unique violation that means "this run id is taken", the event store's
wrong-expected-version SQLSTATE - stay with the code that knows what the statement meant; it
hands everything else to ``translate``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg_pool import PoolTimeout

from tideflow.errors import (
    DatabaseUnavailableError,
    InvalidDataError,
    SchemaNotReadyError,
    StorageError,
    TideflowError,
)

_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_STATES = frozenset({"55P03"})
_SCHEMA_STATES = frozenset({"3F000", "42P01", "42883"})


def _one_line(exc: BaseException) -> str:
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text or type(exc).__name__


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver error) means "the database cannot serve this now"."""
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        # Raised by psycopg itself: a connection that failed or was closed under us. A
        # client-side DataError (a NUL in a text parameter) is not about the connection.
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


def translate(exc: BaseException, what: str = "PostgreSQL operation") -> TideflowError:
    """The tideflow error for driver error ``exc``; ``what`` names the operation in the
    message ("appending to stream 'order-1'", "claiming tasks")."""
    if isinstance(exc, TideflowError):
        return exc
    detail = _one_line(exc)
    if is_transient(exc):
        return DatabaseUnavailableError(
            f"{what} failed: the database is unavailable ({detail}); it is retried when the "
            "server is back")
    state = getattr(exc, "sqlstate", None)
    if state in _SCHEMA_STATES:
        return SchemaNotReadyError(
            f"{what} failed: the tideflow schema is missing or older than this version of "
            f"tideflow ({detail}); run `tideflow migrate`")
    if isinstance(exc, psycopg.DataError) or (state is not None and state.startswith("22")):
        return InvalidDataError(
            f"{what} failed: PostgreSQL refused a value ({detail}); strings must not contain "
            "NUL characters or lone surrogates")
    return StorageError(f"{what} failed: {type(exc).__name__}: {detail}")


@contextmanager
def translated(what: str = "PostgreSQL operation") -> Iterator[None]:
    """Run a block, raising driver errors as tideflow's (``translate``)."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate(exc, what) from exc
