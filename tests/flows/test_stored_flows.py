"""Starting runs from the shapes workers stored: no flow code in the starting process.

A web app that only starts runs should not have to import every flow's code: a worker stores
each flow version's shape - now with its step options and conditions - and ``start_flow`` by slug
starts the latest stored version (or a pinned one) from it. On both backends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flows.flows_for_tests import Chain, RootMap
from tideflow import App, Client, Flow, FlowNotFoundError, MapInputError, step
from tideflow.clock import ManualClock
from tideflow.errors import TideflowError
from tideflow.storage.flow_contract import FlowStore, TaskFailure

FAST = {"poll_interval": 0.02, "reap_interval": 0.2}


class Strict(Flow, slug="stored_strict", max_attempts=1, reports=True):
    @step(timeout=7, start_delay=0)
    def only(self, input):
        return input


def test_an_app_without_the_code_starts_a_flow_a_worker_stored(db_url: str) -> None:
    with App(db_url, flows=[Chain]) as worker_app:
        worker_app.worker()  # a worker records its flows' versions as it starts
        with App(db_url) as web:  # no flows: a web app that only starts runs
            run_id = web.start_flow("chain", {"n": 4})
            assert web.get_run(run_id).flow_version == Chain.definition.version
        worker_app.run_worker(until_idle=True, **FAST)
        assert worker_app.get_run(run_id).output == {"third": {"value": 50, "run_input": {"n": 4}}}


def test_a_client_on_a_url_starts_and_follows_runs_without_the_code(db_url: str) -> None:
    """``Client(url)``: the issue's own words, for a process that only starts runs."""
    with App(db_url, flows=[Chain]) as worker_app:
        worker_app.worker()
        with Client(db_url) as web:
            run_id = web.start_flow("chain", {"n": 4})
            with pytest.raises(FlowNotFoundError, match="stored flows: chain"):
                web.start_flow("chian", {})
        worker_app.run_worker(until_idle=True, **FAST)
        with Client(db_url, flows=[Chain]) as follower:
            assert follower.wait_for_run(run_id, timeout=10).status == "completed"
            assert [r.run_id for r in follower.list_runs(flow=Chain)] == [run_id]


def test_a_client_neither_creates_nor_migrates_a_database(tmp_path: Path) -> None:
    missing = f"sqlite:///{tmp_path / 'nothing.db'}"
    with pytest.raises(TideflowError), Client(missing) as client:
        client.start_flow("chain", {})
    assert not (tmp_path / "nothing.db").exists() or not (tmp_path / "nothing.db").stat().st_size


def test_an_unknown_slug_lists_the_stored_flows(db_url: str) -> None:
    with App(db_url) as app:
        with pytest.raises(FlowNotFoundError, match=r"\(stored flows: none\)"):
            app.start_flow("chain", {})
        app.store.ensure_flow(Chain.definition)
        app.store.ensure_flow(RootMap.definition)
        with pytest.raises(FlowNotFoundError) as err:
            app.start_flow("chian", {})
        assert "'chian' is neither registered here nor stored" in str(err.value)
        assert "(stored flows: chain, root_map)" in str(err.value)


class Short(Flow, slug="versions"):
    @step()
    def a(self, input):
        return input


class Long(Flow, slug="versions"):  # the next version of Short: one more step
    @step()
    def a(self, input):
        return input

    @step(depends_on=["a"])
    def b(self, a):
        return a


def test_latest_stored_version_unless_one_is_pinned(store: FlowStore, clock: ManualClock) -> None:
    store.ensure_flow(Short.definition)
    clock.advance(1)
    store.ensure_flow(Long.definition)
    assert store.stored_flow("versions").version == Long.definition.version
    old = Short.definition.version
    assert store.stored_flow("versions", old).version == old
    with pytest.raises(FlowNotFoundError, match="has no stored version 'nope'"):
        store.stored_flow("versions", "nope")
    store.start_run(store.stored_flow("versions", old), "r1", "1")
    assert [s.step_slug for s in store.get_run("r1").steps] == ["a"]


def test_a_pinned_version_beats_the_registered_code(db_url: str) -> None:
    with App(db_url, flows=[Long]) as app:
        app.store.ensure_flow(Short.definition)
        old = app.start_flow("versions", 1, version=Short.definition.version)
        new = app.start_flow(Long, 1)
        assert app.get_run(old).flow_version == Short.definition.version
        assert app.get_run(new).flow_version == Long.definition.version


def test_a_run_started_from_the_stored_shape_keeps_the_codes_options(
    store: FlowStore,
) -> None:
    store.ensure_flow(Strict.definition)
    stored = store.stored_flow("stored_strict")
    assert stored.version == Strict.definition.version and stored.reports
    assert stored.step("only").options() == Strict.definition.step("only").options()
    store.start_run(stored, "r1", json.dumps({"x": 1}))
    (task,) = store.claim_tasks("w", ["stored_strict"], 10, 30.0)
    assert task.timeout == 7
    store.fail_task("w", TaskFailure(task.key, task.attempt, "boom"))
    assert store.get_run("r1").status == "failed"  # max_attempts=1 came from the stored shape


def test_the_options_of_the_latest_writer_are_stored(store: FlowStore) -> None:
    class Loose(Flow, slug="stored_strict", max_attempts=5, reports=True):
        @step(timeout=7, start_delay=0)
        def only(self, input):
            return input

    assert Loose.definition.version == Strict.definition.version  # options are not the shape
    store.ensure_flow(Strict.definition)
    other = type(store)(store.db)  # another process, with other options for the same version
    other.start_run(Loose.definition, "r1", "1")  # starting a run leaves the stored row alone
    assert store.stored_flow("stored_strict").step("only").retry.max_attempts == 1
    other.ensure_flow(Loose.definition)  # a worker starting with this code records its options
    assert store.stored_flow("stored_strict").step("only").retry.max_attempts == 5


def test_a_shape_stored_before_options_were_cannot_be_started_and_says_why(
    store: FlowStore,
) -> None:
    shape = {
        "slug": "chain",
        "version": Chain.definition.version,
        "steps": [
            {"slug": s.slug, "depends_on": list(s.depends_on), "kind": s.kind, "index": s.index}
            for s in Chain.definition.steps
        ],
        "leaves": ["third"],
    }
    with store.db.transaction() as tx:  # as tideflow 0.1.0 wrote it
        tx.run(
            "insert_flow",
            flow_slug="chain",
            version=Chain.definition.version,
            shape=json.dumps(shape),
            created_at=store.clock.now(),
        )
    with pytest.raises(FlowNotFoundError, match="start a worker that has its code once"):
        store.stored_flow("chain")


def test_a_root_map_started_by_slug_is_checked_too(db_url: str) -> None:
    with App(db_url) as app:
        app.store.ensure_flow(RootMap.definition)
        with pytest.raises(MapInputError, match="must be a JSON array"):
            app.start_flow("root_map", {"not": "a list"})
        assert app.list_runs() == []
