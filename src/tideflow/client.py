"""Starting, watching and cancelling runs from application code.

``Client`` is the one implementation (blocking, safe to share between threads); ``AsyncClient``
derives every method from it by running it in a thread, so the two cannot drift apart.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Protocol

from tideflow.errors import (
    DatabaseUnavailableError,
    RunAlreadyExistsError,
    RunTimeoutError,
    TideflowError,
)
from tideflow.flows.definition import FlowDefinition
from tideflow.flows.dsl import Flow, is_flow_class
from tideflow.flows.registry import FlowRegistry
from tideflow.ids import new_run_id
from tideflow.jsonutil import check_id, dumps
from tideflow.retrying import Backoff, retry_briefly
from tideflow.storage.database import Tx
from tideflow.storage.flow_contract import RUN_FINAL, FlowStore, RunRecord, RunReport

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
            store.start_run(definition, run_id, input_json, report=report)
        except RunAlreadyExistsError:
            if tries > 1 and (generated or _is_this_run(store, definition, run_id, input_json)):
                return
            raise

    retry_briefly(attempt)


def _is_this_run(
    store: FlowStore, definition: FlowDefinition, run_id: str, input_json: str
) -> bool:
    run = store.get_run(run_id, with_steps=False)
    return run.flow_slug == definition.slug and run.input == json.loads(input_json)


class Client:
    def __init__(self, store: FlowStore, registry: FlowRegistry) -> None:
        self.store = store
        self.registry = registry

    def start_flow(
        self,
        flow: type[Flow] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        tx: Tx | None = None,
        report: RunReport | None = None,
    ) -> str:
        """Start a run and return its id. Nothing is written when the flow is unknown, the
        input is not JSON-serialisable or not storable (``InvalidDataError``: NUL, surrogates,
        too deep), ``run_id`` is malformed (``InvalidDataError``) or taken. While the database
        is unavailable (a restart) it retries for about 5 s, then raises
        ``DatabaseUnavailableError``; retrying never starts the run twice.

        With ``tx`` - an event store transaction (a handler's ``ctx.transaction``) - the run is
        created in that transaction: it starts if, and when, the transaction commits (and is
        not retried here: the transaction's owner retries the whole of it). With ``report`` (or
        for a flow declared with ``reports=True``) the run's end is appended to the event log
        (``RunReport``)."""
        cls = flow if is_flow_class(flow) else self.registry.get(flow)
        definition = cls.definition
        input_json = dumps(input, what=f"run input of flow {definition.slug!r}")
        generated = run_id is None
        run_id = new_run_id() if run_id is None else check_id(run_id, "run_id", max_length=200)
        if report is None and cls.reports:
            report = RunReport()
        if tx is not None:
            self.store.start_run(definition, run_id, input_json, tx=tx, report=report)
        else:
            start_run_retrying(
                self.store, definition, run_id, input_json, generated=generated, report=report
            )
        return run_id

    def get_run(self, run_id: str) -> RunRecord:
        """The run with its steps and tasks; ``RunNotFoundError`` if unknown, ``InvalidDataError``
        for an id no run can have (the same on both backends)."""
        return self.store.get_run(check_id(run_id, "run_id", max_length=200))

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord:
        """Block until the run completes, fails or is cancelled; ``RunTimeoutError`` after
        ``timeout`` seconds. Polls the run's status row, quickly at first, then backing off.
        A database outage meanwhile is waited out, within ``timeout``: the run goes on without
        us, and a restart should not turn into an error in every waiting caller."""
        check_id(run_id, "run_id", max_length=200)
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        outage = Backoff()
        while True:
            try:
                run = self.store.get_run(run_id, with_steps=False)
                if run.status in RUN_FINAL:
                    return self.store.get_run(run_id)
            except DatabaseUnavailableError:
                pause = outage.next_delay()
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                continue
            outage.reset()
            if deadline is not None and time.monotonic() >= deadline:
                raise RunTimeoutError(
                    f"run {run_id} of flow {run.flow_slug!r} is still {run.status} after "
                    f"{timeout:g}s; is a worker running for this flow?"
                )
            # Poll every few ms at first (a status lookup by primary key is cheap), then back
            # off in proportion to the time already waited: at most ~10% late, at most 0.5 s.
            now = time.monotonic()
            pause = min(0.002 + 0.1 * (now - started), 0.5)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - now))
            time.sleep(pause)

    def cancel_run(self, run_id: str) -> bool:
        return self.store.cancel_run(check_id(run_id, "run_id", max_length=200))

    def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        if status is not None and status not in RUN_STATUSES:
            raise InvalidArgumentError(
                f"unknown run status {status!r}; use one of {', '.join(RUN_STATUSES)}"
            )
        if limit < 1 or offset < 0:
            raise InvalidArgumentError("limit must be >= 1 and offset >= 0")
        slug = flow.slug if is_flow_class(flow) else flow
        assert slug is None or isinstance(slug, str)
        return self.store.list_runs(flow_slug=slug, status=status, limit=limit, offset=offset)


class RunCalls(Protocol):
    """The blocking calls that ``AsyncClient`` makes awaitable: ``Client``'s, which ``App``
    has too (routing reads and writes to its own stores)."""

    def start_flow(
        self, flow: type[Flow] | str, input: Any = None, *, run_id: str | None = None
    ) -> str: ...

    def get_run(self, run_id: str) -> RunRecord: ...

    def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord: ...

    def cancel_run(self, run_id: str) -> bool: ...

    def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]: ...


class AsyncClient:
    """The same calls as ``Client`` (or an ``App``), awaitable; each runs the blocking call in
    a thread, so the two cannot drift apart."""

    def __init__(self, client: RunCalls) -> None:
        self._client = client

    async def start_flow(
        self, flow: type[Flow] | str, input: Any = None, *, run_id: str | None = None
    ) -> str:
        return await asyncio.to_thread(self._client.start_flow, flow, input, run_id=run_id)

    async def get_run(self, run_id: str) -> RunRecord:
        return await asyncio.to_thread(self._client.get_run, run_id)

    async def wait_for_run(self, run_id: str, timeout: float | None = None) -> RunRecord:
        return await asyncio.to_thread(self._client.wait_for_run, run_id, timeout)

    async def cancel_run(self, run_id: str) -> bool:
        return await asyncio.to_thread(self._client.cancel_run, run_id)

    async def list_runs(
        self,
        *,
        flow: type[Flow] | str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        return await asyncio.to_thread(
            self._client.list_runs, flow=flow, status=status, limit=limit, offset=offset
        )
