"""Starting, watching and cancelling runs from application code.

``Client`` is the one implementation (blocking, safe to share between threads); ``AsyncClient``
derives every method from it by running it in a thread, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol, overload

from tideflow.errors import (
    DatabaseUnavailableError,
    FlowNotFoundError,
    JobKeyConflictError,
    RunAlreadyExistsError,
    TideflowError,
)
from tideflow.flows.definition import FlowDefinition
from tideflow.flows.dsl import Flow, InputT, is_flow_class
from tideflow.flows.jobs import Job, is_job
from tideflow.flows.registry import FlowRegistry
from tideflow.ids import new_run_id, new_run_ids
from tideflow.jsonutil import check_id, dumps, loads
from tideflow.retrying import Backoff, retry_briefly
from tideflow.runtime import waiting
from tideflow.runtime.waiting import wait_pause
from tideflow.storage.database import Tx
from tideflow.storage.flow_contract import (
    RUN_FINAL,
    FlowStore,
    RunRecord,
    RunReport,
    run_not_found,
)
from tideflow.telemetry import metrics, tracing
from tideflow.typed import coerce

RUN_STATUSES = ("started", "completed", "failed", "cancelled")


class InvalidArgumentError(TideflowError, ValueError):
    """An argument to a client call is malformed (a run id, a status filter, a limit)."""


def start_run_retrying(
    store: FlowStore,
    definition: FlowDefinition,
    run_id: str,
    input_json: str,
    *,
    generated: bool,
    report: RunReport | None = None,
    trace_context: str | None = None,
    visible_at: datetime | None = None,
) -> None:
    """``store.start_run``, retried for a few seconds while the database is unavailable, then
    ``DatabaseUnavailableError``. Safe to repeat: the run id is fixed before the first try, so
    no repeat can start a second run. When the first try's COMMIT landed but its answer was
    lost, the repeat meets ``RunAlreadyExistsError``: for an id tideflow ``generated`` (a fresh
    uuid) that can only be this very run; for a caller's id, it is this run if it has this flow
    and input."""
    tries = 0

    def attempt() -> None:
        nonlocal tries
        tries += 1
        try:
            store.start_run(
                definition,
                run_id,
                input_json,
                report=report,
                trace_context=trace_context,
                visible_at=visible_at,
            )
        except RunAlreadyExistsError:
            if tries > 1 and (generated or _is_this_run(store, definition, run_id, input_json)):
                return
            raise

    retry_briefly(attempt)


def _is_this_run(
    store: FlowStore, definition: FlowDefinition, run_id: str, input_json: str
) -> bool:
    run = store.get_run(run_id, with_steps=False)
    return run.flow_slug == definition.slug and run.input == loads(input_json)


class Client:
    """Runs of a flow store. ``registry``: the flows whose code this process has; a flow that
    is not in it is started from the shape its workers stored (``start_flow`` says how), so a
    process that only starts runs - a web app - needs none of the flows' code."""

    def __init__(self, store: FlowStore, registry: FlowRegistry | None = None) -> None:
        self.store = store
        self.registry = registry if registry is not None else FlowRegistry()

    def flow_definition(self, flow: type[Flow] | str, version: str | None = None) -> FlowDefinition:
        """The definition a run of ``flow`` starts from: the class's own (given, or registered
        under that slug); else - or when ``version`` pins another version - the one stored in
        the database, the latest stored version unless ``version`` says which.
        ``FlowNotFoundError`` lists the stored flows (or versions) when there is none."""
        if version is not None and not isinstance(version, str):
            raise InvalidArgumentError(f"version must be a str, got {type(version).__name__}")
        if is_flow_class(flow):
            cls: type[Flow] | None = flow
        else:
            try:
                cls = self.registry.get(flow)
            except FlowNotFoundError:
                if not isinstance(flow, str):
                    raise
                cls = None
        if cls is not None and version in (None, cls.definition.version):
            return cls.definition
        slug = cls.slug if cls is not None else flow
        assert isinstance(slug, str)
        return self.store.stored_flow(slug, version)

    @overload
    def start_flow(
        self,
        flow: type[Flow[InputT]],
        input: InputT = ...,
        *,
        run_id: str | None = None,
        tx: Tx | None = None,
        report: RunReport | None = None,
        version: str | None = None,
    ) -> str: ...
    @overload
    def start_flow(
        self,
        flow: str,
        input: object = None,
        *,
        run_id: str | None = None,
        tx: Tx | None = None,
        report: RunReport | None = None,
        version: str | None = None,
    ) -> str: ...
    def start_flow(
        self,
        flow: type[Flow] | str,
        input: object = None,
        *,
        run_id: str | None = None,
        tx: Tx | None = None,
        report: RunReport | None = None,
        version: str | None = None,
    ) -> str:
        """Start a run and return its id. ``flow``: a class, or a slug - of a registered flow,
        or of any flow a worker has stored (the latest stored version; ``version`` pins one),
        so starting needs no flow code. Nothing is written when the flow is unknown, the
        input is not JSON-serialisable or not storable (``InvalidDataError``: NUL, surrogates,
        too deep), ``run_id`` is malformed (``InvalidDataError``) or taken. While the database
        is unavailable (a restart) it retries for about 5 s, then raises
        ``DatabaseUnavailableError``; retrying never starts the run twice.

        With ``tx`` - an event store transaction (a handler's ``ctx.transaction``) - the run is
        created in that transaction: it starts if, and when, the transaction commits (and is
        not retried here: the transaction's owner retries the whole of it). With ``report`` (or
        for a flow declared with ``reports=True``) the run's end is appended to the event log
        (``RunReport``)."""
        definition = self.flow_definition(flow, version)
        what = f"run input of flow {definition.slug!r}"
        input_json = dumps(self._typed_input(flow, input, what), what=what)
        generated = run_id is None
        run_id = new_run_id() if run_id is None else check_id(run_id, "run_id", max_length=200)
        if report is None and definition.reports:
            report = RunReport()
        with tracing.start_flow_span(definition.slug, run_id) as trace_context:
            if tx is not None:
                self.store.start_run(
                    definition,
                    run_id,
                    input_json,
                    tx=tx,
                    report=report,
                    trace_context=trace_context,
                )
            else:
                start_run_retrying(
                    self.store,
                    definition,
                    run_id,
                    input_json,
                    generated=generated,
                    report=report,
                    trace_context=trace_context,
                )
        metrics.run_started(definition.slug)
        return run_id

    @overload
    def start_flows(
        self,
        flow: type[Flow[InputT]],
        inputs: Iterable[InputT],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...
    @overload
    def start_flows(
        self,
        flow: str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...
    def start_flows(
        self,
        flow: type[Flow] | str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]:
        """Start one run of ``flow`` per input, all in one transaction, and return their ids
        in input order: for loads of many runs at once, at a fraction of a start each (a
        handful of statements for the whole batch). ``flow`` and ``version`` as in
        ``start_flow``; ``run_ids``, one per input, else fresh ones. All or nothing: an input
        that cannot be stored, a malformed, repeated or taken run id, or a root map input that
        is not an array starts none. Retried like ``start_flow`` while the database is
        unavailable, and never starts a batch twice."""
        definition = self.flow_definition(flow, version)
        values = list(inputs)
        if run_ids is not None and len(run_ids) != len(values):
            raise InvalidArgumentError(
                f"run_ids has {len(run_ids)} ids for {len(values)} inputs; give one per input"
            )
        what = f"run input of flow {definition.slug!r}"
        texts = [dumps(self._typed_input(flow, value, what), what=what) for value in values]
        generated = run_ids is None
        ids = (
            new_run_ids(len(values))
            if run_ids is None
            else [check_id(run_id, "run_id", max_length=200) for run_id in run_ids]
        )
        runs = list(zip(ids, texts, strict=True))
        report = RunReport() if definition.reports else None
        tries = 0

        def attempt() -> None:
            nonlocal tries
            tries += 1
            try:
                self.store.start_runs(definition, runs, report=report)
            except RunAlreadyExistsError:
                # A repeat after a COMMIT whose answer was lost: the batch is all or nothing,
                # so its first run tells.
                if tries > 1 and (generated or _is_this_run(self.store, definition, *runs[0])):
                    return
                raise

        if runs:
            retry_briefly(attempt)
        return ids

    def enqueue(
        self,
        job: Job[InputT, Any],
        input: InputT,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        key: str | None = None,
    ) -> str:
        """Enqueue one run of ``job`` with this input and return its run id. ``delay``
        (seconds or a ``timedelta``) or ``at`` (a timezone-aware datetime): the job is claimable
        from then on, not before. ``key``: an idempotency key - the run id is ``<job slug>:<key>``,
        so enqueueing the same key again returns that run's id and writes nothing (as long as
        the run is kept: retention deletes it, and the key with it); the same key with another
        input raises ``JobKeyConflictError``. Refuses, writing nothing, what ``start_flow``
        refuses, and a bad delay or time (``InvalidArgumentError``)."""
        if not is_job(job):
            raise InvalidArgumentError(
                f"enqueue takes a job (a function decorated with @job), got {job!r}; start a "
                "flow with start_flow"
            )
        definition = job.flow.definition
        input_json = dumps(input, what=f"input of job {job.slug!r}")
        visible_at = self._job_start(delay, at)
        if key is None:
            run_id = new_run_id()
        else:
            if not isinstance(key, str) or not key:
                raise InvalidArgumentError(f"key must be a non-empty str, got {key!r}")
            run_id = check_id(f"{job.slug}:{key}", "run_id (job slug:key)", max_length=200)
        with tracing.start_flow_span(definition.slug, run_id) as trace_context:
            try:
                start_run_retrying(
                    self.store,
                    definition,
                    run_id,
                    input_json,
                    generated=key is None,
                    report=RunReport() if definition.reports else None,
                    trace_context=trace_context,
                    visible_at=visible_at,
                )
            except RunAlreadyExistsError:
                if key is None:
                    raise
                if _is_this_run(self.store, definition, run_id, input_json):
                    return run_id  # enqueued before with this key: nothing written
                raise JobKeyConflictError(
                    f"job {job.slug!r} was enqueued with key {key!r} before, with another "
                    f"input (run {run_id!r}); a key names one piece of work: use another key "
                    "for other input"
                ) from None
        metrics.run_started(definition.slug)
        return run_id

    def _job_start(self, delay: float | timedelta | None, at: datetime | None) -> datetime | None:
        """When a delayed job becomes claimable (None: now), from the store's clock."""
        if delay is not None and at is not None:
            raise InvalidArgumentError("give enqueue a delay or a time (at=), not both")
        if at is not None:
            if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
                raise InvalidArgumentError(
                    f"at must be a timezone-aware datetime (e.g. datetime.now(UTC) + ...), got "
                    f"{at!r}"
                )
            return at
        if delay is None:
            return None
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, int | float)
            or not math.isfinite(seconds)
            or seconds < 0
        ):
            raise InvalidArgumentError(
                f"delay must be a number of seconds >= 0 or a timedelta, got {delay!r}"
            )
        return self.store.clock.now() + timedelta(seconds=seconds) if seconds else None

    def _typed_input(self, flow: type[Flow] | str, value: object, what: str) -> object:
        """``value`` checked against the flow's declared input type (``Flow[T]``), when this
        process has the flow's class; ``InputTypeError`` (nothing written) when it does not
        fit."""
        cls = flow if is_flow_class(flow) else self.registry.find(str(flow))
        if cls is None or cls.input_type is None:
            return value
        return coerce(value, cls.input_type, what=what)

    def get_run(self, run_id: str) -> RunRecord:
        """The run with its steps and tasks; ``RunNotFoundError`` if unknown, ``InvalidDataError``
        for an id no run can have (the same on both backends)."""
        return self.store.get_run(check_id(run_id, "run_id", max_length=200))

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Block until the run completes, fails or is cancelled; ``RunTimeoutError`` after
        ``timeout`` seconds. Sleeps until the transaction that ends the run wakes it (a NOTIFY
        on PostgreSQL, a commit on SQLite; ``FlowStore.watch_run``), looking for itself every
        second in case a wake-up is lost. A database outage meanwhile is waited out, within
        ``timeout``: the run goes on without us, and a restart should not turn into an error in
        every waiting caller."""
        check_id(run_id, "run_id", max_length=200)
        deadline = None if timeout is None else time.monotonic() + timeout
        changed = threading.Event()
        outage = Backoff()
        store = self.store
        stop = store.watch_run(run_id, changed.set)
        try:
            while True:
                changed.clear()
                try:
                    # Whole if it has ended: one read either way.
                    run = store.look_runs([run_id]).get(run_id)
                    if run is None:
                        raise run_not_found(run_id)
                    if run.status in RUN_FINAL:
                        return run
                except DatabaseUnavailableError:
                    pause = outage.next_delay()
                    if deadline is not None and time.monotonic() + pause >= deadline:
                        raise
                    time.sleep(pause)
                    continue
                outage.reset()
                changed.wait(wait_pause(run, run_id, timeout, deadline))
        finally:
            stop()

    def cancel_run(self, run_id: str) -> bool:
        return self.store.cancel_run(check_id(run_id, "run_id", max_length=200))

    def retry_run(self, run_id: str) -> None:
        """Run a failed run again from its failed steps: completed steps keep their outputs,
        the steps started again get fresh tasks (attempts from 1). ``RunNotFoundError`` for an
        unknown run, ``RunNotFailedError`` for one that has not failed; both write nothing."""
        self.store.retry_run(check_id(run_id, "run_id", max_length=200))

    def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        slug = _list_filter(flow, status, limit, offset)
        return self.store.list_runs(flow_slug=slug, status=status, limit=limit, offset=offset)


def _list_filter(
    flow: type[Flow] | str | None, status: str | None, limit: int, offset: int
) -> str | None:
    """``list_runs``' arguments checked; the flow's slug."""
    if status is not None and status not in RUN_STATUSES:
        raise InvalidArgumentError(
            f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}"
        )
    if limit < 1 or offset < 0:
        raise InvalidArgumentError("limit must be >= 1 and offset >= 0")
    slug = flow.slug if is_flow_class(flow) else flow
    assert slug is None or isinstance(slug, str)
    return slug


class RunCalls(Protocol):
    """The blocking calls that ``AsyncClient`` makes awaitable: ``Client``'s, which ``App``
    has too (routing reads and writes to its own stores)."""

    def start_flow(
        self,
        flow: type[Flow] | str,
        input: object = None,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str: ...

    def start_flows(
        self,
        flow: type[Flow] | str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...

    def enqueue(
        self,
        job: Job[InputT, Any],
        input: InputT,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        key: str | None = None,
    ) -> str: ...

    def get_run(self, run_id: str) -> RunRecord: ...

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord: ...

    def cancel_run(self, run_id: str) -> bool: ...

    def retry_run(self, run_id: str) -> None: ...

    def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]: ...


class AsyncClient:
    """The same calls as ``Client`` (or an ``App``), awaitable. Reads and waits are native
    (``runtime/waiting.py``): a wait parks on the event loop until its run's end wakes it, and
    on PostgreSQL its reads use psycopg's async connections - no thread is held while waiting.
    Starting, cancelling and retrying run the blocking call in a short thread, so the two
    clients cannot drift apart. ``store``: where the native calls read (the client's store by
    default; an App passes its ``read_store``); without one, every call runs in a thread."""

    def __init__(self, client: RunCalls, store: Callable[[], FlowStore] | None = None) -> None:
        self._client = client
        if store is None and isinstance(client, Client):
            store = lambda: client.store  # noqa: E731
        self._store = store

    @overload
    async def start_flow(
        self,
        flow: type[Flow[InputT]],
        input: InputT = ...,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str: ...
    @overload
    async def start_flow(
        self,
        flow: str,
        input: object = None,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str: ...
    async def start_flow(
        self,
        flow: type[Flow] | str,
        input: object = None,
        *,
        run_id: str | None = None,
        version: str | None = None,
    ) -> str:
        return await asyncio.to_thread(
            self._client.start_flow, flow, input, run_id=run_id, version=version
        )

    @overload
    async def start_flows(
        self,
        flow: type[Flow[InputT]],
        inputs: Iterable[InputT],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...
    @overload
    async def start_flows(
        self,
        flow: str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]: ...
    async def start_flows(
        self,
        flow: type[Flow] | str,
        inputs: Iterable[object],
        *,
        run_ids: Sequence[str] | None = None,
        version: str | None = None,
    ) -> list[str]:
        return await asyncio.to_thread(
            self._client.start_flows, flow, inputs, run_ids=run_ids, version=version
        )

    async def enqueue(
        self,
        job: Job[InputT, Any],
        input: InputT,
        *,
        delay: float | timedelta | None = None,
        at: datetime | None = None,
        key: str | None = None,
    ) -> str:
        return await asyncio.to_thread(
            self._client.enqueue, job, input, delay=delay, at=at, key=key
        )

    async def get_run(self, run_id: str) -> RunRecord:
        if self._store is None:
            return await asyncio.to_thread(self._client.get_run, run_id)
        check_id(run_id, "run_id", max_length=200)
        return await self._store().get_run_async(run_id)

    async def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """``Client.wait_for_run``, holding no thread while it waits."""
        if self._store is None:
            return await asyncio.to_thread(self._client.wait_for_run, run_id, timeout)
        check_id(run_id, "run_id", max_length=200)
        return await waiting.wait_for_run(self._store(), run_id, timeout)

    async def cancel_run(self, run_id: str) -> bool:
        return await asyncio.to_thread(self._client.cancel_run, run_id)

    async def retry_run(self, run_id: str) -> None:
        await asyncio.to_thread(self._client.retry_run, run_id)

    async def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        if self._store is None:
            return await asyncio.to_thread(
                self._client.list_runs, flow=flow, status=status, limit=limit, offset=offset
            )
        slug = _list_filter(flow, status, limit, offset)
        return await self._store().list_runs_async(
            flow_slug=slug, status=status, limit=limit, offset=offset
        )
