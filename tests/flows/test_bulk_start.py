"""Starting many runs of one flow in one transaction (``start_runs`` / ``start_flows``), on
SQLite, PostgreSQL (one call of ``start_runs_v1``) and PostgreSQL without fast paths."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.conftest import FLOW_BACKENDS
from tests.flows.flows_for_tests import Chain, RootMap
from tideflow import (
    App,
    Flow,
    InputNotSerializableError,
    MapInputError,
    RunAlreadyExistsError,
    step,
)
from tideflow.client import Client, InvalidArgumentError
from tideflow.storage import open_event_store_on
from tideflow.storage.flow_contract import FlowStore, RunReport, TaskCompletion
from tideflow.storage.flow_store import SqlFlowStore, run_stream

W = "worker-a"


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_runs_start_together_each_with_its_input(store: FlowStore) -> None:
    store.start_runs(Chain.definition, [(f"r{i}", json.dumps({"n": i})) for i in range(5)])
    tasks = store.claim_tasks(W, ["chain"], 100, 30)
    assert sorted((t.key.run_id, json.loads(t.input_json)["n"]) for t in tasks) == [
        (f"r{i}", i) for i in range(5)
    ]
    assert all(t.key.step_slug == "first" and t.attempt == 1 for t in tasks)
    run = store.get_run("r3")
    assert run.status == "started" and run.input == {"n": 3}
    assert [s.status for s in run.steps] == ["started", "created", "created"]
    store.complete_tasks(W, [TaskCompletion(t.key, t.attempt, "7") for t in tasks])
    assert {t.key.step_slug for t in store.claim_tasks(W, ["chain"], 100, 30)} == {"second"}


@pytest.mark.parametrize(
    ("runs", "error"),
    [
        ([("a", "1"), ("b", "2"), ("a", "3")], "run id 'a' is given twice in one batch"),
        ([("a", "1"), ("taken", "2")], "a run id of this batch is taken"),
    ],
)
def test_a_bad_run_id_starts_none_of_the_batch(
    store: FlowStore, runs: list[tuple[str, str]], error: str
) -> None:
    store.start_run(Chain.definition, "taken", "{}")
    with pytest.raises(RunAlreadyExistsError, match=error):
        store.start_runs(Chain.definition, runs)
    assert [r.run_id for r in store.list_runs()] == ["taken"]


def test_a_root_map_input_that_is_not_an_array_starts_none(store: FlowStore) -> None:
    with pytest.raises(MapInputError):
        store.start_runs(RootMap.definition, [("a", "[1]"), ("b", '{"no": 1}')])
    assert store.list_runs() == []


def test_root_maps_fan_out_and_empty_ones_complete_and_report(store: SqlFlowStore) -> None:
    store.start_runs(
        RootMap.definition, [("a", "[1, 2]"), ("b", "[]"), ("c", "[3]")], report=RunReport()
    )
    tasks = store.claim_tasks(W, ["root_map"], 100, 30)
    assert sorted((t.key.run_id, t.key.task_index) for t in tasks) == [
        ("a", 0),
        ("a", 1),
        ("c", 0),
    ]
    empty = store.get_run("b")
    assert empty.status == "completed" and empty.output == {"double": []}
    [event] = open_event_store_on(store).read_stream(run_stream("b"))
    assert event.event_type == "FlowRunCompleted"
    assert list(open_event_store_on(store).read_stream(run_stream("a"))) == []


def test_conditional_flows_start_in_bulk_too(store: FlowStore) -> None:
    class Maybe(Flow, slug="bulk_maybe"):
        @step(if_={"go": True})
        def only(self, input): ...

    store.start_runs(Maybe.definition, [("yes", '{"go": true}'), ("no", '{"go": false}')])
    assert [t.key.run_id for t in store.claim_tasks(W, ["bulk_maybe"], 10, 30)] == ["yes"]
    no = store.get_run("no")
    assert no.status == "completed" and no.step("only").skip_reason == "condition_unmet"


# --- the client -----------------------------------------------------------------------------------


def test_start_flows_returns_ids_in_input_order_and_a_worker_runs_them(db_url: str) -> None:
    with App(db_url, flows=[Chain]) as app:
        ids = app.start_flows(Chain, [{"n": n} for n in range(20)])
        assert len(set(ids)) == 20
        assert app.start_flows("chain", []) == []
        app.run_worker(until_idle=True, poll_interval=0.02)
        assert [app.get_run(i).output["third"]["value"] for i in ids] == [
            (n + 1) * 10 for n in range(20)
        ]


def test_start_flows_checks_everything_before_writing(db_url: str) -> None:
    with App(db_url, flows=[Chain]) as app:
        with pytest.raises(InvalidArgumentError, match="run_ids has 1 ids for 2 inputs"):
            app.start_flows(Chain, [1, 2], run_ids=["x"])
        with pytest.raises(InputNotSerializableError):
            app.start_flows(Chain, [{"n": 1}, {"n": object()}])
        ids = app.start_flows(Chain, [{"n": 1}, {"n": 2}], run_ids=["mine-1", "mine-2"])
        assert ids == ["mine-1", "mine-2"]
        assert sorted(r.run_id for r in app.list_runs()) == ["mine-1", "mine-2"]


def test_start_flows_by_slug_from_the_stored_shape_and_awaitable(db_url: str) -> None:
    with App(db_url, flows=[Chain]) as worker_app:
        worker_app.store.ensure_flow(Chain.definition)
        client = Client(worker_app.store)  # no registry: no flow code
        ids = client.start_flows("chain", [{"n": 1}])
        more = asyncio.run(worker_app.aio.start_flows("chain", [{"n": 2}, {"n": 3}]))
        assert len(ids + more) == 3
        assert {r.flow_version for r in worker_app.list_runs()} == {Chain.definition.version}


def test_bulk_run_ids_are_random_version_4_uuids() -> None:
    import uuid

    from tideflow.ids import new_run_ids

    ids = new_run_ids(5000)
    assert len(set(ids)) == 5000
    for run_id in ids:
        parsed = uuid.UUID(run_id)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, run_id)
    assert new_run_ids(0) == []
