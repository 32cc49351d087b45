"""Every exception tideflow raises on purpose.

Errors are part of the API: each one names the thing that is wrong and how to fix it, and the
operation that raised it has written nothing. Callers catch the family they care about
(``FlowDefinitionError`` while declaring flows, ``RegistryError`` while wiring an app, ...) or
``TideflowError`` for all of them.
"""

from __future__ import annotations


class TideflowError(Exception):
    """Base class of every error tideflow raises deliberately."""


# --- step outcomes --------------------------------------------------------------------------------


class NonRetryableError(Exception):
    """Raise from a step to fail its task at once, skipping any remaining attempts.

    It does not derive from ``TideflowError`` on purpose: it is raised by user code, and users
    subclass it for their own domain failures (``class CardDeclined(NonRetryableError)``).
    """


class StepTimeoutError(TideflowError):
    """A step ran longer than its timeout; the worker cancelled it."""


# --- flow definitions -----------------------------------------------------------------------------


class FlowDefinitionError(TideflowError):
    """A flow class is malformed; raised when its class statement runs, before anything is
    stored."""

    def __init__(self, flow: str, message: str, step: str | None = None) -> None:
        self.flow = flow
        self.step = step
        where = f"flow {flow!r}" + (f", step {step!r}" if step else "")
        super().__init__(f"{where}: {message}")


class InvalidSlugError(FlowDefinitionError):
    """A flow or step slug does not match ``^[a-z][a-z0-9_]*$``, is too long, or is reserved."""


class UnknownDependencyError(FlowDefinitionError):
    """A step depends on a step the flow does not declare."""


class CycleError(FlowDefinitionError):
    """The steps' dependencies form a cycle, so no step of the cycle could ever start."""


class DuplicateStepError(FlowDefinitionError):
    """Two steps of one flow share a slug."""


class MapSourceError(FlowDefinitionError):
    """A map step names more than one source array."""


# --- registry -------------------------------------------------------------------------------------


class RegistryError(TideflowError):
    """Base class of FlowRegistry failures."""


class FlowNotFoundError(RegistryError, LookupError):
    """No flow is registered under this class or slug."""


class FlowImportError(RegistryError):
    """An import path ``"package.module:Class"`` could not be loaded."""


class NotAFlowError(RegistryError, TypeError):
    """The object given to the registry is not a ``tideflow.Flow`` subclass."""


class SlugConflictError(RegistryError):
    """A different class already holds this slug; tideflow refuses to overwrite it silently."""


# --- running --------------------------------------------------------------------------------------


class InputNotSerializableError(TideflowError, TypeError):
    """A run input (or step output) cannot be encoded as JSON."""


class InvalidDataError(InputNotSerializableError, ValueError):
    """A value is JSON, but no backend may store it: a NUL character or a lone surrogate in a
    string or key, nesting deeper than ``tideflow.jsonutil.MAX_DEPTH``, or an id that is empty,
    too long or not text. Checked before any SQL runs, the same way on every backend, so SQLite
    refuses what PostgreSQL would refuse. ``field`` names the value ("output of step 'charge'",
    "data of event 'Paid'")."""

    def __init__(self, message: str, field: str | None = None) -> None:
        self.field = field
        super().__init__(message)


class RunNotFoundError(TideflowError, LookupError):
    """No run has this id."""


class RunAlreadyExistsError(TideflowError):
    """``start_flow`` was given a ``run_id`` that another run already uses."""


class RunTimeoutError(TideflowError, TimeoutError):
    """``wait_for_run`` gave up before the run reached a final state."""


class MapInputError(TideflowError, ValueError):
    """A root map step's run input is not a JSON array: ``start_flow`` refuses the run and
    writes nothing, since no retry could turn the input into an array."""


class RunNotFailedError(TideflowError):
    """``retry_run`` was asked to retry a run that has not failed: a started run is still going,
    a completed one has nothing to redo, and a cancelled one was stopped on purpose."""


class RunFailedError(TideflowError):
    """Raised by helpers that expect a run to complete when it failed or was cancelled."""


# --- storage --------------------------------------------------------------------------------------


class InvalidRetentionError(TideflowError, ValueError):
    """A retention setting (``Retention``, ``App.purge``, ``--older-than``) that is not a
    positive duration or batch size; nothing was deleted."""


class StorageError(TideflowError):
    """The database could not be reached or refused an operation."""


class UnsupportedDatabaseURLError(StorageError, ValueError):
    """The database URL names a scheme tideflow has no backend for."""


class DatabaseUnavailableError(StorageError):
    """The database cannot serve the operation right now: the connection was lost, the server is
    restarting, shutting down or refusing connections, the disk is full, a deadlock or
    serialization failure was detected, or the SQLite file stayed locked past its busy timeout.

    Transient by nature: workers back off and retry; clients (``start_flow``, ``dispatch``,
    ``append``) retry briefly, then raise it. The operation that raised it either committed
    nothing or (when the connection dropped during COMMIT) may have committed - see
    docs/concepts/failures.md for which calls are safe to repeat."""


class DuplicateKeyError(StorageError):
    """A write broke a unique constraint. The store that ran it says what that means (a run id
    already taken, an event id already recorded) with an error of its own; this one reaches a
    caller only for a constraint no store expected."""

    def __init__(self, message: str, constraint: str | None = None) -> None:
        super().__init__(message)
        self.constraint = constraint


class SchemaNotReadyError(StorageError):
    """The database schema is older than this version of tideflow; run ``tideflow migrate``."""


class SchemaMissingError(SchemaNotReadyError):
    """The database has no tideflow schema at all. Reads never create one: run ``tideflow
    migrate -d URL`` (or start a worker, or an App that writes)."""


# --- jobs and schedules -------------------------------------------------------------------------


class JobKeyConflictError(RunAlreadyExistsError):
    """``enqueue(job, input, key=...)`` met a run with this key that has another input (or is a
    run of another flow): a key names one piece of work, so nothing was enqueued."""


class ScheduleError(TideflowError, ValueError):
    """A cron schedule is malformed (``Schedule(...)``, checked when it is declared, before
    anything is stored): its name, cron expression, timezone, input, target or catch-up mode."""


class InvalidCronError(ScheduleError):
    """A schedule's cron expression cannot be parsed; ``.expression`` is the expression."""

    def __init__(self, message: str, expression: str) -> None:
        self.expression = expression
        super().__init__(message)


class UnknownTimezoneError(ScheduleError):
    """A schedule names a timezone the zone database does not know; ``.timezone`` is it."""

    def __init__(self, message: str, timezone: str) -> None:
        self.timezone = timezone
        super().__init__(message)


class ScheduleConflictError(ScheduleError):
    """Two schedules of one app share a name: each name is one row, and one series of ticks."""
