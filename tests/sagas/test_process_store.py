"""The process store's contract, held against both backends (SQLite and PostgreSQL).

Stores are opened with connections of their own, like separate processes, on a manual clock.
What is checked: instances read and written in an event store transaction commit or roll back
with it, the upsert keeps ``started_at``, listing and counting, and that ``load`` keeps a second
batch waiting until the first has committed the instance's state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.pgdb import empty_database
from tests.polling import wait_until
from tests.threads import assert_blocked, in_thread
from tideflow.clock import ManualClock
from tideflow.errors import SchemaNotReadyError, UnsupportedDatabaseURLError
from tideflow.storage import (
    EventStore,
    open_event_store,
    open_event_store_on,
    open_process_store,
    open_process_store_on,
)
from tideflow.storage.flow_contract import FlowStore
from tideflow.storage.process_contract import (
    InstanceWrite,
    ProcessInstance,
    ProcessStatus,
    ProcessStore,
)

Opener = Callable[..., Any]


@pytest.fixture
def open_stores(db_url: str, clock: ManualClock) -> Iterator[Opener]:
    """Open event or process stores (``open_event_store``/``open_process_store``) on the test's
    database, each with connections of its own; closed at the end of the test."""
    opened: list[EventStore | ProcessStore] = []

    def open_one(
        opener: Callable[..., EventStore | ProcessStore], url: str = db_url, **kwargs: Any
    ) -> Any:
        kwargs.setdefault("clock", clock)
        store = opener(url, **kwargs)
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def events(open_stores: Opener) -> EventStore:
    store: EventStore = open_stores(open_event_store)
    store.migrate()
    return store


@pytest.fixture
def processes(open_stores: Opener) -> ProcessStore:
    store: ProcessStore = open_stores(open_process_store)
    return store


def save(
    processes: ProcessStore,
    events: EventStore,
    manager: str,
    process_id: str,
    *,
    status: ProcessStatus = "running",
    state: str = '{"step":1}',
    version: int = 1,
    last_position: int = 1,
    error: str | None = None,
) -> None:
    with events.transaction() as tx:
        processes.save(
            tx,
            manager,
            process_id,
            status=status,
            state_json=state,
            version=version,
            last_position=last_position,
            error=error,
        )


# --- reading and writing -------------------------------------------------------------------------


def test_an_instance_round_trips(
    processes: ProcessStore, events: EventStore, clock: ManualClock
) -> None:
    state = '{"order":"o-1","paid":false,"items":["tea","caf\\u00e9"]}'
    with events.transaction() as tx:
        assert processes.load(tx, "fulfilment", "o-1") is None
        processes.save(
            tx,
            "fulfilment",
            "o-1",
            status="running",
            state_json=state,
            version=1,
            last_position=7,
            error=None,
        )
        loaded = processes.load(tx, "fulfilment", "o-1")
    expected = ProcessInstance(
        "fulfilment", "o-1", "running", state, 1, 7, None, clock.now(), clock.now()
    )
    assert loaded == expected
    assert processes.get("fulfilment", "o-1") == expected
    assert expected.state == {"order": "o-1", "paid": False, "items": ["tea", "café"]}
    assert processes.get("fulfilment", "o-2") is None
    assert processes.get("other", "o-1") is None


def test_a_save_replaces_the_instance_and_keeps_its_start(
    processes: ProcessStore, events: EventStore, clock: ManualClock
) -> None:
    started = clock.now()
    save(processes, events, "fulfilment", "o-1")
    clock.advance(90)
    with events.transaction() as tx:
        before = processes.load(tx, "fulfilment", "o-1")
        assert before is not None and before.version == 1
        processes.save(
            tx,
            "fulfilment",
            "o-1",
            status="failed",
            state_json='{"step":2}',
            version=2,
            last_position=12,
            error="PaymentRefused: no funds",
        )
    after = processes.get("fulfilment", "o-1")
    assert after == ProcessInstance(
        "fulfilment",
        "o-1",
        "failed",
        '{"step":2}',
        2,
        12,
        "PaymentRefused: no funds",
        started,
        started + timedelta(seconds=90),
    )
    clock.advance(5)
    save(processes, events, "fulfilment", "o-1", status="completed", version=3, error=None)
    last = processes.get("fulfilment", "o-1")
    assert last is not None
    assert (last.status, last.error, last.started_at, last.updated_at) == (
        "completed",
        None,
        started,
        started + timedelta(seconds=95),
    )


def test_a_save_in_a_transaction_that_fails_is_not_committed(
    processes: ProcessStore, events: EventStore
) -> None:
    with pytest.raises(RuntimeError, match="crash"), events.transaction() as tx:
        processes.save(
            tx,
            "fulfilment",
            "o-1",
            status="running",
            state_json="{}",
            version=1,
            last_position=1,
            error=None,
        )
        raise RuntimeError("crash")
    assert processes.get("fulfilment", "o-1") is None
    save(processes, events, "fulfilment", "o-1", state='{"kept":true}')
    with pytest.raises(RuntimeError, match="crash"), events.transaction() as tx:
        processes.save(
            tx,
            "fulfilment",
            "o-1",
            status="failed",
            state_json="{}",
            version=2,
            last_position=2,
            error="lost",
        )
        raise RuntimeError("crash")
    kept = processes.get("fulfilment", "o-1")
    assert kept is not None and (kept.status, kept.state, kept.version) == (
        "running",
        {"kept": True},
        1,
    )


def test_a_store_on_the_flow_store_shares_its_connections(store: FlowStore) -> None:
    """How App opens it (open_process_store_on): one connection or pool for everything."""
    events = open_event_store_on(store)
    processes = open_process_store_on(store)
    assert processes.migrate() == []
    with events.transaction() as tx:
        processes.save(
            tx,
            "fulfilment",
            "o-1",
            status="running",
            state_json="[]",
            version=1,
            last_position=3,
            error=None,
        )
    found = processes.get("fulfilment", "o-1")
    assert found is not None and found.last_position == 3
    processes.close()
    events.close()
    assert store.list_flows() == []  # closing them left the flow store open


# --- listing -------------------------------------------------------------------------------------


def test_instances_are_listed_most_recently_updated_first(
    processes: ProcessStore, events: EventStore, clock: ManualClock
) -> None:
    assert processes.list_instances() == []
    for manager, process_id, status in [
        ("shipping", "a", "running"),
        ("shipping", "b", "completed"),
        ("billing", "a", "failed"),
        ("shipping", "c", "running"),
    ]:
        save(processes, events, manager, process_id, status=status)
        clock.advance(1)
    save(processes, events, "billing", "z", status="running")
    save(processes, events, "billing", "y", status="running")  # same time: by manager, id

    def listed(*args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [(i.manager, i.process_id) for i in processes.list_instances(*args, **kwargs)]

    assert listed() == [
        ("billing", "y"),
        ("billing", "z"),
        ("shipping", "c"),
        ("billing", "a"),
        ("shipping", "b"),
        ("shipping", "a"),
    ]
    assert listed("shipping") == [("shipping", "c"), ("shipping", "b"), ("shipping", "a")]
    assert listed(status="running") == [
        ("billing", "y"),
        ("billing", "z"),
        ("shipping", "c"),
        ("shipping", "a"),
    ]
    assert listed("shipping", "running") == [("shipping", "c"), ("shipping", "a")]
    assert listed("shipping", "running", limit=1) == [("shipping", "c")]
    assert listed(limit=2) == [("billing", "y"), ("billing", "z")]
    assert listed("nobody") == []


def test_counts_per_manager_and_status(processes: ProcessStore, events: EventStore) -> None:
    assert processes.counts() == {}
    for process_id in "abc":
        save(processes, events, "shipping", process_id)
    save(processes, events, "shipping", "d", status="completed")
    save(processes, events, "billing", "a", status="failed")
    assert processes.counts() == {
        ("shipping", "running"): 3,
        ("shipping", "completed"): 1,
        ("billing", "failed"): 1,
    }


# --- locking -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", ["load", "load_many"])
def test_load_holds_the_instance_until_the_transaction_ends(
    processes: ProcessStore, events: EventStore, open_stores: Opener, reader: str
) -> None:
    """A worker that takes a handler over waits for the batch in flight, then reads the state it
    committed (PostgreSQL: the row lock of FOR UPDATE; SQLite: the write lock)."""
    other: EventStore = open_stores(open_event_store)
    save(processes, events, "fulfilment", "o-1", version=1)

    def second() -> int:
        with other.transaction() as tx:
            instance = processes.load(tx, "fulfilment", "o-1")
            assert instance is not None
            return instance.version

    with events.transaction() as tx:
        first = (
            processes.load(tx, "fulfilment", "o-1")
            if reader == "load"
            else processes.load_many(tx, "fulfilment", ["o-1"])["o-1"]
        )
        assert first is not None
        thread, result = in_thread(second)
        assert_blocked(thread, events.url)
        processes.save(
            tx,
            "fulfilment",
            "o-1",
            status="running",
            state_json="{}",
            version=first.version + 1,
            last_position=2,
            error=None,
        )
    thread.join(5.0)
    assert result == {"value": 2}


def test_load_locks_only_its_instance(
    processes: ProcessStore, events: EventStore, open_stores: Opener, backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: every batch waits for the one in flight")
    other: EventStore = open_stores(open_event_store)
    save(processes, events, "fulfilment", "o-1")
    save(processes, events, "fulfilment", "o-2")
    with events.transaction() as tx:
        assert processes.load(tx, "fulfilment", "o-1") is not None
        with other.transaction() as tx2:
            found = processes.load(tx2, "fulfilment", "o-2")
            assert found is not None and found.process_id == "o-2"
        assert processes.get("fulfilment", "o-1") is not None  # plain reads do not wait


# --- a handler batch's instances ------------------------------------------------------------------


def test_load_many_reads_the_instances_that_exist_and_save_many_writes_them(
    processes: ProcessStore, events: EventStore, clock: ManualClock
) -> None:
    save(processes, events, "fulfilment", "o-1", version=3)
    save(processes, events, "fulfilment", "o-3", status="completed", version=5)
    save(processes, events, "other", "o-2")  # another manager's: not read
    started = clock.now()
    clock.advance(10)
    with events.transaction() as tx:
        found = processes.load_many(tx, "fulfilment", ["o-3", "o-2", "o-1", "o-1", "o-9"])
        assert sorted(found) == ["o-1", "o-3"]
        assert (found["o-1"].version, found["o-3"].status) == (3, "completed")
        assert processes.load_many(tx, "fulfilment", []) == {}
        processes.save_many(
            tx,
            [
                InstanceWrite("fulfilment", "o-1", "running", '{"n":4}', 4, 9, None),
                InstanceWrite(
                    "fulfilment", "o-3", "running", "{}", 1, 9, None, fresh=True
                ),  # a new instance in place of an ended one
                InstanceWrite("fulfilment", "o-9", "failed", "{}", 1, 9, "boom", finished=True),
            ],
        )
        processes.save_many(tx, [])
    one, three, nine = (processes.get("fulfilment", p) for p in ("o-1", "o-3", "o-9"))
    assert one is not None and (one.state, one.version, one.started_at) == ({"n": 4}, 4, started)
    assert three is not None and (three.status, three.started_at) == ("running", clock.now())
    assert nine is not None and (nine.error, nine.finished_at) == ("boom", clock.now())


def test_on_change_is_called_after_a_save_commits_not_after_a_rollback(
    processes: ProcessStore, events: EventStore, open_stores: Opener
) -> None:
    """What ``ProcessHandle.wait`` wakes on - from another store, as from another process (its
    own Database: LISTEN/NOTIFY on PostgreSQL, the change counter on SQLite)."""
    import threading

    watcher: ProcessStore = open_stores(open_process_store)
    seen, here = threading.Event(), threading.Event()
    stops = [watcher.on_change(seen.set), processes.on_change(here.set)]
    try:
        with pytest.raises(RuntimeError), events.transaction() as tx:
            processes.save_many(tx, [InstanceWrite("m", "p-1", "running", "{}", 1, 1, None)])
            raise RuntimeError("rolled back")
        # In its own process a store's subscribers are called at once, at the commit: none came.
        assert not here.is_set()
        save(processes, events, "m", "p-2")
        assert here.is_set()
        wait_until(seen.is_set, what="on_change called in another 'process' after the commit")
    finally:
        for stop in stops:
            stop()
    assert processes.get("m", "p-1") is None


def test_on_change_for_one_instance_is_not_woken_by_this_process_saving_another(
    db_url: str, processes: ProcessStore
) -> None:
    """A wait for one instance re-reads its row only when that instance was saved here (a
    process manager's batch saves on every event); other processes' saves still wake it, their
    wake-up not saying which instance - and no subscriber here is woken twice by a save."""
    import threading

    from tideflow.storage import open_database

    with open_database(db_url) as here:  # one Database under both stores, as in an App
        here.db.migrate()
        mine, anything, there, counted = (threading.Event(), threading.Event(), [], [])
        stops = [
            here.processes.on_change(mine.set, ("m", "p-1")),
            here.processes.on_change(anything.set),
            here.processes.on_change(lambda: counted.append(1)),
            processes.on_change(lambda: there.append(1), ("m", "p-1")),  # another "process"
        ]
        try:
            save(here.processes, here.events, "m", "p-2")
            assert anything.is_set() and not mine.is_set()
            # Another "process" (its own Database) cannot tell which instance: it looks.
            wait_until(lambda: bool(there), what="a keyed on_change woken from elsewhere")
            save(here.processes, here.events, "m", "p-1")
            assert mine.is_set()
            done = threading.Event()
            stops.append(here.processes.on_change(done.set, ("m", "p-1"), {"completed"}))
            save(here.processes, here.events, "m", "p-1", version=2)  # still running
            assert not done.is_set()
            save(here.processes, here.events, "m", "p-1", version=3, status="completed")
            assert done.is_set()
            if db_url.startswith("postgresql"):
                time.sleep(0.3)  # time for our own NOTIFY to come back, if it wrongly did
                # Once per commit here. (SQLite's watcher reads the change counter on its own
                # connection, so it sees this Database's commits too and wakes again.)
                assert len(counted) == 4
        finally:
            for stop in stops:
                stop()


# --- wiring --------------------------------------------------------------------------------------


def test_an_unmigrated_database_is_reported(
    backend: str, db_url: str, tmp_path: Path, open_stores: Opener
) -> None:
    if backend == "sqlite":
        _check_unmigrated(open_stores, f"sqlite:///{tmp_path / 'bare.db'}")
        return
    with empty_database(db_url) as url:
        _check_unmigrated(open_stores, url)


def _check_unmigrated(open_stores: Opener, url: str) -> None:
    processes: ProcessStore = open_stores(open_process_store, url)
    events: EventStore = open_stores(open_event_store, url)
    try:
        with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
            processes.get("m", "p")
        with pytest.raises(SchemaNotReadyError):
            processes.list_instances()
        with pytest.raises(SchemaNotReadyError):
            processes.counts()
        with pytest.raises(SchemaNotReadyError), events.transaction() as tx:
            processes.load(tx, "m", "p")
        with pytest.raises(SchemaNotReadyError), events.transaction() as tx:
            processes.save(
                tx,
                "m",
                "p",
                status="running",
                state_json="{}",
                version=1,
                last_position=1,
                error=None,
            )
    finally:
        processes.close()
        events.close()


def test_migrate_creates_the_table_and_urls_are_checked(backend: str, open_stores: Opener) -> None:
    processes: ProcessStore = open_stores(open_process_store)
    if backend == "sqlite":  # a new file; SQLite's 0004 is a comment only, to keep numbers aligned
        applied = processes.migrate()
        assert applied[:7] == [
            "0001_initial",
            "0002_events",
            "0003_handlers",
            "0004_event_floor_locks",
            "0005_process_managers",
            "0006_process_manager_kind",
            "0007_task_stalls",
        ]
        assert "0009_process_undo" in applied
    assert processes.migrate() == []
    assert processes.list_instances() == []
    with pytest.raises(UnsupportedDatabaseURLError, match="unsupported database URL 'mysql'"):
        open_process_store("mysql://localhost/db")


def test_sqlite_migration_6_keeps_the_handler_rows_it_rebuilds(
    backend: str, tmp_path: Path
) -> None:
    """SQLite cannot alter a CHECK, so 0006 rebuilds event_handlers: every row must survive."""
    if backend == "postgres":
        pytest.skip("PostgreSQL alters the constraint in place; the saga tests store the kind")
    import sqlite3

    from tideflow.storage import open_store
    from tideflow.storage.sqlfile import load_migrations

    path = tmp_path / "v5.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT "
        "NULL, applied_at REAL NOT NULL)"
    )
    for m in load_migrations("tideflow.storage.sqlite"):
        if m.version <= 5:
            conn.executescript(m.sql)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (m.version, m.name))
    conn.execute(
        "INSERT INTO event_handlers (name, kind, status, owner, lease_expires_at, "
        "failing_position, attempts, last_error, stopped_reason, updated_at) VALUES "
        "('mailer', 'handler', 'stopped', NULL, NULL, 7, 3, 'smtp down', 'gave up', 1.5)"
    )
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{path}")
    try:
        assert store.migrate()[:2] == ["0006_process_manager_kind", "0007_task_stalls"]
        rows = store.db.connection.execute("SELECT * FROM event_handlers").fetchall()
        assert rows == [
            ("mailer", "handler", "stopped", None, None, 7, 3, "smtp down", "gave up", 1.5)
        ]
        store.db.connection.execute(
            "INSERT INTO event_handlers (name, kind, status, updated_at) VALUES "
            "('saga', 'process_manager', 'running', 2.0)"
        )
        with pytest.raises(sqlite3.IntegrityError):
            store.db.connection.execute(
                "INSERT INTO event_handlers (name, kind, status, updated_at) VALUES "
                "('odd', 'cron', 'running', 2.0)"
            )
    finally:
        store.close()
