"""PostgreSQL's errors, in tideflow's error tree: the one place where psycopg's exceptions are
read.

Callers catch tideflow errors only. Whether an error is worth waiting out is decided here, by its
SQLSTATE class, because that is what the server promises to keep stable across versions:

* ``DatabaseUnavailableError`` (transient: workers back off and retry, clients retry briefly):
  no connection at all (psycopg's own ``OperationalError``/``InterfaceError`` without a
  SQLSTATE, a pool timeout), class 08 connection exceptions, 40001 serialization failure, 40P01
  deadlock and 40003 statement completion unknown (not 40002: a deferred constraint that failed
  at COMMIT fails again), 53 insufficient resources (disk full, out of memory, too many
  connections), 57 operator intervention (admin/crash shutdown, cannot connect now, query
  cancelled), 58000/58030 system and I/O errors, 55P03 lock not available.
* ``SchemaMissingError``: 3F000 - there is no ``tideflow`` schema at all.
* ``SchemaNotReadyError``: 42P01 / 42883 - a table or a function is missing (no schema, or an
  older one: PostgreSQL reports both as an undefined table).
* ``InvalidDataError``: class 22 data exceptions, psycopg refusing a NUL byte in a text
  parameter, and text Python cannot encode as UTF-8 (a lone surrogate: ``UnicodeEncodeError``,
  raised by the driver before anything is sent). tideflow checks values before they reach SQL
  (``tideflow.jsonutil``), so this is the backstop for what slipped past (a lookup by an id
  that was never checked), not the rule.
* ``StorageError`` for the rest: a bug, or a constraint tideflow did not expect.

Semantic signals - a unique violation that means "this run id is taken", the event store's
wrong-expected-version SQLSTATE - stay with the code that knows what the statement meant; it
hands everything else to ``translate``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import psycopg
from psycopg_pool import PoolTimeout

from tideflow.errors import (
    DatabaseUnavailableError,
    DuplicateKeyError,
    InvalidDataError,
    SchemaMissingError,
    SchemaNotReadyError,
    StorageError,
    TideflowError,
)
from tideflow.events.errors import (
    DuplicateIdempotencyKeyError,
    StreamDeletedError,
    WrongExpectedVersionError,
)
from tideflow.storage.event_contract import PreparedAppend, duplicate_event_id
from tideflow.storage.unavailable import translating

_TRANSIENT_CLASSES = ("08", "53", "57")
_TRANSIENT_STATES = frozenset({"40001", "40P01", "40003", "40000", "55P03", "58000", "58030"})
_SCHEMA_STATES = frozenset({"42P01", "42883"})
_NO_SCHEMA = "3F000"


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
            "server is back"
        )
    state = getattr(exc, "sqlstate", None)
    if state == _NO_SCHEMA:
        return SchemaMissingError(
            f"{what} failed: the database has no tideflow schema ({detail}); run `tideflow migrate`"
        )
    if state in _SCHEMA_STATES:
        return SchemaNotReadyError(
            f"{what} failed: the tideflow schema is missing or older than this version of "
            f"tideflow ({detail}); run `tideflow migrate`"
        )
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return DuplicateKeyError(f"{what} failed: {detail}", exc.diag.constraint_name)
    if isinstance(exc, psycopg.DataError | UnicodeEncodeError) or (
        state is not None and state.startswith("22")
    ):
        return InvalidDataError(
            f"{what} failed: PostgreSQL refused a value ({detail}); strings must not contain "
            "NUL characters or lone surrogates"
        )
    return StorageError(f"{what} failed: {type(exc).__name__}: {detail}")


def translated(what: str = "PostgreSQL operation") -> AbstractContextManager[None]:
    """Run a block, raising driver errors as tideflow's (``translate``)."""
    return translating((psycopg.Error, UnicodeEncodeError), translate, what)


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of psycopg or its pool."""
    return isinstance(exc, psycopg.Error | PoolTimeout)


def append_error(exc: psycopg.DatabaseError, p: PreparedAppend) -> Exception:
    """The event store's error for a refused ``append_events_v3`` call: its own SQLSTATEs
    ``TF001`` (wrong expected version, the actual one in DETAIL), ``TF002`` (duplicate
    idempotency key; the event store reads the recorded result) and ``TF003`` (deleted stream),
    a duplicate event id, or ``translate``'s."""
    if exc.sqlstate == "TF001":
        return WrongExpectedVersionError(p.stream_id, p.expected, int(exc.diag.message_detail or 0))
    if exc.sqlstate == "TF002":
        assert p.idempotency_key is not None
        return DuplicateIdempotencyKeyError(p.idempotency_key, None, None)
    if exc.sqlstate == "TF003":
        return StreamDeletedError(p.stream_id)
    if (
        isinstance(exc, psycopg.errors.UniqueViolation)
        and exc.diag.constraint_name == "events_event_id"
    ):
        return duplicate_event_id(p.stream_id, exc.diag.message_detail)
    return translate(exc, f"appending to stream {p.stream_id!r}")
