"""The run state machine through the storage contract, on both backends, with a manual clock.

These tests drive ``FlowStore`` directly (claim, complete, fail) so that every transition and its
timing is checked without workers or sleeps. On PostgreSQL they run twice: with the PL/pgSQL fast
paths (the default) and without them ("postgres-plain": the engine's Python transitions), so
that both paths are held to the same behaviour.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest

from tests.conftest import FLOW_BACKENDS
from tests.flows.flows_for_tests import Chain, Diamond, MapFlow, RootMap
from tideflow import Flow, MapInputError, RunAlreadyExistsError, RunNotFoundError, step
from tideflow.clock import ManualClock
from tideflow.storage import open_store
from tideflow.storage.flow_contract import FlowStore, TaskCompletion, TaskFailure

W = "worker-a"


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def start(store: FlowStore, flow: type[Flow], value: object, run_id: str = "r1") -> str:
    store.start_run(flow.definition, run_id, json.dumps(value))
    return run_id


def claim(store: FlowStore, flows: list[str], limit: int = 100, worker: str = W):
    return store.claim_tasks(worker, flows, limit, 30.0)


def complete(store: FlowStore, task, output: object, worker: str = W) -> None:
    store.complete_tasks(worker, [TaskCompletion(task.key, task.attempt, json.dumps(output))])


def test_chain_runs_in_dependency_order(store: FlowStore) -> None:
    start(store, Chain, {"n": 1})
    (t1,) = claim(store, ["chain"])
    assert (t1.key.step_slug, t1.attempt, json.loads(t1.input_json)) == ("first", 1, {"n": 1})
    assert claim(store, ["chain"]) == []  # second is not ready before first completes
    complete(store, t1, 2)
    (t2,) = claim(store, ["chain"])
    assert t2.key.step_slug == "second" and json.loads(t2.input_json) == {"first": 2}
    complete(store, t2, 20)
    (t3,) = claim(store, ["chain"])
    assert json.loads(t3.run_input_json) == {"n": 1}
    complete(store, t3, {"value": 20})
    run = store.get_run("r1")
    assert run.status == "completed"
    assert run.output == {"third": {"value": 20}}
    assert [s.status for s in run.steps] == ["completed"] * 3
    assert run.finished_at is not None


def test_diamond_join_waits_for_both_branches(store: FlowStore) -> None:
    start(store, Diamond, "x")
    (root,) = claim(store, ["diamond"])
    complete(store, root, "x")
    branches = {t.key.step_slug: t for t in claim(store, ["diamond"])}
    assert set(branches) == {"left", "right"}
    complete(store, branches["left"], "Lx")
    assert claim(store, ["diamond"]) == []
    complete(store, branches["right"], "Rx")
    (join,) = claim(store, ["diamond"])
    assert json.loads(join.input_json) == {"left": "Lx", "right": "Rx"}


def test_map_fans_out_and_keeps_element_order(store: FlowStore) -> None:
    start(store, MapFlow, [3, 1, 2])
    (numbers,) = claim(store, ["map_flow"])
    complete(store, numbers, [3, 1, 2])
    tasks = claim(store, ["map_flow"])
    assert sorted(t.key.task_index for t in tasks) == [0, 1, 2]
    assert {t.key.task_index: json.loads(t.input_json) for t in tasks} == {0: 3, 1: 1, 2: 2}
    for t in reversed(tasks):  # complete out of order
        complete(store, t, json.loads(t.input_json) ** 2)
    (total,) = claim(store, ["map_flow"])
    assert json.loads(total.input_json) == {"square": [9, 1, 4]}
    step = store.get_run("r1").step("square")
    assert step.output == [9, 1, 4] and step.initial_tasks == 3


def test_empty_map_completes_at_once(store: FlowStore) -> None:
    start(store, MapFlow, [])
    (numbers,) = claim(store, ["map_flow"])
    complete(store, numbers, [])
    (total,) = claim(store, ["map_flow"])
    assert json.loads(total.input_json) == {"square": []}
    assert store.get_run("r1").step("square").status == "completed"


def test_root_map_over_empty_input_completes_the_run_without_tasks(store: FlowStore) -> None:
    start(store, RootMap, [])
    run = store.get_run("r1")
    assert run.status == "completed" and run.output == {"double": []}
    assert claim(store, ["root_map"]) == []


@pytest.mark.parametrize("bad", [{"a": 1}, "text", 5, None])
def test_root_map_over_non_list_is_refused_and_writes_nothing(
    store: FlowStore, bad: object
) -> None:
    with pytest.raises(MapInputError) as err:
        start(store, RootMap, bad)
    assert "root_map" in str(err.value) and "'double'" in str(err.value)
    assert "JSON array" in str(err.value)
    with pytest.raises(RunNotFoundError):
        store.get_run("r1")
    assert store.list_flows() == []  # not even the flow version


def test_non_list_from_dependency_fails_the_producing_step(store: FlowStore) -> None:
    start(store, MapFlow, {"not": "a list"})
    (numbers,) = claim(store, ["map_flow"])
    complete(store, numbers, {"not": "a list"})
    run = store.get_run("r1")
    assert run.status == "failed"
    assert run.error == (
        "step 'numbers' returned an object, but map step 'square' maps over its output and "
        "needs a JSON array; make step 'numbers' return a list"
    )
    assert run.step("numbers").status == "failed" and run.step("numbers").error == run.error
    assert run.step("square").status == "skipped" and run.step("total").status == "skipped"
    assert claim(store, ["map_flow"]) == []


def test_retry_backoff_and_exhaustion(store: FlowStore, clock: ManualClock) -> None:
    class Retry(Flow, slug="retry", max_attempts=3, base_delay=10, max_delay=15):
        @step()
        def only(self, input): ...

    start(store, Retry, None)
    delays = []
    for attempt in (1, 2):
        (t,) = claim(store, ["retry"])
        assert t.attempt == attempt
        store.fail_task(W, TaskFailure(t.key, t.attempt, f"boom {attempt}"))
        task = store.get_run("r1").step("only").tasks[0]
        assert task.status == "queued" and task.error == f"boom {attempt}"
        assert task.visible_at is not None
        delays.append((task.visible_at - clock.now()).total_seconds())
        assert claim(store, ["retry"]) == []  # not visible before the delay
        clock.advance(16)
    # delay = min(max_delay, base * 2**(attempt-1)) minus up to 25% jitter
    assert 7.5 <= delays[0] <= 10
    assert 11.25 <= delays[1] <= 15
    (t,) = claim(store, ["retry"])
    assert t.attempt == 3
    store.fail_task(W, TaskFailure(t.key, t.attempt, "boom 3"))
    run = store.get_run("r1")
    assert run.status == "failed"
    assert "after 3 attempt(s)" in (run.error or "") and "boom 3" in (run.error or "")
    assert run.step("only").attempts == 3


def test_non_retryable_failure_fails_at_once(store: FlowStore) -> None:
    start(store, Chain, {"n": 1})
    (t,) = claim(store, ["chain"])
    store.fail_task(W, TaskFailure(t.key, t.attempt, "Declined: no", retryable=False))
    run = store.get_run("r1")
    assert run.status == "failed" and run.step("first").tasks[0].attempts == 1
    assert [s.status for s in run.steps] == ["failed", "skipped", "skipped"]


def test_failure_cancels_every_other_task_of_the_run(store: FlowStore) -> None:
    start(store, RootMap, [1, 2, 3, 4])
    tasks = claim(store, ["root_map"], limit=2)
    store.fail_task(W, TaskFailure(tasks[0].key, tasks[0].attempt, "x", retryable=False))
    run = store.get_run("r1")
    statuses = sorted(t.status for t in run.step("double").tasks)
    assert statuses == ["cancelled", "cancelled", "cancelled", "failed"]
    # the sibling still running cannot complete a failed run
    complete(store, tasks[1], {"late": True})
    assert store.get_run("r1").status == "failed"
    assert claim(store, ["root_map"]) == []


def test_stale_completion_from_an_earlier_attempt_is_ignored(
    store: FlowStore, clock: ManualClock
) -> None:
    start(store, Chain, {"n": 1})
    (old,) = claim(store, ["chain"], worker="w-old")
    clock.advance(31)  # lease expired: the old worker is presumed dead
    assert store.requeue_stalled() == 1
    (new,) = claim(store, ["chain"], worker="w-new")
    assert new.attempt == 1  # a stall costs no attempt: the worker id is what fences
    complete(store, old, 999, worker="w-old")  # the old worker wakes up late
    assert store.get_run("r1").step("first").status == "started"
    complete(store, new, 2, worker="w-new")
    first = store.get_run("r1").step("first")
    assert first.status == "completed" and first.output == 2


def test_lease_expiry_follows_heartbeats_and_fails_a_task_out_of_stalls(
    store: FlowStore, clock: ManualClock
) -> None:
    class OneShot(Flow, slug="one_shot", max_attempts=1, max_stalls=0):
        @step(timeout=5)
        def only(self, input): ...

    start(store, OneShot, None)
    (t,) = claim(store, ["one_shot"])
    assert t.lease_expires_at - clock.now() == timedelta(seconds=35)  # timeout + margin
    clock.advance(20)
    store.extend_leases(W, [t.key], 30.0)  # heartbeat
    clock.advance(20)
    assert store.requeue_stalled() == 0
    clock.advance(20)
    assert store.requeue_stalled() == 1
    run = store.get_run("r1")
    assert run.status == "failed"
    assert run.error == (
        "step 'only' failed: stalled 1 time: the worker running it was killed or lost each time"
    )


def test_release_returns_tasks_without_counting_the_attempt(store: FlowStore) -> None:
    start(store, Chain, {"n": 1})
    (t,) = claim(store, ["chain"])
    store.release_tasks(W, [t.key])
    (again,) = claim(store, ["chain"], worker="other")
    assert again.attempt == 1


def test_cancel_run(store: FlowStore) -> None:
    start(store, Diamond, "x")
    (root,) = claim(store, ["diamond"])
    assert store.cancel_run("r1") is True
    assert store.cancel_run("r1") is False
    run = store.get_run("r1")
    assert run.status == "cancelled"
    assert run.step("root").tasks[0].status == "cancelled"
    assert {s.status for s in run.steps} == {"skipped"}
    complete(store, root, "x")
    assert store.get_run("r1").status == "cancelled"
    with pytest.raises(RunNotFoundError):
        store.cancel_run("missing")


def test_duplicate_run_id_writes_nothing(store: FlowStore) -> None:
    start(store, Chain, {"n": 1})
    with pytest.raises(RunAlreadyExistsError, match="r1"):
        start(store, Diamond, "x")
    assert store.get_run("r1").flow_slug == "chain"
    assert [r.run_id for r in store.list_runs()] == ["r1"]


def test_unknown_run(store: FlowStore) -> None:
    with pytest.raises(RunNotFoundError, match="nope"):
        store.get_run("nope")


def test_claim_only_takes_the_given_flows(store: FlowStore) -> None:
    start(store, Chain, {"n": 1}, "a")
    start(store, Diamond, "x", "b")
    assert [t.flow_slug for t in claim(store, ["diamond"])] == ["diamond"]


def test_a_task_committed_late_with_an_earlier_visibility_is_still_claimed(
    store: FlowStore, db_url: str, backend: str, clock: ManualClock
) -> None:
    """A start whose clock read came before tasks that were claimed already, committed after
    them (as a start transaction that began first and committed last does): its task is
    earlier in the queue than everything the last claims took, and the next claim must still
    find it - whatever a claim remembers of where the previous one ended (issue 13)."""
    for i in range(5):
        start(store, Chain, {"n": i}, f"early-{i}")
    assert len(claim(store, ["chain"])) == 5
    late = open_store(
        db_url,
        clock=ManualClock(clock.now() - timedelta(seconds=60)),
        fast_paths=backend != "postgres-plain",
    )
    try:
        start(late, Chain, {"n": 9}, "late")
    finally:
        late.close()
    start(store, Chain, {"n": 10}, "after")
    assert sorted(t.key.run_id for t in claim(store, ["chain"])) == ["after", "late"]


def test_start_delay_keeps_the_task_invisible(store: FlowStore, clock: ManualClock) -> None:
    class Later(Flow, slug="later"):
        @step(start_delay=60)
        def only(self, input): ...

    start(store, Later, None)
    assert claim(store, ["later"]) == []
    clock.advance(61)
    assert len(claim(store, ["later"])) == 1


def test_list_runs_filters(store: FlowStore, clock: ManualClock) -> None:
    start(store, Chain, {"n": 1}, "a")
    clock.advance(1)
    start(store, Diamond, "x", "b")
    store.cancel_run("b")
    assert [r.run_id for r in store.list_runs()] == ["b", "a"]
    assert [r.run_id for r in store.list_runs(flow_slug="chain")] == ["a"]
    assert [r.run_id for r in store.list_runs(status="cancelled")] == ["b"]
    assert [r.run_id for r in store.list_runs(limit=1, offset=1)] == ["a"]


def test_flow_shape_change_while_a_run_is_in_flight(store: FlowStore) -> None:
    class V1(Flow, slug="evolving"):
        @step()
        def a(self, input):
            return 1

    class V2(Flow, slug="evolving"):
        @step()
        def a(self, input):
            return 1

        @step(depends_on=["a"])
        def b(self, a):
            return 2

    assert V1.definition.version != V2.definition.version
    start(store, V1, None, "old")
    start(store, V2, None, "new")
    for t in claim(store, ["evolving"]):
        complete(store, t, 1)
    old, new = store.get_run("old"), store.get_run("new")
    assert old.status == "completed" and old.flow_version == V1.definition.version
    assert old.output == {"a": 1}
    assert new.status == "started" and [s.step_slug for s in new.steps] == ["a", "b"]
    versions = {f.version for f in store.list_flows() if f.flow_slug == "evolving"}
    assert versions == {V1.definition.version, V2.definition.version}


def test_concurrent_claimers_never_share_a_task_attempt(store: FlowStore) -> None:
    for i in range(60):
        start(store, RootMap, list(range(5)), f"run-{i}")
    seen: list[tuple[str, str, int, int]] = []
    lock = threading.Lock()

    def claimer(worker: str) -> None:
        while True:
            tasks = store.claim_tasks(worker, ["root_map"], 7, 30.0)
            if not tasks:
                return
            with lock:
                seen.extend(
                    (t.key.run_id, t.key.step_slug, t.key.task_index, t.attempt) for t in tasks
                )

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 300 and len(set(seen)) == 300


def test_complete_and_claim_takes_the_next_step_in_the_same_transaction(store: FlowStore) -> None:
    from tideflow.storage.flow_contract import ClaimRequest

    start(store, Chain, {"n": 1})
    (first,) = claim(store, ["chain"])
    request = ClaimRequest(("chain",), 10, 30.0)
    (second,) = store.complete_tasks(W, [TaskCompletion(first.key, first.attempt, "2")], request)
    assert second.key.step_slug == "second" and second.attempt == 1
    assert json.loads(second.input_json) == {"first": 2}
    assert claim(store, ["chain"], worker="other") == []  # already ours
    # a completion that queues nothing claims nothing (no extra query on the hot path)
    start(store, RootMap, [1], "r2")
    (only,) = claim(store, ["root_map"])
    assert store.complete_tasks(W, [TaskCompletion(only.key, only.attempt, "1")], request) == []


class TwoRootsAndAMap(Flow, slug="two_roots_map"):
    @step()
    async def source(self, input: object) -> object:
        return input

    @step()
    async def other(self, input: object) -> int:
        return 1

    @step(depends_on=["source"], map=True)
    async def each(self, item: object) -> object:
        return item


def test_a_batch_completes_every_task_even_when_one_of_them_fails_the_run(
    store: FlowStore,
) -> None:
    """One batch completes ``source`` (whose output a map step cannot take: the run fails) and
    ``other`` of the same run. The batch is applied set by set on every path (PostgreSQL's
    complete_tasks_v3 as the Python transitions): both tasks are completed, ``other``'s step too,
    and the run fails on ``source``, the step that fed the map step a non-array."""
    start(store, TwoRootsAndAMap, {"not": "a list"})
    tasks = {t.key.step_slug: t for t in claim(store, ["two_roots_map"])}
    store.complete_tasks(
        W,
        [
            TaskCompletion(tasks["source"].key, 1, json.dumps({"not": "a list"})),
            TaskCompletion(tasks["other"].key, 1, "1"),
        ],
    )
    run = store.get_run("r1")
    assert run.status == "failed" and "map step 'each'" in (run.error or "")
    steps = {s.step_slug: s for s in run.steps}
    assert {slug: s.status for slug, s in steps.items()} == {
        "source": "failed",
        "other": "completed",
        "each": "skipped",
    }
    assert [t.status for t in steps["source"].tasks] == ["completed"]
    assert [t.status for t in steps["other"].tasks] == ["completed"]
