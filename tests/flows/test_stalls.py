"""Stalls: a task whose lease expired (its worker killed or lost) is requeued at once without
costing an attempt, up to its step's ``max_stalls``; the stall after that fails it with its run.

Driven through the storage contract with a manual clock, on both backends (on PostgreSQL with and
without the fast paths: "postgres-plain"); the real SIGKILL is in test_crash.py. Cases follow the
ones pgflow's requeue_stalled_tasks tests cover (basic requeue, the requeue limit, per-flow
timeouts, stale tasks of finished runs), adapted to counting stalls apart from attempts.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from tests.conftest import BACKENDS, FLOW_BACKENDS
from tests.flows.flows_for_tests import Chain, RootMap
from tests.pgdb import empty_database
from tideflow import Flow, FlowDefinitionError, step
from tideflow.clock import ManualClock
from tideflow.flows.definition import DEFAULT_MAX_STALLS
from tideflow.storage import open_store
from tideflow.storage.flow_contract import (
    ClaimedTask,
    FlowStore,
    TaskCompletion,
    TaskFailure,
    TaskRecord,
)
from tideflow.storage.flow_store import STALL_ERROR, step_rows, stored_shape
from tideflow.storage.sqlfile import load_migrations

W = "worker-a"
MARGIN = 30.0
EXPIRED = MARGIN + 1  # seconds after a claim (no step timeout) at which its lease has expired
LOST = "the worker running it was killed or lost each time"


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class OneShot(Flow, slug="stall_one_shot", max_attempts=1):
    @step()
    def only(self, input): ...

    @step(depends_on=["only"])
    def after(self, only): ...


class Capped(Flow, slug="stall_capped", max_stalls=5):
    @step(max_stalls=1)
    def strict(self, input): ...

    @step()
    def lenient(self, input): ...


class Retrying(Flow, slug="stall_retrying", max_attempts=2, base_delay=1, max_delay=1):
    @step()
    def only(self, input): ...


class Timeouts(Flow, slug="stall_timeouts"):
    @step(timeout=5)
    def short(self, input): ...

    @step(timeout=60)
    def long(self, input): ...


def start(store: FlowStore, flow: type[Flow], value: object, run_id: str = "r1") -> str:
    store.start_run(flow.definition, run_id, json.dumps(value))
    return run_id


def claim(store: FlowStore, flow: type[Flow], worker: str = W) -> list[ClaimedTask]:
    return store.claim_tasks(worker, [flow.slug], 100, MARGIN)


def complete(store: FlowStore, task: ClaimedTask, output: object, worker: str = W) -> None:
    store.complete_tasks(worker, [TaskCompletion(task.key, task.attempt, json.dumps(output))])


def task_of(store: FlowStore, step_slug: str, index: int = 0, run_id: str = "r1") -> TaskRecord:
    return store.get_run(run_id).step(step_slug).tasks[index]


def stall(store: FlowStore, clock: ManualClock, flow: type[Flow]) -> ClaimedTask:
    """Claim the flow's one ready task and let its lease expire; the reaper handles it."""
    (t,) = claim(store, flow)
    clock.advance(EXPIRED)
    assert store.requeue_stalled() == 1
    return t


def test_a_stall_requeues_at_once_without_counting_an_attempt(
    store: FlowStore, clock: ManualClock
) -> None:
    start(store, OneShot, {})
    (_claimed,) = claim(store, OneShot)
    clock.advance(MARGIN - 1)
    assert store.requeue_stalled() == 0  # the lease still holds
    clock.advance(2)
    assert store.requeue_stalled() == 1
    task = task_of(store, "only")
    assert (task.status, task.attempts, task.stalls) == ("queued", 0, 1)
    assert task.error == f"{STALL_ERROR}; requeued (stall 1 of 3)"
    assert task.started_at is None
    assert task.visible_at == clock.now()  # visible at once: no backoff
    assert store.requeue_stalled() == 0  # handled once
    run = store.get_run("r1")
    assert run.status == "started" and run.step("only").status == "started"
    (again,) = claim(store, OneShot, worker="worker-b")  # without moving the clock
    assert again.attempt == 1  # max_attempts=1 and the kill did not use it up
    complete(store, again, "ok", worker="worker-b")
    (after,) = claim(store, OneShot, worker="worker-b")
    complete(store, after, "done", worker="worker-b")
    run = store.get_run("r1")
    assert run.status == "completed"
    assert (run.step("only").tasks[0].attempts, run.step("only").tasks[0].stalls) == (1, 1)


