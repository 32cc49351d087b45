"""The event store's behaviour, held against both backends (SQLite and PostgreSQL).

Concurrency tests use one store per thread, each with its own connection(s), like separate
processes. Tests that need a writer to be *blocked* (PostgreSQL row locks, SQLite's write lock)
hold a transaction open in the test thread and check that the other writer is still waiting.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import psycopg
import pytest

from tests.conftest import FLOW_BACKENDS
from tests.pgdb import empty_database
from tests.threads import assert_blocked, in_thread
from tideflow.clock import ManualClock
from tideflow.codec import is_plain
from tideflow.errors import SchemaNotReadyError, StorageError, UnsupportedDatabaseURLError
from tideflow.events import (
    ANY,
    EXISTS,
    MAX_ID_LENGTH,
    NO_STREAM,
    CheckpointConflictError,
    DuplicateEventIdError,
    DuplicateIdempotencyKeyError,
    EventNotSerializableError,
    EventStoreError,
    ExpectedVersion,
    InvalidCheckpointError,
    InvalidEventError,
    InvalidIdempotencyKeyError,
    InvalidSnapshotError,
    InvalidStreamIdError,
    InvalidUpcasterError,
    NewEvent,
    RecordedEvent,
    StreamDeletedError,
    StreamNotFoundError,
    Upcasters,
    UpcastingError,
    WrongExpectedVersionError,
)
from tideflow.events.model import encode_json
from tideflow.jsonutil import check_text
from tideflow.storage import open_event_store, open_event_store_on, open_store
from tideflow.storage.event_contract import EventStore, append_encoder
from tideflow.storage.event_store import SqlEventStore
from tideflow.storage.postgres import PostgresDatabase

from .conftest import OpenStore


@pytest.fixture(params=FLOW_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """SQLite, PostgreSQL, and PostgreSQL's plain append (no pipelined fast path)."""
    return str(request.param)


def pg_events(url: str, clock: ManualClock, pool_size: int = 8) -> SqlEventStore:
    return SqlEventStore(PostgresDatabase(url, clock, pool_size=pool_size), owns_db=True)


FLOOR_PREFIX = 0x7466  # high 16 bits of the appenders' floor locks (migration 0004)
FLOOR_LOCKS_HELD = (  # floor locks held in this database, by anyone
    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::bigint >> 16 = %s"
)


def ev(event_type: str = "Happened", **data: Any) -> NewEvent:
    return NewEvent(event_type, data)


def everything(store: EventStore) -> list[RecordedEvent]:
    return list(store.read_all())


# --- expected versions ---------------------------------------------------------------------------


def test_append_numbers_versions_and_positions(events: EventStore, clock: ManualClock) -> None:
    first = events.append("order-1", [ev(n=1), ev(n=2)], NO_STREAM)
    second = events.append("order-2", [ev(n=3)], NO_STREAM)
    third = events.append("order-1", [ev(n=4)], 2)
    assert [(e.stream_id, e.version) for e in first + second + third] == [
        ("order-1", 1),
        ("order-1", 2),
        ("order-2", 1),
        ("order-1", 3),
    ]
    positions = [e.position for e in first + second + third]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert all(e.recorded_at == clock.now() for e in first)
    assert everything(events) == first + second + third  # what append returns is what is read


def test_any_appends_to_new_and_existing_streams(events: EventStore) -> None:
    assert [e.version for e in events.append("s", [ev()], ANY)] == [1]
    assert [e.version for e in events.append("s", [ev(), ev()], ExpectedVersion.ANY)] == [2, 3]


def test_no_stream_creates_but_refuses_an_existing_stream(events: EventStore) -> None:
    events.append("s", [ev()], NO_STREAM)
    with pytest.raises(WrongExpectedVersionError) as caught:
        events.append("s", [ev()], NO_STREAM)
    assert (caught.value.stream_id, caught.value.expected, caught.value.actual) == (
        "s",
        NO_STREAM,
        1,
    )
    assert "'s' is at version 1" in str(caught.value)
    assert events.stream_version("s") == 1


def test_exists_refuses_a_new_stream_and_appends_to_an_existing_one(events: EventStore) -> None:
    with pytest.raises(WrongExpectedVersionError) as caught:
        events.append("s", [ev()], EXISTS)
    assert caught.value.actual == 0 and "does not exist" in str(caught.value)
    assert events.stream_version("s") == 0 and everything(events) == []
    events.append("s", [ev()], ANY)
    assert [e.version for e in events.append("s", [ev()], EXISTS)] == [2]


def test_exact_version_right_and_wrong(events: EventStore) -> None:
    events.append("s", [ev(), ev(), ev()], 0)  # 0 is the version of a stream with no events
    with pytest.raises(WrongExpectedVersionError) as caught:
        events.append("s", [ev()], 2)
    assert (caught.value.expected, caught.value.actual) == (2, 3)
    with pytest.raises(WrongExpectedVersionError):
        events.append("s", [ev()], 4)
    with pytest.raises(WrongExpectedVersionError):
        events.append("s", [ev()], 0)
    with pytest.raises(WrongExpectedVersionError):
        events.append("new", [ev()], 1)
    assert [e.version for e in events.append("s", [ev()], 3)] == [4]
    assert len(everything(events)) == 4


def test_empty_append_checks_the_expectation_only(events: EventStore) -> None:
    assert events.append("s", [], NO_STREAM) == []
    events.append("s", [ev()], NO_STREAM)
    assert events.append("s", [], 1) == []
    with pytest.raises(WrongExpectedVersionError):
        events.append("s", [], 0)
    assert events.stream_version("s") == 1


@pytest.mark.parametrize("expected", [-1, True, "1", 1.0, None])
def test_invalid_expected_version_is_refused(events: EventStore, expected: Any) -> None:
    with pytest.raises(InvalidEventError, match="expected_version"):
        events.append("s", [ev()], expected)


# --- atomicity -----------------------------------------------------------------------------------


def test_a_failure_in_the_middle_of_an_append_writes_nothing(events: EventStore) -> None:
    taken = events.append("a", [ev()], NO_STREAM)[0].event_id
    head = events.head_position()
    batch = [ev(n=1), NewEvent("Happened", {"n": 2}, event_id=taken), ev(n=3)]
    with pytest.raises(DuplicateEventIdError, match="already recorded"):
        events.append("b", batch, NO_STREAM)
    assert events.stream_version("b") == 0
    assert list(events.read_stream("b")) == []
    assert [e.stream_id for e in everything(events)] == ["a"]
    later = events.append("b", [ev()], NO_STREAM)  # the stream is untouched: it starts at 1
    assert later[0].version == 1 and later[0].position > head


def test_unserialisable_data_in_the_middle_writes_nothing(events: EventStore) -> None:
    batch = [ev(n=1), ev(when={2030: "x"}), ev(n=3)]
    with pytest.raises(EventNotSerializableError, match=r"event #1 \('Happened'\)"):
        events.append("s", batch, NO_STREAM)
    assert events.stream_version("s") == 0 and everything(events) == []


def test_a_refused_append_inside_a_transaction_leaves_it_usable(events: EventStore) -> None:
    events.append("s", [ev()], NO_STREAM)
    with events.transaction() as tx:
        tx.append("t", [ev()], NO_STREAM)
        with pytest.raises(WrongExpectedVersionError):
            tx.append("s", [ev()], NO_STREAM, idempotency_key="k1", result_json="1")
        with pytest.raises(DuplicateEventIdError):
            tx.append(
                "u",
                [ev(), NewEvent("X", event_id=everything(events)[0].event_id)],
                ANY,
                idempotency_key="k2",
                result_json="2",
            )
        with pytest.raises(DuplicateEventIdError):  # a stream that exists: its version too
            tx.append("s", [ev(), NewEvent("X", event_id=everything(events)[0].event_id)], 1)
        # What the refused appends wrote is gone: their keys are free, their events unread.
        assert tx.get_idempotent_result("k1") is None and tx.get_idempotent_result("k2") is None
        assert list(tx.read_stream("u")) == []
        tx.append("s", [ev()], 1, idempotency_key="k1", result_json="1")
    assert {e.stream_id: e.version for e in everything(events)} == {"s": 2, "t": 1}
    assert events.stream_version("u") == 0
    assert events.get_idempotent_result("k2") is None


def test_a_duplicate_key_inside_a_transaction_leaves_it_usable(events: EventStore) -> None:
    events.append("s", [ev()], NO_STREAM, idempotency_key="before", result_json='"b"')
    with events.transaction() as tx:
        tx.append("t", [ev()], NO_STREAM, idempotency_key="within", result_json='"w"')
        for key, stream, result in (("before", "s", '"b"'), ("within", "t", '"w"')):
            with pytest.raises(DuplicateIdempotencyKeyError) as caught:
                tx.append("u", [ev()], ANY, idempotency_key=key, result_json='"again"')
            assert (caught.value.stream_id, caught.value.result_json) == (stream, result)
        tx.append("t", [ev()], 1)
    assert {e.stream_id: e.version for e in everything(events)} == {"s": 1, "t": 2}
    record = events.get_idempotent_result("within")
    assert record is not None and record.result_json == '"w"'


