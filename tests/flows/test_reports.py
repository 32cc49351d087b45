"""Runs that report back: a run's end appended to the event log in the transaction that ends it.

On the store (both backends, and PostgreSQL without its fast paths): a reporting run's
completion, failure (out of retries, or out of stalls) and cancellation each append one event,
once; a run that does not report appends nothing; a start that rolls back reports nothing. And
end to end: a process manager's flow reports to the instance that started it, which carries on.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest

from tests.conftest import FLOW_BACKENDS
from tests.flows.flows_for_tests import Chain, RootMap
from tideflow import App, Flow, step
from tideflow.clock import ManualClock
from tideflow.events import Aggregate, Command, RecordedEvent, handles
from tideflow.sagas import Action, ProcessManager, StartFlow
from tideflow.storage import open_event_store_on
from tideflow.storage.flow_contract import RunReport, TaskCompletion, TaskFailure
from tideflow.storage.flow_store import SqlFlowStore, run_stream

W = "worker-a"


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def lifecycle(store: SqlFlowStore, run_id: str) -> list[RecordedEvent]:
    events = open_event_store_on(store)
    return list(events.read_stream(run_stream(run_id)))


def drive(store: SqlFlowStore, flow: str, outputs: dict[str, Any]) -> None:
    """Claim and complete until nothing is left, each step's output from ``outputs``."""
    while tasks := store.claim_tasks(W, [flow], 100, 30.0):
        store.complete_tasks(
            W,
            [
                TaskCompletion(t.key, t.attempt, json.dumps(outputs[t.key.step_slug]), t.reports)
                for t in tasks
            ],
        )


def test_a_completed_run_reports_once_with_its_output(store: SqlFlowStore) -> None:
    cause, correlation = uuid4(), uuid4()
    report = RunReport(str(correlation), str(cause), {"who": "test"})
    store.start_run(Chain.definition, "r1", json.dumps({"n": 1}), report=report)
    [task] = store.claim_tasks(W, ["chain"], 10, 30.0)
    assert task.reports is True
    store.complete_tasks(W, [TaskCompletion(task.key, task.attempt, "1", task.reports)])
    drive(store, "chain", {"second": 2, "third": {"v": 3}})
    [done] = lifecycle(store, "r1")
    assert done.event_type == "FlowRunCompleted"
    assert done.data == {"run_id": "r1", "flow": "chain", "output": {"third": {"v": 3}}}
    assert (done.correlation_id, done.causation_id) == (correlation, cause)
    assert done.metadata == {"who": "test"}
    store.cancel_run("r1")  # ended already: nothing more
    assert len(lifecycle(store, "r1")) == 1


def test_a_run_ended_by_a_skipped_failure_reports_its_completion(store: SqlFlowStore) -> None:
    class Skips(Flow, slug="report_skips", max_attempts=1):
        @step(when_failed="skip")
        def only(self, input): ...

    store.start_run(Skips.definition, "r1", "null", report=RunReport())
    [task] = store.claim_tasks(W, ["report_skips"], 10, 30.0)
    store.fail_task(W, TaskFailure(task.key, task.attempt, "boom"))
    [done] = lifecycle(store, "r1")
    assert (done.event_type, done.data["output"]) == ("FlowRunCompleted", {})


def test_a_run_that_does_not_report_appends_nothing(store: SqlFlowStore) -> None:
    store.start_run(Chain.definition, "quiet", json.dumps({"n": 1}))
    [task] = store.claim_tasks(W, ["chain"], 10, 30.0)
    assert task.reports is False
    store.complete_tasks(W, [TaskCompletion(task.key, task.attempt, "1")])
    drive(store, "chain", {"second": 2, "third": 3})
    assert store.get_run("quiet").status == "completed"
    assert lifecycle(store, "quiet") == []


def test_failed_and_cancelled_runs_report(store: SqlFlowStore, clock: ManualClock) -> None:
    store.start_run(Chain.definition, "doomed", "{}", report=RunReport())
    [task] = store.claim_tasks(W, ["chain"], 10, 30.0)
    store.fail_task(W, TaskFailure(task.key, task.attempt, "no luck", retryable=False))
    [failed] = lifecycle(store, "doomed")
    assert failed.event_type == "FlowRunFailed" and "no luck" in failed.data["error"]

    store.start_run(Chain.definition, "stopped", "{}", report=RunReport())
    assert store.cancel_run("stopped") is True
    assert [e.event_type for e in lifecycle(store, "stopped")] == ["FlowRunCancelled"]

    # Out of stalls: the reaper fails the run, and it reports too.
    store.start_run(Chain.definition, "lost", "{}", report=RunReport())
    for _ in range(4):  # the default max_stalls is 3: the fourth stall fails it
        store.claim_tasks(W, ["chain"], 10, 0.0)
        clock.advance(1)
        store.requeue_stalled()
    assert [e.event_type for e in lifecycle(store, "lost")] == ["FlowRunFailed"]


def test_a_run_that_ends_as_it_starts_reports_in_the_start(store: SqlFlowStore) -> None:
    store.start_run(RootMap.definition, "empty", json.dumps([]), report=RunReport())
    assert store.get_run("empty").status == "completed"
    assert [e.event_type for e in lifecycle(store, "empty")] == ["FlowRunCompleted"]