def test_a_late_answer_from_the_stalled_worker_is_ignored(
    store: FlowStore, clock: ManualClock
) -> None:
    start(store, Chain, {"n": 1})
    old = stall(store, clock, Chain)
    complete(store, old, 999)  # while the task is queued again
    store.fail_task(W, TaskFailure(old.key, old.attempt, "late", retryable=False))
    assert task_of(store, "first").status == "queued"
    (new,) = claim(store, Chain, worker="worker-b")
    assert new.attempt == old.attempt == 1
    complete(store, old, 999)  # while another worker holds it
    assert task_of(store, "first").status == "started"
    complete(store, new, 2, worker="worker-b")
    first = store.get_run("r1").step("first")
    assert first.output == 2 and first.tasks[0].stalls == 1


def test_the_stall_past_max_stalls_fails_the_task_its_step_and_its_run(
    store: FlowStore, clock: ManualClock
) -> None:
    assert RootMap.definition.step("double").max_stalls == DEFAULT_MAX_STALLS == 3
    start(store, RootMap, [1])
    for n in range(1, 4):
        stall(store, clock, RootMap)
        task = task_of(store, "double")
        assert (task.status, task.attempts, task.stalls) == ("queued", 0, n)
        assert task.error == f"{STALL_ERROR}; requeued (stall {n} of 3)"
    start(store, RootMap, [5], run_id="r2")  # another run, untouched by r1's failure
    (last,) = [t for t in claim(store, RootMap) if t.key.run_id == "r1"]
    clock.advance(EXPIRED)
    assert store.requeue_stalled() == 2  # r1's 4th stall fails it; r2's 1st requeues
    run = store.get_run("r1")
    task = run.step("double").tasks[0]
    message = f"stalled 4 times: {LOST}"
    assert (task.status, task.attempts, task.stalls, task.error) == ("failed", 0, 4, message)
    assert run.status == "failed" and run.error == f"step 'double'[0] failed: {message}"
    assert run.step("double").status == "failed"
    assert store.requeue_stalled() == 0  # a failed task is not handled again
    assert [t.key.run_id for t in claim(store, RootMap)] == ["r2"]
    assert store.get_run("r2").status == "started"
    complete(store, last, "late")  # the last stalled worker answers: too late
    assert store.get_run("r1").status == "failed"


def test_a_final_stall_cancels_the_other_tasks_and_skips_the_other_steps(
    store: FlowStore, clock: ManualClock
) -> None:
    class Strict(Flow, slug="stall_strict", max_stalls=0):
        @step()
        def a(self, input): ...

        @step()
        def b(self, input): ...

        @step(depends_on=["a", "b"])
        def c(self, a, b): ...

    start(store, Strict, {})
    tasks = {t.key.step_slug: t for t in claim(store, Strict)}
    clock.advance(MARGIN / 2)
    store.extend_leases(W, [tasks["b"].key], MARGIN)  # b's worker is alive, a's is not
    clock.advance(MARGIN / 2 + 1)
    assert store.requeue_stalled() == 1
    run = store.get_run("r1")
    assert run.status == "failed"
    assert run.error == f"step 'a' failed: stalled 1 time: {LOST}"
    assert [(s.step_slug, s.status) for s in run.steps] == [
        ("a", "failed"),
        ("b", "skipped"),
        ("c", "skipped"),
    ]
    assert run.step("b").tasks[0].status == "cancelled"
    complete(store, tasks["b"], "late")
    assert store.get_run("r1").status == "failed"