def test_a_transaction_that_raises_writes_nothing(events: EventStore) -> None:
    with pytest.raises(RuntimeError), events.transaction() as tx:
        tx.append("s", [ev()], NO_STREAM)
        tx.advance_checkpoint("projection", 1)
        raise RuntimeError("the handler failed")
    assert everything(events) == [] and events.get_checkpoint("projection") == 0


# --- concurrent writers --------------------------------------------------------------------------


def test_concurrent_appenders_with_one_expected_version_exactly_one_wins(
    events: EventStore, open_events: OpenStore
) -> None:
    events.append("s", [ev()], NO_STREAM)
    writers = [open_events() for _ in range(4)]
    barrier = threading.Barrier(len(writers))

    def append(store: EventStore) -> Callable[[], Any]:
        def run() -> Any:
            barrier.wait()
            return store.append("s", [ev()], 1)

        return run

    threads = [in_thread(append(store)) for store in writers]
    for thread, _ in threads:
        thread.join(20)
    outcomes = [result.get("value", result.get("error")) for _, result in threads]
    won = [o for o in outcomes if isinstance(o, list)]
    lost = [o for o in outcomes if isinstance(o, WrongExpectedVersionError)]
    assert len(won) == 1 and len(lost) == 3, outcomes
    assert all(e.actual == 2 for e in lost)
    assert events.stream_version("s") == 2


def test_a_waiting_appender_sees_the_version_the_first_one_committed(
    events: EventStore, open_events: OpenStore
) -> None:
    events.append("s", [ev()], NO_STREAM)
    other = open_events()
    with events.transaction() as tx:
        tx.append("s", [ev()], 1)
        thread, result = in_thread(lambda: other.append("s", [ev()], 1))
        assert_blocked(thread, events.url)  # PostgreSQL: the stream row; SQLite: the write lock
    thread.join(10)
    assert isinstance(result["error"], WrongExpectedVersionError)
    assert result["error"].actual == 2


@pytest.mark.parametrize("expected", [ANY, EXISTS, 2])
def test_a_waiting_appender_appends_after_the_one_it_waited_for(
    events: EventStore, open_events: OpenStore, expected: ExpectedVersion | int
) -> None:
    """Whatever the expectation - none, "exists", or the version the first appender is about to
    commit - the second appender waits for the first and then appends after its events."""
    events.append("s", [ev()], NO_STREAM)
    other = open_events()
    with events.transaction() as tx:
        tx.append("s", [ev()], 1)
        thread, result = in_thread(lambda: other.append("s", [ev(), ev()], expected))
        assert_blocked(thread, events.url)
    thread.join(10)
    assert [e.version for e in result["value"]] == [3, 4]
    assert events.stream_version("s") == 4
    assert [e.version for e in events.read_stream("s")] == [1, 2, 3, 4]


def test_concurrent_creators_of_a_stream(events: EventStore, open_events: OpenStore) -> None:
    other = open_events()
    with events.transaction() as tx:
        tx.append("new", [ev()], NO_STREAM)
        refused, refused_result = in_thread(lambda: other.append("new", [ev()], NO_STREAM))
        assert_blocked(refused, events.url)
    refused.join(10)
    assert isinstance(refused_result["error"], WrongExpectedVersionError)
    assert refused_result["error"].actual == 1

    with events.transaction() as tx:
        tx.append("other", [ev()], ANY)
        accepted, accepted_result = in_thread(lambda: other.append("other", [ev()], ANY))
        assert_blocked(accepted, events.url)
    accepted.join(10)
    assert [e.version for e in accepted_result["value"]] == [2]


# --- reading a stream ----------------------------------------------------------------------------


@pytest.fixture
def ten(open_events: OpenStore) -> EventStore:
    """A store with a page size of 3 holding stream "s" with n = 1..10 (and noise around it)."""
    store = open_events(page_size=3)
    store.migrate()
    store.append("noise", [ev()], ANY)
    for n in range(1, 11):
        store.append("s", [ev(n=n)], n - 1)
    store.append("noise", [ev()], ANY)
    return store


def ns(events: Iterator[RecordedEvent]) -> list[int]:
    return [e.data["n"] for e in events]


def test_read_stream_forwards_backwards_from_and_limit(ten: EventStore) -> None:
    assert ns(ten.read_stream("s")) == list(range(1, 11))
    assert [e.version for e in ten.read_stream("s")] == list(range(1, 11))
    assert ns(ten.read_stream("s", 4)) == list(range(4, 11))
    assert ns(ten.read_stream("s", 4, 5)) == [4, 5, 6, 7, 8]
    assert ns(ten.read_stream("s", limit=3)) == [1, 2, 3]
    assert ns(ten.read_stream("s", backwards=True)) == list(range(10, 0, -1))
    assert ns(ten.read_stream("s", 7, backwards=True)) == [7, 6, 5, 4, 3, 2, 1]
    assert ns(ten.read_stream("s", 7, 4, backwards=True)) == [7, 6, 5, 4]
    assert ns(ten.read_stream("s", 11)) == []
    assert ns(ten.read_stream("s", limit=0)) == []
    assert ns(ten.read_stream("missing")) == []
    assert ns(ten.read_stream("missing", backwards=True)) == []


def test_read_stream_pages_lazily(ten: EventStore) -> None:
    iterator = ten.read_stream("s")
    assert next(iterator).data == {"n": 1}
    ten.append("s", [ev(n=11)], 10)  # lands on a later page: still delivered
    assert ns(iterator) == list(range(2, 12))


@pytest.mark.parametrize("args", [{"from_version": 0}, {"limit": -1}, {"from_version": "2"}])
def test_read_stream_checks_arguments_when_called(ten: EventStore, args: dict[str, Any]) -> None:
    with pytest.raises(InvalidEventError):
        ten.read_stream("s", **args)  # no next(): refused before iterating


# --- reading everything --------------------------------------------------------------------------


def test_read_all_in_position_order_from_a_position(ten: EventStore) -> None:
    all_events = list(ten.read_all())
    assert len(all_events) == 12
    positions = [e.position for e in all_events]
    assert positions == sorted(set(positions))
    assert list(ten.read_all(positions[4])) == all_events[5:]
    assert list(ten.read_all(positions[4], limit=4)) == all_events[5:9]
    assert list(ten.read_all(to_position=positions[6])) == all_events[:7]
    assert list(ten.read_all(positions[-1])) == []
    assert ten.head_position() == positions[-1]


def test_read_all_filters_event_types_across_pages(
    events: EventStore, open_events: OpenStore
) -> None:
    paged = open_events(page_size=4)
    for i in range(30):
        events.append(
            f"s{i % 3}",
            [
                ev("Even" if i % 2 == 0 else "Odd", i=i),
                ev("Rare", i=i) if i % 10 == 0 else ev("Odd", i=i),
            ],
            ANY,
        )
    evens = list(paged.read_all(event_types=["Even"]))
    assert [e.data["i"] for e in evens] == list(range(0, 30, 2))
    rare_or_even = list(paged.read_all(event_types=("Rare", "Even"), limit=5))
    assert [(e.event_type, e.data["i"]) for e in rare_or_even] == [
        ("Even", 0),
        ("Rare", 0),
        ("Even", 2),
        ("Even", 4),
        ("Even", 6),
    ]
    assert list(paged.read_all(event_types=[])) == []
    assert len(list(paged.read_all())) == 60  # 15 pages of 4
    with pytest.raises(InvalidEventError, match="pass \\['Even'\\]"):
        paged.read_all(event_types="Even")


def test_read_page_is_one_page_of_read_all_and_the_horizon_it_stopped_at(
    ten: EventStore,
) -> None:
    all_events = list(ten.read_all())
    head = ten.head_position()
    assert ten.read_page(0, None, 5) == (all_events[:5], head)
    assert ten.read_page(all_events[4].position, None, 100) == (all_events[5:], head)
    rare = [e for e in all_events if e.event_type == all_events[-1].event_type]
    assert ten.read_page(0, [all_events[-1].event_type], 100) == (rare, head)
    assert ten.read_page(head, None, 5) == ([], head)
    assert ten.read_page(head + 7, None, 5) == ([], head + 7)  # past the head: nothing
    assert ten.read_page(0, [], 5) == ([], head)  # no type: nothing, up to the head
    for bad in ({"after": -1}, {"limit": -1}, {"event_types": "E"}):
        args: dict[str, Any] = {"after": 0, "event_types": None, "limit": 5, **bad}
        with pytest.raises(InvalidEventError):
            ten.read_page(**args)
    # From a checkpoint, read with the page: where it started, the page, the horizon.
    assert ten.read_page_from_checkpoint("never-ran", None, 3) == (0, all_events[:3], head)
    third = all_events[2].position
    ten.advance_checkpoint("ran", third)
    assert ten.read_page_from_checkpoint("ran", None, 100) == (third, all_events[3:], head)
    assert ten.read_page_from_checkpoint("ran", [], 100) == (third, [], head)
    ten.advance_checkpoint("ran", head)
    assert ten.read_page_from_checkpoint("ran", None, 100) == (head, [], head)
    with pytest.raises(InvalidCheckpointError):
        ten.read_page_from_checkpoint("", None, 5)


