"""The run state machine, written once over named SQL queries.

Backends (``sqlite``, ``postgres``) supply connections, transactions, locking and their own SQL
for each named query (``<backend>/queries.sql``); this module decides what happens when a run
starts, a task completes or fails, a lease expires. Keeping the transitions in one place is what
lets one conformance suite hold both backends to the same behaviour, instead of two engines
drifting apart.

Every transition is **set-based**: it takes a batch (many completions, every root step of a run,
every step a completion made ready) and issues a fixed number of statements for it, each statement
unpacking a JSON batch parameter (see ``rows.batch``). A worker committing 200 completions costs
about as many round trips as one committing a single one - that is where throughput comes from.

Transitions (each inside the caller's single transaction):

    start_run       run started; steps created; root steps started
    _start_steps    single: one task (input: run input, or dependency outputs by name);
                    map: one task per element, or completed at once when the array is empty;
                    a map source that is not a list fails the run (no retry can fix data)
    complete_tasks  tasks completed; steps whose last task completed complete
    _complete_steps dependents' remaining_deps decremented and those at zero started; runs whose
                    last step completed complete with their leaf steps' outputs
    _fail_task      queued again after backoff while attempts remain; else task, step and run
                    fail and every other unfinished task of the run is cancelled (no orphans)
    requeue_stalled a task whose lease expired (its worker died) is queued again at once without
                    counting the attempt, up to its step's max_stalls; the stall after that fails
                    it like _fail_task's final failure

Lock order (matters on PostgreSQL, harmless on SQLite): every transaction that changes a run
locks its ``runs`` row first, in run_id order (``lock_runs``), then steps and tasks.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from tideflow.clock import Clock
from tideflow.errors import DuplicateKeyError, RunAlreadyExistsError, RunNotFoundError
from tideflow.events.model import MAX_ID_LENGTH, ExpectedVersion, NewEvent
from tideflow.events.upcasting import Upcasters
from tideflow.flows.definition import FlowDefinition
from tideflow.jsonutil import dumps, storable_text
from tideflow.retrying import backoff_delay
from tideflow.storage.database import EVENTS_CHANNEL, TASKS_CHANNEL, Database, Row, Tx
from tideflow.storage.event_contract import prepare_append
from tideflow.storage.flow_contract import (
    ClaimedTask,
    ClaimRequest,
    FlowVersionRecord,
    RunRecord,
    RunReport,
    StepRecord,
    TaskCompletion,
    TaskFailure,
    TaskKey,
    TaskRecord,
)
from tideflow.storage.rows import batch, loads, run_record, step_record, task_record

Pair = tuple[str, str]  # (run_id, step_slug)

#: Lifecycle events are written as they are: no upcasting on the way in.
_PLAIN = Upcasters()

#: The first words of a stalled task's ``error`` while it is requeued.
STALL_ERROR = "lease expired: the worker running this task stopped heartbeating (killed or lost)"


class SqlFlowStore:
    """``FlowStore`` over a ``Database``, for every backend.

    ``owns_db``: ``close()`` closes the Database too (a store opened on its own by
    ``open_store``); stores opened together by ``open_database`` share one and leave it open.
    """

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self.db = db
        self.url = db.url
        self.clock: Clock = db.clock
        self._owns_db = owns_db
        self._known_versions: set[tuple[str, str]] = set()
        self._shapes: dict[tuple[str, str], dict[str, Any]] = {}

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def check_schema(self) -> None:
        self.db.check_schema()

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.db.subscribe(TASKS_CHANNEL, callback)

    @contextmanager
    def _tx(self, outer: Tx | None = None) -> Iterator[Tx]:
        """A transaction of its own, or a savepoint of ``outer`` (a process manager's reaction
        starting a run): its writes commit, or not, with that transaction."""
        if outer is None:
            with self.db.transaction() as tx:
                yield tx
        else:
            with outer.savepoint():
                yield outer

    # --- flows -----------------------------------------------------------------------------------
    def ensure_flow(self, definition: FlowDefinition) -> None:
        if (definition.slug, definition.version) not in self._known_versions:
            with self._flow_tx(definition):
                pass

    @contextmanager
    def _flow_tx(self, definition: FlowDefinition, outer: Tx | None = None) -> Iterator[Tx]:
        """A transaction that first records ``definition``'s version (its runs' foreign key
        needs the row). The version is remembered - and its insert skipped from then on - only
        once this transaction has committed: remembered earlier, a transaction that failed
        after the insert (an outage, a full disk, a refused run) would leave the cache saying
        "stored" about a row that rolled back, and every later start of the flow would fail
        on the foreign key."""
        key = (definition.slug, definition.version)
        remember = False
        with self._tx(outer) as tx:
            if key not in self._known_versions:
                shape = stored_shape(definition)
                tx.run(
                    "insert_flow",
                    flow_slug=definition.slug,
                    version=definition.version,
                    shape=json.dumps(shape),
                    created_at=self.clock.now(),
                )
                self._shapes[key] = _with_dependents(shape)
                # In a caller's transaction, the row commits (or not) with it, later.
                remember = outer is None
            yield tx
        if remember:
            self._known_versions.add(key)

    def list_flows(self) -> list[FlowVersionRecord]:
        with self._tx() as tx:
            return [
                FlowVersionRecord(
                    r["flow_slug"], r["version"], json.loads(r["shape"]), r["created_at"]
                )
                for r in tx.rows("list_flows")
            ]

    def _shape(self, tx: Tx, flow_slug: str, version: str) -> dict[str, Any]:
        """A stored flow version's shape; runs are scheduled from it, not from the code."""
        key = (flow_slug, version)
        shape = self._shapes.get(key)
        if shape is None:
            found = tx.rows("get_flow", flow_slug=flow_slug, version=version)
            shape = self._shapes[key] = _with_dependents(json.loads(found[0]["shape"]))
        return shape

    # --- starting runs and steps -----------------------------------------------------------------
    def start_run(
        self,
        definition: FlowDefinition,
        run_id: str,
        input_json: str,
        *,
        tx: Tx | None = None,
        report: RunReport | None = None,
    ) -> None:
        try:
            with self._flow_tx(definition, tx) as inner:
                if self.db.fast_paths:
                    self._start_run_fast(inner, definition, run_id, input_json)
                else:
                    self._start_run(inner, definition, run_id, input_json)
                if report is not None:
                    inner.run("set_report", run_id=run_id, report=_report_json(report))
                    self._report(inner, [run_id])  # a run of empty maps ends as it starts
        except DuplicateKeyError as exc:
            raise RunAlreadyExistsError(
                f"a run with id {run_id!r} already exists; pass another run_id or none to get "
                "a fresh one"
            ) from exc

    def _start_run_fast(
        self, tx: Tx, definition: FlowDefinition, run_id: str, input_json: str
    ) -> None:
        """The fast path (``Database.fast_paths``): the dialect's ``start_run`` query does all
        of ``_start_run`` in one round trip (PostgreSQL: ``tideflow.start_run_v2``)."""
        notify = tx.rows(
            "start_run",
            run_id=run_id,
            flow_slug=definition.slug,
            flow_version=definition.version,
            input=input_json,
            steps=step_rows(definition),
            now=self.clock.now(),
        )[0]["notify"]
        tx.notify = tx.notify or bool(notify)

    def _start_run(self, tx: Tx, definition: FlowDefinition, run_id: str, input_json: str) -> None:
        now = self.clock.now()
        tx.run(
            "insert_run",
            run_id=run_id,
            flow_slug=definition.slug,
            flow_version=definition.version,
            input=input_json,
            remaining_steps=len(definition.steps),
            started_at=now,
        )
        tx.run("insert_steps", created_at=now, rows=step_rows(definition, run_id))
        roots = [(run_id, s.slug) for s in definition.steps if s.is_root]
        self._start_steps(tx, roots, now, {run_id: input_json})

    def _start_steps(
        self, tx: Tx, pairs: list[Pair], now: datetime, run_inputs: dict[str, str]
    ) -> None:
        """Queue the tasks of steps whose dependencies have all completed."""
        if not pairs:
            return
        steps = tx.rows("get_steps", rows=_pairs(pairs))
        steps.sort(key=lambda s: (s["run_id"], s["step_index"]))
        wanted = {(s["run_id"], d) for s in steps for d in json.loads(s["depends_on"])}
        outputs = self._step_outputs(tx, wanted)
        started: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        empty: list[Pair] = []
        failures: dict[str, tuple[str, str]] = {}
        for s in steps:
            run_id, slug = s["run_id"], s["step_slug"]
            deps: list[str] = json.loads(s["depends_on"])
            if s["kind"] == "map":
                source_json = outputs[(run_id, deps[0])] if deps else run_inputs[run_id]
                source = json.loads(source_json)
                if not isinstance(source, list):
                    origin = f"step {deps[0]!r}" if deps else "the run input"
                    failures.setdefault(
                        run_id,
                        (
                            slug,
                            (
                                f"map step {slug!r} needs a list from {origin}, got "
                                f"{_json_type(source)}; make {origin} a JSON array"
                            ),
                        ),
                    )
                    continue
                # jsonutil.dumps, not json.dumps: it writes big floats so they stay floats
                inputs = [dumps(item, what=f"an element for map step {slug!r}") for item in source]
                if not inputs:
                    empty.append((run_id, slug))
            elif deps:
                inputs = [
                    "{" + ",".join(f"{json.dumps(d)}:{outputs[(run_id, d)]}" for d in deps) + "}"
                ]
            else:
                inputs = [run_inputs[run_id]]
            started.append({"run_id": run_id, "step_slug": slug, "n": len(inputs)})
            tasks.extend(
                {
                    "run_id": run_id,
                    "step_slug": slug,
                    "task_index": i,
                    "input": text,
                    "flow_slug": s["flow_slug"],
                    "timeout": s["timeout"],
                    "start_delay": s["start_delay"],
                }
                for i, text in enumerate(inputs)
            )
        if started:
            tx.run("start_steps", rows=batch(started), started_at=now)
        if tasks:
            tx.run("insert_tasks", rows=batch(tasks), now=now)
            tx.notify = True
        for run_id, (slug, error) in failures.items():
            self._fail_run(tx, run_id, slug, now, error)
        empty = [p for p in empty if p[0] not in failures]
        if empty:
            self._complete_steps(tx, [(r, s, "[]") for r, s in empty], now)

    def _step_outputs(self, tx: Tx, pairs: set[Pair]) -> dict[Pair, str]:
        if not pairs:
            return {}
        return {
            (r["run_id"], r["step_slug"]): r["output"]
            for r in tx.rows("get_step_outputs", rows=_pairs(pairs))
        }

    # --- completing -----------------------------------------------------------------------------
    def complete_tasks(
        self,
        worker_id: str,
        completions: Sequence[TaskCompletion],
        claim: ClaimRequest | None = None,
    ) -> list[ClaimedTask]:
        if not completions:
            return []
        with self._tx() as tx:
            if self.db.fast_paths:
                # The dialect's complete_tasks_batch does all of _complete_tasks in one round
                # trip (PostgreSQL: tideflow.complete_tasks_v2).
                notify = tx.rows(
                    "complete_tasks_batch",
                    worker_id=worker_id,
                    now=self.clock.now(),
                    rows=_completions(completions),
                )[0]["notify"]
                tx.notify = bool(notify)
            else:
                self._complete_tasks(tx, worker_id, completions)
            if any(c.reports for c in completions):
                self._report(tx, [c.key.run_id for c in completions])
            return self._claim_ready(tx, worker_id, claim)

    def _claim_ready(self, tx: Tx, worker_id: str, claim: ClaimRequest | None) -> list[ClaimedTask]:
        """The claim half of complete-and-claim: only when the completions queued tasks."""
        if claim is None or not tx.notify:
            return []
        return self._claim(tx, worker_id, claim.flow_slugs, claim.limit, claim.lease_margin)

    def _complete_tasks(
        self, tx: Tx, worker_id: str, completions: Sequence[TaskCompletion]
    ) -> None:
        tx.rows("lock_runs", run_ids=sorted({c.key.run_id for c in completions}))
        now = self.clock.now()
        done = tx.rows(
            "complete_tasks",
            worker_id=worker_id,
            finished_at=now,
            rows=_completions(completions),
        )
        if not done:
            return  # all stale: lease lost, or run cancelled or failed meanwhile
        counts = Counter((d["run_id"], d["step_slug"]) for d in done)
        steps = tx.rows(
            "decrement_step_tasks",
            rows=batch({"run_id": r, "step_slug": s, "n": n} for (r, s), n in counts.items()),
        )
        outputs = {(c.key.run_id, c.key.step_slug): c.output_json for c in completions}
        finished: list[tuple[str, str, str]] = []
        maps: list[Pair] = []
        for s in steps:
            if s["remaining_tasks"] != 0:
                continue
            pair = (s["run_id"], s["step_slug"])
            if s["kind"] == "map":
                maps.append(pair)
            else:
                finished.append((*pair, outputs[pair]))
        if maps:
            grouped: dict[Pair, list[str]] = defaultdict(list)
            for r in tx.rows("get_map_outputs", rows=_pairs(maps)):
                grouped[(r["run_id"], r["step_slug"])].append(r["output"])
            finished += [(r, s, "[" + ",".join(grouped[(r, s)]) + "]") for r, s in maps]
        if finished:
            self._complete_steps(tx, finished, now)

    def _complete_steps(self, tx: Tx, finished: list[tuple[str, str, str]], now: datetime) -> None:
        tx.run(
            "complete_steps",
            finished_at=now,
            rows=batch({"run_id": r, "step_slug": s, "output": out} for r, s, out in finished),
        )
        per_run = Counter(r for r, _, _ in finished)
        runs = tx.rows(
            "decrement_run_steps", rows=batch({"run_id": r, "n": n} for r, n in per_run.items())
        )
        shapes = {r["run_id"]: self._shape(tx, r["flow_slug"], r["flow_version"]) for r in runs}
        dependents: Counter[Pair] = Counter()
        for run_id, slug, _ in finished:
            for dependent in shapes[run_id]["dependents"][slug]:
                dependents[(run_id, dependent)] += 1
        ready: list[Pair] = []
        if dependents:
            counted = tx.rows(
                "decrement_deps",
                rows=batch(
                    {"run_id": r, "step_slug": s, "n": n} for (r, s), n in dependents.items()
                ),
            )
            ready = [(r["run_id"], r["step_slug"]) for r in counted if r["remaining_deps"] == 0]
        done = [r["run_id"] for r in runs if r["remaining_steps"] == 0]
        if done:
            leaves = {(run_id, leaf) for run_id in done for leaf in shapes[run_id]["leaves"]}
            outputs = self._step_outputs(tx, leaves)
            tx.run(
                "complete_runs",
                finished_at=now,
                rows=batch(
                    {
                        "run_id": run_id,
                        "output": "{"
                        + ",".join(
                            f"{json.dumps(leaf)}:{outputs[(run_id, leaf)]}"
                            for leaf in shapes[run_id]["leaves"]
                        )
                        + "}",
                    }
                    for run_id in done
                ),
            )
        self._start_steps(tx, ready, now, {})

    # --- failing and cancelling ------------------------------------------------------------------
    def fail_task(self, worker_id: str, failure: TaskFailure) -> datetime | None:
        key = failure.key
        with self._tx() as tx:
            tx.rows("lock_runs", run_ids=[key.run_id])
            task = tx.rows(
                "get_started_task",
                run_id=key.run_id,
                step_slug=key.step_slug,
                task_index=key.task_index,
                attempt=failure.attempt,
                worker_id=worker_id,
            )
            if not task:
                return None  # stale: lease lost, or run failed or cancelled meanwhile
            return self._fail_task(tx, task[0], failure.error, failure.retryable, self.clock.now())

    def _fail_task(
        self, tx: Tx, task: Row, error: str, retryable: bool, now: datetime
    ) -> datetime | None:
        key = {
            "run_id": task["run_id"],
            "step_slug": task["step_slug"],
            "task_index": task["task_index"],
        }
        error = storable_text(error)  # a user exception's text: NUL must not fail the failure
        attempts, max_attempts = task["attempts"], task["max_attempts"]
        if retryable and attempts < max_attempts:
            visible_at = now + timedelta(
                seconds=backoff_delay(attempts, task["base_delay"], task["max_delay"])
            )
            tx.run("retry_task", **key, error=error, visible_at=visible_at)
            tx.notify = True
            return visible_at
        tx.run("fail_task", **key, error=error, finished_at=now)
        why = "failed" if not retryable else f"failed after {attempts} attempt(s)"
        index = f"[{task['task_index']}]" if task["kind"] == "map" else ""
        self._fail_run(
            tx,
            task["run_id"],
            task["step_slug"],
            now,
            f"step {task['step_slug']!r}{index} {why}: {error}",
        )
        return None

    def _fail_run(self, tx: Tx, run_id: str, step_slug: str, now: datetime, error: str) -> None:
        error = storable_text(error)
        tx.run("fail_step", run_id=run_id, step_slug=step_slug, error=error, finished_at=now)
        tx.run("fail_run", run_id=run_id, error=error, finished_at=now)
        tx.run("cancel_run_tasks", run_id=run_id, finished_at=now)
        tx.run("skip_run_steps", run_id=run_id, finished_at=now)
        self._report(tx, [run_id])

    def cancel_run(self, run_id: str) -> bool:
        with self._tx() as tx:
            if not tx.rows("lock_runs", run_ids=[run_id]):
                raise RunNotFoundError(f"no run with id {run_id!r}")
            now = self.clock.now()
            if not tx.run("cancel_run", run_id=run_id, finished_at=now):
                return False
            tx.run("cancel_run_tasks", run_id=run_id, finished_at=now)
            tx.run("skip_run_steps", run_id=run_id, finished_at=now)
            self._report(tx, [run_id])
            return True

    def _report(self, tx: Tx, run_ids: Sequence[str]) -> None:
        """Append the lifecycle event of each of these runs that ended and reports
        (``RunReport``), and clear its report: in the transaction that ended it, so that the
        event exists if and only if the end does, once."""
        ended = tx.rows("finished_reports", run_ids=sorted(set(run_ids)))
        if not ended:
            return
        tx.run("clear_reports", run_ids=[r["run_id"] for r in ended])
        recorded_at = self.db.stored_time(self.clock.now())
        for r in ended:
            prepared = prepare_append(
                run_stream(r["run_id"]), [_lifecycle(r)], ExpectedVersion.ANY, None, None, _PLAIN
            )
            self.db.append_events(tx, prepared, recorded_at)
        tx.on_end(lambda: self.db.wake(EVENTS_CHANNEL))

    # --- reading ---------------------------------------------------------------------------------
    def get_run(self, run_id: str, *, with_steps: bool = True) -> RunRecord:
        with self._tx() as tx:
            found = tx.rows("get_run", run_id=run_id)
            if not found:
                raise RunNotFoundError(f"no run with id {run_id!r}; list runs with `tideflow runs`")
            steps: list[StepRecord] = []
            if with_steps:
                tasks: dict[str, list[TaskRecord]] = defaultdict(list)
                for t in tx.rows("get_run_tasks", run_id=run_id):
                    tasks[t["step_slug"]].append(task_record(t))
                steps = [
                    step_record(s, tasks[s["step_slug"]])
                    for s in tx.rows("get_run_steps", run_id=run_id)
                ]
            return run_record(found[0], steps)

    def list_runs(
        self,
        *,
        flow_slug: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        with self._tx() as tx:
            return [
                run_record(r, [])
                for r in tx.rows(
                    "list_runs", flow_slug=flow_slug, status=status, limit=limit, offset=offset
                )
            ]

    def purge_finished_runs(self, older_than: float, limit: int = 500) -> int:
        before = self.clock.now() - timedelta(seconds=older_than)
        with self._tx() as tx:
            found = tx.rows("finished_runs_before", before=before, limit=limit)
            run_ids = [r["run_id"] for r in found if not r["owed"]]
            if not run_ids:
                return 0
            # Children first: on PostgreSQL the foreign keys' cascades then find nothing to do.
            tx.run("delete_run_tasks", run_ids=run_ids)
            tx.run("delete_run_steps", run_ids=run_ids)
            return tx.run("delete_runs", run_ids=run_ids)

    # --- the worker's side -----------------------------------------------------------------------
    def claim_tasks(
        self, worker_id: str, flow_slugs: Sequence[str], limit: int, lease_margin: float
    ) -> list[ClaimedTask]:
        if not flow_slugs or limit <= 0:
            return []
        with self._tx() as tx:
            return self._claim(tx, worker_id, flow_slugs, limit, lease_margin)

    def _claim(
        self, tx: Tx, worker_id: str, flow_slugs: Sequence[str], limit: int, lease_margin: float
    ) -> list[ClaimedTask]:
        if not flow_slugs or limit <= 0:
            return []
        rows = tx.rows(
            "claim_tasks",
            worker_id=worker_id,
            flow_slugs=list(flow_slugs),
            limit=limit,
            now=self.clock.now(),
            margin=lease_margin,
        )
        if not rows:
            return []
        runs = {
            r["run_id"]: {"input": r["run_input"], "flow_version": r["flow_version"]} for r in rows
        }
        claimed = []
        for r in rows:
            run = runs[r["run_id"]]
            shape = self._shape(tx, r["flow_slug"], run["flow_version"])
            step = shape["by_slug"][r["step_slug"]]
            claimed.append(
                ClaimedTask(
                    key=TaskKey(r["run_id"], r["step_slug"], r["task_index"]),
                    flow_slug=r["flow_slug"],
                    flow_version=run["flow_version"],
                    step_kind=step["kind"],
                    depends_on=tuple(step["depends_on"]),
                    attempt=r["attempts"],
                    input_json=r["input"],
                    run_input_json=run["input"],
                    timeout=r["timeout"],
                    lease_expires_at=r["lease_expires_at"],
                    reports=bool(r["reports"]),
                    correlation_id=r["correlation_id"],
                )
            )
        return claimed

    def count_queued(self, flow_slugs: Sequence[str]) -> int:
        with self._tx() as tx:
            return int(tx.rows("count_queued", flow_slugs=list(flow_slugs))[0]["n"])

    def extend_leases(self, worker_id: str, keys: Sequence[TaskKey], lease_margin: float) -> None:
        if keys:
            with self._tx() as tx:
                tx.run(
                    "extend_leases",
                    worker_id=worker_id,
                    now=self.clock.now(),
                    margin=lease_margin,
                    rows=_keys(keys),
                )

    def release_tasks(self, worker_id: str, keys: Sequence[TaskKey]) -> None:
        if keys:
            with self._tx() as tx:
                if tx.run(
                    "release_tasks", worker_id=worker_id, now=self.clock.now(), rows=_keys(keys)
                ):
                    tx.notify = True

    def requeue_stalled(self) -> int:
        """Requeue the started tasks whose lease expired, or fail those out of stalls.

        A lease expires when its worker stops heartbeating: killed (SIGKILL, out of memory, a
        forced deploy), frozen or cut off. That says nothing about the step, so unlike a failure
        it costs no attempt - the claim's count is undone, as at a graceful release - and is
        counted in ``tasks.stalls`` instead. A task that keeps stalling (it may be what kills its
        workers) fails on its ``max_stalls + 1``-th stall, with its step and run.

        A requeued task is visible at once, not after a backoff: its worker is gone, nothing
        about the task needs time to recover, and the expiry has already kept it idle for the
        lease margin. Backoff would only add latency; a task that kills every worker it lands
        on is bounded by ``max_stalls``, not by waiting.

        Undoing the attempt leaves the next claim the same attempt number, so the completion
        fence is the worker id: a late answer from the lost worker names that worker while the
        task is queued or held by another one, and is ignored. (Only a worker that was alive
        after all and claimed the same task again could have its late answer count - an answer
        of the same task, which at-least-once execution allows anyway.)
        """
        with self._tx() as tx:
            now = self.clock.now()
            candidates = tx.rows("find_stalled_tasks", now=now)
            if not candidates:
                return 0
            tx.rows("lock_runs", run_ids=sorted({t["run_id"] for t in candidates}))
            # Re-read under the run locks: a task may have completed, or failed with its run.
            stalled = tx.rows(
                "get_stalled_tasks",
                now=now,
                rows=batch(
                    {
                        "run_id": c["run_id"],
                        "step_slug": c["step_slug"],
                        "task_index": c["task_index"],
                    }
                    for c in candidates
                ),
            )
            requeue = [t for t in stalled if t["stalls"] < t["max_stalls"]]
            handled = 0
            if requeue:
                handled = tx.run(
                    "requeue_stalled_tasks",
                    now=now,
                    rows=batch(
                        {
                            "run_id": t["run_id"],
                            "step_slug": t["step_slug"],
                            "task_index": t["task_index"],
                            "error": f"{STALL_ERROR}; requeued (stall {t['stalls'] + 1} of "
                            f"{t['max_stalls']})",
                        }
                        for t in requeue
                    ),
                )
                if handled:
                    tx.notify = True
            for t in stalled:
                if t["stalls"] < t["max_stalls"]:
                    continue
                n = t["stalls"] + 1
                error = (
                    f"stalled {n} time{'s' if n != 1 else ''}: the worker running it was "
                    "killed or lost each time"
                )
                if tx.run(
                    "fail_stalled_task",
                    run_id=t["run_id"],
                    step_slug=t["step_slug"],
                    task_index=t["task_index"],
                    error=error,
                    finished_at=now,
                ):
                    index = f"[{t['task_index']}]" if t["kind"] == "map" else ""
                    self._fail_run(
                        tx,
                        t["run_id"],
                        t["step_slug"],
                        now,
                        f"step {t['step_slug']!r}{index} failed: {error}",
                    )
                    handled += 1
            return handled


def step_rows(definition: FlowDefinition, run_id: str | None = None) -> str:
    """The ``run_steps`` rows of a new run, as a batch parameter."""
    dependents: dict[str, list[str]] = {s.slug: [] for s in definition.steps}
    for s in definition.steps:
        for d in s.depends_on:
            dependents[d].append(s.slug)
    return batch(
        {
            "run_id": run_id,
            "step_slug": s.slug,
            "step_index": s.index,
            "kind": s.kind,
            "depends_on": json.dumps(list(s.depends_on)),
            "dependents": json.dumps(dependents[s.slug]),
            "remaining_deps": len(s.depends_on),
            **s.options(),
        }
        for s in definition.steps
    )


def stored_shape(definition: FlowDefinition) -> dict[str, Any]:
    """What ``flows.shape`` holds: the versioned shape plus topological order and leaves, so a
    run of an old version can be scheduled after its class has changed."""
    return {
        "slug": definition.slug,
        "version": definition.version,
        "steps": [
            {"slug": s.slug, "depends_on": list(s.depends_on), "kind": s.kind, "index": s.index}
            for s in definition.steps
        ],
        "leaves": list(definition.leaves),
    }


def _with_dependents(shape: dict[str, Any]) -> dict[str, Any]:
    dependents: dict[str, list[str]] = {s["slug"]: [] for s in shape["steps"]}
    for s in shape["steps"]:
        for d in s["depends_on"]:
            dependents[d].append(s["slug"])
    return {**shape, "dependents": dependents, "by_slug": {s["slug"]: s for s in shape["steps"]}}


def _json_type(value: Any) -> str:
    """JSON's name for a decoded value, as the PostgreSQL functions word it too."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def run_stream(run_id: str) -> str:
    """The stream a run reports to: ``run-<run id>``, hashed when that is too long."""
    stream = f"run-{run_id}"
    if len(stream) <= MAX_ID_LENGTH:
        return stream
    return f"run-{hashlib.sha256(run_id.encode()).hexdigest()}"


def _report_json(report: RunReport) -> str:
    return dumps(
        {
            "correlation_id": report.correlation_id,
            "causation_id": report.causation_id,
            "metadata": dict(report.metadata),
        },
        what="the report of a run",
    )


def _uuid(text: Any) -> UUID | None:
    try:
        return None if text is None else UUID(str(text))
    except ValueError:
        return None


def _lifecycle(r: Row) -> NewEvent:
    """A run's end as an event (``RunReport`` says which)."""
    report = json.loads(r["report"])
    data: dict[str, Any] = {"run_id": r["run_id"], "flow": r["flow_slug"]}
    if r["status"] == "completed":
        event_type, data["output"] = "FlowRunCompleted", loads(r["output"])
    elif r["status"] == "failed":
        event_type, data["error"] = "FlowRunFailed", r["error"]
    else:
        event_type = "FlowRunCancelled"
    return NewEvent(
        event_type,
        data,
        report["metadata"],
        causation_id=_uuid(report["causation_id"]),
        correlation_id=_uuid(report["correlation_id"]),
    )


def _completions(completions: Sequence[TaskCompletion]) -> str:
    return batch(
        {
            "run_id": c.key.run_id,
            "step_slug": c.key.step_slug,
            "task_index": c.key.task_index,
            "attempt": c.attempt,
            "output": c.output_json,
        }
        for c in completions
    )


def _pairs(pairs: Sequence[Pair] | set[Pair]) -> str:
    return batch({"run_id": r, "step_slug": s} for r, s in pairs)


def _keys(keys: Sequence[TaskKey]) -> str:
    return batch(
        {"run_id": k.run_id, "step_slug": k.step_slug, "task_index": k.task_index} for k in keys
    )
