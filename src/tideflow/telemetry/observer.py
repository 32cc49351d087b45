"""What a worker tells about its work - logs, metrics, spans - gathered behind four calls, so
that the worker's loop stays about running tasks:

* ``attempt(task)``: around one attempt - its span (continuing the run's trace), its duration;
* ``failed(task, failure, retry_at)``: the line per failed attempt, its metrics;
* ``committed(completions)``: after completions commit - which runs they ended;
* ``ended(run_ids)``: the line per finished run and its metric, for runs that may have ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from tideflow.flows.registry import FlowRegistry
from tideflow.storage.flow_contract import (
    ClaimedTask,
    FlowStore,
    TaskCompletion,
    TaskFailure,
    TaskKey,
)
from tideflow.telemetry import logs, metrics, tracing

log = logging.getLogger("tideflow.worker")

#: Trace contexts remembered per run id (tracing on only); cleared when it grows past this.
_TRACE_CACHE = 10_000


class Attempt:
    """One running attempt, as ``WorkerObserver.attempt`` gives it: an async context manager
    around the step (a class, not a generator: it runs for every task)."""

    __slots__ = ("_observer", "_span", "_span_cm", "_started", "outcome", "task")

    def __init__(self, observer: WorkerObserver, task: ClaimedTask) -> None:
        self._observer = observer
        self.task = task
        self._span_cm: AbstractContextManager[tracing.AttemptSpan] | None = None
        self._span: tracing.AttemptSpan | None = None
        self._started = 0.0
        self.outcome: TaskCompletion | TaskFailure | None = None

    async def __aenter__(self) -> Attempt:
        if self._observer.tracing:
            context = await self._observer._trace_context(self.task)
            self._span_cm = tracing.attempt_span(self.task, context)
            self._span = self._span_cm.__enter__()
        self._started = time.perf_counter()
        return self

    async def __aexit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self._started
        if self._span_cm is not None:
            self._span_cm.__exit__(*exc)  # type: ignore[arg-type]
        if exc[0] is None:
            self._observer._attempt_ended(self.task, self.outcome, seconds)

    def ended(self, outcome: TaskCompletion | TaskFailure) -> None:
        self.outcome = outcome
        if isinstance(outcome, TaskFailure) and self._span is not None:
            self._span.failed(outcome.error, outcome.error_type)


class _Idle:
    """``attempt()`` when nobody watches: does nothing."""

    async def __aenter__(self) -> _Idle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def ended(self, outcome: TaskCompletion | TaskFailure) -> None:
        return None


_IDLE = _Idle()


class WorkerObserver:
    def __init__(self, store: FlowStore, registry: FlowRegistry) -> None:
        self.store = store
        self.registry = registry
        self._flows: dict[TaskKey, str] = {}  # completions waiting to commit that may end a run
        self._traces: dict[str, str | None] = {}
        self._durations: dict[TaskKey, float] = {}
        self._ends: dict[tuple[str, str, str], bool] = {}  # (flow, version, step) -> may end
        self.tracing = False
        self.active = False
        self.refresh()

    def refresh(self) -> None:
        """Look again at who is watching (a worker calls it as it starts): an SDK recording
        spans, metrics being scraped, INFO lines being logged. Nobody watching, an attempt
        costs nothing here (the per-attempt work would be a tenth of a no-op run's time)."""
        self.tracing = tracing.enabled()
        self.active = self.tracing or metrics.exported() or log.isEnabledFor(logging.INFO)

    def attempt(self, task: ClaimedTask) -> Attempt | _Idle:
        """Around one attempt: its span (continuing the run's trace), its duration."""
        return Attempt(self, task) if self.active else _IDLE

    def _attempt_ended(
        self, task: ClaimedTask, outcome: TaskCompletion | TaskFailure | None, seconds: float
    ) -> None:
        if isinstance(outcome, TaskCompletion):
            metrics.task_attempt(task.flow_slug, task.key.step_slug, seconds, "completed")
            if self._may_end_run(task):
                self._flows[task.key] = task.flow_slug
        elif isinstance(outcome, TaskFailure):
            self._durations[task.key] = seconds

    def failed(
        self, flow_slug: str | None, failure: TaskFailure, retry_at: datetime | None
    ) -> None:
        key = failure.key
        seconds = self._durations.pop(key, 0.0)
        max_attempts = None
        if flow_slug is not None:
            max_attempts = self._max_attempts(flow_slug, key.step_slug)
            outcome = "retried" if retry_at is not None else "failed"
            metrics.task_attempt(flow_slug, key.step_slug, seconds, outcome)
        logs.failed_attempt(
            flow_slug or "?", failure, max_attempts, retry_at, self.store.clock.now()
        )

    async def committed(self, completions: Sequence[TaskCompletion]) -> None:
        if not self._flows:
            return
        run_ids = [c.key.run_id for c in completions if self._flows.pop(c.key, None)]
        await self.ended(run_ids)

    def forget(self, completions: Sequence[TaskCompletion]) -> None:
        """Completions that were not committed (the worker gave up): nothing ended."""
        if not self._flows:
            return
        for c in completions:
            self._flows.pop(c.key, None)

    async def ended(self, run_ids: Sequence[str]) -> None:
        """Log and count those of ``run_ids`` that have ended. A read that fails costs the
        lines, never the work: it is logged at DEBUG."""
        if not run_ids or not (log.isEnabledFor(logging.INFO) or metrics.exported()):
            return
        try:
            runs = await asyncio.to_thread(self.store.finished_runs, run_ids)
        except Exception as exc:
            log.debug("could not read which runs ended: %s", exc)
            return
        for run in runs:
            logs.finished_run(run)
            metrics.run_finished(run.flow_slug, run.status)

    def _may_end_run(self, task: ClaimedTask) -> bool:
        """Whether completing this step can end its run: a leaf, or a step feeding a map step
        (an empty map completes at once, and may be the last step)."""
        key = (task.flow_slug, task.flow_version, task.key.step_slug)
        known = self._ends.get(key)
        if known is None:
            try:
                definition = self.registry.get(task.flow_slug).definition
            except Exception:
                return True
            slug = task.key.step_slug
            known = self._ends[key] = slug in definition.leaves or any(
                s.kind == "map" and slug in s.depends_on for s in definition.steps
            )
        return known

    def _max_attempts(self, flow_slug: str, step_slug: str) -> int | None:
        try:
            step = self.registry.get(flow_slug).definition.step(step_slug)
        except Exception:
            return None
        return step.retry.max_attempts

    async def _trace_context(self, task: ClaimedTask) -> str | None:
        if not tracing.enabled():
            return None
        run_id = task.key.run_id
        if run_id not in self._traces:
            if len(self._traces) > _TRACE_CACHE:
                self._traces.clear()
            try:
                found = await asyncio.to_thread(self.store.trace_contexts, [run_id])
            except Exception as exc:
                log.debug("could not read the trace context of run %s: %s", run_id, exc)
                return None
            self._traces[run_id] = found.get(run_id)
        return self._traces[run_id]