def test_read_page_stops_below_an_append_still_in_flight(
    events: EventStore, open_events: OpenStore, backend: str
) -> None:
    if backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: positions are handed out in commit order")
    before = events.append("s", [ev(n=0)], NO_STREAM)[0].position
    other = open_events()
    with events.transaction() as tx:
        slow = tx.append("slow", [ev(n=1)], NO_STREAM)[0].position
        other.append("fast", [ev(n=2)], NO_STREAM)
        assert events.read_page(before, None, 10) == ([], slow - 1)
    page, head = events.read_page(before, None, 10)
    assert ns(page) == [1, 2] and head == page[-1].position


def test_read_all_arguments_are_checked(events: EventStore) -> None:
    for bad in ({"from_position": -1}, {"limit": -2}, {"to_position": -1}, {"from_position": 1.5}):
        with pytest.raises(InvalidEventError):
            events.read_all(**bad)


# --- no reader ever misses an event --------------------------------------------------------------


def test_a_tailing_reader_sees_every_committed_event_once_in_order(
    events: EventStore, open_events: OpenStore
) -> None:
    """8 writers append in transactions that sleep at random before committing (so positions
    commit out of order) and sometimes roll back (gaps); a reader tails read_all from the last
    position it saw. It must see exactly the committed events, each once, positions strictly
    increasing."""
    writers, duration = 8, 1.2
    committed: list[uuid.UUID] = []
    committed_lock = threading.Lock()
    stop = threading.Event()
    seen: list[RecordedEvent] = []
    failures: list[BaseException] = []

    def write(store: EventStore, n: int) -> None:
        rng = random.Random(n)
        deadline = time.monotonic() + duration
        try:
            while time.monotonic() < deadline:
                try:
                    with store.transaction() as tx:
                        recorded = tx.append(f"w{n}", [ev(w=n), ev(w=n)][: rng.randint(1, 2)], ANY)
                        time.sleep(rng.uniform(0, 0.003))
                        if rng.random() < 0.1:
                            raise KeyError("roll back")
                except KeyError:
                    continue
                with committed_lock:
                    committed.extend(e.event_id for e in recorded)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    def read(store: EventStore) -> None:
        last = 0
        try:
            while True:
                done = stop.is_set()  # read once more after the writers stopped
                for event in store.read_all(last):
                    assert event.position > last, (event.position, last)
                    last = event.position
                    seen.append(event)
                if done:
                    return
                time.sleep(0.0005)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    reader = threading.Thread(target=read, args=(open_events(),))
    threads = [threading.Thread(target=write, args=(open_events(), n)) for n in range(writers)]
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    reader.join(30)
    assert not failures, failures
    seen_ids = [e.event_id for e in seen]
    assert len(seen_ids) == len(set(seen_ids)), "an event was delivered twice"
    assert set(seen_ids) == set(committed), "the reader missed events (or saw rolled-back ones)"
    assert len(committed) > 40  # the writers really ran concurrently for a while
    assert [e.event_id for e in everything(events)] == seen_ids


def test_tailing_readers_see_every_event_of_concurrent_single_statement_appends(
    events: EventStore, open_events: OpenStore
) -> None:
    """The same guarantee on the append path most writers take: append() outside a transaction,
    one statement each, as fast as the writers go, with two readers tailing at once."""
    writers, duration = 6, 1.0
    committed: list[uuid.UUID] = []
    committed_lock = threading.Lock()
    stop = threading.Event()
    seen: list[list[RecordedEvent]] = [[], []]
    failures: list[BaseException] = []

    def write(store: EventStore, n: int) -> None:
        deadline = time.monotonic() + duration
        version = 0
        try:
            while time.monotonic() < deadline:
                batch = [ev(w=n) for _ in range(1 + version % 3)]
                recorded = store.append(f"w{n}", batch, version)
                version += len(batch)
                with committed_lock:
                    committed.extend(e.event_id for e in recorded)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    def read(store: EventStore, into: list[RecordedEvent]) -> None:
        last = 0
        try:
            while True:
                done = stop.is_set()
                for event in store.read_all(last):
                    assert event.position > last, (event.position, last)
                    last = event.position
                    into.append(event)
                if done:
                    return
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    readers = [threading.Thread(target=read, args=(open_events(), into)) for into in seen]
    threads = [threading.Thread(target=write, args=(open_events(), n)) for n in range(writers)]
    for t in readers + threads:
        t.start()
    for t in threads:
        t.join(30)
    stop.set()
    for t in readers:
        t.join(30)
    assert not failures, failures
    assert len(committed) > 60
    for into in seen:
        ids = [e.event_id for e in into]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        assert set(ids) == set(committed), "a reader missed events"
    assert [e.event_id for e in everything(events)] == [e.event_id for e in seen[0]]


def test_a_rolled_back_append_does_not_stall_readers(events: EventStore) -> None:
    events.append("s", [ev(n=1)], NO_STREAM)
    with pytest.raises(ZeroDivisionError), events.transaction() as tx:
        tx.append("s", [ev(n=2)], 1)
        _ = 1 / 0
    after = events.append("s", [ev(n=3)], 1)
    assert events.head_position() == after[0].position
    assert ns(events.read_all()) == [1, 3]


def test_read_all_stops_below_an_append_still_in_flight(
    events: EventStore, open_events: OpenStore, backend: str
) -> None:
    """PostgreSQL: a later position committed while an earlier one is in flight stays invisible
    to read_all until the earlier one commits, so a reader never steps over it."""
    if backend == "sqlite":
        pytest.skip(
            "SQLite has one writer at a time: the later append would wait for the "
            "earlier one, positions are handed out in commit order"
        )
    before = events.append("s", [ev(n=0)], NO_STREAM)[0].position
    other = open_events()
    with events.transaction() as tx:
        slow = tx.append("slow", [ev(n=1)], NO_STREAM)[0].position
        fast = other.append("fast", [ev(n=2)], NO_STREAM)[0].position  # commits at once
        assert fast > slow
        assert events.head_position() == slow - 1
        assert ns(events.read_all()) == [0]
        assert ns(events.read_all(before)) == []
        assert ns(other.read_stream("fast")) == [2]  # stream reads need no horizon
    assert ns(events.read_all(before)) == [1, 2]
    assert events.head_position() == fast


def test_an_appender_holds_the_horizon_from_before_it_draws(
    events: EventStore, open_events: OpenStore, backend: str, db_url: str
) -> None:
    """The race the announcement closes, played step by step with the appender's protocol
    (migration 0004): an appender announces its floor (the last drawn position + 1) before it
    draws, so no position it draws is ever counted as settled while it is in flight - not before
    it draws, not between drawing and inserting - and readers never wait for it."""
    if backend == "sqlite":
        pytest.skip("SQLite needs no horizon: positions are handed out in commit order")
    base = events.append("s", [ev(n=0)], NO_STREAM)[0].position
    with psycopg.connect(db_url, autocommit=True) as appender, appender.transaction():
        row = appender.execute(
            "SELECT coalesce(pg_sequence_last_value('tideflow.event_position_seq'), 0) + 1"
        ).fetchone()
        assert row is not None
        floor = row[0]
        assert floor == base + 1
        appender.execute("SELECT pg_advisory_xact_lock_shared(%s)", ((FLOOR_PREFIX << 48) | floor,))
        assert events.head_position() == base  # announced, nothing drawn: nothing to read
        later = open_events().append("t", [ev(n=1)], NO_STREAM)[0].position  # commits at once
        assert later == floor
        assert events.head_position() == base  # held below the floor of the append in flight
        assert ns(events.read_all(base)) == []
        row = appender.execute("SELECT nextval('tideflow.event_position_seq')").fetchone()
        assert row is not None
        drawn = row[0]
        assert drawn > later
        thread, result = in_thread(events.head_position)
        thread.join(5)  # readers take no lock: they never wait for an appender
        assert result == {"value": base}
    assert events.head_position() == drawn  # ended without rows: a gap, passed over
    assert ns(events.read_all(base)) == [1]


def test_failed_appends_leave_no_lock_behind(
    events: EventStore, open_events: OpenStore, backend: str, db_url: str
) -> None:
    taken = events.append("s", [ev()], NO_STREAM)[0].event_id
    for _ in range(3):  # fails after announcing its floor and drawing a position
        with pytest.raises(DuplicateEventIdError):
            events.append("t", [NewEvent("X", event_id=taken)], ANY)
    thread, result = in_thread(open_events().head_position)
    thread.join(5)
    assert result.get("value", 0) >= 1
    if backend.startswith("postgres"):
        with psycopg.connect(db_url) as conn:
            held = conn.execute(FLOOR_LOCKS_HELD, (FLOOR_PREFIX,)).fetchone()
        assert held == (0,)
        assert events.head_position() == max(e.position for e in everything(events)) + 3


# --- upcasting -----------------------------------------------------------------------------------


