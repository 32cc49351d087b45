"""``start_run(..., tx=)``: a run started inside an event store transaction, on both backends.

A process manager starts flows in its handler's batch transaction; the run must commit with the
batch's events and checkpoint, or vanish with them, and a refused start (the run id is taken)
must not spoil the batch.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import psycopg
import pytest

from tests.flows.flows_for_tests import Chain, Diamond
from tideflow import RunAlreadyExistsError, RunNotFoundError
from tideflow.errors import StorageError
from tideflow.events import NO_STREAM, NewEvent
from tideflow.storage import EventStore, open_event_store_on
from tideflow.storage.database import TASKS_CHANNEL as CHANNEL
from tideflow.storage.database import Tx
from tideflow.storage.flow_contract import FlowStore


@pytest.fixture
def events(store: FlowStore) -> Iterator[EventStore]:
    opened = open_event_store_on(store)
    yield opened
    opened.close()


def start(
    store: FlowStore,
    run_id: str,
    flow: type[Chain] | type[Diamond] = Chain,
    tx: Tx | None = None,
) -> None:
    store.start_run(flow.definition, run_id, json.dumps({"n": 1}), tx=tx)


def test_a_run_started_in_a_transaction_commits_with_it(
    store: FlowStore, events: EventStore
) -> None:
    with events.transaction() as tx:
        start(store, "r1", tx=tx)
        tx.append("order-1", [NewEvent("OrderPlaced")], NO_STREAM)
    run = store.get_run("r1")
    assert (run.status, [s.status for s in run.steps]) == (
        "started",
        ["started", "created", "created"],
    )
    assert [e.event_type for e in events.read_stream("order-1")] == ["OrderPlaced"]
    (task,) = store.claim_tasks("w", ["chain"], 10, 30.0)
    assert task.key.step_slug == "first"


def test_workers_are_woken_when_the_transaction_commits(
    store: FlowStore, events: EventStore, backend: str, db_url: str
) -> None:
    if backend == "sqlite":
        # Woken at once; a worker's claim then waits for the lock the transaction holds.
        woken = threading.Event()
        store.subscribe(woken.set)
        with events.transaction() as tx:
            start(store, "r1", tx=tx)
        assert woken.is_set()
        return
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {CHANNEL}")
        with events.transaction() as tx:
            start(store, "r1", tx=tx)
            assert list(listener.notifies(timeout=0.2, stop_after=1)) == []
        assert len(list(listener.notifies(timeout=5.0, stop_after=1))) == 1


def test_an_exception_in_the_block_rolls_back_the_run_and_the_events(
    store: FlowStore, events: EventStore
) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        events.transaction() as tx,
    ):
        start(store, "r1", Diamond, tx=tx)
        tx.append("order-1", [NewEvent("OrderPlaced")], NO_STREAM)
        raise RuntimeError("boom")
    with pytest.raises(RunNotFoundError):
        store.get_run("r1")
    assert list(events.read_stream("order-1")) == []
    assert store.claim_tasks("w", ["diamond"], 10, 30.0) == []
    # The flow version was rolled back too: the store must not remember it as recorded.
    start(store, "r2", Diamond)
    assert store.get_run("r2").status == "started"
    assert [f.flow_slug for f in store.list_flows()] == ["diamond"]


def test_a_refused_start_leaves_the_transaction_usable(
    store: FlowStore, events: EventStore
) -> None:
    start(store, "taken")
    with events.transaction() as tx:
        tx.append("order-1", [NewEvent("OrderPlaced")], NO_STREAM)
        with pytest.raises(RunAlreadyExistsError):
            start(store, "taken", tx=tx)
        start(store, "r2", tx=tx)
        tx.append("order-1", [NewEvent("OrderShipped")], 1)
    assert [e.event_type for e in events.read_stream("order-1")] == ["OrderPlaced", "OrderShipped"]
    assert store.get_run("r2").status == "started"
    assert len(store.claim_tasks("w", ["chain"], 10, 30.0)) == 2  # "taken" and r2, once each


def test_a_start_without_the_transaction_commits_on_its_own(
    store: FlowStore, events: EventStore
) -> None:
    """Only a start given ``tx`` is in it: another thread's start commits on its own (on SQLite
    after waiting for the lock, which the transaction holds), whatever becomes of ``tx``."""
    other = threading.Thread(target=start, args=(store, "other"))
    with pytest.raises(RuntimeError), events.transaction() as tx:
        start(store, "inside", tx=tx)
        other.start()
        raise RuntimeError("undo")
    other.join(5.0)
    assert store.get_run("other").status == "started"
    with pytest.raises(RunNotFoundError):
        store.get_run("inside")


def test_an_ended_transaction_is_refused(store: FlowStore, events: EventStore) -> None:
    with events.transaction() as tx:
        pass
    with pytest.raises(StorageError, match="has ended"):
        start(store, "late", tx=tx)
    with pytest.raises(RunNotFoundError):
        store.get_run("late")
