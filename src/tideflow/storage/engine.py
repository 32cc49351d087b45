"""The run state machine, written once over named SQL queries.

Backends (``sqlite``, ``postgres``) supply connections, transactions, locking and their own SQL
for each named query (``<backend>/queries.sql``); this module decides what happens when a run
starts, a task completes or fails, a lease expires. Keeping the transitions in one place is what
lets one conformance suite hold both backends to the same behaviour, instead of two engines
drifting apart. A backend may still replace an operation wholesale when its database can do it
better (see ``PostgresStore``).

Transitions (each inside the caller's single transaction):

    start_run      run started; steps created; root steps started (tasks queued)
    start_step     single: one task; map: one task per element, or completed at once when empty;
                   a map source that is not a list fails the run (no retry can fix data)
    complete_task  task completed; when the step's last task completes the step completes
    complete_step  dependents' remaining_deps decremented, those at zero started; when the
                   run's last step completes, the run completes with its leaf steps' outputs
    fail_task      queued again after backoff while attempts remain, else task, step and run
                   fail and every other unfinished task of the run is cancelled (no orphans)
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any, Protocol

from tideflow.clock import Clock, SystemClock
from tideflow.errors import RunNotFoundError
from tideflow.flows.definition import FlowDefinition, version_of
from tideflow.storage.contract import (
    ClaimedTask,
    FlowVersionRecord,
    RunRecord,
    StepRecord,
    TaskCompletion,
    TaskFailure,
    TaskKey,
    TaskRecord,
)

Row = dict[str, Any]


class Tx(Protocol):
    """One open transaction: named queries in, dict rows out."""

    notify: bool  # set when the transaction made tasks visible; the backend wakes workers

    def rows(self, name: str, **params: Any) -> list[Row]: ...

    def run(self, name: str, **params: Any) -> int: ...


def backoff_delay(attempt: int, base_delay: float, max_delay: float,
                  rng: Callable[[], float] = random.random) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based): exponential, capped, minus up
    to 25% jitter so that tasks failing together do not retry together."""
    delay: float = min(max_delay, base_delay * 2 ** (attempt - 1))
    return delay * (1 - 0.25 * rng())