@pytest.fixture
def upcasters() -> Upcasters:
    up = Upcasters()

    @up.upcaster("NameSet", from_version=1)
    def split(data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = data.pop("name").partition(" ")
        return {**data, "first": first, "last": last}

    up.register("NameSet", 2, lambda d: {**d, "title": d.get("title", "")})
    up.register("Legacy", 1, lambda d: {"value": d["v"]}, rename_to="Modern")
    up.register_snapshot("Person", 1, lambda s: {"names": [s.pop("name")], **s})
    return up


def test_upcasters_apply_on_every_read_path(open_events: OpenStore, upcasters: Upcasters) -> None:
    store = open_events(upcasters=upcasters, page_size=2)
    store.migrate()
    returned = store.append(
        "p",
        [
            NewEvent("NameSet", {"name": "Ada Lovelace"}, schema_version=1),
            NewEvent("NameSet", {"first": "Ada", "last": "L"}, schema_version=2),
            NewEvent("NameSet", {"first": "A", "last": "B", "title": "Dr"}),  # current: 3
            NewEvent("Legacy", {"v": 7}),
            NewEvent("Modern", {"value": 8}),
        ],
        NO_STREAM,
    )
    expected = [
        ("NameSet", 3, {"first": "Ada", "last": "Lovelace", "title": ""}),
        ("NameSet", 3, {"first": "Ada", "last": "L", "title": ""}),
        ("NameSet", 3, {"first": "A", "last": "B", "title": "Dr"}),
        ("Modern", 2, {"value": 7}),
        ("Modern", 2, {"value": 8}),
    ]
    for read in (
        returned,
        list(store.read_stream("p")),
        list(store.read_all()),
        list(store.read_stream("p", backwards=True))[::-1],
    ):
        assert [(e.event_type, e.schema_version, e.data) for e in read] == expected
    assert [e.event_type for e in store.read_all(event_types=["Legacy"])] == ["Modern"]
    plain = open_events()  # without upcasters the stored shapes are unchanged
    assert [(e.event_type, e.schema_version) for e in plain.read_stream("p")] == [
        ("NameSet", 1),
        ("NameSet", 2),
        ("NameSet", 3),
        ("Legacy", 1),
        ("Modern", 2),
    ]
    assert next(plain.read_stream("p")).data == {"name": "Ada Lovelace"}


def test_upcaster_registration_and_failures(events: EventStore, open_events: OpenStore) -> None:
    up = Upcasters()
    up.register("E", 1, lambda d: {**d, "b": 1})
    with pytest.raises(UpcastingError, match="already registered"):
        up.register("E", 1, lambda d: d)
    with pytest.raises(InvalidUpcasterError):
        up.register("E", 0, lambda d: d)
    with pytest.raises(InvalidUpcasterError):
        up.register("", 1, lambda d: d)
    up.register("E", 3, lambda d: d)  # no upcaster from 2: events at 1 or 2 cannot be read
    up.register("Broken", 1, lambda d: d["missing"])
    up.register("NotADict", 1, lambda d: [d])  # type: ignore[arg-type,return-value]
    assert up.current_version("E") == 4 and up.current_version("Unknown") == 1
    store = open_events(upcasters=up)
    # Appending an event that no reader could read is refused before anything is written...
    with pytest.raises(UpcastingError, match=r"no upcaster from version 2 .*\('E', 2\)"):
        store.append("s", [NewEvent("E", {"a": 1}, schema_version=1)], ANY)
    with pytest.raises(UpcastingError, match="failed on event #0"):
        store.append("b", [NewEvent("Broken", schema_version=1)], ANY)
    assert everything(events) == []
    # ... and events recorded before the upcasters were reads fail on, naming the event.
    events.append("s", [NewEvent("E", {"a": 1}, schema_version=1)], ANY)
    events.append("b", [NewEvent("Broken", schema_version=1)], ANY)
    events.append("n", [NewEvent("NotADict", schema_version=1)], ANY)
    with pytest.raises(UpcastingError, match="at position"):
        list(store.read_all())
    with pytest.raises(UpcastingError, match="failed on event at position"):
        list(store.read_stream("b"))
    with pytest.raises(UpcastingError, match="returned list"):
        list(store.read_stream("n"))


# --- snapshots -----------------------------------------------------------------------------------


def test_snapshots_save_and_load(events: EventStore, clock: ManualClock) -> None:
    assert events.load_snapshot("s") is None
    events.append("s", [ev(), ev(), ev()], NO_STREAM)
    events.save_snapshot("s", 2, {"total": 2, "items": ("a", "b")})
    snap = events.load_snapshot("s")
    assert snap is not None
    assert (snap.stream_id, snap.version, snap.state) == ("s", 2, {"total": 2, "items": ["a", "b"]})
    assert (snap.snapshot_type, snap.schema_version, snap.taken_at) == ("snapshot", 1, clock.now())
    events.save_snapshot("s", 3, {"total": 3})
    events.save_snapshot("s", 1, {"total": 1})  # older than the stored one: ignored
    snap = events.load_snapshot("s")
    assert snap is not None and (snap.version, snap.state) == (3, {"total": 3})
    assert ns(events.read_stream("s", snap.version + 1)) == []


def test_snapshot_of_a_version_the_stream_has_not_reached_is_refused(events: EventStore) -> None:
    with pytest.raises(InvalidSnapshotError, match="is at version 0"):
        events.save_snapshot("s", 1, {})
    events.append("s", [ev()], NO_STREAM)
    with pytest.raises(InvalidSnapshotError, match="is at version 1"):
        events.save_snapshot("s", 2, {})
    with pytest.raises(InvalidSnapshotError):
        events.save_snapshot("s", 0, {})
    with pytest.raises(EventNotSerializableError):
        events.save_snapshot("s", 1, {"at": {2030: 1}})
    assert events.load_snapshot("s") is None


def test_versioned_snapshots_are_upcast_on_load(
    open_events: OpenStore, upcasters: Upcasters
) -> None:
    store = open_events(upcasters=upcasters)
    store.migrate()
    store.append("p", [ev()], NO_STREAM)
    store.save_snapshot("p", 1, {"name": "Ada"}, snapshot_type="Person", schema_version=1)
    snap = store.load_snapshot("p")
    assert snap is not None and (snap.schema_version, snap.state) == (2, {"names": ["Ada"]})
    store.save_snapshot("p", 1, {"names": ["Grace"]}, snapshot_type="Person")  # current: 2
    snap = store.load_snapshot("p")
    assert snap is not None and (snap.schema_version, snap.state) == (2, {"names": ["Grace"]})


# --- what may be appended ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"tags": {"a"}},
        {"x": math.nan},
        {"n": Decimal("NaN")},
        {"counts": {1: "one"}},
        {"blob": b"x"},
        {"when": {"$date": "2030-01-01"}},
    ],
)
def test_data_that_is_not_json_is_refused_and_nothing_written(
    events: EventStore, data: dict[str, Any]
) -> None:
    with pytest.raises(EventNotSerializableError, match="cannot be stored") as caught:
        events.append("s", [NewEvent("E", data)], ANY)
    assert isinstance(caught.value, EventStoreError) and isinstance(caught.value, TypeError)
    with pytest.raises(EventNotSerializableError, match="metadata"):
        events.append("s", [NewEvent("E", {}, {"at": {2030: 1}})], ANY)
    assert everything(events) == [] and events.stream_version("s") == 0


def test_json_comes_back_as_json_with_its_key_order(events: EventStore) -> None:
    data = {"z": 1, "a": [1, 2.5, None, True, 10**20], "m": {"y": 'é🎉\x01\\"', "b": ("t",)}}
    returned = events.append("s", [NewEvent("E", data, {"trace": "t-1"})], ANY)[0]
    read = next(events.read_stream("s"))
    expected = {"z": 1, "a": [1, 2.5, None, True, 10**20], "m": {"y": 'é🎉\x01\\"', "b": ["t"]}}
    assert returned.data == read.data == expected
    assert list(read.data) == ["z", "a", "m"] and read.metadata == {"trace": "t-1"}
    assert returned == read


def _circular() -> dict[str, Any]:
    loop: dict[str, Any] = {"a": [1]}
    loop["self"] = loop
    return loop


_SHARED = [1, {"x": None}]


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"z": 1, "a": [1, 2.5, None, True, False, 10**30, -0.0, 1e300, -7]},
        {"s": 'é🎉\x01\\"\n\u2028\x7f', "t": ("x", ["y", ()])},
        {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
        OrderedDict(b=1, a=2),
        {"deep": {"deeper": [{"k": [[{}]]}]}},
        {"same": _SHARED, "again": _SHARED},
        {"nan": math.nan},
        {"inf": [math.inf]},
        {"at": datetime(2030, 1, 1)},
        {"n": Decimal("1.5")},
        {"tags": {"a"}},
        {("tuple", "key"): 1},
        {"x": object()},
        MappingProxyType({"a": 1}),
        _circular(),
    ],
)
def test_the_append_encoder_matches_encode_json(value: Any) -> None:
    """Appends encode data and metadata with json's C encoder called directly when the value is
    plain JSON (``is_plain``), else with encode_json (the codec). The direct path must write
    exactly what encode_json writes, and every value encode_json refuses must either fail
    ``is_plain`` or make the encoder raise."""
    encode = append_encoder()
    try:
        plain = is_plain(value)
    except RecursionError:  # circular: the append falls back to encode_json
        plain = False
    try:
        expected = encode_json(value, "the value")
    except EventNotSerializableError:
        if plain:
            with pytest.raises((TypeError, ValueError)):
                encode(value)
    else:
        if not plain:
            return  # the codec's own path: encode_json is what the append runs
        # prepare_append runs check_text after the encoder, as encode_json does (big floats)
        assert check_text(encode(value), value, what="v") == expected
        assert check_text(encode(value), value, what="v") == expected  # one encoder per append
        assert check_text(encode({"after": value}), value, what="v") == encode_json(
            {"after": value}, "the value"
        )


