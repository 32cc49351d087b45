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

    start_run       run started; steps created; root steps started (a root map's input that is
                    not an array is refused first: MapInputError, nothing written)
    start_runs      the same for many runs of one flow, set-based
    _start_steps    a step whose condition is unmet is skipped, skipped with every step after
                    it, or fails its run (when_unmet); else single: one task (input: run input,
                    or the outputs of its completed dependencies by name); map: one task per
                    element, or completed at once when the array is empty (or its source was
                    skipped); a map source that is not a list fails the run, blaming the step
                    that produced it (no retry can fix data)
    complete_tasks  tasks completed; steps whose last task completed complete
    _complete_steps steps completed or skipped are counted off: dependents' remaining_deps
                    decremented and those at zero started; runs whose last step ended complete
                    with their completed leaf steps' outputs
    _fail_task      queued again after backoff while attempts remain; else the step's
                    when_failed: the task, step and run fail and every other unfinished task of
                    the run is cancelled (no orphans), or the step is skipped (with its
                    dependents for skip_cascade) and the run goes on
    requeue_stalled a task whose lease expired (its worker died) is queued again at once without
                    counting the attempt, up to its step's max_stalls; the stall after that fails
                    it like _fail_task's final failure
    retry_run       a failed run started again from its failed steps: their tasks deleted (fresh
                    attempts), completed steps kept

Runs of flows with conditions or when_failed skips (runs.conditional) take these Python
transitions on PostgreSQL too: the fast path hands their completions back.

Lock order (matters on PostgreSQL, harmless on SQLite): every transaction that changes a run
locks its ``runs`` row first, in run_id order (``lock_runs``), then steps and tasks.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar
from uuid import UUID

from tideflow.clock import Clock
from tideflow.codec import to_json_value
from tideflow.errors import (
    DuplicateKeyError,
    FlowNotFoundError,
    MapInputError,
    RunAlreadyExistsError,
    RunNotFailedError,
    RunNotFoundError,
)
from tideflow.events.model import MAX_ID_LENGTH, ExpectedVersion, NewEvent
from tideflow.events.upcasting import Upcasters
from tideflow.flows.conditions import condition_met
from tideflow.flows.definition import FlowDefinition, RetryPolicy, StepDefinition
from tideflow.flows.limits import QueueLimits
from tideflow.jsonutil import dumps, storable_text
from tideflow.retrying import backoff_delay
from tideflow.storage.database import EVENTS_CHANNEL, TASKS_CHANNEL, Database, Row, Tx
from tideflow.storage.event_contract import prepare_append
from tideflow.storage.flow_contract import (
    RUN_FINAL,
    ClaimedTask,
    ClaimRequest,
    FlowVersionRecord,
    RunRecord,
    RunReport,
    TaskCompletion,
    TaskFailure,
    TaskKey,
    TaskRecord,
    run_not_found,
)
from tideflow.storage.queue_limits import claim_limited, sync_limits
from tideflow.storage.rows import (
    batch,
    failure_record,
    loads,
    run_record,
    step_record,
    task_record,
)
from tideflow.storage.run_watch import RunWatch