class SqlEngine:
    """Shared implementation of ``FlowStore`` on top of a backend's ``_tx()``."""

    url: str
    clock: Clock

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or SystemClock()
        self._known_versions: set[tuple[str, str]] = set()
        self._shapes: dict[tuple[str, str], dict[str, Any]] = {}
        self._subscribers: list[Callable[[], None]] = []

    # --- backend hooks --------------------------------------------------------------------------
    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def _notify_local(self) -> None:
        for callback in list(self._subscribers):
            callback()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # --- flows ------------------------------------------------------------------------------------
    def ensure_flow(self, definition: FlowDefinition) -> None:
        key = (definition.slug, definition.version)
        if key in self._known_versions:
            return
        with self._tx() as tx:
            self._ensure_flow(tx, definition)

    def _ensure_flow(self, tx: Tx, definition: FlowDefinition) -> None:
        key = (definition.slug, definition.version)
        if key in self._known_versions:
            return
        shape = _full_shape(definition)
        tx.run("insert_flow", flow_slug=definition.slug, version=definition.version,
               shape=json.dumps(shape), created_at=self.clock.now())
        self._known_versions.add(key)
        self._shapes[key] = shape

    def list_flows(self) -> list[FlowVersionRecord]:
        with self._tx() as tx:
            return [
                FlowVersionRecord(r["flow_slug"], r["version"], json.loads(r["shape"]),
                                  r["created_at"])
                for r in tx.rows("list_flows")
            ]

    def _shape(self, tx: Tx, flow_slug: str, version: str) -> dict[str, Any]:
        key = (flow_slug, version)
        shape = self._shapes.get(key)
        if shape is None:
            found = tx.rows("get_flow", flow_slug=flow_slug, version=version)
            if not found:  # pragma: no cover - runs always reference a stored version
                raise RunNotFoundError(f"flow {flow_slug!r} version {version} is not stored")
            shape = json.loads(found[0]["shape"])
            self._shapes[key] = shape
        return shape

    # --- runs -------------------------------------------------------------------------------------
    def start_run(self, definition: FlowDefinition, run_id: str, input_json: str) -> None:
        with self._tx() as tx:
            self._ensure_flow(tx, definition)
            now = self.clock.now()
            tx.run("insert_run", run_id=run_id, flow_slug=definition.slug,
                   flow_version=definition.version, input=input_json,
                   remaining_steps=len(definition.steps), started_at=now)
            for s in definition.steps:
                tx.run("insert_step", run_id=run_id, step_slug=s.slug, step_index=s.index,
                       kind=s.kind, depends_on=json.dumps(list(s.depends_on)),
                       remaining_deps=len(s.depends_on), created_at=now, **s.options())
            for s in definition.steps:
                if s.is_root:
                    self._start_step(tx, run_id, definition.slug, s.slug, input_json, now)
                    if self._run_status(tx, run_id) != "started":
                        break

    def _run_status(self, tx: Tx, run_id: str) -> str:
        return str(tx.rows("get_run_status", run_id=run_id)[0]["status"])

    def _start_step(self, tx: Tx, run_id: str, flow_slug: str, step_slug: str,
                    run_input_json: str | None, now: datetime) -> None:
        """Queue the tasks of a step whose dependencies have all completed."""
        step = tx.rows("get_step", run_id=run_id, step_slug=step_slug)[0]
        deps: list[str] = json.loads(step["depends_on"])
        if run_input_json is None and not deps:  # pragma: no cover - callers pass it for roots
            run_input_json = tx.rows("get_run_input", run_id=run_id)[0]["input"]
        if deps:
            outputs = {r["step_slug"]: r["output"]
                       for r in tx.rows("get_step_outputs", run_id=run_id, step_slugs=deps)}
        visible_at = now + timedelta(seconds=step["start_delay"] or 0)
        if step["kind"] == "map":
            source_json = outputs[deps[0]] if deps else run_input_json
            source = json.loads(source_json) if source_json is not None else None
            if not isinstance(source, list):
                origin = f"step {deps[0]!r}" if deps else "the run input"
                self._fail_run(
                    tx, run_id, step_slug, now,
                    f"map step {step_slug!r} needs a list from {origin}, got "
                    f"{type(source).__name__}; make {origin} return a JSON array",
                )
                return
            if not source:
                tx.run("start_step", run_id=run_id, step_slug=step_slug, initial_tasks=0,
                       started_at=now)
                self._complete_step(tx, run_id, flow_slug, step_slug, "[]", now)
                return
            inputs = [json.dumps(item, separators=(",", ":")) for item in source]
        elif deps:
            inputs = ["{" + ",".join(f"{json.dumps(d)}:{outputs[d]}" for d in deps) + "}"]
        else:
            inputs = [run_input_json or "null"]
        tx.run("start_step", run_id=run_id, step_slug=step_slug, initial_tasks=len(inputs),
               started_at=now)
        tx.run("insert_tasks", run_id=run_id, step_slug=step_slug, flow_slug=flow_slug,
               inputs=inputs, timeout=step["timeout"], queued_at=now, visible_at=visible_at)
        tx.notify = True

    def _complete_step(self, tx: Tx, run_id: str, flow_slug: str, step_slug: str,
                       output_json: str, now: datetime) -> None:
        tx.run("complete_step", run_id=run_id, step_slug=step_slug, output=output_json,
               finished_at=now)
        run = tx.rows("decrement_run_steps", run_id=run_id)[0]
        shape = self._shape(tx, flow_slug, run["flow_version"])
        dependents = [s["slug"] for s in shape["steps"] if step_slug in s["depends_on"]]
        if dependents:
            counted = tx.rows("decrement_deps", run_id=run_id, step_slugs=dependents)
            ready = sorted((r["step_index"], r["step_slug"]) for r in counted
                           if r["remaining_deps"] == 0)
            for _, ready_slug in ready:
                self._start_step(tx, run_id, flow_slug, ready_slug, run["input"], now)
                if self._run_status(tx, run_id) != "started":
                    return
        if run["remaining_steps"] == 0:
            leaves = shape["leaves"]
            outputs = {r["step_slug"]: r["output"]
                       for r in tx.rows("get_step_outputs", run_id=run_id, step_slugs=leaves)}
            output = "{" + ",".join(f"{json.dumps(leaf)}:{outputs[leaf]}" for leaf in leaves) + "}"
            tx.run("complete_run", run_id=run_id, output=output, finished_at=now)

    def _fail_run(self, tx: Tx, run_id: str, step_slug: str, now: datetime, error: str) -> None:
        tx.run("fail_step", run_id=run_id, step_slug=step_slug, error=error, finished_at=now)
        tx.run("fail_run", run_id=run_id, error=error, finished_at=now)
        tx.run("cancel_run_tasks", run_id=run_id, finished_at=now)
        tx.run("skip_run_steps", run_id=run_id, finished_at=now)

    def get_run(self, run_id: str, *, with_steps: bool = True) -> RunRecord:
        with self._tx() as tx:
            found = tx.rows("get_run", run_id=run_id)
            if not found:
                raise RunNotFoundError(
                    f"no run with id {run_id!r}; list runs with `tideflow runs`"
                )
            steps: list[StepRecord] = []
            if with_steps:
                tasks: dict[str, list[TaskRecord]] = {}
                for t in tx.rows("get_run_tasks", run_id=run_id):
                    tasks.setdefault(t["step_slug"], []).append(_task_record(t))
                steps = [_step_record(s, tasks.get(s["step_slug"], []))
                         for s in tx.rows("get_run_steps", run_id=run_id)]
            return _run_record(found[0], steps)

    def list_runs(self, *, flow_slug: str | None = None, status: str | None = None,
                  limit: int = 50, offset: int = 0) -> list[RunRecord]:
        with self._tx() as tx:
            return [_run_record(r, []) for r in tx.rows(
                "list_runs", flow_slug=flow_slug, status=status, limit=limit, offset=offset)]

    def cancel_run(self, run_id: str) -> bool:
        with self._tx() as tx:
            found = tx.rows("lock_runs", run_ids=[run_id])
            if not found:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            now = self.clock.now()
            if not tx.run("cancel_run", run_id=run_id, finished_at=now):
                return False
            tx.run("cancel_run_tasks", run_id=run_id, finished_at=now)
            tx.run("skip_run_steps", run_id=run_id, finished_at=now)
            return True

    # --- tasks --------------------------------------------------------------------------------
    def claim_tasks(self, worker_id: str, flow_slugs: Sequence[str], limit: int,
                    lease_margin: float) -> list[ClaimedTask]:
        if not flow_slugs or limit <= 0:
            return []
        with self._tx() as tx:
            rows = tx.rows("claim_tasks", worker_id=worker_id, flow_slugs=list(flow_slugs),
                           limit=limit, now=self.clock.now(), margin=lease_margin)
            if not rows:
                return []
            runs = {r["run_id"]: r for r in tx.rows(
                "get_runs_context", run_ids=list({r["run_id"] for r in rows}))}
            steps = {}
            for r in rows:
                version = runs[r["run_id"]]["flow_version"]
                key = (r["flow_slug"], version, r["step_slug"])
                if key not in steps:
                    shape = self._shape(tx, r["flow_slug"], version)
                    steps[key] = next(s for s in shape["steps"] if s["slug"] == r["step_slug"])
        return [
            ClaimedTask(
                key=TaskKey(r["run_id"], r["step_slug"], r["task_index"]),
                flow_slug=r["flow_slug"], flow_version=runs[r["run_id"]]["flow_version"],
                step_kind=steps[(r["flow_slug"], runs[r["run_id"]]["flow_version"],
                                 r["step_slug"])]["kind"],
                depends_on=tuple(steps[(r["flow_slug"], runs[r["run_id"]]["flow_version"],
                                        r["step_slug"])]["depends_on"]),
                attempt=r["attempts"], input_json=r["input"],
                run_input_json=runs[r["run_id"]]["input"], timeout=r["timeout"],
                lease_expires_at=r["lease_expires_at"],
            )
            for r in rows
        ]

    def complete_tasks(self, worker_id: str, completions: Sequence[TaskCompletion]) -> None:
        if not completions:
            return
        ordered = sorted(completions, key=lambda c: (c.key.run_id, c.key.step_slug,
                                                      c.key.task_index))
        with self._tx() as tx:
            # Lock order, everywhere: run rows first (sorted by id), then steps and tasks.
            # Without it two workers completing tasks of the same runs could deadlock.
            tx.rows("lock_runs", run_ids=sorted({c.key.run_id for c in ordered}))
            now = self.clock.now()
            for c in ordered:
                self._complete_task(tx, worker_id, c, now)

    def _complete_task(self, tx: Tx, worker_id: str, c: TaskCompletion, now: datetime) -> None:
        k = c.key
        done = tx.rows("complete_task", run_id=k.run_id, step_slug=k.step_slug,
                       task_index=k.task_index, attempt=c.attempt, worker_id=worker_id,
                       output=c.output_json, finished_at=now)
        if not done:
            return  # stale: lease lost, run cancelled or failed meanwhile
        step = tx.rows("decrement_step_tasks", run_id=k.run_id, step_slug=k.step_slug)[0]
        if step["remaining_tasks"] != 0:
            return
        if step["kind"] == "map":
            outs = [r["output"] for r in tx.rows("get_task_outputs", run_id=k.run_id,
                                                 step_slug=k.step_slug)]
            output = "[" + ",".join(outs) + "]"
        else:
            output = c.output_json
        self._complete_step(tx, k.run_id, done[0]["flow_slug"], k.step_slug, output, now)

    def fail_task(self, worker_id: str, failure: TaskFailure) -> None:
        with self._tx() as tx:
            tx.rows("lock_runs", run_ids=[failure.key.run_id])
            task = tx.rows("get_started_task", run_id=failure.key.run_id,
                           step_slug=failure.key.step_slug, task_index=failure.key.task_index,
                           attempt=failure.attempt, worker_id=worker_id)
            if task:
                self._fail_task(tx, task[0], failure.error, failure.retryable, self.clock.now())

    def _fail_task(self, tx: Tx, task: Row, error: str, retryable: bool, now: datetime) -> None:
        key = {"run_id": task["run_id"], "step_slug": task["step_slug"],
               "task_index": task["task_index"]}
        attempts, max_attempts = task["attempts"], task["max_attempts"]
        if retryable and attempts < max_attempts:
            delay = backoff_delay(attempts, task["base_delay"], task["max_delay"])
            tx.run("retry_task", **key, error=error,
                   visible_at=now + timedelta(seconds=delay))
            tx.notify = True
            return
        tx.run("fail_task", **key, error=error, finished_at=now)
        why = "failed" if not retryable else f"failed after {attempts} attempt(s)"
        index = f"[{task['task_index']}]" if task["kind"] == "map" else ""
        self._fail_run(tx, task["run_id"], task["step_slug"], now,
                       f"step {task['step_slug']!r}{index} {why}: {error}")

    def count_queued(self, flow_slugs: Sequence[str]) -> int:
        with self._tx() as tx:
            return int(tx.rows("count_queued", flow_slugs=list(flow_slugs))[0]["n"])

    def extend_leases(self, worker_id: str, keys: Sequence[TaskKey], lease_margin: float) -> None:
        if not keys:
            return
        with self._tx() as tx:
            tx.run("extend_leases", worker_id=worker_id, now=self.clock.now(),
                   margin=lease_margin, **_key_lists(keys))

    def release_tasks(self, worker_id: str, keys: Sequence[TaskKey]) -> None:
        if not keys:
            return
        with self._tx() as tx:
            if tx.run("release_tasks", worker_id=worker_id, now=self.clock.now(),
                      **_key_lists(keys)):
                tx.notify = True

    def requeue_stalled(self) -> int:
        with self._tx() as tx:
            now = self.clock.now()
            candidates = tx.rows("find_stalled_tasks", now=now)
            if not candidates:
                return 0
            tx.rows("lock_runs", run_ids=sorted({t["run_id"] for t in candidates}))
            handled = 0
            for c in candidates:
                # Re-read under the run lock: the task may have completed meanwhile.
                task = tx.rows("get_stalled_task", run_id=c["run_id"], step_slug=c["step_slug"],
                               task_index=c["task_index"], now=now)
                if task:
                    self._fail_task(tx, task[0], "lease expired: the worker running this task "
                                    "stopped heartbeating (killed or lost)", True, now)
                    handled += 1
            return handled


