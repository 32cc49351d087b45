"""The flow store contract: the operations on runs, steps and tasks.

The worker and the client talk only to a ``FlowStore``; they never see SQL. Each operation is one
database transaction, so a crash at any instant leaves either the state before it or the state
after it. One implementation, ``storage/flow_store.py``, runs over every backend's ``Database``
(SQLite, the embedded default; PostgreSQL, production, many workers), held on each to the same
behavioural tests, so what one does the other does: ``tests/flows/test_engine.py`` (these
operations), ``test_worker.py``, ``test_stalls.py`` and the rest of ``tests/flows/`` run each
test on both backends through the ``backend``/``db_url`` fixtures of ``tests/conftest.py``;
``tests/test_schema.py`` checks that their tables match.

Timestamps come from the ``Clock`` the store was built with (see ``tideflow.clock``), never from
the database, so that tests can move time.

JSON crosses this boundary as *text*: the client encodes inputs once (and refuses what it cannot
encode), the engine stores and concatenates them without re-parsing, and readers decode.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol, TypeVar

from tideflow.clock import Clock
from tideflow.errors import RunNotFoundError
from tideflow.flows.definition import FlowDefinition
from tideflow.storage.database import Tx
from tideflow.typed import coerce

T = TypeVar("T")

RunStatus = Literal["started", "completed", "failed", "cancelled"]
StepStatus = Literal["created", "started", "completed", "failed", "skipped"]
TaskStatus = Literal["queued", "started", "completed", "failed", "cancelled"]

RUN_FINAL: frozenset[str] = frozenset({"completed", "failed", "cancelled"})


def run_not_found(run_id: str) -> RunNotFoundError:
    """The error for a run id no run has: one wording for every read that can meet it."""
    return RunNotFoundError(f"no run with id {run_id!r}; list runs with `tideflow runs`")


@dataclass(frozen=True)
class TaskKey:
    run_id: str
    step_slug: str
    task_index: int


@dataclass(frozen=True)
class ClaimedTask:
    """A task a worker now holds under lease, with everything needed to run it."""

    key: TaskKey
    flow_slug: str
    flow_version: str
    step_kind: str
    depends_on: tuple[str, ...]
    attempt: int
    input_json: str
    run_input_json: str
    timeout: float | None
    lease_expires_at: datetime
    reports: bool = False
    """Whether the run reports its end to the event log (``RunReport``): its completion asks
    the store to look for runs that ended."""
    correlation_id: str | None = None
    """The run's correlation (its ``RunReport``'s), which commands its steps dispatch carry."""


@dataclass(frozen=True)
class TaskCompletion:
    key: TaskKey
    attempt: int
    output_json: str
    reports: bool = False  # the claimed task's


@dataclass(frozen=True)
class RunReport:
    """Where a run's end goes: when the run completes, fails or is cancelled, the transaction
    that ends it appends ``FlowRunCompleted`` (data: run_id, flow, output), ``FlowRunFailed``
    (run_id, flow, error) or ``FlowRunCancelled`` (run_id, flow) to stream ``run-<run id>``,
    with these correlation and causation ids (uuids as text, or None) and this metadata. A
    process manager's runs carry its correlation and its instance's address, so that the
    instance continues when the flow ends."""

    correlation_id: str | None = None
    causation_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ClaimRequest:
    """Ask ``complete_tasks`` to also claim tasks its completions made ready, in the same
    transaction: the next step of a chain starts without another round of claim, commit and
    wake-up."""

    flow_slugs: tuple[str, ...]
    limit: int
    lease_margin: float


@dataclass(frozen=True)
class TaskFailure:
    key: TaskKey
    attempt: int
    error: str
    retryable: bool = True
    error_type: str | None = None
    """The exception's qualified class name, when an exception failed the attempt."""
    traceback: str | None = None
    """The formatted traceback (bounded, newest frames kept): what an operator needs to fix
    the step, kept with the failed attempt (``AttemptFailure``)."""


@dataclass(frozen=True)
class TaskRecord:
    step_slug: str
    task_index: int
    status: TaskStatus
    attempts: int  # claims that ran to an outcome: stalls and graceful releases are not counted
    error: str | None
    output: Any
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    visible_at: datetime | None
    #: Times the task's lease expired (its worker killed or lost) and it was requeued - or, past
    #: the step's max_stalls, failed. Kept apart from ``attempts``: a kill is not the step failing.
    stalls: int = 0


@dataclass(frozen=True)
class AttemptFailure:
    """One failed attempt of a task, as recorded in the transaction that counted it."""

    step_slug: str
    task_index: int
    attempt: int
    error: str
    error_type: str | None
    traceback: str | None
    retried: bool
    """Whether a retry followed; False: this attempt failed the task (and its run)."""
    worker_id: str | None
    started_at: datetime | None
    failed_at: datetime