def test_stream_ids_keys_and_results_beyond_ascii(events: EventStore) -> None:
    stream, key, result = "ordre-é🎉", "clé-🎉", '{"reçu": "🎉"}'
    recorded = events.append(stream, [ev(n=1)], NO_STREAM, idempotency_key=key, result_json=result)
    assert [(e.stream_id, e.data) for e in events.read_stream(stream)] == [(stream, {"n": 1})]
    assert everything(events) == recorded
    record = events.get_idempotent_result(key)
    assert record is not None and (record.stream_id, record.result_json) == (stream, result)
    with pytest.raises(DuplicateIdempotencyKeyError):
        events.append(stream, [ev(n=2)], 1, idempotency_key=key)
    with pytest.raises(WrongExpectedVersionError) as caught:
        events.append(stream, [ev(n=2)], 0)
    assert caught.value.stream_id == stream and caught.value.actual == 1


def test_malformed_events_are_refused(events: EventStore) -> None:
    with pytest.raises(InvalidEventError, match="must be a dict"):
        NewEvent("E", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="event_type"):
        NewEvent("")
    with pytest.raises(InvalidEventError, match=r"uuid\.UUID"):
        NewEvent("E", event_id="not-a-uuid")  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="schema_version"):
        NewEvent("E", schema_version=0)
    with pytest.raises(InvalidEventError, match="wrap a single event in a list"):
        events.append("s", NewEvent("E"), ANY)  # type: ignore[arg-type]
    same = NewEvent("E")
    with pytest.raises(InvalidEventError, match="repeat an event_id"):
        events.append("s", [same, same], ANY)
    assert everything(events) == []


def test_causation_and_correlation_are_recorded(events: EventStore) -> None:
    cause = events.append("a", [ev()], ANY)[0]
    effect = events.append("b", [ev().caused_by(cause)], ANY)[0]
    after = events.append("c", [ev().caused_by(effect)], ANY)[0]
    read = {e.stream_id: e for e in events.read_all()}
    assert (read["b"].causation_id, read["b"].correlation_id) == (cause.event_id, cause.event_id)
    assert (read["c"].causation_id, read["c"].correlation_id) == (effect.event_id, cause.event_id)
    assert read["c"] == after and read["a"].causation_id is None


@pytest.mark.parametrize("stream_id", ["", "x" * (MAX_ID_LENGTH + 1), "a\x00b", 42, None])
def test_invalid_stream_ids_are_refused(events: EventStore, stream_id: Any) -> None:
    with pytest.raises(InvalidStreamIdError, match="stream_id") as caught:
        events.append(stream_id, [ev()], ANY)
    assert isinstance(caught.value, ValueError)
    for call in (
        lambda: events.read_stream(stream_id),
        lambda: events.stream_version(stream_id),
        lambda: events.load_snapshot(stream_id),
        lambda: events.save_snapshot(stream_id, 1, {}),
    ):
        with pytest.raises(InvalidStreamIdError):
            call()
    assert everything(events) == []


def test_the_longest_stream_id_is_accepted(events: EventStore) -> None:
    long_id = "é" * MAX_ID_LENGTH
    events.append(long_id, [ev()], NO_STREAM)
    assert events.stream_version(long_id) == 1


# --- idempotency ---------------------------------------------------------------------------------


def test_idempotency_key_is_recorded_with_the_events(
    events: EventStore, clock: ManualClock
) -> None:
    assert events.get_idempotent_result("cmd-1") is None
    events.append("s", [ev()], NO_STREAM, idempotency_key="cmd-1", result_json='{"id": 7}')
    record = events.get_idempotent_result("cmd-1")
    assert record is not None
    assert (record.key, record.stream_id, record.result_json, record.recorded_at) == (
        "cmd-1",
        "s",
        '{"id": 7}',
        clock.now(),
    )
    with pytest.raises(DuplicateIdempotencyKeyError) as caught:
        events.append("s", [ev()], 1, idempotency_key="cmd-1", result_json='{"id": 8}')
    assert (caught.value.key, caught.value.result_json) == ("cmd-1", '{"id": 7}')
    assert events.stream_version("s") == 1
    # The duplicate is reported even when the retry would also have a stale version.
    with pytest.raises(DuplicateIdempotencyKeyError):
        events.append("s", [ev()], NO_STREAM, idempotency_key="cmd-1")


def test_an_append_that_fails_does_not_record_its_key(events: EventStore) -> None:
    events.append("s", [ev()], NO_STREAM)
    with pytest.raises(WrongExpectedVersionError):
        events.append("s", [ev()], NO_STREAM, idempotency_key="cmd-2", result_json="1")
    assert events.get_idempotent_result("cmd-2") is None
    events.append("s", [ev()], 1, idempotency_key="cmd-2")
    record = events.get_idempotent_result("cmd-2")
    assert record is not None and record.result_json is None


def test_a_command_without_events_can_record_its_key(events: EventStore) -> None:
    assert events.append("s", [], ANY, idempotency_key="noop", result_json='"nothing"') == []
    record = events.get_idempotent_result("noop")
    assert record is not None and record.result_json == '"nothing"'


def test_idempotency_arguments_are_checked(events: EventStore) -> None:
    with pytest.raises(InvalidIdempotencyKeyError, match="without an idempotency_key"):
        events.append("s", [ev()], ANY, result_json="{}")
    with pytest.raises(InvalidIdempotencyKeyError):
        events.append("s", [ev()], ANY, idempotency_key="")
    with pytest.raises(EventNotSerializableError, match="not valid JSON"):
        events.append("s", [ev()], ANY, idempotency_key="k", result_json="{oops")
    with pytest.raises(InvalidIdempotencyKeyError):
        events.get_idempotent_result("")
    assert everything(events) == [] and events.get_idempotent_result("k") is None


def test_a_concurrent_retry_of_a_command_waits_and_is_reported_as_duplicate(
    events: EventStore, open_events: OpenStore
) -> None:
    other = open_events()
    with events.transaction() as tx:
        tx.append("s", [ev()], NO_STREAM, idempotency_key="cmd", result_json='"first"')
        thread, result = in_thread(
            lambda: other.append(
                "s", [ev()], NO_STREAM, idempotency_key="cmd", result_json='"second"'
            )
        )
        assert_blocked(thread, events.url)
    thread.join(10)
    assert isinstance(result["error"], DuplicateIdempotencyKeyError)
    assert result["error"].result_json == '"first"'

    with pytest.raises(RuntimeError), events.transaction() as tx:  # first attempt rolls back
        tx.append("t", [ev()], NO_STREAM, idempotency_key="cmd-2")
        thread, result = in_thread(
            lambda: other.append("t", [ev()], NO_STREAM, idempotency_key="cmd-2")
        )
        assert_blocked(thread, events.url)
        raise RuntimeError
    thread.join(10)
    assert [e.version for e in result["value"]] == [1]


# --- checkpoints ---------------------------------------------------------------------------------


def test_checkpoints_advance_forward_only(events: EventStore) -> None:
    assert events.get_checkpoint("projection") == 0
    events.advance_checkpoint("projection", 5)
    events.advance_checkpoint("projection", 5)  # where it is: nothing to do
    events.advance_checkpoint("projection", 9, expected=5)
    assert events.get_checkpoint("projection") == 9
    with pytest.raises(CheckpointConflictError, match="only move forward") as caught:
        events.advance_checkpoint("projection", 3)
    assert (caught.value.name, caught.value.actual) == ("projection", 9)
    with pytest.raises(CheckpointConflictError, match="expected it at 7"):
        events.advance_checkpoint("projection", 12, expected=7)
    assert events.get_checkpoint("projection") == 9
    events.reset_checkpoint("projection")
    assert events.get_checkpoint("projection") == 0
    events.reset_checkpoint("other", 4)
    assert events.get_checkpoint("other") == 4
    with pytest.raises(InvalidCheckpointError):
        events.advance_checkpoint("projection", -1)
    with pytest.raises(InvalidCheckpointError):
        events.get_checkpoint("")


def _sql(backend: str, text: str) -> str:
    return text.replace("%s", "?") if backend == "sqlite" else text


@pytest.fixture
def projection_table(events: EventStore, backend: str) -> Iterator[str]:
    """A user table, as a projection would keep, in the same database."""
    name = f"totals_{uuid.uuid4().hex[:8]}"
    with events.transaction() as tx:
        tx.connection.execute(f"CREATE TABLE {name} (stream_id TEXT PRIMARY KEY, n INTEGER)")
    yield name
    with events.transaction() as tx:
        tx.connection.execute(f"DROP TABLE {name}")


