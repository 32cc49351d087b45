"""Retrying a failed run from its failed steps (``FlowStore.retry_run``), on both backends and
on PostgreSQL without its fast paths too: completed steps keep their outputs, the steps that
failed or were skipped because the run failed start again with fresh attempt counts."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FLOW_BACKENDS
from tests.flows.driving import claim, done, fail
from tests.flows.flows_for_tests import Diamond, MapFlow
from tideflow import Flow, RunNotFailedError, RunNotFoundError, step
from tideflow.storage.flow_contract import FlowStore


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Once(Flow, slug="retry_once", max_attempts=2):
    @step()
    def first(self, input):
        return input

    @step(depends_on=["first"])
    def second(self, first):
        return first

    @step(depends_on=["second"])
    def third(self, second):
        return second


def test_retry_runs_the_failed_step_again_with_fresh_attempts(store: FlowStore) -> None:
    store.start_run(Once.definition, "r1", '{"n": 1}')
    done(store, claim(store, "retry_once")[("first", 0)], {"from": "first"})
    fail(store, claim(store, "retry_once")[("second", 0)])
    assert store.get_run("r1").status == "failed"

    store.retry_run("r1")
    run = store.get_run("r1")
    assert run.status == "started" and run.error is None and run.finished_at is None
    assert run.step("first").status == "completed"
    assert run.step("first").output == {"from": "first"}
    assert run.step("second").status == "started" and run.step("second").error is None
    assert run.step("third").status == "created"
    (second,) = claim(store, "retry_once").values()
    assert second.key.step_slug == "second" and second.attempt == 1
    assert json.loads(second.input_json) == {"first": {"from": "first"}}
    done(store, second, 2)
    done(store, claim(store, "retry_once")[("third", 0)], 3)
    run = store.get_run("r1")
    assert run.status == "completed" and run.output == {"third": 3} and run.error is None


def test_steps_skipped_because_the_run_failed_start_again_too(store: FlowStore) -> None:
    store.start_run(Diamond.definition, "r1", '"x"')
    done(store, claim(store, "diamond")[("root", 0)], "x")
    branches = claim(store, "diamond")
    fail(store, branches[("left", 0)])  # right's task is cancelled, right and join skipped
    run = store.get_run("r1")
    assert [run.step(s).status for s in ("left", "right", "join")] == [
        "failed",
        "skipped",
        "skipped",
    ]
    store.retry_run("r1")
    again = claim(store, "diamond")
    assert set(again) == {("left", 0), ("right", 0)}
    assert all(t.attempt == 1 for t in again.values())
    done(store, again[("left", 0)], "L")
    done(store, again[("right", 0)], "R")
    (join,) = claim(store, "diamond").values()
    assert json.loads(join.input_json) == {"left": "L", "right": "R"}


def test_a_map_step_runs_all_its_elements_again(store: FlowStore) -> None:
    store.start_run(MapFlow.definition, "r1", "[1, 2, 3]")
    done(store, claim(store, "map_flow")[("numbers", 0)], [1, 2, 3])
    tasks = claim(store, "map_flow")
    done(store, tasks[("square", 0)], 1)
    fail(store, tasks[("square", 1)])
    store.retry_run("r1")
    again = claim(store, "map_flow")
    assert sorted(again) == [("square", 0), ("square", 1), ("square", 2)]
    for (_, i), t in again.items():
        done(store, t, (i + 1) ** 2)
    done(store, claim(store, "map_flow")[("total", 0)], 14)
    assert store.get_run("r1").output == {"total": 14}


def test_a_producer_of_a_non_array_runs_again(store: FlowStore) -> None:
    store.start_run(MapFlow.definition, "r1", "[]")
    done(store, claim(store, "map_flow")[("numbers", 0)], {"not": "a list"})
    assert store.get_run("r1").step("numbers").status == "failed"
    store.retry_run("r1")
    (numbers,) = claim(store, "map_flow").values()
    assert numbers.key.step_slug == "numbers" and numbers.attempt == 1
    done(store, numbers, [])
    done(store, claim(store, "map_flow")[("total", 0)], 0)
    assert store.get_run("r1").status == "completed"


def test_a_run_can_be_retried_again_after_failing_again(store: FlowStore) -> None:
    store.start_run(Once.definition, "r1", "1")
    fail(store, claim(store, "retry_once")[("first", 0)])
    store.retry_run("r1")
    fail(store, claim(store, "retry_once")[("first", 0)])
    assert store.get_run("r1").status == "failed"
    store.retry_run("r1")
    (first,) = claim(store, "retry_once").values()
    assert first.attempt == 1


def test_only_a_failed_run_can_be_retried_and_a_refusal_writes_nothing(store: FlowStore) -> None:
    with pytest.raises(RunNotFoundError, match="no run with id 'nope'"):
        store.retry_run("nope")
    store.start_run(Once.definition, "r1", "1")
    before = store.get_run("r1")
    with pytest.raises(RunNotFailedError, match="'r1' is started, not failed"):
        store.retry_run("r1")
    assert store.get_run("r1") == before
    store.cancel_run("r1")
    with pytest.raises(RunNotFailedError, match="is cancelled, not failed"):
        store.retry_run("r1")