@dataclass(frozen=True)
class StepRecord:
    step_slug: str
    step_index: int
    kind: str
    depends_on: list[str]
    status: StepStatus
    output: Any
    error: str | None
    initial_tasks: int | None
    remaining_tasks: int | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    tasks: list[TaskRecord] = field(default_factory=list)
    #: Why a ``skipped`` step was skipped: ``condition_unmet``, ``handler_failed`` (a task failed
    #: for good and the step says ``when_failed``), ``dependency_skipped`` (a cascade); None for
    #: a step skipped because its run failed or was cancelled first.
    skip_reason: str | None = None

    def output_as(self, tp: type[T]) -> T:
        """The step's output built into ``tp`` (a dataclass, a pydantic model...: what the
        step's return annotation declared); ``InputTypeError`` naming the field when it does
        not fit."""
        return coerce(self.output, tp, what=f"output of step {self.step_slug!r}")  # type: ignore[no-any-return]

    @property
    def attempts(self) -> int:
        """Total attempts over all of this step's tasks."""
        return sum(t.attempts for t in self.tasks)


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    flow_slug: str
    flow_version: str
    status: RunStatus
    input: Any
    output: Any
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    steps: list[StepRecord] = field(default_factory=list)
    #: Failed attempts, oldest first (read with the steps).
    failures: list[AttemptFailure] = field(default_factory=list)

    @property
    def last_failure(self) -> AttemptFailure | None:
        """The newest failed attempt, with its traceback: what ``tideflow run`` shows."""
        return self.failures[-1] if self.failures else None

    @property
    def is_final(self) -> bool:
        return self.status in RUN_FINAL

    @property
    def duration(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    def output_as(self, tp: type[T]) -> T:
        """The output (``{leaf step: output}``) built into ``tp`` - ``dict[str, Receipt]``, a
        TypedDict... (``tideflow.typed``); ``InputTypeError`` naming the field when it does not
        fit."""
        return coerce(self.output, tp, what=f"output of run {self.run_id}")  # type: ignore[no-any-return]

    def step(self, slug: str) -> StepRecord:
        for s in self.steps:
            if s.step_slug == slug:
                return s
        raise KeyError(slug)


@dataclass(frozen=True)
class FlowVersionRecord:
    flow_slug: str
    version: str
    shape: dict[str, Any]
    created_at: datetime


class FlowStore(Protocol):
    """Operations on runs, steps and tasks. Every method is one transaction; ``start_run`` given
    a caller's transaction (``tx=``) runs in it, under a savepoint."""

    url: str
    clock: Clock

    def migrate(self) -> list[str]:
        """Apply pending schema migrations under a lock; return the versions applied."""
        ...

    def close(self) -> None: ...

    # --- flows --------------------------------------------------------------------------------
    def ensure_flow(self, definition: FlowDefinition) -> None:
        """Record the flow's shape under its version, with its current step options (once per
        store: a no-op when this store recorded it already)."""
        ...

    def list_flows(self) -> list[FlowVersionRecord]: ...

    def stored_flow(self, flow_slug: str, version: str | None = None) -> FlowDefinition:
        """A stored version's definition (the latest unless ``version`` pins one), enough to
        start runs without the flow's code; ``FlowNotFoundError`` lists what is stored."""
        ...

    # --- runs ---------------------------------------------------------------------------------
    def start_run(
        self,
        definition: FlowDefinition,
        run_id: str,
        input_json: str,
        *,
        tx: Tx | None = None,
        report: RunReport | None = None,
        trace_context: str | None = None,
        visible_at: datetime | None = None,
    ) -> None:
        """Create the run, its steps and the tasks of its root steps; completes empty map steps
        at once. Raises ``RunAlreadyExistsError`` if ``run_id`` is taken (writing nothing).
        With ``tx`` (a process manager's reaction, an event store transaction) it all happens
        in that transaction, under a savepoint: it commits with it, and a refusal leaves it
        usable. With ``report``, the run's end is appended to the event log (``RunReport``).
        ``trace_context``: the starting span's W3C context (JSON text), which each task's span
        continues, on whichever machine runs it. ``visible_at``: its root tasks are claimable
        from then on, not before (a job enqueued with ``delay=`` / ``at=``)."""
        ...

    def start_runs(
        self,
        definition: FlowDefinition,
        runs: Sequence[tuple[str, str]],
        *,
        report: RunReport | None = None,
    ) -> None:
        """Start many runs of one flow, ``runs`` being (run id, input JSON), in one
        transaction: all of them or, with a taken or repeated run id
        (``RunAlreadyExistsError``) or a bad root map input, none."""
        ...

    def get_run(self, run_id: str, *, with_steps: bool = True) -> RunRecord:
        """The run with its steps and their tasks; ``RunNotFoundError`` if unknown."""
        ...

    def list_runs(
        self,
        *,
        flow_slug: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """Runs newest first, without steps."""
        ...

    def run_ids_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        """At most ``limit`` ids of runs whose id starts with ``prefix``, in id order: how the
        CLI resolves a short id (two are enough to tell a unique prefix from an ambiguous one)."""
        ...

    def retry_run(self, run_id: str) -> None:
        """Start a failed run again from its failed steps (fresh attempts; completed steps keep
        their outputs). ``RunNotFoundError`` / ``RunNotFailedError``, writing nothing."""
        ...

    def purge_finished_runs(self, older_than: float, limit: int = 500) -> int:
        """Delete up to ``limit`` runs that ended (completed, failed, cancelled) more than
        ``older_than`` seconds ago, oldest first, with their steps and tasks, in one short
        transaction; how many. Retention calls it batch by batch, so that no transaction holds
        many rows of the hot tables."""
        ...

    def cancel_run(self, run_id: str) -> bool:
        """Cancel a started run: queued and started tasks become cancelled, unfinished steps
        skipped. Returns False when the run had already reached a final state."""
        ...

    # --- tasks (the worker's side) ------------------------------------------------------------
    def claim_tasks(
        self, worker_id: str, flow_slugs: Sequence[str], limit: int, lease_margin: float
    ) -> list[ClaimedTask]:
        """Atomically take up to ``limit`` visible queued tasks of these flows, counting an
        attempt and setting a lease of (timeout + lease_margin). No two callers get the same
        task attempt."""
        ...

    def complete_tasks(
        self,
        worker_id: str,
        completions: Sequence[TaskCompletion],
        claim: ClaimRequest | None = None,
    ) -> list[ClaimedTask]:
        """Record outputs of several tasks in one transaction, advancing steps and runs.
        A completion whose task is no longer this worker's started attempt is ignored. With
        ``claim``, tasks that became ready are claimed for ``worker_id`` in the same
        transaction and returned (as ``claim_tasks`` would)."""
        ...

    def fail_task(self, worker_id: str, failure: TaskFailure) -> datetime | None:
        """Retry the task after backoff, or, when it is not retryable or out of attempts, fail
        it, its step and its run, and cancel every other unfinished task of the run. Returns
        when the retry becomes visible, or None when there is no retry."""
        ...

    def count_queued(self, flow_slugs: Sequence[str]) -> int:
        """Queued tasks of these flows, visible now or later (retries waiting out a backoff)."""
        ...

    def extend_leases(self, worker_id: str, keys: Sequence[TaskKey], lease_margin: float) -> None:
        """Heartbeat: push the lease of these started tasks forward."""
        ...

    def release_tasks(self, worker_id: str, keys: Sequence[TaskKey]) -> None:
        """Give back tasks this worker claimed but will not run (shutdown): they are queued
        again at once and the attempt is not counted."""
        ...

    def requeue_stalled(self) -> int:
        """Find started tasks whose lease expired (their worker died) and queue them again at
        once without counting the attempt, counting a stall instead; a task past its step's
        ``max_stalls`` fails, with its run. Returns how many were handled."""
        ...

    # --- observability (issue 11) --------------------------------------------------------------
    def finished_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Those of these runs that have ended (completed, failed, cancelled), without steps."""
        ...

    def trace_contexts(self, run_ids: Sequence[str]) -> dict[str, str]:
        """Run id -> the trace context stored with it, for the runs that have one."""
        ...

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) when new tasks may be ready. Returns a function
        that unsubscribes. Delivery is best effort: workers also poll."""
        ...

    def watch_run(self, run_id: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when run ``run_id`` may have ended - woken by the
        transaction that ended it, in any process - until the returned function is called.
        Best effort, like ``subscribe``: a waiter also looks for itself now and then
        (``storage/run_watch.py``)."""
        ...

    async def get_run_async(self, run_id: str, *, with_steps: bool = True) -> RunRecord:
        """``get_run``, awaitable, holding no thread where the driver allows (PostgreSQL;
        SQLite reads in a thread, briefly)."""
        ...

    def look_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """Each of these runs as it is now - with its steps, tasks and failures if it has
        ended, alone otherwise - by id; unknown ids are left out. What a wait for a run reads:
        the run whole as soon as it has ended, in one round trip (PostgreSQL), without asking
        first whether it has."""
        ...

    async def look_runs_async(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        """``look_runs``, awaitable, like ``get_run_async``: what a batch of waits reads
        (``runtime/waiting.py``), one round trip for all of them, in one snapshot."""
        ...

    async def list_runs_async(
        self,
        *,
        flow_slug: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        """``list_runs``, awaitable, like ``get_run_async``."""
        ...
