"""SQLite's errors, in tideflow's error tree: the one place where ``sqlite3`` exceptions are
read.

Decided by SQLite's primary result code (``sqlite_errorcode & 0xff``), not by message text:

* ``DatabaseUnavailableError`` (transient): SQLITE_BUSY and SQLITE_LOCKED (another process held
  the file past the busy timeout), SQLITE_FULL (disk full), SQLITE_IOERR, SQLITE_NOMEM,
  SQLITE_PROTOCOL (WAL lock contention), SQLITE_CANTOPEN (the file is not there right now).
* ``SchemaNotReadyError``: "no such table" - the schema is missing or older than the code.
* ``InvalidDataError``: SQLITE_TOOBIG, SQLITE_MISMATCH, and text the driver cannot encode (a
  lone surrogate). tideflow checks values before they reach SQL (``tideflow.jsonutil``), so this
  is the backstop, not the rule.
* ``StorageError`` for the rest.

Semantic signals - a constraint that means "this run id is taken" - stay with the code that
knows what the statement meant; it hands everything else to ``translate``.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager

from tideflow.errors import (
    DatabaseUnavailableError,
    DuplicateKeyError,
    InvalidDataError,
    SchemaNotReadyError,
    StorageError,
    TideflowError,
)
from tideflow.storage.unavailable import translating

_BUSY, _LOCKED, _NOMEM, _IOERR, _FULL, _CANTOPEN, _PROTOCOL = 5, 6, 7, 10, 13, 14, 15
_TOOBIG, _MISMATCH = 18, 20
_TRANSIENT = frozenset({_BUSY, _LOCKED, _NOMEM, _IOERR, _FULL, _CANTOPEN, _PROTOCOL})
_DATA = frozenset({_TOOBIG, _MISMATCH})


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (a driver error) means "the database cannot serve this now"."""
    return isinstance(exc, sqlite3.Error) and _primary_code(exc) in _TRANSIENT


def translate(exc: BaseException, what: str = "SQLite operation") -> TideflowError:
    """The tideflow error for driver error ``exc``; ``what`` names the operation and the file."""
    if isinstance(exc, TideflowError):
        return exc
    detail = str(exc) or type(exc).__name__
    if is_transient(exc):
        return DatabaseUnavailableError(
            f"{what} failed: the database is unavailable ({detail}); it is retried when the "
            "file is free"
        )
    if isinstance(exc, sqlite3.OperationalError) and "no such table" in detail:
        return SchemaNotReadyError(
            f"{what} failed: the tideflow schema is missing or older than this version of "
            f"tideflow ({detail}); run `tideflow migrate`"
        )
    if isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in detail:
        # "UNIQUE constraint failed: events.event_id": the columns stand for the constraint.
        return DuplicateKeyError(f"{what} failed: {detail}", detail.rpartition(": ")[2])
    if _primary_code(exc) in _DATA or isinstance(exc, UnicodeEncodeError):
        return InvalidDataError(
            f"{what} failed: SQLite refused a value ({detail}); strings must not contain "
            "NUL characters or lone surrogates"
        )
    return StorageError(f"{what} failed: {type(exc).__name__}: {detail}")


def rollback_quietly(conn: sqlite3.Connection, statements: tuple[str, ...]) -> None:
    """End a failed transaction, keeping the error that failed it: a rollback that fails too
    (the file is gone, the disk is full) must not replace the first error, and SQLite has
    already rolled back when COMMIT itself failed with SQLITE_BUSY or SQLITE_FULL."""
    for statement in statements:
        if not conn.in_transaction:
            return
        try:
            conn.execute(statement)
        except sqlite3.Error:
            return


def translated(what: str = "SQLite operation") -> AbstractContextManager[None]:
    """Run a block, raising driver errors as tideflow's (``translate``)."""
    return translating((sqlite3.Error, UnicodeEncodeError), translate, what)


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` is an error of the ``sqlite3`` driver."""
    return isinstance(exc, sqlite3.Error)