def new_run_id() -> str:
    return str(uuid.uuid4())


def _key_lists(keys: Sequence[TaskKey]) -> dict[str, list[Any]]:
    return {"run_ids": [k.run_id for k in keys], "step_slugs": [k.step_slug for k in keys],
            "task_indexes": [k.task_index for k in keys]}


def _full_shape(definition: FlowDefinition) -> dict[str, Any]:
    """What ``flows.shape`` holds: the versioned shape plus topological order and leaves, so the
    engine can schedule an old version whose class has since changed."""
    shape = definition.shape()
    assert version_of(shape) == definition.version
    return {
        **shape,
        "version": definition.version,
        "steps": [{"slug": s.slug, "depends_on": list(s.depends_on), "kind": s.kind,
                   "index": s.index} for s in definition.steps],
        "leaves": list(definition.leaves),
    }


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _task_record(t: Row) -> TaskRecord:
    return TaskRecord(
        step_slug=t["step_slug"], task_index=t["task_index"], status=t["status"],
        attempts=t["attempts"], error=t["error"], output=_loads(t["output"]),
        queued_at=t["queued_at"], started_at=t["started_at"], finished_at=t["finished_at"],
        visible_at=t["visible_at"],
    )


def _step_record(s: Row, tasks: list[TaskRecord]) -> StepRecord:
    return StepRecord(
        step_slug=s["step_slug"], step_index=s["step_index"], kind=s["kind"],
        depends_on=json.loads(s["depends_on"]), status=s["status"], output=_loads(s["output"]),
        error=s["error"], initial_tasks=s["initial_tasks"], remaining_tasks=s["remaining_tasks"],
        created_at=s["created_at"], started_at=s["started_at"], finished_at=s["finished_at"],
        tasks=tasks,
    )


def _run_record(r: Row, steps: list[StepRecord]) -> RunRecord:
    return RunRecord(
        run_id=str(r["run_id"]), flow_slug=r["flow_slug"], flow_version=r["flow_version"],
        status=r["status"], input=_loads(r["input"]), output=_loads(r["output"]),
        error=r["error"], started_at=r["started_at"], finished_at=r["finished_at"], steps=steps,
    )


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