def test_a_projection_commits_its_rows_with_its_checkpoint(
    events: EventStore, backend: str, projection_table: str
) -> None:
    for i in range(3):
        events.append(f"s{i}", [ev(n=i), ev(n=i)], NO_STREAM)

    def project(fail: bool) -> None:
        with events.transaction() as tx:
            position = tx.lock_checkpoint("totals")
            for event in events.read_all(position):
                tx.connection.execute(
                    _sql(
                        backend,
                        f"INSERT INTO {projection_table} (stream_id, n) VALUES (%s, 1) "
                        "ON CONFLICT (stream_id) DO UPDATE SET n = "
                        f"{projection_table}.n + 1",
                    ),
                    (event.stream_id,),
                )
                tx.advance_checkpoint("totals", event.position)
            if fail:
                raise RuntimeError("crash before commit")

    def totals() -> list[tuple[Any, ...]]:
        with events.transaction() as tx:
            return [
                tuple(r)
                for r in tx.connection.execute(
                    f"SELECT stream_id, n FROM {projection_table} ORDER BY stream_id"
                ).fetchall()
            ]

    with pytest.raises(RuntimeError):
        project(fail=True)
    assert totals() == [] and events.get_checkpoint("totals") == 0
    project(fail=False)
    assert totals() == [("s0", 2), ("s1", 2), ("s2", 2)]
    assert events.get_checkpoint("totals") == events.head_position()
    project(fail=False)  # nothing new: the checkpoint says so
    assert totals() == [("s0", 2), ("s1", 2), ("s2", 2)]


def test_a_checkpoint_lock_makes_a_second_handler_instance_wait(
    events: EventStore, open_events: OpenStore
) -> None:
    other = open_events()

    def second_instance() -> int:
        with other.transaction() as tx:
            return tx.lock_checkpoint("handler")

    with events.transaction() as tx:
        assert tx.lock_checkpoint("handler") == 0
        thread, result = in_thread(second_instance)
        assert_blocked(thread, events.url)
        tx.advance_checkpoint("handler", 42)
    thread.join(10)
    assert result["value"] == 42


def test_a_handler_appends_new_events_with_its_checkpoint(events: EventStore) -> None:
    placed = events.append("order-1", [ev("OrderPlaced")], NO_STREAM)[0]
    with events.transaction() as tx:
        for event in events.read_all(tx.lock_checkpoint("shipping")):
            tx.append("shipment-1", [ev("ShipmentRequested").caused_by(event)], NO_STREAM)
            tx.advance_checkpoint("shipping", event.position)
        with pytest.raises(CheckpointConflictError):
            tx.advance_checkpoint("shipping", 0)
    shipment = next(events.read_stream("shipment-1"))
    assert shipment.causation_id == placed.event_id
    assert events.get_checkpoint("shipping") == placed.position


# --- wiring --------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_the_schema_is_required(
    events: EventStore, backend: str, tmp_path: Any
) -> None:
    assert events.migrate() == []
    if backend == "sqlite":
        bare = open_event_store(f"sqlite:///{tmp_path / 'bare.db'}")
        try:
            with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
                bare.append("s", [ev()], ANY)
            with pytest.raises(SchemaNotReadyError):
                list(bare.read_all())
        finally:
            bare.close()


def test_an_unmigrated_postgres_database_is_reported(
    backend: str, db_url: str, clock: ManualClock
) -> None:
    if backend == "sqlite":
        pytest.skip("the SQLite case is in test_migrate_is_idempotent_and_the_schema_is_required")
    with empty_database(db_url) as url:
        bare = pg_events(url, clock)
        try:
            with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
                bare.append("s", [ev()], ANY)
            with pytest.raises(SchemaNotReadyError), bare.transaction() as tx:
                tx.append("s", [ev()], ANY)
            with pytest.raises(SchemaNotReadyError):
                list(bare.read_all())
        finally:
            bare.close()


def test_appends_prepare_their_statement_again_if_it_was_deallocated(
    backend: str, db_url: str, clock: ManualClock
) -> None:
    """The append runs as a prepared statement of its own (postgres/fast_paths.py); code on
    tx.connection may deallocate it, in or out of a transaction."""
    if backend == "sqlite":
        pytest.skip("PostgreSQL's prepared statements")
    store = pg_events(db_url, clock, pool_size=1)  # one connection: always the same
    try:
        store.migrate()
        store.append("s", [ev(n=1)], NO_STREAM)
        with store.transaction() as tx:
            tx.connection.execute("DEALLOCATE ALL")
            tx.append("s", [ev(n=2)], 1)
            tx.connection.execute("DEALLOCATE ALL")
        store.append("s", [ev(n=3)], 2)
        with store.transaction() as tx:
            tx.connection.execute("DEALLOCATE tideflow_append_events_v3")
        with pytest.raises(WrongExpectedVersionError):
            store.append("s", [ev(n=4)], 2)
        assert ns(store.read_all()) == [1, 2, 3]
    finally:
        store.close()


def test_an_append_inside_a_pipeline(events: EventStore, backend: str) -> None:
    if backend == "sqlite":
        pytest.skip("psycopg's pipeline mode")
    with events.transaction() as tx, tx.connection.pipeline():
        recorded = tx.append("s", [ev(n=1), ev(n=2)], NO_STREAM)
    assert everything(events) == recorded