def test_a_start_that_rolls_back_reports_nothing(store: SqlFlowStore) -> None:
    events = open_event_store_on(store)
    with pytest.raises(RuntimeError), events.transaction() as tx:
        store.start_run(RootMap.definition, "ghost", json.dumps([]), tx=tx, report=RunReport())
        raise RuntimeError("undo")
    assert lifecycle(store, "ghost") == []
    assert store.list_runs() == []


def test_run_streams_of_long_run_ids_are_hashed() -> None:
    assert run_stream("r1") == "run-r1"
    long = run_stream("x" * 200)
    assert long.startswith("run-") and len(long) <= 200


# --- end to end: a process manager carries on when its flow ends --------------------------------


class Pack(Flow, slug="pack"):
    @step()
    def box(self, input: Any) -> Any:
        return {"box": f"B-{input['order']}"}


class Orders(Aggregate):
    @handles("Ship")
    def ship(self, state: Any, command: Command) -> tuple[str, dict[str, Any]]:
        return ("ShipRequested", {"order": command.aggregate_id})

    @handles("MarkShipped")
    def shipped(self, state: Any, command: Command) -> tuple[str, dict[str, Any]]:
        return ("Shipped", {"order": command.aggregate_id, **command.payload})


class Shipping(ProcessManager):
    name = "shipping_reports"
    event_types = ["ShipRequested", "FlowRunCompleted", "Shipped"]
    starts_with = ["ShipRequested"]
    stops_with = ["Shipped"]

    def react(self, state: Any, event: RecordedEvent) -> list[Action]:
        if event.event_type == "ShipRequested":
            return [StartFlow(Pack, {"order": event.data["order"]})]
        if event.event_type == "FlowRunCompleted":
            box = event.data["output"]["box"]["box"]
            return [Command("MarkShipped", state["order"], {"box": box})]
        return []

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        if event.event_type == "ShipRequested":
            return {"order": event.data["order"]}
        return {**state, "last": event.event_type}


def test_a_process_managers_flow_reports_to_its_instance(db_url: str) -> None:
    app = App(db_url, flows=[Pack], aggregates=[Orders], handlers=[Shipping])
    try:
        app.dispatch(Command("Ship", "o-1"))
        app.run_worker(until_idle=True, poll_interval=0.02)
        [instance] = app.process_store.list_instances("shipping_reports")
        assert instance.status == "completed"
        assert [e.event_type for e in app.event_store.read_stream("orders-o-1")] == [
            "ShipRequested",
            "Shipped",
        ]
        shipped = list(app.event_store.read_stream("orders-o-1"))[-1]
        assert shipped.data == {"order": "o-1", "box": "B-o-1"}
        [run] = app.list_runs(flow="pack")
        [report] = list(app.event_store.read_stream(run_stream(run.run_id)))
        assert str(report.correlation_id) == instance.process_id  # the process's correlation
    finally:
        app.close()


# --- steps that dispatch commands -------------------------------------------------------------


class Ledger(Aggregate):
    @handles("Record")
    def record(self, state: Any, command: Command) -> tuple[str, dict[str, Any]]:
        return ("Recorded", dict(command.payload))


class Booker(Flow, slug="booker", max_attempts=2, base_delay=0.01, max_delay=0.02):
    @step()
    def book(self, input: Any, ctx: Any) -> Any:
        result = ctx.dispatch(Command("Record", "ledger-1", {"what": "booked"}))
        if ctx.attempt == 1:
            raise RuntimeError("lost the answer")  # retried: the same command lands once
        return {"version": result.version}


def test_a_step_dispatches_with_the_runs_correlation_and_once_across_retries(
    db_url: str,
) -> None:
    app = App(db_url, flows=[Booker], aggregates=[Ledger])
    try:
        correlation = uuid4()
        run_id = app.client.start_flow(
            Booker, {}, report=RunReport(correlation_id=str(correlation))
        )
        app.run_worker(until_idle=True, poll_interval=0.02)
        run = app.get_run(run_id)
        assert run.status == "completed" and run.output == {"book": {"version": 1}}
        [recorded] = list(app.event_store.read_stream("ledger-ledger-1"))
        assert recorded.data == {"what": "booked"}  # the retry's dispatch replayed the first
        assert recorded.correlation_id == correlation
    finally:
        app.close()


def test_a_step_that_dispatches_without_aggregates_fails_saying_why(db_url: str) -> None:
    app = App(db_url, flows=[Booker])
    try:
        run_id = app.start_flow(Booker, {})
        app.run_worker(until_idle=True, poll_interval=0.02)
        run = app.get_run(run_id)
        assert run.status == "failed" and "has no dispatcher" in (run.error or "")
    finally:
        app.close()


def test_reports_must_be_a_bool() -> None:
    from tideflow.errors import FlowDefinitionError

    with pytest.raises(FlowDefinitionError, match="reports must be True or False"):

        class Bad(Flow, slug="bad_reports", reports="yes"):  # type: ignore[arg-type]
            @step()
            def only(self, input: Any) -> Any:
                return input

    class Good(Flow, slug="good_reports", reports=True):
        @step()
        def only(self, input: Any) -> Any:
            return input

    assert Good.reports is True and Pack.reports is False
