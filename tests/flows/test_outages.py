"""Workers and clients ride out a database that is briefly away, on both backends.

The store is wrapped so that chosen calls fail with ``DatabaseUnavailableError`` - before doing
anything, or after committing (a COMMIT whose answer was lost) - or refuse a completion for its
content. A real server restart is tests/test_restart.py; a real locked SQLite file is at the end.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.flows.flows_for_tests import ALL_FLOWS, Chain, MapFlow
from tests.polling import wait_until
from tideflow import App, Flow, step
from tideflow.errors import DatabaseUnavailableError, InvalidDataError
from tideflow.events.aggregate import Aggregate, applies, handles
from tideflow.events.commands import Command
from tideflow.events.model import RecordedEvent
from tideflow.runtime.dispatch import CommandDispatcher
from tideflow.storage.flow_contract import (
    ClaimedTask,
    ClaimRequest,
    FlowStore,
    RunRecord,
    TaskCompletion,
)
from tideflow.worker import Worker, WorkerOptions

pytestmark = pytest.mark.usefixtures("quick_backoff")  # outages end by count, not time

FAST = WorkerOptions(poll_interval=0.02, reap_interval=0.2)


class Echo(Flow, slug="echo", max_attempts=3):
    @step()
    def echo(self, input: Any) -> Any:
        return input


class Outages:
    """A store whose chosen methods fail: ``fail[name] = n`` fails the next n calls before
    they touch the database; ``after[name] = n`` lets the next n calls commit, then raises
    (the connection dropped during COMMIT)."""

    def __init__(self, store: FlowStore) -> None:
        self._store = store
        self.fail: dict[str, int] = {}
        self.after: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self.refuse: Callable[[Sequence[TaskCompletion]], bool] = lambda batch: False

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._store, name)
        if not callable(real) or name in ("subscribe", "clock"):
            return real

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.fail.get(name, 0) > 0:
                self.fail[name] -= 1
                raise DatabaseUnavailableError(
                    f"{name} failed: the database is unavailable "
                    "(server closed the connection unexpectedly)"
                )
            result = real(*args, **kwargs)
            if self.after.get(name, 0) > 0:
                self.after[name] -= 1
                raise DatabaseUnavailableError(f"{name}: connection lost during COMMIT")
            return result

        return call

    def complete_tasks(
        self,
        worker_id: str,
        completions: Sequence[TaskCompletion],
        claim: ClaimRequest | None = None,
    ) -> list[ClaimedTask]:
        if self.refuse(completions):
            raise InvalidDataError(
                "query complete_tasks_batch failed: PostgreSQL refused a "
                "value (unsupported Unicode escape sequence)"
            )
        result: list[ClaimedTask] = self.__getattr__("complete_tasks")(
            worker_id, completions, claim
        )
        return result


def run_until_idle(app: App, store: Any, options: WorkerOptions = FAST) -> Worker:
    for flow in app.registry:
        app.store.ensure_flow(flow.definition)
    worker = Worker(store, app.registry, options=options)
    asyncio.run(worker.run(until_idle=True))
    return worker


def warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and text in r.getMessage()
    ]


@pytest.fixture
def flows_app(app: App) -> App:
    for flow in (Chain, MapFlow, Echo):
        app.register(flow)
    return app


def test_a_batch_that_met_an_outage_is_committed_when_the_database_is_back(
    flows_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    runs = [flows_app.start_flow(Chain, {"n": i}) for i in range(5)]
    store = Outages(flows_app.store)
    store.fail["complete_tasks"] = 4
    with caplog.at_level(logging.INFO, "tideflow"):
        worker = run_until_idle(flows_app, store)
    for run_id in runs:
        run = flows_app.get_run(run_id)
        assert run.status == "completed"
        assert [s.attempts for s in run.steps] == [1, 1, 1]  # nothing ran twice
    assert worker.completed == 15 and worker.failed == 0
    assert store.calls["complete_tasks"] >= 4 + 3
    assert len(warnings(caplog, "committing completions")) == 1  # one line per outage
    assert any("database back" in r.getMessage() for r in caplog.records)


def test_a_batch_whose_commit_landed_before_the_connection_dropped_is_not_applied_twice(
    flows_app: App,
) -> None:
    runs = [flows_app.start_flow(MapFlow, [1, 2, 3]) for _ in range(3)]
    store = Outages(flows_app.store)
    store.after["complete_tasks"] = 3  # committed, but the worker was told it failed
    # A lost COMMIT that also claimed tasks leaves them with this worker until their lease
    # expires: a short lease, and a worker that runs until the runs are done.
    for flow in flows_app.registry:
        flows_app.store.ensure_flow(flow.definition)
    worker = Worker(
        store,
        flows_app.registry,  # type: ignore[arg-type]
        options=WorkerOptions(
            poll_interval=0.02, reap_interval=0.1, lease_margin=1.0, heartbeat_interval=0.05
        ),
    )
    # The heartbeat renews leases 20 times a lease: a busy machine must not let a running
    # task's lease expire, or its re-run would add a (stale, ignored) completion to the count.
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        wait_until(
            lambda: all(flows_app.get_run(r).status == "completed" for r in runs),
            what="every run completed",
            interval=0.05,
        )
    finally:
        worker.stop()
        thread.join(timeout=10)
    tasks = 0
    for run_id in runs:
        run = flows_app.get_run(run_id)
        assert run.output == {"total": 14}  # each square counted once
        assert [t.status for s in run.steps for t in s.tasks] == ["completed"] * 5
        tasks += sum(len(s.tasks) for s in run.steps)
    assert worker.completed == tasks  # each completion counted once, retries or not


def test_a_completion_the_database_refuses_fails_its_task_and_the_rest_of_the_batch_commits(
    flows_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    good = [flows_app.start_flow(Echo, {"i": i}) for i in range(12)]
    bad = [flows_app.start_flow(Echo, {"poison": i}) for i in range(2)]
    store = Outages(flows_app.store)
    batches: list[int] = []

    def refuse(batch: Sequence[TaskCompletion]) -> bool:
        batches.append(len(batch))
        return any("poison" in c.output_json for c in batch)

    store.refuse = refuse
    with caplog.at_level(logging.INFO, "tideflow"):
        worker = run_until_idle(
            flows_app, store, WorkerOptions(poll_interval=0.02, reap_interval=0.2, concurrency=20)
        )
    for run_id in good:
        run = flows_app.get_run(run_id)
        assert run.status == "completed"
        assert run.step("echo").attempts == 1  # committed at once, not re-run after a lease
    for run_id in bad:
        run = flows_app.get_run(run_id)
        assert run.status == "failed"
        assert run.step("echo").attempts == 1  # failed at once: no retry can fix the output
        assert "could not be stored" in (run.error or "")
        assert "PostgreSQL refused a value" in (run.error or "")
    assert worker.completed == 12 and worker.failed == 2
    assert max(batches) > 1  # the refused completions came in batches that were split


def test_claims_heartbeats_and_reaping_wait_out_an_outage(
    flows_app: App, caplog: pytest.LogCaptureFixture
) -> None:
    runs = [flows_app.start_flow(Chain, {"n": i}) for i in range(3)]
    store = Outages(flows_app.store)
    for name in ("claim_tasks", "requeue_stalled", "count_queued", "extend_leases"):
        store.fail[name] = 3
    with caplog.at_level(logging.INFO, "tideflow"):
        worker = run_until_idle(
            flows_app,
            store,
            WorkerOptions(poll_interval=0.02, reap_interval=0.05, heartbeat_interval=0.05),
        )
    assert all(flows_app.get_run(r).status == "completed" for r in runs)
    assert worker.completed == 9
    assert store.fail["claim_tasks"] == 0 and store.fail["requeue_stalled"] == 0
    assert worker.outage.outages >= 1
    assert not [r for r in caplog.records if r.exc_info]  # warnings, not tracebacks


def test_a_bug_in_a_loop_stops_the_worker_and_is_raised(flows_app: App) -> None:
    flows_app.start_flow(Chain, {"n": 1})
    store = Outages(flows_app.store)

    def boom(*args: object) -> list[ClaimedTask]:
        raise RuntimeError("a bug in tideflow")

    store.claim_tasks = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug in tideflow"):
        run_until_idle(flows_app, store)


def test_run_worker_stops_the_handlers_and_reraises_when_the_flow_worker_hits_a_bug(
    flows_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tideflow.events.projections import Projection

    class Nothing(Projection):
        name = "nothing"

        def handle(self, event: RecordedEvent, ctx: Any) -> None:
            pass

    flows_app.handler(Nothing)
    flows_app.start_flow(Chain, {"n": 1})

    def boom(*args: object) -> list[ClaimedTask]:
        raise RuntimeError("a bug in tideflow")

    monkeypatch.setattr(flows_app.store, "claim_tasks", boom)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a bug in tideflow"):
        flows_app.run_worker(poll_interval=0.02)  # not until_idle: only the bug ends it
    assert time.monotonic() - started < 10


# --- clients -------------------------------------------------------------------------------------


def test_start_flow_retries_an_outage_and_never_starts_a_run_twice(
    flows_app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import functools

    import tideflow.client
    from tideflow.client import Client
    from tideflow.retrying import retry_briefly

    store = Outages(flows_app.store)
    client = Client(store, flows_app.registry)  # type: ignore[arg-type]
    store.fail["start_run"] = 2
    first = client.start_flow(Echo, {"a": 1})
    store.after["start_run"] = 1  # committed, answer lost: the repeat meets its own run
    second = client.start_flow(Echo, {"a": 2})
    store.after["start_run"] = 1
    third = client.start_flow(Echo, {"a": 3}, run_id="mine-3")
    assert third == "mine-3"
    runs = flows_app.list_runs(flow=Echo)
    assert sorted(r.run_id for r in runs) == sorted([first, second, third])
    store.fail["start_run"] = 1000
    monkeypatch.setattr(
        tideflow.client, "retry_briefly", functools.partial(retry_briefly, seconds=0.3)
    )
    with pytest.raises(DatabaseUnavailableError):
        client.start_flow(Echo, {"a": 4})  # gives up after a few seconds


class Counter(Aggregate):
    aggregate_type = "counter"

    def initial_state(self, aggregate_id: str) -> int:
        return 0

    @handles("Add")
    def add(self, state: int, command: Command) -> Any:
        return ("Added", {"n": command.payload["n"]})

    @applies("Added")
    def added(self, state: int, event: RecordedEvent) -> int:
        return state + int(event.data["n"])


@pytest.mark.parametrize("key", [None, "k-1"])
def test_dispatch_retries_an_outage_and_never_records_twice(app: App, key: str | None) -> None:
    events = Outages(app.event_store)  # type: ignore[arg-type]
    dispatcher = CommandDispatcher(events, [Counter])  # type: ignore[arg-type]
    events.fail["read_stream"] = 1
    events.fail["append"] = 1
    dispatcher.dispatch(Command("Add", "c1", {"n": 1}))
    events.after["append"] = 1  # committed, answer lost
    result = dispatcher.dispatch(Command("Add", "c1", {"n": 2}, idempotency_key=key))
    assert [e.data for e in result.events] == [{"n": 2}]
    assert [e.data["n"] for e in app.event_store.read_stream("counter-c1")] == [1, 2]


# --- SQLite: a file locked by another process ----------------------------------------------------


def test_a_worker_waits_out_a_sqlite_file_locked_by_another_connection(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = App(f"sqlite:///{tmp_path / 'locked.db'}", flows=[Chain])
    try:
        runs = [app.start_flow(Chain, {"n": i}) for i in range(3)]
        app.store.db.connection.execute("PRAGMA busy_timeout=50")  # type: ignore[attr-defined]
        store = Outages(app.store)  # fails nothing: counts the worker's calls
        other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        done = threading.Event()
        errors: list[BaseException] = []

        def work() -> None:
            try:
                run_until_idle(app, store)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

        with caplog.at_level(logging.INFO, "tideflow"):
            thread = threading.Thread(target=work)
            thread.start()
            wait_until(
                lambda: warnings(caplog, "database is locked"), what="the worker to meet the lock"
            )

            # It keeps trying (not dead, not given up) and does not warn again: wait for two
            # more of its writes against the locked file, not for a quiet period.
            def writes() -> int:
                return sum(store.calls.get(name, 0) for name in ("requeue_stalled", "claim_tasks"))

            tried = writes()
            wait_until(lambda: writes() >= tried + 2, what="two more tries at writing")
            assert not done.is_set() and not errors
            assert len(warnings(caplog, "database is locked")) == 1
            other.execute("ROLLBACK")
            other.close()
            thread.join(timeout=20)
        assert not errors and done.is_set()
        assert all(app.get_run(r).status == "completed" for r in runs)
        assert len(warnings(caplog, "database is locked")) == 1
        assert any("database back" in r.getMessage() for r in caplog.records)
    finally:
        app.close()


# --- shutdown while the database is away; a LISTEN connection killed ------------------------------


@pytest.mark.parametrize("force", [False, True])
def test_a_worker_stops_within_its_deadline_while_the_database_is_away(
    flows_app: App, caplog: pytest.LogCaptureFixture, force: bool
) -> None:
    run_id = flows_app.start_flow(Chain, {"n": 1})
    store = Outages(flows_app.store)
    worker = Worker(
        store,
        flows_app.registry,  # type: ignore[arg-type]
        options=WorkerOptions(
            poll_interval=0.02, reap_interval=0.05, heartbeat_interval=0.05, shutdown_grace=0.5
        ),
    )
    for flow in flows_app.registry:
        flows_app.store.ensure_flow(flow.definition)
    for name in ("complete_tasks", "release_tasks", "fail_task", "extend_leases"):
        store.fail[name] = 10**6  # the first claim gets through, then the database is gone
    errors: list[BaseException] = []

    def work() -> None:
        try:
            asyncio.run(worker.run())
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.INFO, "tideflow"):
        thread = threading.Thread(target=work)
        thread.start()
        wait_until(lambda: store.calls.get("complete_tasks"), what="a first completion batch")
        for name in ("claim_tasks", "requeue_stalled", "count_queued"):
            store.fail[name] = 10**6
        started = time.monotonic()
        worker.stop(force=force)
        thread.join(timeout=15)
    assert not thread.is_alive() and time.monotonic() - started < 3  # no hang on shutdown
    assert errors == []  # an outage at shutdown is not a bug
    assert warnings(caplog, "completion(s) were not recorded")
    # Not lost: the task is still started under this worker's lease, for the reaper.
    assert flows_app.get_run(run_id).step("first").tasks[0].status == "started"


def test_a_killed_listen_connection_is_reestablished_and_subscribers_catch_up(
    db_url: str, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    if backend != "postgres":
        pytest.skip("LISTEN/NOTIFY: SQLite's watcher reads the file, it has no connection to lose")
    import psycopg

    from tideflow.storage import open_store

    store = open_store(db_url)
    wakes = threading.Semaphore(0)
    try:
        with caplog.at_level(logging.INFO, "tideflow"):
            store.subscribe(wakes.release)
            with psycopg.connect(db_url, autocommit=True) as admin:
                wait_until(  # the listener may not have connected yet
                    lambda: admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = "
                        "'LISTEN tideflow_tasks' AND datname = current_database()"
                    ).fetchall(),
                    what="the LISTEN connection to kill",
                    interval=0.02,
                )
                assert wakes.acquire(timeout=10), "no catch-up wake after reconnecting"
                while wakes.acquire(blocking=False):
                    pass
                admin.execute("NOTIFY tideflow_tasks")  # heard on the new connection
                assert wakes.acquire(timeout=10)
        messages = [r.getMessage() for r in caplog.records]
        assert sum("LISTEN tideflow_tasks connection lost" in m for m in messages) == 1
        assert sum("LISTEN tideflow_tasks re-established" in m for m in messages) == 1
    finally:
        store.close()


def test_wait_for_run_waits_out_an_outage(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart while callers wait for runs is not an error for each of them: the run goes
    on, and the wait with it (within its timeout)."""
    with App(db_url, flows=ALL_FLOWS) as app:
        run_id = app.start_flow(Chain, {"n": 1})
        app.run_worker(until_idle=True)
        store = app.client.store
        real = store.look_runs  # what a wait reads
        failures = [3]

        def flaky(run_ids: Sequence[str]) -> dict[str, RunRecord]:
            if failures[0]:
                failures[0] -= 1
                raise DatabaseUnavailableError("the server is restarting (simulated)")
            return real(run_ids)

        monkeypatch.setattr(store, "look_runs", flaky)
        assert app.client.wait_for_run(run_id, timeout=10).status == "completed"
        assert failures == [0]
        failures[0] = 10_000
        with pytest.raises(DatabaseUnavailableError):
            app.client.wait_for_run(run_id, timeout=0.3)


def test_reads_refuse_ids_no_run_can_have(db_url: str) -> None:
    with App(db_url, flows=ALL_FLOWS) as app:
        app.start_flow(Chain, {"n": 1})
        for bad in ("", "a\x00b", "\ud800", "x" * 201):
            with pytest.raises(InvalidDataError):
                app.get_run(bad)
            with pytest.raises(InvalidDataError):
                app.cancel_run(bad)
            with pytest.raises(InvalidDataError):
                app.wait_for_run(bad, timeout=1)