def test_an_append_in_a_transaction_is_one_round_trip(
    backend: str, db_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SAVEPOINT, the append and RELEASE go to the server together; a refused append costs one
    more (the rollback to the savepoint) and leaves the statement prepared, even when psycopg
    has statements of its own prepared on the connection (its rollback would drop them all)."""
    if backend != "postgres":
        pytest.skip("PostgreSQL's pipelined append (its fast path)")
    store = pg_events(db_url, clock, pool_size=1)
    waits: list[psycopg.Connection[Any]] = []  # a wait: one exchange with the server
    real_wait = psycopg.Connection.wait

    def counting_wait(conn: psycopg.Connection[Any], *args: Any, **kwargs: Any) -> Any:
        waits.append(conn)
        return real_wait(conn, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "wait", counting_wait)
    try:
        store.migrate()
        with store.transaction() as tx:
            tx.append("s", [ev(n=0)], NO_STREAM)  # prepares the statement on the connection
            for _ in range(6):
                list(tx.read_stream("s"))  # psycopg prepares this query of its own
            waits.clear()
            tx.append("s", [ev(n=1)], 1)
            assert waits.count(tx.connection) == 1
            waits.clear()
            with pytest.raises(WrongExpectedVersionError):
                tx.append("s", [ev()], 1)
            assert waits.count(tx.connection) == 2
            waits.clear()
            tx.append("s", [ev(n=2), ev(n=3)], 2)
            assert waits.count(tx.connection) == 1
        assert ns(store.read_all()) == [0, 1, 2, 3]
    finally:
        store.close()


def test_a_lost_connection_inside_a_transaction_is_reported_and_replaced(
    backend: str, db_url: str, clock: ManualClock
) -> None:
    if backend == "sqlite":
        pytest.skip("a PostgreSQL server connection")
    store = pg_events(db_url, clock, pool_size=1)
    try:
        store.migrate()
        with pytest.raises(StorageError), store.transaction() as tx:
            tx.append("s", [ev(n=1)], NO_STREAM)
            row = tx.connection.execute("SELECT pg_backend_pid()").fetchone()
            assert row is not None
            with psycopg.connect(db_url, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
            tx.append("s", [ev(n=2)], 1)
        with store.transaction() as tx:
            tx.append("s", [ev(n=3)], NO_STREAM)
        assert ns(store.read_all()) == [3]
    finally:
        store.close()


def test_an_append_interrupted_inside_a_transaction_gives_up_its_connection(
    backend: str, db_url: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted half-way through its pipeline (Ctrl-C while waiting for the server), an
    append closes the connection, which libpq may still expect results on: the pool replaces
    it and the transaction is gone."""
    if backend != "postgres":
        pytest.skip("libpq's pipeline mode (PostgreSQL's fast path)")
    from tideflow.storage.postgres import fast_paths as module

    real_results = module._pipeline_results

    def interrupted(pgconn: Any, queries: int) -> Any:
        yield from psycopg.generators.send(pgconn)
        raise KeyboardInterrupt

    store = pg_events(db_url, clock, pool_size=1)
    try:
        store.migrate()
        with pytest.raises(KeyboardInterrupt), store.transaction() as tx:
            tx.append("s", [ev(n=1)], NO_STREAM)
            monkeypatch.setattr(module, "_pipeline_results", interrupted)
            tx.append("s", [ev(n=2)], 1)
        monkeypatch.setattr(module, "_pipeline_results", real_results)
        with store.transaction() as tx:
            tx.append("s", [ev(n=3)], NO_STREAM)
        assert ns(store.read_all()) == [3]
    finally:
        store.close()


@pytest.mark.parametrize("idle", [True, False], ids=["idle: checked", "busy: retried"])
def test_a_lost_connection_is_replaced(
    backend: str, db_url: str, clock: ManualClock, idle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection killed under the store: a connection that sat idle is checked (an
    empty query) and replaced before it is handed out, so the append never sees it - even with
    no client retries at all; one in use a moment ago is handed out unchecked (a check per
    checkout would cost a round trip per transaction), fails, and the append's brief retry
    gets a fresh one."""
    if backend == "sqlite":
        pytest.skip("a PostgreSQL server connection")
    from tideflow.storage.postgres import database as pg_backend

    if idle:
        monkeypatch.setattr(pg_backend, "CHECK_AFTER_IDLE", 0.0)
        monkeypatch.setattr("tideflow.retrying.CLIENT_RETRY_SECONDS", 0.0)
    else:
        monkeypatch.setattr(pg_backend, "CHECK_AFTER_IDLE", 3600.0)
    store = pg_events(db_url, clock, pool_size=1)
    try:
        store.migrate()
        store.append("s", [ev(n=1)], NO_STREAM)
        with store.transaction() as tx:
            row = tx.connection.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (row[0],))
        assert [e.version for e in store.append("s", [ev(n=2)], 1)] == [2]
        assert ns(store.read_all()) == [1, 2]
    finally:
        store.close()


def test_event_stores_can_share_a_flow_stores_connections(
    db_url: str, backend: str, clock: ManualClock
) -> None:
    flows = open_store(db_url, clock=clock)
    shared = open_event_store_on(flows)
    try:
        shared.migrate()
        recorded = shared.append("s", [ev()], NO_STREAM)
        assert recorded[0].recorded_at == clock.now()
        shared.close()  # leaves the flow store's connections open
        assert flows.migrate() == []
    finally:
        flows.close()


def test_unsupported_urls_are_refused() -> None:
    with pytest.raises(UnsupportedDatabaseURLError, match="postgresql://"):
        open_event_store("mysql://localhost/db")


def test_a_database_of_migration_3_upgrades_to_floor_locks(
    backend: str, db_url: str, clock: ManualClock
) -> None:
    """Migration 0004 replaces the append and horizon functions in place: events appended by the
    functions of 0002 stay readable, new appends continue the same positions and streams, and
    the old functions are gone (an old process fails instead of skipping the announcement)."""
    if backend == "sqlite":
        pytest.skip("PostgreSQL's append functions")
    from tideflow.storage.sqlfile import load_migrations

    with empty_database(db_url, "tideflow_up") as url:
        with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
            conn.execute("CREATE SCHEMA tideflow")
            conn.execute(
                "CREATE TABLE tideflow.schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL)"
            )
            migrations = load_migrations("tideflow.storage.postgres")
            for m in migrations:
                if m.version <= 3:
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO tideflow.schema_migrations VALUES (%s, %s, now())",
                        (m.version, m.name),
                    )
            old = json.dumps(
                [
                    {
                        "event_id": str(uuid.uuid4()),
                        "event_type": "Happened",
                        "schema_version": 1,
                        "data": '{"n":1}',
                        "metadata": "{}",
                        "causation_id": None,
                        "correlation_id": None,
                    }
                ]
            )
            conn.execute(
                "SELECT * FROM tideflow.append_events_v1('s', 'no_stream', 0, "
                "%s::json, now(), NULL, NULL)",
                (old,),
            )
        store = pg_events(url, clock)
        try:
            applied = store.migrate()
            assert applied[0] == "0004_event_floor_locks"
            assert applied == [f"{m.version:04d}_{m.name}" for m in migrations if m.version > 3]
            store.append("s", [ev(n=2)], 1)
            assert [(e.position, e.version, e.data) for e in store.read_all()] == [
                (1, 1, {"n": 1}),
                (2, 2, {"n": 2}),
            ]
            with pytest.raises(psycopg.errors.UndefinedFunction), store.transaction() as tx:
                tx.connection.execute("SELECT tideflow.event_horizon_v1()")
        finally:
            store.close()


# --- reading through a transaction ---------------------------------------------------------------


def test_a_transaction_reads_its_own_appends(events: EventStore) -> None:
    """tx.read_stream runs on the transaction's connection: a second command to an aggregate
    in one transaction loads the events the first appended, before they commit."""
    events.append("order-1", [ev(n=1)], NO_STREAM)
    with pytest.raises(RuntimeError, match="undo"), events.transaction() as tx:
        tx.append("order-1", [ev(n=2), ev(n=3)], 1)
        assert [e.data["n"] for e in tx.read_stream("order-1")] == [1, 2, 3]
        assert [e.data["n"] for e in tx.read_stream("order-1", backwards=True)] == [3, 2, 1]
        assert [e.version for e in tx.read_stream("order-1", 2, limit=1)] == [2]
        assert [e.version for e in tx.read_stream("order-1", 2, backwards=True)] == [2, 1]
        assert [e.version for e in tx.read_stream("order-1", limit=0)] == []
        tx.append("order-2", [ev(n=4)], NO_STREAM)
        assert [e.data["n"] for e in tx.read_stream("order-2")] == [4]
        with pytest.raises(InvalidStreamIdError):
            tx.read_stream("")
        with pytest.raises(InvalidEventError):
            tx.read_stream("order-1", 0)
        raise RuntimeError("undo")
    with events.transaction() as tx:
        assert [e.data["n"] for e in tx.read_stream("order-1")] == [1]
        assert list(tx.read_stream("order-2")) == []
    assert [e.data["n"] for e in events.read_stream("order-1")] == [1]


def test_a_transaction_reads_its_appends_page_by_page_and_upcast(open_events: OpenStore) -> None:
    upcasters = Upcasters()
    upcasters.register("Happened", 1, lambda data: {**data, "seen": True})
    store = open_events(page_size=2, upcasters=upcasters)
    store.migrate()
    with store.transaction() as tx:
        tx.append(
            "s", [NewEvent("Happened", {"n": n}, schema_version=1) for n in range(5)], NO_STREAM
        )
        read = list(tx.read_stream("s"))
        assert [(e.version, e.data) for e in read] == [
            (n + 1, {"n": n, "seen": True}) for n in range(5)
        ]
        assert [e.version for e in tx.read_stream("s", 4, limit=3, backwards=True)] == [4, 3, 2]
        pages = tx.read_stream("s")
        next(pages)
    # On PostgreSQL, the next page would be read on a connection that is back in the pool.
    next(pages)
    with pytest.raises(StorageError, match="inside"):
        list(pages)


# --- reading everything backwards ----------------------------------------------------------------


def test_read_all_backwards_from_the_head_or_a_position(ten: EventStore) -> None:
    forwards = list(ten.read_all())
    positions = [e.position for e in forwards]
    assert list(ten.read_all(backwards=True)) == forwards[::-1]
    # from_position is where a previous page ended (excluded), to_position the last wanted
    # (included): the mirror of reading forwards.
    assert list(ten.read_all(positions[5], backwards=True)) == forwards[:5][::-1]
    assert list(ten.read_all(positions[5], limit=2, backwards=True)) == forwards[3:5][::-1]
    assert list(ten.read_all(to_position=positions[8], backwards=True)) == forwards[8:][::-1]
    assert list(ten.read_all(positions[0], backwards=True)) == []
    assert list(ten.read_all(0, backwards=True)) == []
    assert list(ten.read_all(positions[-1] + 100, backwards=True)) == forwards[::-1]
    assert list(ten.read_all(limit=0, backwards=True)) == []


def test_read_all_backwards_pages_and_filters_event_types(
    events: EventStore, open_events: OpenStore
) -> None:
    paged = open_events(page_size=4)
    for i in range(30):
        events.append(f"s{i % 3}", [ev("Even" if i % 2 == 0 else "Odd", i=i)], ANY)
    assert [e.data["i"] for e in paged.read_all(backwards=True)] == list(range(29, -1, -1))
    evens = paged.read_all(event_types=["Even"], backwards=True)
    assert [e.data["i"] for e in evens] == list(range(28, -1, -2))
    assert [e.data["i"] for e in paged.read_all(event_types=["Odd"], limit=5, backwards=True)] == [
        29,
        27,
        25,
        23,
        21,
    ]
    assert list(paged.read_all(event_types=[], backwards=True)) == []
    # Paging by hand: pass the last event's position back.
    page, seen = list(paged.read_all(limit=7, backwards=True)), []
    while page:
        seen += [e.data["i"] for e in page]
        page = list(paged.read_all(page[-1].position, limit=7, backwards=True))
    assert seen == list(range(29, -1, -1))


def test_read_all_backwards_checks_its_arguments(events: EventStore) -> None:
    for bad in ({"from_position": -1}, {"limit": -2}, {"to_position": -1}, {"from_position": 1.5}):
        with pytest.raises(InvalidEventError):
            events.read_all(**bad, backwards=True)


def test_read_all_backwards_starts_below_an_append_still_in_flight(
    events: EventStore, backend: str
) -> None:
    """The head it starts from is the safe horizon: an event that may still commit below one
    already delivered is not read (the forward reader's guarantee, from the other end)."""
    if backend == "sqlite":
        pytest.skip("SQLite has one writer at a time: no append is in flight while reading")
    events.append("a", [ev(n=1)], NO_STREAM)
    with events.transaction() as tx:
        tx.append("b", [ev(n=2)], NO_STREAM)  # in flight: its floor holds the horizon
        assert [e.data["n"] for e in events.read_all(backwards=True)] == [1]
    assert [e.data["n"] for e in events.read_all(backwards=True)] == [2, 1]


# --- deleting streams ----------------------------------------------------------------------------


@pytest.fixture
def three(events: EventStore) -> EventStore:
    """Stream "doomed" with three events between two other streams' events."""
    events.append("before", [ev(n=0)], NO_STREAM)
    events.append("doomed", [ev(n=1), ev(n=2), ev(n=3)], NO_STREAM)
    events.append("after", [ev(n=4)], NO_STREAM)
    return events


def data(events: Iterator[RecordedEvent]) -> list[int]:
    return [e.data["n"] for e in events]


@pytest.mark.parametrize("expected", [ANY, EXISTS, 3])
def test_a_soft_deleted_stream_reads_as_empty_and_refuses_appends(
    three: EventStore, expected: ExpectedVersion | int
) -> None:
    three.save_snapshot("doomed", 3, {"n": 3})
    first = next(three.read_stream("doomed"))
    three.delete_stream("doomed", expected)
    # A reader that had got to the stream's first event does not get the rest.
    assert data(three.read_all(first.position)) == [4]
    assert data(three.read_stream("doomed")) == []
    assert data(three.read_stream("doomed", backwards=True)) == []
    assert three.stream_version("doomed") == 0
    assert three.load_snapshot("doomed") is None
    assert data(three.read_all()) == [0, 4]
    assert data(three.read_all(backwards=True)) == [4, 0]
    assert data(three.read_all(event_types=["Happened"])) == [0, 4]
    assert data(three.read_all(event_types=["Happened"], backwards=True)) == [4, 0]
    for version in (ANY, NO_STREAM, EXISTS, 3, 0):
        with pytest.raises(StreamDeletedError) as caught:
            three.append("doomed", [ev(n=5)], version)
        assert caught.value.stream_id == "doomed"
        assert "delete_stream('doomed', hard=True)" in str(caught.value)
    with pytest.raises(StreamDeletedError):
        three.append("doomed", [], ANY)  # an empty append checks the stream too
    with pytest.raises(StreamDeletedError):
        three.save_snapshot("doomed", 3, {"n": 3})
    # Other streams go on as before.
    assert data(three.read_stream("before")) == [0]
    three.append("after", [ev(n=6)], 1)
    assert data(three.read_all()) == [0, 4, 6]


def test_deleting_an_unknown_stream_or_twice_or_at_another_version_is_refused(
    three: EventStore,
) -> None:
    with pytest.raises(StreamNotFoundError, match="'nowhere' does not exist"):
        three.delete_stream("nowhere")
    with pytest.raises(StreamNotFoundError):
        three.delete_stream("nowhere", hard=True)
    with pytest.raises(WrongExpectedVersionError) as caught:
        three.delete_stream("doomed", 2)
    assert (caught.value.expected, caught.value.actual) == (2, 3)
    with pytest.raises(WrongExpectedVersionError):
        three.delete_stream("doomed", 4, hard=True)
    with pytest.raises(InvalidEventError, match="NO_STREAM"):
        three.delete_stream("doomed", NO_STREAM)
    for bad_id in ("", None, "x" * (MAX_ID_LENGTH + 1)):
        with pytest.raises(InvalidStreamIdError):
            three.delete_stream(bad_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError):
        three.delete_stream("doomed", -1)
    assert data(three.read_stream("doomed")) == [1, 2, 3]  # all refused: nothing deleted

    three.delete_stream("doomed")
    with pytest.raises(StreamDeletedError, match="'doomed' was deleted at "):
        three.delete_stream("doomed")
    three.delete_stream("doomed", 3, hard=True)  # an erasure request after a soft delete
    with pytest.raises(StreamNotFoundError):
        three.delete_stream("doomed", hard=True)
    with pytest.raises(StreamNotFoundError):
        three.delete_stream("doomed")


def test_a_hard_delete_erases_the_events_and_frees_the_stream_id(
    three: EventStore, backend: str, db_url: str
) -> None:
    doomed = list(three.read_stream("doomed"))
    three.append("doomed", [ev(n=9)], 3, idempotency_key="k-doomed", result_json='{"r": 1}')
    three.append("before", [], ANY, idempotency_key="k-kept")
    three.save_snapshot("doomed", 4, {"n": 9})
    three.advance_checkpoint("projection", doomed[-1].position)
    head = three.head_position()

    three.delete_stream("doomed", hard=True)

    assert _raw_count(db_url, "events", "doomed") == 0  # erased, not hidden
    assert _raw_count(db_url, "streams", "doomed") == 0
    assert three.load_snapshot("doomed") is None
    assert three.get_idempotent_result("k-doomed") is None
    assert three.get_idempotent_result("k-kept") is not None
    assert data(three.read_all()) == [0, 4]
    # Positions are never reused: the horizon stays, checkpoints stay valid.
    assert three.head_position() == head
    assert three.get_checkpoint("projection") == doomed[-1].position
    assert data(three.read_all(three.get_checkpoint("projection"))) == [4]
    # The id is free: a new stream starts at version 1, above every old position.
    again = three.append("doomed", [ev(n=10)], NO_STREAM)
    assert (again[0].version, again[0].position > head) == (1, True)
    assert data(three.read_stream("doomed")) == [10]


def test_a_hard_delete_of_the_newest_events_keeps_the_horizon(
    events: EventStore, db_url: str
) -> None:
    events.append("old", [ev(n=1)], NO_STREAM)
    events.append("new", [ev(n=2), ev(n=3)], NO_STREAM)
    head = events.head_position()
    events.delete_stream("new", hard=True)
    assert events.head_position() == head
    later = events.append("newer", [ev(n=4)], NO_STREAM)
    assert later[0].position > head and data(events.read_all(head)) == [4]


def test_a_delete_in_a_transaction_commits_or_vanishes_with_it(three: EventStore) -> None:
    with pytest.raises(RuntimeError), three.transaction() as tx:
        tx.delete_stream("doomed")
        assert data(tx.read_stream("doomed")) == []
        with pytest.raises(StreamDeletedError):
            tx.append("doomed", [ev(n=5)], ANY)
        tx.append("after", [ev(n=5)], ANY)  # the refused append left the transaction usable
        raise RuntimeError("roll back")
    assert data(three.read_stream("doomed")) == [1, 2, 3]
    assert data(three.read_all()) == [0, 1, 2, 3, 4]
    with three.transaction() as tx:
        tx.delete_stream("doomed", hard=True)
    assert data(three.read_all()) == [0, 4]


def test_an_append_waiting_for_a_delete_is_refused_once_it_commits(
    three: EventStore, open_events: OpenStore, db_url: str
) -> None:
    other = open_events()
    with three.transaction() as tx:
        tx.delete_stream("doomed")
        thread, result = in_thread(lambda: other.append("doomed", [ev(n=5)], 3))
        assert_blocked(thread, db_url)
    thread.join(10)
    assert isinstance(result.get("error"), StreamDeletedError), result
    assert data(three.read_all()) == [0, 4]


def test_a_delete_waiting_for_an_append_sees_its_version(
    three: EventStore, open_events: OpenStore, db_url: str
) -> None:
    other = open_events()
    with three.transaction() as tx:
        tx.append("doomed", [ev(n=5)], 3)
        thread, result = in_thread(lambda: other.delete_stream("doomed", 3))
        assert_blocked(thread, db_url)
    thread.join(10)
    assert isinstance(result.get("error"), WrongExpectedVersionError), result
    other.delete_stream("doomed", 4)
    assert three.stream_version("doomed") == 0


def _raw_count(url: str, table: str, stream_id: str) -> int:
    """Rows of ``table`` for the stream, read past the store (hidden rows count too)."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE stream_id = ?", (stream_id,))
            return int(row.fetchone()[0])
    with psycopg.connect(url) as conn:
        found = conn.execute(
            f"SELECT count(*) FROM tideflow.{table} WHERE stream_id = %s", (stream_id,)
        ).fetchone()
        assert found is not None
        return int(found[0])


def test_the_fast_constructor_of_read_events_makes_the_same_object_as_the_class() -> None:
    """``recorded_event`` sets the slots in field order; a field added or moved must show here."""
    from dataclasses import fields

    from tideflow.events.model import recorded_event

    values: list[Any] = [uuid.uuid4(), "T", "s", 3, 9, {"a": 1}, {"m": 2}]
    values += [uuid.uuid4(), uuid.uuid4(), datetime(2026, 12, 7), 2]
    assert len(values) == len(fields(RecordedEvent))
    fast, slow = recorded_event(*values), RecordedEvent(*values)
    assert fast == slow and type(fast) is RecordedEvent
    assert [getattr(fast, f.name) for f in fields(RecordedEvent)] == values
    with pytest.raises(AttributeError):
        fast.position = 10  # type: ignore[misc]