Pair = tuple[str, str]  # (run_id, step_slug)
T = TypeVar("T")

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
        self._recorded: set[tuple[str, str]] = set()  # by ensure_flow, with this code's options
        self._shapes: dict[tuple[str, str], dict[str, Any]] = {}
        self._run_watch = RunWatch(db)
        self._async_reader: ThreadPoolExecutor | None = None
        self._async_lock = threading.Lock()

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def check_schema(self) -> None:
        self.db.check_schema()

    def close(self) -> None:
        if self._async_reader is not None:
            self._async_reader.shutdown(wait=False)
        if self._owns_db:
            self.db.close()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        return self.db.subscribe(TASKS_CHANNEL, callback)

    def watch_run(self, run_id: str, wake: Callable[[], None]) -> Callable[[], None]:
        return self._run_watch.watch(run_id, wake)

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
        """Record the version with this code's step options (``record_flow``: they replace
        the stored ones, which a run started by slug alone uses), once per store, unless they
        are stored already. A worker calls it as it starts; starting a run only inserts a
        missing version (``insert_flow``), which takes no lock on an existing row - so two
        transactions that each start runs of two flows, in opposite orders, cannot deadlock on
        the flows rows."""
        key = (definition.slug, definition.version)
        if key in self._recorded:
            return
        shape = stored_shape(definition)
        # A read first (a statement of its own: on SQLite it takes no write lock), so that a
        # worker whose options are stored already writes nothing as it starts.
        found = self.db.rows("get_flow", flow_slug=definition.slug, version=definition.version)
        if not found or loads(found[0]["shape"]) != shape:
            with self._tx() as tx:
                self._write_flow(tx, "record_flow", definition, shape)
        sync_limits(self.db, self._tx, definition, self.clock.now())
        self._shapes.setdefault(key, _with_dependents(shape))
        self._known_versions.add(key)
        self._recorded.add(key)

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
                self._write_flow(tx, "insert_flow", definition, shape)
                self._shapes[key] = _with_dependents(shape)
                # In a caller's transaction, the row commits (or not) with it, later.
                remember = outer is None
            yield tx
        if remember:
            self._known_versions.add(key)

    def _write_flow(
        self, tx: Tx, query: str, definition: FlowDefinition, shape: dict[str, Any]
    ) -> None:
        tx.run(
            query,
            flow_slug=definition.slug,
            version=definition.version,
            shape=json.dumps(to_json_value(shape)),  # patterns may hold dates, enums...
            created_at=self.clock.now(),
        )

    def list_flows(self) -> list[FlowVersionRecord]:
        with self._tx() as tx:
            return [
                FlowVersionRecord(r["flow_slug"], r["version"], loads(r["shape"]), r["created_at"])
                for r in tx.rows("list_flows")
            ]

    def stored_flow(self, flow_slug: str, version: str | None = None) -> FlowDefinition:
        """The definition of a stored flow version - the latest stored one of ``flow_slug``
        unless ``version`` pins one - rebuilt from ``flows.shape``: what ``start_run`` needs
        to start a run of a flow whose code this process does not have. ``FlowNotFoundError``
        names the stored flows (or versions) when there is no such one."""
        versions = [f for f in self.list_flows() if f.flow_slug == flow_slug]
        if not versions:
            known = sorted({f.flow_slug for f in self.list_flows()})
            raise FlowNotFoundError(
                f"flow {flow_slug!r} is neither registered here nor stored in the database "
                f"(stored flows: {', '.join(known) or 'none'}); a flow is stored when a worker "
                "that has its code starts, or a run of it starts"
            )
        if version is None:
            chosen = max(versions, key=lambda f: f.created_at)
        else:
            found = [f for f in versions if f.version == version]
            if not found:
                raise FlowNotFoundError(
                    f"flow {flow_slug!r} has no stored version {version!r} (stored: "
                    f"{', '.join(f.version for f in versions)})"
                )
            chosen = found[0]
        return definition_from_shape(chosen.shape)

    def _shape(self, tx: Tx, flow_slug: str, version: str) -> dict[str, Any]:
        """A stored flow version's shape; runs are scheduled from it, not from the code."""
        key = (flow_slug, version)
        shape = self._shapes.get(key)
        if shape is None:
            found = tx.rows("get_flow", flow_slug=flow_slug, version=version)
            shape = self._shapes[key] = _with_dependents(loads(found[0]["shape"]))
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
        trace_context: str | None = None,
        visible_at: datetime | None = None,
    ) -> None:
        check_map_input(definition, input_json)
        try:
            with self._flow_tx(definition, tx) as inner:
                # A run that may skip steps moves on in Python (runs.conditional, 0016).
                if self.db.fast_paths and not definition.conditional:
                    self._start_run_fast(inner, definition, run_id, input_json)
                else:
                    self._start_run(inner, definition, run_id, input_json)
                if visible_at is not None:  # a delayed job (jobs_queries.sql)
                    inner.run("delay_run_tasks", run_id=run_id, visible_at=visible_at)
                if trace_context is not None:  # only when an OpenTelemetry SDK is set up
                    inner.run("set_trace_context", run_id=run_id, trace_context=trace_context)
                if report is not None:
                    inner.run("set_report", run_id=run_id, report=_report_json(report))
                    self._report(inner, [run_id])  # a run of empty maps ends as it starts
        except DuplicateKeyError as exc:
            raise RunAlreadyExistsError(
                f"a run with id {run_id!r} already exists; pass another run_id or none to get "
                "a fresh one"
            ) from exc

    def start_runs(
        self,
        definition: FlowDefinition,
        runs: Sequence[tuple[str, str]],
        *,
        report: RunReport | None = None,
    ) -> None:
        """Start many runs of one flow - ``runs``: (run id, input JSON) - in one transaction,
        set-based: one statement inserts every run, one every step row, and the root steps of
        all of them start together (``_start_steps``), so 10,000 runs cost a handful of round
        trips instead of 10,000 transactions. All or nothing: a taken or repeated run id, or a
        root map input that is not an array, starts none of them."""
        if not runs:
            return
        ids = [run_id for run_id, _ in runs]
        seen: set[str] = set()
        for run_id in ids:
            if run_id in seen:
                raise RunAlreadyExistsError(
                    f"run id {run_id!r} is given twice in one batch; give each run its own id "
                    "(or none, for fresh ones); nothing was started"
                )
            seen.add(run_id)
        for _, input_json in runs:
            check_map_input(definition, input_json)
        report_json = None if report is None else _report_json(report)
        try:
            with self._flow_tx(definition) as tx:
                now = self.clock.now()
                if self.db.fast_paths and not definition.conditional:
                    # One round trip (PostgreSQL: tideflow.start_runs_v1). The ids go in as an
                    # array, the inputs as one JSON array of them: their text is JSON already.
                    notify = tx.rows(
                        "start_runs",
                        flow_slug=definition.slug,
                        flow_version=definition.version,
                        run_ids=ids,
                        inputs="[" + ",".join(text for _, text in runs) + "]",
                        steps=step_rows(definition),
                        report=report_json,
                        now=now,
                    )[0]["notify"]
                    tx.notify = tx.notify or bool(notify)
                    if report is not None:
                        self._report(tx, ids)
                    return
                tx.run(
                    "insert_runs",
                    flow_slug=definition.slug,
                    flow_version=definition.version,
                    remaining_steps=len(definition.steps),
                    started_at=now,
                    conditional=definition.conditional,
                    rows=batch(
                        {"run_id": run_id, "input": text, "report": report_json}
                        for run_id, text in runs
                    ),
                )
                template = _step_row_dicts(definition)
                tx.run(
                    "insert_steps",
                    created_at=now,
                    rows=batch({**row, "run_id": run_id} for run_id in ids for row in template),
                )
                roots = [s.slug for s in definition.steps if s.is_root]
                self._start_steps(tx, [(r, slug) for r in ids for slug in roots], now, dict(runs))
                if report is not None:
                    self._report(tx, ids)  # runs of empty root maps end as they start
        except DuplicateKeyError as exc:
            raise RunAlreadyExistsError(
                "a run id of this batch is taken by an existing run; pass other run_ids or "
                "none to get fresh ones; nothing was started"
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
            conditional=definition.conditional,
        )
        tx.run("insert_steps", created_at=now, rows=step_rows(definition, run_id))
        roots = [(run_id, s.slug) for s in definition.steps if s.is_root]
        self._start_steps(tx, roots, now, {run_id: input_json})

    def _start_steps(
        self, tx: Tx, pairs: list[Pair], now: datetime, run_inputs: dict[str, str]
    ) -> None:
        """Queue the tasks of steps whose dependencies have all completed or been skipped -
        or skip them, or fail their run, when their condition is unmet (``when_unmet``).

        A step's input holds the outputs of its *completed* dependencies only: a skipped
        dependency is left out (a map step over a skipped step maps over nothing and completes
        with ``[]``, as pgflow does). A condition is checked against the same value: the run
        input for a root step, ``{dependency: output}`` for a dependent one."""
        if not pairs:
            return
        steps = tx.rows("get_steps", rows=_pairs(pairs))
        steps.sort(key=lambda s: (s["run_id"], s["step_index"]))
        wanted = {(s["run_id"], d) for s in steps for d in json.loads(s["depends_on"])}
        outputs = self._step_outputs(tx, wanted)
        started: list[dict[str, Any]] = []
        tasks: list[dict[str, Any]] = []
        empty: list[Pair] = []
        skips: list[tuple[str, str, str, bool]] = []
        shapes: dict[str, dict[str, Any]] = {}
        failures: dict[str, tuple[str, str]] = {}
        for s in steps:
            run_id, slug = s["run_id"], s["step_slug"]
            deps: list[str] = json.loads(s["depends_on"])
            done = [d for d in deps if (run_id, d) in outputs]
            shape = shapes[run_id] = self._shape(tx, s["flow_slug"], s["flow_version"])
            spec = shape["by_slug"][slug]
            if "if" in spec or "if_not" in spec:
                value = (
                    {d: loads(outputs[(run_id, d)]) for d in done}
                    if deps
                    else loads(run_inputs[run_id])
                )
                if not condition_met(value, spec.get("if"), spec.get("if_not")):
                    if spec["when_unmet"] == "fail":
                        failures.setdefault(run_id, (slug, _unmet_error(slug, spec)))
                    else:
                        cascade = spec["when_unmet"] == "skip_cascade"
                        skips.append((run_id, slug, "condition_unmet", cascade))
                    continue
            if s["kind"] == "map":
                if deps and not done:
                    source_json = "[]"  # its source step was skipped: nothing to map over
                else:
                    source_json = outputs[(run_id, deps[0])] if deps else run_inputs[run_id]
                source = loads(source_json)
                if not isinstance(source, list):
                    # The step that produced the value is the one at fault, and is the one
                    # marked failed (a root map's input is refused by start_run; a run started
                    # before that check existed fails its map step here).
                    failures.setdefault(run_id, _map_source_failure(slug, deps, source))
                    continue
                # jsonutil.dumps, not json.dumps: it writes big floats so they stay floats
                inputs = [dumps(item, what=f"an element for map step {slug!r}") for item in source]
                if not inputs:
                    empty.append((run_id, slug))
            elif deps:
                inputs = [
                    "{" + ",".join(f"{json.dumps(d)}:{outputs[(run_id, d)]}" for d in done) + "}"
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
        skipped = _cascade(
            shapes,
            [(Skip(r, slug, why), cascade) for r, slug, why, cascade in skips if r not in failures],
        )
        if empty or skipped:
            self._complete_steps(tx, [(r, s, "[]") for r, s in empty], now, skipped)

    def _step_outputs(self, tx: Tx, pairs: set[Pair]) -> dict[Pair, str]:
        """The outputs of those of these steps that completed (a skipped one has none)."""
        if not pairs:
            return {}
        return {
            (r["run_id"], r["step_slug"]): r["output"]
            for r in tx.rows("get_step_outputs", rows=_pairs(pairs))
            if r["status"] == "completed"
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
            tx.run_ends.update(c.key.run_id for c in completions)
            if self.db.fast_paths:
                # The dialect's complete_tasks_batch does all of _complete_tasks in one round
                # trip (PostgreSQL: tideflow.complete_tasks_v3), but for completions of
                # conditional runs, which it hands back (after locking every run) for Python.
                done = tx.rows(
                    "complete_tasks_batch",
                    worker_id=worker_id,
                    now=self.clock.now(),
                    rows=_completions(completions),
                )[0]
                deferred = json.loads(done["deferred"])
                if deferred:
                    self._complete_tasks(tx, worker_id, [completions[i] for i in deferred])
                tx.notify = tx.notify or bool(done["notify"])
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

    def _complete_steps(
        self,
        tx: Tx,
        finished: list[tuple[str, str, str]],
        now: datetime,
        skipped: Sequence[Skip] = (),
    ) -> None:
        """Steps completed (with their outputs) or skipped (with their reasons): either way they
        are counted off their runs and their dependents; a run with no step left completes,
        with the outputs of its completed leaves (a skipped leaf has none to give)."""
        if finished:
            tx.run(
                "complete_steps",
                finished_at=now,
                rows=batch({"run_id": r, "step_slug": s, "output": out} for r, s, out in finished),
            )
        if skipped:
            tx.run(
                "skip_steps",
                finished_at=now,
                rows=batch(
                    {
                        "run_id": k.run_id,
                        "step_slug": k.step_slug,
                        "reason": k.reason,
                        "error": k.error,
                    }
                    for k in skipped
                ),
            )
        ended = [(r, s) for r, s, _ in finished] + [(k.run_id, k.step_slug) for k in skipped]
        per_run = Counter(r for r, _ in ended)
        runs = tx.rows(
            "decrement_run_steps", rows=batch({"run_id": r, "n": n} for r, n in per_run.items())
        )
        shapes = {r["run_id"]: self._shape(tx, r["flow_slug"], r["flow_version"]) for r in runs}
        dependents: Counter[Pair] = Counter()
        for run_id, slug in ended:
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
            # Only steps still waiting start: one skipped with a cascade is counted off too.
            ready = [
                (r["run_id"], r["step_slug"])
                for r in counted
                if r["remaining_deps"] == 0 and r["status"] == "created"
            ]
        done = [r["run_id"] for r in runs if r["remaining_steps"] == 0]
        if done:
            tx.run_ends.update(done)
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
                            if (run_id, leaf) in outputs
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
            return self._fail_task(
                tx, task[0], failure.error, failure.retryable, self.clock.now(), failure
            )

    def _fail_task(
        self,
        tx: Tx,
        task: Row,
        error: str,
        retryable: bool,
        now: datetime,
        failure: TaskFailure | None = None,
    ) -> datetime | None:
        key = {
            "run_id": task["run_id"],
            "step_slug": task["step_slug"],
            "task_index": task["task_index"],
        }
        error = storable_text(error)  # a user exception's text: NUL must not fail the failure
        attempts, max_attempts = task["attempts"], task["max_attempts"]
        retried = retryable and attempts < max_attempts
        if failure is not None:
            _record_failure(tx, key, failure, error, retried, now)
        if retried:
            visible_at = now + timedelta(
                seconds=backoff_delay(attempts, task["base_delay"], task["max_delay"])
            )
            tx.run("retry_task", **key, error=error, visible_at=visible_at)
            tx.notify = True
            return visible_at
        tx.run("fail_task", **key, error=error, finished_at=now)
        why = "failed" if not retryable else f"failed after {attempts} attempt(s)"
        index = f"[{task['task_index']}]" if task["kind"] == "map" else ""
        self._task_failed_for_good(
            tx, task, now, f"step {task['step_slug']!r}{index} {why}: {error}"
        )
        return None

    def _task_failed_for_good(self, tx: Tx, task: Row, now: datetime, error: str) -> None:
        """A task of this step failed for good (``task``: its row with its run's flow version).
        The step's ``when_failed`` decides: fail the run (the default), or skip the step - its
        other tasks cancelled, its dependents run without it - or skip it and every step after
        it; the run goes on either way."""
        tx.run_ends.add(task["run_id"])  # failed, or its last steps skipped
        shape = self._shape(tx, task["flow_slug"], task["flow_version"])
        mode = shape["by_slug"][task["step_slug"]].get("when_failed", "fail")
        if mode == "fail":
            self._fail_run(tx, task["run_id"], task["step_slug"], now, error)
            return
        tx.run(
            "cancel_step_tasks", run_id=task["run_id"], step_slug=task["step_slug"], finished_at=now
        )
        skip = Skip(task["run_id"], task["step_slug"], "handler_failed", storable_text(error))
        skipped = _cascade({task["run_id"]: shape}, [(skip, mode == "skip_cascade")])
        self._complete_steps(tx, [], now, skipped)
        self._report(tx, [task["run_id"]])  # the skip may have been its last step

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
            tx.run_ends.add(run_id)
            tx.run("cancel_run_tasks", run_id=run_id, finished_at=now)
            tx.run("skip_run_steps", run_id=run_id, finished_at=now)
            self._report(tx, [run_id])
            return True

    def retry_run(self, run_id: str) -> None:
        """Run a failed run again from where it failed: its failed steps and the steps skipped
        because it failed start again with fresh tasks (attempt counts from 1), its completed
        steps keep their outputs, and steps skipped on purpose (a condition, ``when_failed``)
        stay skipped. ``RunNotFoundError`` for an unknown run, ``RunNotFailedError`` for one
        that has not failed; either way nothing is written. The run does not report its end
        again: it reported its failure already."""
        with self._tx() as tx:
            locked = tx.rows("lock_runs", run_ids=[run_id])
            if not locked:
                raise run_not_found(run_id)
            status = locked[0]["status"]
            if status != "failed":
                raise RunNotFailedError(
                    f"run {run_id!r} is {status}, not failed: only a failed run can be retried "
                    "(list them with `tideflow runs --status failed`)"
                )
            steps = tx.rows("get_run_steps", run_id=run_id)
            # Failed steps, and those skipped because the run failed (no reason): not the
            # completed ones, nor those skipped on purpose (a condition, when_failed).
            redo = {
                s["step_slug"]
                for s in steps
                if s["status"] != "completed"
                and not (s["status"] == "skipped" and s["skip_reason"] is not None)
            }
            rows = [
                {
                    "run_id": run_id,
                    "step_slug": s["step_slug"],
                    "remaining_deps": sum(d in redo for d in json.loads(s["depends_on"])),
                }
                for s in steps
                if s["step_slug"] in redo
            ]
            pairs = [(run_id, slug) for slug in sorted(redo)]
            tx.run("delete_step_tasks", rows=_pairs(pairs))
            tx.run("reset_steps", rows=batch(rows))
            tx.run("restart_run", run_id=run_id, remaining_steps=len(redo))
            run_input = tx.rows("get_run", run_id=run_id)[0]["input"]
            ready = [(run_id, r["step_slug"]) for r in rows if r["remaining_deps"] == 0]
            self._start_steps(tx, ready, self.clock.now(), {run_id: run_input})

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
            if not with_steps:
                return assemble_run(run_id, tx.rows("get_run", run_id=run_id))
            # In this order, in one round trip on PostgreSQL (with the BEGIN): the run row
            # first, so that steps read after it are at least as new.
            reads = [tx.prefetch(name, run_id=run_id) for name in RUN_READS]
            found = reads[0]()
            if not found:
                return assemble_run(run_id, found)
            return assemble_run(run_id, found, *(read() for read in reads[1:]))

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """A blocking read for a database without async statements (SQLite), in this store's
        one reading thread: its reads take turns on the one connection anyway, and a thousand
        waiters woken at once would otherwise set every thread of the loop's default executor
        fighting over it - and over the GIL with the event loop (measured: the loop ran 80-120
        ms late with the default executor, under 20 ms with one thread)."""
        with self._async_lock:
            if self._async_reader is None:
                self._async_reader = ThreadPoolExecutor(1, thread_name_prefix="tideflow-reads")
            reader = self._async_reader
        return await asyncio.get_running_loop().run_in_executor(reader, call)

    async def get_run_async(self, run_id: str, *, with_steps: bool = True) -> RunRecord:
        statements = self.db.async_statements()
        if statements is None:
            return await self._in_thread(
                functools.partial(self.get_run, run_id, with_steps=with_steps)
            )
        if not with_steps:
            return assemble_run(run_id, await statements.rows("get_run", run_id=run_id))
        return assemble_run(
            run_id, *await statements.read_together([(n, {"run_id": run_id}) for n in RUN_READS])
        )

    def look_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        ids = sorted(set(run_ids))
        return assemble_looks(ids, self.db.read_together(look_reads(ids)))

    async def look_runs_async(self, run_ids: Sequence[str]) -> dict[str, RunRecord]:
        statements = self.db.async_statements()
        if statements is None:
            return await self._in_thread(functools.partial(self.look_runs, run_ids))
        ids = sorted(set(run_ids))
        return assemble_looks(ids, await statements.read_together(look_reads(ids)))

    async def list_runs_async(
        self,
        *,
        flow_slug: str | None = None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[RunRecord]:
        statements = self.db.async_statements()
        if statements is None:
            return await self._in_thread(
                functools.partial(
                    self.list_runs, flow_slug=flow_slug, status=status, limit=limit, offset=offset
                )
            )
        found = await statements.rows(
            "list_runs", flow_slug=flow_slug, status=status, limit=limit, offset=offset
        )
        return [run_record(r, []) for r in found]

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

    def run_ids_with_prefix(self, prefix: str, limit: int = 2) -> list[str]:
        with self._tx() as tx:
            return [r["run_id"] for r in tx.rows("run_ids_with_prefix", prefix=prefix, limit=limit)]

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
        now = self.clock.now()
        rows: list[Row] = []
        if tx.dialect == "sqlite":
            # No stored functions: flows with queue limits are claimed here, then the rest
            # (PostgreSQL's claim_tasks_v1 does both in the server; storage/queue_limits.py).
            rows = claim_limited(tx, worker_id, list(flow_slugs), limit, now, lease_margin)
        if len(rows) < limit:
            rows += tx.rows(
                "claim_tasks",
                worker_id=worker_id,
                flow_slugs=list(flow_slugs),
                limit=limit - len(rows),
                now=now,
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
                    self._task_failed_for_good(
                        tx, t, now, f"step {t['step_slug']!r}{index} failed: {error}"
                    )
                    handled += 1
            return handled

    # --- observability (issue 11): the runs a worker saw end, trace contexts --------------------
    def finished_runs(self, run_ids: Sequence[str]) -> list[RunRecord]:
        """Which of these runs have ended, without their steps: how a worker learns that the
        completions it committed finished a run (one read per batch, for its log line)."""
        if not run_ids:
            return []
        return [
            run_record(r, [])
            for r in self.db.rows("get_finished_runs", run_ids=sorted(set(run_ids)))
        ]

    def trace_contexts(self, run_ids: Sequence[str]) -> dict[str, str]:
        """The stored trace context (JSON text) of each of these runs that has one."""
        if not run_ids:
            return {}
        return {
            r["run_id"]: r["trace_context"]
            for r in self.db.rows("get_trace_contexts", run_ids=sorted(set(run_ids)))
        }


#: The reads of ``get_run``, in the order ``assemble_run`` takes their rows: for a backend that
#: sends them at once (the async client's pipeline, ``storage/postgres/aio.py``).
RUN_READS = ("get_run", "get_run_steps", "get_run_tasks", "get_run_failures")


#: The reads of ``look_runs``, in the order ``assemble_looks`` takes their rows.
LOOK_READS = ("look_runs", "look_run_steps", "look_run_tasks", "look_run_failures")


def look_reads(run_ids: Sequence[str]) -> list[tuple[str, dict[str, Any]]]:
    """The named reads of ``look_runs``: ``get_run``'s for one run - a wait on its own, the
    usual case; PostgreSQL runs reads by ``run_id`` equal to a parameter in half the time of
    those by ``= ANY`` (0.5 against 1.2 ms for the four in a pipeline, measured); the steps
    are read even if the run is still going - and ``LOOK_READS`` for several."""
    if len(run_ids) == 1:
        return [(name, {"run_id": run_ids[0]}) for name in RUN_READS]
    return [(name, {"run_ids": list(run_ids)}) for name in LOOK_READS]


def assemble_looks(run_ids: Sequence[str], rows: Sequence[Sequence[Row]]) -> dict[str, RunRecord]:
    """The ``RunRecord`` of each run ``look_reads(run_ids)`` found (``rows``: theirs, in
    order): whole if it has ended, alone otherwise."""
    found, step_rows, task_rows, failure_rows = rows
    if len(run_ids) == 1:
        if not found:
            return {}
        run_id = run_ids[0]
        if found[0]["status"] not in RUN_FINAL:
            return {run_id: assemble_run(run_id, list(found))}
        return {run_id: assemble_run(run_id, list(found), step_rows, task_rows, failure_rows)}
    steps: dict[str, list[Row]] = defaultdict(list)
    tasks: dict[str, list[Row]] = defaultdict(list)
    failures: dict[str, list[Row]] = defaultdict(list)
    for group, by_run in ((step_rows, steps), (task_rows, tasks), (failure_rows, failures)):
        for row in group:
            by_run[row["run_id"]].append(row)
    looks: dict[str, RunRecord] = {}
    for r in found:
        run_id = str(r["run_id"])
        if r["status"] in RUN_FINAL:
            looks[run_id] = assemble_run(
                run_id, [r], steps[run_id], tasks[run_id], failures[run_id]
            )
        else:
            looks[run_id] = run_record(r, [], [])
    return looks


def assemble_run(
    run_id: str,
    found: list[Row],
    step_rows: Sequence[Row] | None = None,
    task_rows: Sequence[Row] = (),
    failure_rows: Sequence[Row] = (),
) -> RunRecord:
    """The ``RunRecord`` of ``get_run``'s rows (``RUN_READS``); without ``step_rows``, the run
    alone. ``RunNotFoundError`` when ``found`` is empty."""
    if not found:
        raise run_not_found(run_id)
    if step_rows is None:
        return run_record(found[0], [], [])
    tasks: dict[str, list[TaskRecord]] = defaultdict(list)
    for t in task_rows:
        tasks[t["step_slug"]].append(task_record(t))
    steps = [step_record(s, tasks[s["step_slug"]]) for s in step_rows]
    return run_record(found[0], steps, [failure_record(f) for f in failure_rows])


def _record_failure(
    tx: Tx, key: Row, failure: TaskFailure, error: str, retried: bool, now: datetime
) -> None:
    """Keep the failed attempt - exception type, message, traceback - in the transaction that
    counts it (before the task row moves on: the row gives its attempt, worker and start)."""
    tx.run(
        "insert_task_failure",
        **key,
        error_type=failure.error_type,
        error=error,
        traceback=None if failure.traceback is None else storable_text(failure.traceback),
        retried=retried,
        failed_at=now,
    )


def step_rows(definition: FlowDefinition, run_id: str | None = None) -> str:
    """The ``run_steps`` rows of a new run, as a batch parameter."""
    return batch({**row, "run_id": run_id} for row in _step_row_dicts(definition))


def _step_row_dicts(definition: FlowDefinition) -> list[dict[str, Any]]:
    dependents: dict[str, list[str]] = {s.slug: [] for s in definition.steps}
    for s in definition.steps:
        for d in s.depends_on:
            dependents[d].append(s.slug)
    return [
        {
            "step_slug": s.slug,
            "step_index": s.index,
            "kind": s.kind,
            "depends_on": json.dumps(list(s.depends_on)),
            "dependents": json.dumps(dependents[s.slug]),
            "remaining_deps": len(s.depends_on),
            **s.options(),
        }
        for s in definition.steps
    ]


def stored_shape(definition: FlowDefinition) -> dict[str, Any]:
    """What ``flows.shape`` holds: the versioned shape plus topological order and leaves, so a
    run of an old version can be scheduled after its class has changed."""
    return {
        "slug": definition.slug,
        "version": definition.version,
        "steps": [
            {
                "slug": s.slug,
                "depends_on": list(s.depends_on),
                "kind": s.kind,
                "index": s.index,
                **s.conditions(),
                "options": s.options(),
            }
            for s in definition.steps
        ],
        "leaves": list(definition.leaves),
        "reports": definition.reports,
        # Only when set: a flow without limits keeps the shape it had stored.
        **({"limits": definition.limits.to_json()} if definition.limits else {}),
    }


def definition_from_shape(shape: dict[str, Any]) -> FlowDefinition:
    """A stored shape back as a ``FlowDefinition`` that can start runs (not run steps: it has
    no methods). Refused when the shape predates stored options (``FlowNotFoundError`` saying
    how to store them), or does not hash to its version."""
    steps = []
    for s in shape["steps"]:
        options = s.get("options")
        if options is None:
            raise FlowNotFoundError(
                f"flow {shape['slug']!r} version {shape['version']} was stored by an older "
                "tideflow without its step options, so it cannot be started from the database "
                "alone: start a worker that has its code once (it stores them), or import the "
                "flow where you start it"
            )
        steps.append(
            StepDefinition(
                slug=s["slug"],
                index=s["index"],
                depends_on=tuple(s["depends_on"]),
                kind=s["kind"],
                retry=RetryPolicy(
                    options["max_attempts"], options["base_delay"], options["max_delay"]
                ),
                timeout=options["timeout"],
                start_delay=options["start_delay"],
                method="",
                wants_ctx=False,
                max_stalls=options["max_stalls"],
                if_pattern=s.get("if"),
                if_not_pattern=s.get("if_not"),
                when_unmet=s.get("when_unmet", "skip"),
                when_failed=s.get("when_failed", "fail"),
            )
        )
    steps.sort(key=lambda s: s.index)
    definition = FlowDefinition(
        slug=shape["slug"],
        steps=tuple(steps),
        retry=RetryPolicy(),
        timeout=None,
        reports=bool(shape.get("reports", False)),
        limits=QueueLimits.from_json(shape["limits"]) if shape.get("limits") else None,
    )
    if definition.version != shape["version"]:  # pragma: no cover - a hand-edited row
        raise FlowNotFoundError(
            f"flow {shape['slug']!r}: the stored shape of version {shape['version']} hashes "
            f"to {definition.version}; the row was changed by hand"
        )
    return definition


def _with_dependents(shape: dict[str, Any]) -> dict[str, Any]:
    dependents: dict[str, list[str]] = {s["slug"]: [] for s in shape["steps"]}
    for s in shape["steps"]:
        for d in s["depends_on"]:
            dependents[d].append(s["slug"])
    return {**shape, "dependents": dependents, "by_slug": {s["slug"]: s for s in shape["steps"]}}


class Skip(NamedTuple):
    """A step to mark skipped, and why (``run_steps.skip_reason``)."""

    run_id: str
    step_slug: str
    reason: str  # condition_unmet, handler_failed, dependency_skipped
    error: str | None = None


def _cascade(shapes: dict[str, dict[str, Any]], requests: list[tuple[Skip, bool]]) -> list[Skip]:
    """The steps to skip: each requested one, and with its cascade flag every step that
    depends on it, directly or not (reason ``dependency_skipped``), each step once."""
    found: dict[Pair, Skip] = {}
    for skip, cascade in requests:
        found.setdefault((skip.run_id, skip.step_slug), skip)
        if not cascade:
            continue
        dependents = shapes[skip.run_id]["dependents"]
        todo = list(dependents[skip.step_slug])
        while todo:
            slug = todo.pop()
            if (skip.run_id, slug) not in found:
                found[(skip.run_id, slug)] = Skip(skip.run_id, slug, "dependency_skipped")
                todo.extend(dependents[slug])
    return list(found.values())


def _unmet_error(slug: str, spec: dict[str, Any]) -> str:
    wanted = []
    if "if" in spec:
        wanted.append(f"contain {json.dumps(to_json_value(spec['if']))}")
    if "if_not" in spec:
        wanted.append(f"not contain {json.dumps(to_json_value(spec['if_not']))}")
    what = "the run input" if not spec["depends_on"] else "its dependencies' outputs"
    return (
        f"step {slug!r} has an unmet condition ({what} must {' and '.join(wanted)}) and "
        "when_unmet='fail'"
    )


def _map_source_failure(map_slug: str, deps: list[str], source: Any) -> tuple[str, str]:
    """(the step to mark failed, the error) for a map step whose source is not an array."""
    if not deps:
        return map_slug, (
            f"map step {map_slug!r} needs a list from the run input, got {_json_type(source)}; "
            "make the run input a JSON array"
        )
    return deps[0], (
        f"step {deps[0]!r} returned {_json_type(source)}, but map step {map_slug!r} maps over "
        f"its output and needs a JSON array; make step {deps[0]!r} return a list"
    )


def check_map_input(definition: FlowDefinition, input_json: str) -> None:
    """Refuse a run whose root map step would get a run input that is not a JSON array - before
    anything is written, since no retry can change the input (``MapInputError``)."""
    maps = [s for s in definition.steps if s.is_root and s.kind == "map"]
    if not maps:
        return
    value = loads(input_json)
    if isinstance(value, list):
        return
    # A root map whose condition this input does not meet will be skipped: it maps nothing.
    roots = [
        s.slug
        for s in maps
        if not s.has_condition or condition_met(value, s.if_pattern, s.if_not_pattern)
    ]
    if roots:
        raise MapInputError(
            f"flow {definition.slug!r} maps root step {', '.join(map(repr, roots))} over the run "
            f"input, which must be a JSON array, got {_json_type(value)}; pass a list as the input"
        )


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