def test_the_step_option_beats_the_flows(store: FlowStore, clock: ManualClock) -> None:
    assert Capped.definition.step("strict").max_stalls == 1
    assert Capped.definition.step("lenient").max_stalls == 5
    assert Capped.definition.max_stalls == 5
    start(store, Capped, {})
    claim(store, Capped)
    clock.advance(EXPIRED)
    assert store.requeue_stalled() == 2
    assert task_of(store, "strict").error == f"{STALL_ERROR}; requeued (stall 1 of 1)"
    assert task_of(store, "lenient").error == f"{STALL_ERROR}; requeued (stall 1 of 5)"
    claim(store, Capped)
    clock.advance(EXPIRED)
    store.requeue_stalled()
    run = store.get_run("r1")
    assert run.error == f"step 'strict' failed: stalled 2 times: {LOST}"


def test_a_run_keeps_the_max_stalls_it_started_with(store: FlowStore, clock: ManualClock) -> None:
    """max_stalls is copied onto the run's step rows: the version (and a run in flight) does not
    change when the option does."""

    class Before(Flow, slug="stall_redeployed"):
        @step()
        def only(self, input): ...

    class After(Flow, slug="stall_redeployed", max_stalls=0):
        @step()
        def only(self, input): ...

    assert Before.definition.version == After.definition.version
    start(store, Before, {})
    store.ensure_flow(After.definition)
    stall(store, clock, After)
    assert task_of(store, "only").status == "queued"  # the run's cap is 3, not the code's 0


def test_stalls_and_failed_attempts_are_counted_apart(store: FlowStore, clock: ManualClock) -> None:
    start(store, Retrying, {})
    (t,) = claim(store, Retrying)
    assert store.fail_task(W, TaskFailure(t.key, t.attempt, "boom")) is not None
    clock.advance(2)  # past the backoff
    stall(store, clock, Retrying)
    task = task_of(store, "only")
    assert (task.attempts, task.stalls) == (1, 1)
    (t,) = claim(store, Retrying)
    assert t.attempt == 2  # the second attempt, not the third
    store.fail_task(W, TaskFailure(t.key, t.attempt, "boom again"))
    run = store.get_run("r1")
    assert run.status == "failed"
    assert run.error == "step 'only' failed after 2 attempt(s): boom again"
    assert (run.step("only").tasks[0].attempts, run.step("only").tasks[0].stalls) == (2, 1)


def test_a_graceful_release_counts_neither_an_attempt_nor_a_stall(
    store: FlowStore, clock: ManualClock
) -> None:
    start(store, OneShot, {})
    stall(store, clock, OneShot)
    (t,) = claim(store, OneShot)
    store.release_tasks(W, [t.key])
    task = task_of(store, "only")
    assert (task.status, task.attempts, task.stalls) == ("queued", 0, 1)
    clock.advance(EXPIRED)
    assert store.requeue_stalled() == 0  # a released task has no lease to expire
    (t,) = claim(store, OneShot)
    assert t.attempt == 1


def test_a_lease_that_expires_after_the_task_finished_is_not_requeued(
    store: FlowStore, clock: ManualClock
) -> None:
    start(store, RootMap, [1])
    (t,) = claim(store, RootMap)
    complete(store, t, 2)
    start(store, RootMap, [1], run_id="r2")
    claim(store, RootMap)
    assert store.cancel_run("r2")
    clock.advance(EXPIRED * 10)
    assert store.requeue_stalled() == 0
    assert store.get_run("r1").status == "completed"
    done = task_of(store, "double")
    assert (done.status, done.stalls) == ("completed", 0)
    cancelled = task_of(store, "double", run_id="r2")
    assert (cancelled.status, cancelled.stalls) == ("cancelled", 0)


