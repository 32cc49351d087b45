"""Queue limits (issue 10 item 9): concurrency per flow, per step and per key, and a rate limit,
enforced by the claim across every worker.

Driven through the storage contract with a manual clock on both backends (on PostgreSQL with and
without the fast paths), then with several stores claiming from threads on connections of their
own, and with real worker processes - one of them SIGKILLed while it holds a limited slot. Cases
follow what the queues that have these limits test (DBOS queues' concurrency and
limiter, Hatchet's concurrency keys, Procrastinate's queueing locks): the limit is never
exceeded, keys limit independently, a rate window spaces claims, a task held back is not lost,
and a dead worker's slot comes back through stall recovery.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import FLOW_BACKENDS
from tests.polling import wait_until
from tideflow import App, Flow, FlowDefinitionError, step
from tideflow.clock import ManualClock
from tideflow.storage import open_store
from tideflow.storage.flow_contract import ClaimedTask, FlowStore, TaskCompletion
from tideflow.storage.flow_store import stored_shape

W = "worker-a"
MARGIN = 30.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Two(Flow, slug="limit_two", concurrency=2):
    @step()
    def only(self, input): ...


class PerCustomer(Flow, slug="limit_per_customer", concurrency_key="customer_id"):
    @step()
    def only(self, input): ...


class Nested(Flow, slug="limit_nested", concurrency_key="$.who.id", key_concurrency=2):
    @step()
    def only(self, input): ...


class Stepped(Flow, slug="limit_stepped"):
    @step(map=True, concurrency=3)
    def each(self, item): ...

    @step(depends_on=["each"])
    def after(self, each): ...


class Paced(Flow, slug="limit_paced", rate_limit=(2, 10.0)):
    @step()
    def only(self, input): ...


class Free(Flow, slug="limit_free"):
    @step()
    def only(self, input): ...


FLOWS: list[type[Flow]] = [Two, PerCustomer, Nested, Stepped, Paced, Free]


@pytest.fixture
def limited(store: FlowStore) -> FlowStore:
    for flow in FLOWS:
        store.ensure_flow(flow.definition)
    return store


def start(store: FlowStore, flow: type[Flow], n: int, make: Any = None) -> list[str]:
    ids = []
    for i in range(n):
        run_id = f"{flow.slug}-{len(ids)}-{time.monotonic_ns()}"
        value = make(i) if make is not None else {"i": i}
        store.start_run(flow.definition, run_id, json.dumps(value))
        ids.append(run_id)
    return ids


def claim(store: FlowStore, flow: type[Flow], limit: int = 100, worker: str = W) -> list[Any]:
    return store.claim_tasks(worker, [flow.slug], limit, MARGIN)


def complete(store: FlowStore, tasks: list[ClaimedTask], worker: str = W) -> None:
    store.complete_tasks(worker, [TaskCompletion(t.key, t.attempt, "1") for t in tasks])


def test_the_flow_concurrency_holds_until_a_task_finishes(limited: FlowStore) -> None:
    start(limited, Two, 5)
    first = claim(limited, Two)
    assert len(first) == 2
    assert claim(limited, Two, worker="worker-b") == []  # another worker: still two at most
    complete(limited, first[:1])
    second = claim(limited, Two, worker="worker-b")
    assert len(second) == 1
    complete(limited, first[1:])
    complete(limited, second, worker="worker-b")
    rest = claim(limited, Two)
    assert len(rest) == 2
    complete(limited, rest)
    assert claim(limited, Two) == []  # all five ran, none lost


def test_keys_limit_independently(limited: FlowStore) -> None:
    start(limited, PerCustomer, 6, lambda i: {"customer_id": ["a", "b", "c"][i % 3], "n": i})
    start(limited, PerCustomer, 2, lambda i: {"other": i})  # no key: they share key null
    first = claim(limited, PerCustomer)
    keys = sorted(json.loads(t.run_input_json).get("customer_id", "-") for t in first)
    assert keys == ["-", "a", "b", "c"]  # one per customer, one for the runs without a key
    a = [t for t in first if json.loads(t.run_input_json).get("customer_id") == "a"]
    complete(limited, a)
    again = claim(limited, PerCustomer)
    assert [json.loads(t.run_input_json)["customer_id"] for t in again] == ["a"]


def test_a_json_path_key_with_a_limit_of_two(limited: FlowStore) -> None:
    start(limited, Nested, 5, lambda i: {"who": {"id": 7}, "n": i})
    start(limited, Nested, 1, lambda i: {"who": {"id": "7"}})  # a string is another key
    claimed = claim(limited, Nested)
    values = sorted(json.dumps(json.loads(t.run_input_json)["who"]["id"]) for t in claimed)
    assert values == ['"7"', "7", "7"]


def test_a_step_limit_applies_to_that_step_only(limited: FlowStore) -> None:
    start(limited, Stepped, 1, lambda i: list(range(7)))
    first = claim(limited, Stepped)
    assert [t.key.task_index for t in first] == [0, 1, 2]
    complete(limited, first)
    second = claim(limited, Stepped)
    assert [t.key.task_index for t in second] == [3, 4, 5]
    complete(limited, second)
    last = claim(limited, Stepped)
    assert [t.key.task_index for t in last] == [6]
    complete(limited, last)
    after = claim(limited, Stepped)
    assert [t.key.step_slug for t in after] == ["after"]


def test_the_rate_limit_spaces_claims_over_its_window(
    limited: FlowStore, clock: ManualClock
) -> None:
    start(limited, Paced, 7)
    got = claim(limited, Paced)
    assert len(got) == 2
    complete(limited, got)  # finishing frees nothing: a rate counts claims, not running tasks
    assert claim(limited, Paced) == []
    clock.advance(9.9)
    assert claim(limited, Paced) == []
    clock.advance(0.2)  # the first two claims are now more than 10 s old
    got = claim(limited, Paced, limit=1)
    assert len(got) == 1
    clock.advance(5)
    assert len(claim(limited, Paced)) == 1  # one left in the window opened 5 s ago
    clock.advance(5.1)
    assert len(claim(limited, Paced)) == 1  # the claim at 10.1 s left the window
    clock.advance(10.1)
    assert len(claim(limited, Paced)) == 2
    clock.advance(10.1)
    assert claim(limited, Paced) == []  # all seven claimed: none lost


def test_limits_of_one_flow_leave_the_others_alone(limited: FlowStore) -> None:
    start(limited, Two, 4)
    start(limited, Free, 4)
    claimed = limited.claim_tasks(W, [Two.slug, Free.slug], 10, MARGIN)
    assert sorted(t.flow_slug for t in claimed) == sorted([Two.slug] * 2 + [Free.slug] * 4)


def test_a_limited_flow_behind_another_flows_backlog_is_claimed_in_order(
    limited: FlowStore, clock: ManualClock
) -> None:
    """0021: the limited claim reads its own flow's queue (an index range by flow on
    PostgreSQL), not every flow's: tasks queued behind another flow's backlog are found, in
    visibility order, and a flow with nothing visible yet is passed over until it is."""
    start(limited, Free, 40)
    ids = start(limited, Two, 3)
    first = claim(limited, Two)
    assert [t.key.run_id for t in first] == ids[:2]  # behind 40 of Free's, oldest first
    both = limited.claim_tasks(W, [Free.slug, Two.slug], 100, MARGIN)
    assert sorted(t.flow_slug for t in both) == [Free.slug] * 40  # Two is at its limit
    complete(limited, first)
    assert [t.key.run_id for t in claim(limited, Two)] == ids[2:]
    assert claim(limited, Two) == [] and claim(limited, Free) == []  # nothing left, none lost


def test_a_dead_workers_slot_comes_back_through_stall_recovery(
    limited: FlowStore, clock: ManualClock
) -> None:
    start(limited, Two, 3)
    held = claim(limited, Two, worker="dead")
    assert len(held) == 2 and claim(limited, Two) == []
    clock.advance(MARGIN + 1)  # the dead worker's leases expire
    assert limited.requeue_stalled() == 2
    taken = claim(limited, Two)
    assert len(taken) == 2
    complete(limited, taken)
    complete(limited, held, worker="dead")  # late answers count for nothing
    last = claim(limited, Two)
    assert len(last) == 1
    complete(limited, last)
    assert claim(limited, Two) == []


def test_released_tasks_free_their_slots(limited: FlowStore) -> None:
    start(limited, Two, 2)
    held = claim(limited, Two)
    limited.release_tasks(W, [t.key for t in held])  # a graceful stop
    assert len(claim(limited, Two, worker="worker-b")) == 2


def test_limits_are_stored_with_the_shape_and_follow_the_code(store: FlowStore) -> None:
    store.ensure_flow(Two.definition)
    shape = stored_shape(Two.definition)
    assert shape["limits"] == {"concurrency": 2}
    assert "limits" not in stored_shape(Free.definition)  # unlimited flows keep their shape
    assert store.stored_flow(Two.slug).limits == Two.definition.limits

    class Unlimited(Flow, slug="limit_two"):  # the same flow, its limit removed in the code
        @step()
        def only(self, input): ...

    assert Unlimited.definition.version == Two.definition.version  # an option, not the shape
    start(store, Two, 3)
    again = open_store(store.db.url, clock=store.clock)  # type: ignore[attr-defined]
    try:
        again.ensure_flow(Unlimited.definition)
        assert len(claim(again, Unlimited)) == 3
    finally:
        again.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"concurrency": 0}, "concurrency must be an int >= 1"),
        ({"concurrency": -3}, "concurrency must be an int >= 1"),
        ({"concurrency": 2.5}, "concurrency must be an int >= 1"),
        ({"concurrency": True}, "concurrency must be an int >= 1"),
        ({"concurrency_key": 3}, "concurrency_key must be a field"),
        ({"concurrency_key": ["customer_id"]}, "concurrency_key must be a field"),
        ({"concurrency_key": "$.a[0]"}, "concurrency_key must be a field"),
        ({"concurrency_key": "a.b"}, "concurrency_key must be a field"),
        ({"concurrency_key": "c", "key_concurrency": 0}, "key_concurrency must be an int"),
        ({"key_concurrency": 2}, "give concurrency_key too"),
        ({"rate_limit": (0, 1)}, "rate_limit must be (N, seconds)"),
        ({"rate_limit": (5, 0)}, "rate_limit must be (N, seconds)"),
        ({"rate_limit": 5}, "rate_limit must be (N, seconds)"),
        ({"rate_limit": (5, "1s")}, "rate_limit must be (N, seconds)"),
    ],
)
def test_bad_limits_are_refused_when_the_class_is_defined(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(FlowDefinitionError) as caught:

        class Bad(Flow, slug="bad_limits", **options):
            @step()
            def only(self, input): ...

    assert message in str(caught.value) and "bad_limits" in str(caught.value)


def test_a_bad_step_limit_names_the_step() -> None:
    with pytest.raises(FlowDefinitionError, match=r"step 'only': concurrency must be an int"):

        class Bad(Flow, slug="bad_step_limit"):
            @step(concurrency=0)
            def only(self, input): ...


# --- several workers at once ---------------------------------------------------------------------


def _started(url: str, flow_slug: str) -> int:
    sql = "SELECT count(*) FROM {}tasks WHERE flow_slug = ? AND status = 'started'"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return int(conn.execute(sql.format(""), (flow_slug,)).fetchone()[0])
    with psycopg.connect(url) as pg:
        row = pg.execute(sql.format("tideflow.").replace("?", "%s"), (flow_slug,)).fetchone()
        return int(row[0]) if row else 0


@pytest.fixture
def stores(backend: str, db_url: str) -> Iterator[list[FlowStore]]:
    """Four stores on connections of their own, as four workers would have."""
    opened = [open_store(db_url, fast_paths=backend != "postgres-plain") for _ in range(4)]
    opened[0].migrate()
    for s in opened:
        for flow in FLOWS:
            s.ensure_flow(flow.definition)
    yield opened
    for s in opened:
        s.close()


def test_concurrent_claims_never_exceed_the_limit(stores: list[FlowStore], db_url: str) -> None:
    start(stores[0], Two, 40)
    start(stores[0], PerCustomer, 40, lambda i: {"customer_id": i % 2})
    seen: list[int] = []
    errors: list[BaseException] = []

    def work(s: FlowStore, name: str) -> None:
        try:
            idle = 0
            while idle < 50:
                got = s.claim_tasks(name, [Two.slug, PerCustomer.slug], 3, MARGIN)
                if not got:
                    idle += 1
                    time.sleep(0.005)
                    continue
                idle = 0
                seen.append(_started(db_url, Two.slug))
                seen.append(_started(db_url, PerCustomer.slug))
                time.sleep(0.005)
                s.complete_tasks(name, [TaskCompletion(t.key, t.attempt, "1") for t in got])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, f"w{i}")) for i, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert seen and max(seen) <= 2, seen  # Two: 2 at once; PerCustomer: 1 per key, 2 keys
    done = [r for r in stores[0].list_runs(limit=200) if r.status == "completed"]
    assert len(done) == 80  # nothing held back was lost


# --- real worker processes -----------------------------------------------------------------------


def spawn(db_url: str, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.flows.limits_worker", db_url, str(out)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _intervals(out: Path) -> list[tuple[float, float]]:
    found = []
    for f in out.glob("done-*"):
        begin, end = f.read_text().split()
        found.append((float(begin), float(end)))
    return found


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals])
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_worker_processes_share_the_limit_and_a_killed_one_frees_its_slot(
    db_url: str, tmp_path: Path
) -> None:
    """Three worker processes, a flow limited to two at once: the steps' own clocks never see
    three running, and a worker SIGKILLed while it holds a slot gives it back once its lease
    expires (the reaper requeues the task, which runs again elsewhere)."""
    from tests.flows.limits_worker import LimitedSleeper

    app = App(db_url, flows=[LimitedSleeper])
    run_ids = [app.start_flow(LimitedSleeper, {"dir": str(tmp_path), "n": i}) for i in range(12)]
    workers = [spawn(db_url, tmp_path) for _ in range(3)]
    try:
        wait_until(lambda: list(tmp_path.glob("started-*")), what="a step to start", timeout=60)
        victim = int(next(tmp_path.glob("started-*")).name.split("-")[1])
        killed = next(w for w in workers if w.pid == victim)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=10)
        runs = [app.wait_for_run(r, timeout=120) for r in run_ids]
    finally:
        for w in workers:
            w.kill()
            w.wait(timeout=30)
    assert [r.status for r in runs] == ["completed"] * 12
    intervals = _intervals(tmp_path)
    assert len(intervals) >= 12
    assert _most_at_once(intervals) <= 2, sorted(intervals)
    stalled = [r for r in runs if r.step("nap").tasks[0].stalls]
    assert stalled  # the killed worker's tasks, run again once their leases expired
    app.close()