def test_only_expired_leases_stall(store: FlowStore, clock: ManualClock) -> None:
    """The lease covers the step's timeout plus the margin, so steps of different timeouts stall
    at different times."""
    start(store, Timeouts, {})
    claim(store, Timeouts)
    clock.advance(5 + MARGIN + 1)
    assert store.requeue_stalled() == 1
    assert task_of(store, "short").stalls == 1
    assert task_of(store, "long").status == "started"
    clock.advance(60)
    assert store.requeue_stalled() == 1
    assert task_of(store, "long").stalls == 1


@pytest.mark.parametrize("value", [-1, 1.5, True, "3", None])
def test_bad_flow_max_stalls(value: object) -> None:
    with pytest.raises(FlowDefinitionError, match="max_stalls must be an int >= 0"):

        class Bad(Flow, slug="bad_stalls", max_stalls=value):  # type: ignore[arg-type]
            @step()
            def a(self, input): ...


@pytest.mark.parametrize("value", [-1, 2.0, False, "1"])
def test_bad_step_max_stalls(value: object) -> None:
    with pytest.raises(FlowDefinitionError, match="max_stalls") as err:

        class Bad(Flow, slug="bad_step_stalls"):
            @step(max_stalls=value)  # type: ignore[arg-type]
            def a(self, input): ...

    assert err.value.step == "a"


def test_max_stalls_zero_and_none_on_a_step_are_valid() -> None:
    class Fine(Flow, slug="fine_stalls", max_stalls=0):
        @step(max_stalls=None)
        def a(self, input): ...

        @step(max_stalls=7)
        def b(self, input): ...

    assert [s.max_stalls for s in Fine.definition.steps] == [0, 7]
    assert Fine.definition.step("a").options()["max_stalls"] == 0


def test_max_stalls_does_not_change_flow_versions() -> None:
    class Plain(Flow, slug="stall_versioned"):
        @step()
        def a(self, input): ...

    class Tuned(Flow, slug="stall_versioned", max_stalls=9):
        @step(max_stalls=0)
        def a(self, input): ...

    assert Plain.definition.version == Tuned.definition.version
    # the shape hashed before max_stalls existed: stored versions stay valid
    assert Plain.definition.shape() == {
        "slug": "stall_versioned",
        "steps": [{"slug": "a", "depends_on": [], "kind": "single"}],
    }


# --- upgrading a database of migration 6 ---------------------------------------------------------


def _old_step_rows(flow: type[Flow]) -> str:
    """The step rows a worker of the previous release sends: no max_stalls."""
    rows = json.loads(step_rows(flow.definition))
    for r in rows:
        del r["max_stalls"]
    return json.dumps(rows)


@pytest.mark.parametrize("backend", BACKENDS)  # a schema test: the fast paths play no part
def test_a_database_of_migration_6_upgrades_with_runs_in_flight(
    backend: str, db_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    """Runs started before 0007 (and, on PostgreSQL, by workers still calling start_run_v1
    after it) get no stall so far and the default cap."""
    now = clock.now()
    if backend == "sqlite":
        path = tmp_path / "v6.db"
        conn = sqlite3.connect(path)
        conn.execute(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
            "NULL, applied_at REAL NOT NULL)"
        )
        for m in load_migrations("tideflow.storage.sqlite"):
            if m.version <= 6:
                conn.executescript(m.sql)
                conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (m.version, m.name))
        _insert_old_run_sqlite(conn, now.timestamp())
        conn.commit()
        conn.close()
        store = open_store(f"sqlite:///{path}", clock=clock)
        try:
            assert store.migrate()[0] == "0007_task_stalls"  # and the later ones
            _check_upgraded(store, clock, ["old"])
        finally:
            store.close()
        return
    with empty_database(db_url, "tideflow_stalls") as url:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute("CREATE SCHEMA tideflow")
            conn.execute(
                "CREATE TABLE tideflow.schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL)"
            )
            for m in load_migrations("tideflow.storage.postgres"):
                if m.version <= 6:
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO tideflow.schema_migrations VALUES (%s, %s, now())",
                        (m.version, m.name),
                    )
            _start_run_v1(conn, "old", now)
        store = open_store(url, clock=clock)
        try:
            assert store.migrate()[0] == "0007_task_stalls"  # and the later ones
            with psycopg.connect(url, autocommit=True) as conn:
                _start_run_v1(conn, "during_upgrade", now)  # an old worker, after 0007
            _check_upgraded(store, clock, ["during_upgrade", "old"])
        finally:
            store.close()


def _start_run_v1(conn: psycopg.Connection[tuple[object, ...]], run_id: str, now: datetime) -> None:
    conn.execute(
        "INSERT INTO tideflow.flows VALUES (%s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING",
        (Chain.slug, Chain.definition.version, json.dumps(stored_shape(Chain.definition)), now),
    )
    conn.execute(
        "SELECT tideflow.start_run_v1(%s, %s, %s, %s::jsonb, %s::jsonb, %s)",
        (run_id, Chain.slug, Chain.definition.version, '{"n": 1}', _old_step_rows(Chain), now),
    )


def _insert_old_run_sqlite(conn: sqlite3.Connection, now: float) -> None:
    """Migration 6's rows of a run of Chain whose first task is queued, as its engine wrote
    them."""
    conn.execute(
        "INSERT INTO flows VALUES (?, ?, ?, ?)",
        (Chain.slug, Chain.definition.version, json.dumps(stored_shape(Chain.definition)), now),
    )
    conn.execute(
        "INSERT INTO runs (run_id, flow_slug, flow_version, status, input, "
        "remaining_steps, started_at) VALUES ('old', ?, ?, 'started', '{\"n\": 1}', 3, ?)",
        (Chain.slug, Chain.definition.version, now),
    )
    for r in json.loads(_old_step_rows(Chain)):
        root = not json.loads(r["depends_on"])
        conn.execute(
            "INSERT INTO run_steps (run_id, step_slug, step_index, kind, depends_on, dependents, "
            "status, remaining_deps, initial_tasks, remaining_tasks, max_attempts, base_delay, "
            "max_delay, timeout, start_delay, created_at, started_at) "
            "VALUES ('old', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                r["step_slug"],
                r["step_index"],
                r["kind"],
                r["depends_on"],
                r["dependents"],
                "started" if root else "created",
                r["remaining_deps"],
                1 if root else None,
                1 if root else None,
                r["max_attempts"],
                r["base_delay"],
                r["max_delay"],
                r["timeout"],
                r["start_delay"],
                now,
                now if root else None,
            ),
        )
    conn.execute(
        "INSERT INTO tasks (run_id, step_slug, task_index, flow_slug, status, input, "
        "queued_at, visible_at) VALUES ('old', 'first', 0, ?, 'queued', '{\"n\": 1}', "
        "?, ?)",
        (Chain.slug, now, now),
    )


def _check_upgraded(store: FlowStore, clock: ManualClock, run_ids: list[str]) -> None:
    claimed = claim(store, Chain)
    assert sorted(t.key.run_id for t in claimed) == run_ids
    clock.advance(EXPIRED)
    assert store.requeue_stalled() == len(run_ids)
    for run_id in run_ids:
        task = task_of(store, "first", run_id=run_id)
        assert (task.attempts, task.stalls) == (0, 1)
        assert task.error == f"{STALL_ERROR}; requeued (stall 1 of 3)"  # the default cap
    for t in claim(store, Chain):
        complete(store, t, 2)
    for t in claim(store, Chain):
        complete(store, t, 20)
    for t in claim(store, Chain):
        complete(store, t, {"value": 20})
    assert {store.get_run(r).status for r in run_ids} == {"completed"}
