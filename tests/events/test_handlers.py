"""Event handlers, projections and their runner, held against both backends.

What is checked: delivery in position order from a durable checkpoint; exactly-once projections
(their rows commit with the checkpoint, whatever fails in between); retries with backoff (on a
manual clock), dead letters and their retry, the stop policy; reset and rebuild; one runner per
handler at a time, and failover from a SIGKILLed worker process after its lease expires.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from tests.polling import wait_until, wait_until_async
from tideflow.clock import ManualClock, SystemClock
from tideflow.errors import NonRetryableError
from tideflow.events import ANY, ExpectedVersion, NewEvent, RecordedEvent
from tideflow.events.handling import (
    EventHandler,
    HandlerContext,
    HandlerDefinitionError,
    HandlerFailedError,
    HandlerNotFoundError,
    HandlerUsageError,
    LeaseLostError,
)
from tideflow.events.projections import Projection
from tideflow.storage import open_handler_store
from tideflow.storage.event_contract import EventStore, EventTransaction
from tideflow.storage.handler_contract import HandlerRecord, HandlerStore
from tideflow.worker.handlers import (
    HandlerRunner,
    HandlerRunnerOptions,
    reset_handler,
    retry_dead_letter,
)

from .conftest import OpenStore

ROOT = Path(__file__).resolve().parents[2]
FAST = HandlerRunnerOptions(poll_interval=0.02, acquire_interval=0.05)

OpenHandlerStore = Callable[..., HandlerStore]


@pytest.fixture
def open_handlers(db_url: str, clock: ManualClock) -> Iterator[OpenHandlerStore]:
    opened: list[HandlerStore] = []

    def open_store(**kwargs: Any) -> HandlerStore:
        kwargs.setdefault("clock", clock)
        store = open_handler_store(db_url, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


@pytest.fixture
def handler_store(events: EventStore, open_handlers: OpenHandlerStore) -> HandlerStore:
    return open_handlers()


def runner(
    events: EventStore, store: HandlerStore, *handlers: EventHandler, **kwargs: Any
) -> HandlerRunner:
    kwargs.setdefault("options", FAST)
    return HandlerRunner(events, store, handlers, **kwargs)


def append(events: EventStore, n: int, start: int = 0, streams: int = 3) -> list[RecordedEvent]:
    """``n`` events over a few streams, alternating types A and B; data n = start, start+1..."""
    out: list[RecordedEvent] = []
    for i in range(start, start + n):
        out += events.append(f"s-{i % streams}", [NewEvent("A" if i % 2 else "B", {"n": i})], ANY)
    return out


class ClockReadings:
    """The test's ManualClock, counting how often it is read. Given to a runner as its retry
    clock, each reading after a failure is one look at the pending retry's time: "read N more
    times, still no retry" shows the runner declined N times - no sleep involved."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.reads = 0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            self.reads += 1
        return self.clock.now()


def record(store: HandlerStore, name: str) -> HandlerRecord:
    return next(r for r in store.list_handlers() if r.name == name)


def query(events: EventStore, sql: str) -> list[tuple[Any, ...]]:
    with events.transaction() as tx:
        return [tuple(row) for row in tx.connection.execute(sql).fetchall()]


class Recorder(EventHandler):
    name = "recorder"
    batch_size = 7

    def __init__(self) -> None:
        self.seen: list[int] = []

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        self.seen.append(event.position)


class OnlyB(Recorder):
    name = "only_b"
    event_types = ["B"]


class Counts(Projection):
    """Events per stream; ``counts_seen`` has a primary key per event, so counting one twice
    fails (and would leave a dead letter)."""

    name = "counts"
    batch_size = 5
    max_attempts = 1
    tables = ("counts", "counts_seen")
    schema = """
        CREATE TABLE IF NOT EXISTS counts (stream TEXT PRIMARY KEY, n BIGINT NOT NULL,
                                           total BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS counts_seen (position BIGINT PRIMARY KEY);
    """

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        ctx.execute("INSERT INTO counts_seen (position) VALUES (%(p)s)", {"p": event.position})
        ctx.execute(
            "INSERT INTO counts (stream, n, total) VALUES (%(s)s, 1, %(v)s) "
            "ON CONFLICT (stream) DO UPDATE SET n = counts.n + 1, "
            "total = counts.total + excluded.total",
            {"s": event.stream_id, "v": event.data["n"]},
        )


def counts(events: EventStore) -> dict[str, tuple[int, int]]:
    return {s: (n, total) for s, n, total in query(events, "SELECT stream, n, total FROM counts")}


def expected_counts(appended: list[RecordedEvent]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for e in appended:
        n, total = out.get(e.stream_id, (0, 0))
        out[e.stream_id] = (n + 1, total + e.data["n"])
    return out


class FailingCommits:
    """An event store whose next ``failures`` checkpoint advances fail, as if the database went
    away after the handler's writes and before the commit."""

    def __init__(self, store: EventStore, failures: int = 1) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        with self._store.transaction() as tx:
            yield _FailingTx(tx, self)


class _FailingTx:
    def __init__(self, tx: EventTransaction, owner: FailingCommits) -> None:
        self._tx = tx
        self._owner = owner
        self.connection = tx.connection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    def advance_checkpoint(self, name: str, position: int, **kwargs: Any) -> None:
        if self._owner.failures:
            self._owner.failures -= 1
            raise ConnectionError("the database went away before the commit")
        self._tx.advance_checkpoint(name, position, **kwargs)


# --- delivery -------------------------------------------------------------------------------------


def test_every_event_in_order_and_a_restart_resumes_from_the_checkpoint(
    events: EventStore, handler_store: HandlerStore
) -> None:
    appended = append(events, 25)
    first, b_only = Recorder(), OnlyB()
    runner(events, handler_store, first, b_only).run_until_idle()
    assert first.seen == [e.position for e in appended]
    assert b_only.seen == [e.position for e in appended if e.event_type == "B"]
    head = events.head_position()
    # A handler of rare types is checkpointed at the head, not at its last event.
    assert events.get_checkpoint("recorder") == events.get_checkpoint("only_b") == head
    more = append(events, 6, start=25)
    second = Recorder()  # a new process: nothing in memory, only the checkpoint
    runner(events, handler_store, second).run_until_idle()
    assert second.seen == [e.position for e in more]
    rec = record(handler_store, "recorder")
    assert (rec.kind, rec.status, rec.owner, rec.dead_letters) == ("handler", "running", None, 0)


async def test_a_running_handler_wakes_for_new_events(
    events: EventStore, handler_store: HandlerStore
) -> None:
    handler = Recorder()
    r = runner(events, handler_store, handler, options=HandlerRunnerOptions(poll_interval=0.05))
    task = asyncio.create_task(r.run())
    try:
        for burst in range(3):
            last = append(events, 4, start=burst * 4)[-1].position
            await wait_until_async(
                lambda last=last: handler.seen[-1:] == [last], what=f"event {last} handled"
            )
    finally:
        r.stop()
        await task
    assert len(handler.seen) == 12 and handler.seen == sorted(handler.seen)
    assert r.handled == 12


APPEND_ELSEWHERE = """
import sys
from tideflow.events import ANY, NewEvent
from tideflow.storage import open_event_store
store = open_event_store(sys.argv[1])
for burst in range(int(sys.argv[2])):
    store.append("elsewhere", [NewEvent("A", {"burst": burst})], ANY)
store.close()
"""


async def test_appends_by_another_process_wake_a_runner_long_before_its_poll(
    db_url: str, events: EventStore, handler_store: HandlerStore
) -> None:
    """PostgreSQL: the appender's NOTIFY reaches the runner's LISTEN; SQLite: the commit is seen
    by the file watcher. Either way, not the 60-second poll."""
    handler = Recorder()
    first = append(events, 1)[-1].position
    r = runner(
        events,
        handler_store,
        handler,
        options=HandlerRunnerOptions(poll_interval=60.0, acquire_interval=0.05),
    )
    task = asyncio.create_task(r.run())
    try:
        await wait_until_async(lambda: handler.seen == [first], what="the first event handled")
        await asyncio.sleep(0.2)  # the runner is now napping for its poll interval
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", APPEND_ELSEWHERE, db_url, "3", cwd=ROOT
        )
        assert await proc.wait() == 0
        done = time.monotonic()
        await wait_until_async(
            lambda: len(handler.seen) == 4,
            timeout=10.0,
            what="the other process's 3 events handled",
        )
        woke_after = time.monotonic() - done
    finally:
        r.stop()
        await task
    assert handler.seen == sorted(handler.seen)
    assert woke_after < 5.0, f"woke {woke_after:.2f}s after the append"


def test_a_non_transactional_handler_gets_every_event_at_least_once(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Mailer(EventHandler):
        name = "mailer"
        transactional = False
        batch_size = 4

        def __init__(self) -> None:
            self.sent: list[int] = []

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            assert not ctx.transactional and ctx.attempt == 1
            with pytest.raises(HandlerUsageError, match="set transactional = True"):
                ctx.connection  # noqa: B018
            self.sent.append(event.position)

    appended = append(events, 10)
    mailer = Mailer()
    flaky = FailingCommits(events)  # the first checkpoint commit is lost
    runner(flaky, handler_store, mailer).run_until_idle()  # type: ignore[arg-type]
    positions = [e.position for e in appended]
    assert mailer.sent == positions[:4] + positions  # the first batch went out twice
    assert events.get_checkpoint("mailer") == positions[-1]


# --- exactly once ---------------------------------------------------------------------------------


def test_projection_rows_commit_with_the_checkpoint(
    events: EventStore, handler_store: HandlerStore
) -> None:
    appended = append(events, 23)
    flaky = FailingCommits(events, failures=2)  # two batches lose their commit
    runner(flaky, handler_store, Counts()).run_until_idle()  # type: ignore[arg-type]
    assert counts(events) == expected_counts(appended)  # nothing counted twice, nothing lost
    assert query(events, "SELECT count(*) FROM counts_seen") == [(23,)]
    assert handler_store.list_dead_letters() == []
    assert events.get_checkpoint("counts") == appended[-1].position


def test_a_failure_after_the_handler_wrote_rolls_its_writes_back(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Fragile(Counts):
        name = "fragile"
        max_attempts = 3
        base_delay = 0.0
        failed: ClassVar[list[int]] = []

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            super().handle(event, ctx)  # the rows are written...
            if event.data["n"] in (2, 7) and ctx.attempt == 1:
                self.failed.append(event.position)
                raise RuntimeError("...and then it fails")

    appended = append(events, 12)
    runner(events, handler_store, Fragile()).run_until_idle()
    assert Fragile.failed == [appended[2].position, appended[7].position]
    assert counts(events) == expected_counts(appended)
    assert handler_store.list_dead_letters() == []
    assert record(handler_store, "fragile").last_error is None


def test_async_handlers_write_and_append_in_the_batch_transaction(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Shipping(EventHandler):
        """A process manager: each order placed leads to a shipment, appended exactly once."""

        name = "shipping"
        event_types = ["OrderPlaced"]
        batch_size = 3

        async def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            await asyncio.sleep(0)
            ctx.append(
                f"shipment-{event.data['order']}",
                [NewEvent("ShipmentRequested", {"order": event.data["order"]})],
                ExpectedVersion.NO_STREAM,
            )

    class Shipments(Projection):
        name = "shipments"
        event_types = ["ShipmentRequested"]
        tables = "shipments"
        schema = "CREATE TABLE IF NOT EXISTS shipments (order_id BIGINT PRIMARY KEY)"

        async def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            ctx.execute("INSERT INTO shipments (order_id) VALUES (%s)", (event.data["order"],))

    placed = [
        events.append(f"order-{i}", [NewEvent("OrderPlaced", {"order": i})], ANY)[0]
        for i in range(8)
    ]
    flaky = FailingCommits(events, failures=1)
    runner(flaky, handler_store, Shipping(), Shipments()).run_until_idle()  # type: ignore[arg-type]
    for i, cause in enumerate(placed):
        [shipment] = events.read_stream(f"shipment-{i}")
        assert shipment.causation_id == cause.event_id
        assert shipment.correlation_id == cause.event_id
    assert sorted(r[0] for r in query(events, "SELECT order_id FROM shipments")) == list(range(8))


def test_a_ctx_kept_after_handle_returned_refuses_to_be_used(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Leaky(EventHandler):
        name = "leaky"
        kept: ClassVar[list[HandlerContext]] = []

        async def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            self.kept.append(ctx)

    append(events, 1)
    runner(events, handler_store, Leaky()).run_until_idle()
    with pytest.raises(HandlerUsageError, match=r"used after its handle\(\) returned"):
        Leaky.kept[0].execute("SELECT 1")


# --- retries, dead letters, stop ------------------------------------------------------------------


async def test_a_failed_event_is_retried_after_its_backoff(
    events: EventStore, handler_store: HandlerStore, clock: ManualClock
) -> None:
    class Flaky(EventHandler):
        name = "flaky"
        max_attempts = 3
        base_delay = 10.0
        max_delay = 10.0

        def __init__(self) -> None:
            self.tries: list[tuple[int, int]] = []

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            self.tries.append((event.data["n"], ctx.attempt))
            if event.data["n"] == 1 and ctx.attempt < 3:
                raise RuntimeError(f"try {ctx.attempt} fails")

    append(events, 3)
    handler = Flaky()
    looks = ClockReadings(clock)
    r = runner(events, handler_store, handler, clock=looks)
    task = asyncio.create_task(r.run())
    try:
        # Event 1 fails: the batch rolls back, and event 0 is handled (and committed) again.
        await wait_until_async(
            lambda: handler.tries == [(0, 1), (1, 1), (0, 1)], what="event 1's first try"
        )
        await wait_until_async(
            lambda: record(handler_store, "flaky").attempts == 1, what="the first failure recorded"
        )
        rec = record(handler_store, "flaky")
        assert rec.last_error == "RuntimeError: try 1 fails"
        assert rec.failing_position == events.get_checkpoint("flaky") + 1
        # Not a quiet period: the runner has looked at the clock for the pending retry three
        # times, and declined each time, since the clock has not moved.
        seen = looks.reads
        await wait_until_async(
            lambda: looks.reads >= seen + 3,
            what="the runner to check the pending retry's time thrice",
        )
        assert len(handler.tries) == 3, "the retry must wait for its backoff"
        clock.advance(10)
        r.wake()
        await wait_until_async(
            lambda: record(handler_store, "flaky").attempts == 2, what="the second failure recorded"
        )
        assert handler.tries[-1:] == [(1, 2)]
        clock.advance(10)
        r.wake()
        await wait_until_async(
            lambda: handler.tries[-1:] == [(2, 1)],
            what="event 2 handled after the third try of event 1",
        )
    finally:
        r.stop()
        await task
    assert handler.tries == [(0, 1), (1, 1), (0, 1), (1, 2), (1, 3), (2, 1)]
    rec = record(handler_store, "flaky")
    assert (rec.failing_position, rec.attempts, rec.last_error) == (None, 0, None)


class Picky(Projection):
    """Refuses n == 2 while ``broken``; writes one row per event it accepts."""

    name = "picky"
    max_attempts = 2
    base_delay = 0.0
    tables = "picky"
    schema = "CREATE TABLE IF NOT EXISTS picky (n BIGINT PRIMARY KEY)"
    broken = True

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        if event.data["n"] == 2 and self.broken:
            raise ValueError("n=2 is not allowed")
        ctx.execute("INSERT INTO picky (n) VALUES (%(n)s)", {"n": event.data["n"]})


def test_exhausted_retries_make_a_dead_letter_the_handler_moves_on_and_it_can_be_retried(
    events: EventStore, handler_store: HandlerStore
) -> None:
    appended = append(events, 5)
    picky = Picky()
    runner(events, handler_store, picky).run_until_idle()
    assert sorted(r[0] for r in query(events, "SELECT n FROM picky")) == [0, 1, 3, 4]
    assert events.get_checkpoint("picky") == appended[-1].position
    [dead] = handler_store.list_dead_letters("picky")
    bad = appended[2]
    assert (dead.handler, dead.position, dead.event_id, dead.event_type, dead.stream_id) == (
        "picky",
        bad.position,
        str(bad.event_id),
        bad.event_type,
        bad.stream_id,
    )
    assert (dead.error, dead.attempts, dead.retried_at) == (
        "ValueError: n=2 is not allowed",
        2,
        None,
    )
    assert record(handler_store, "picky").dead_letters == 1

    with pytest.raises(HandlerFailedError, match=rf"failed again on dead letter {dead.id} "):
        retry_dead_letter(events, handler_store, picky, dead.id)
    assert handler_store.get_dead_letter(dead.id).attempts == 3

    picky.broken = False
    done = retry_dead_letter(events, handler_store, picky, dead.id)
    assert done.retried_at is not None
    assert sorted(r[0] for r in query(events, "SELECT n FROM picky")) == [0, 1, 2, 3, 4]
    assert handler_store.list_dead_letters("picky") == []
    assert [d.id for d in handler_store.list_dead_letters(include_retried=True)] == [dead.id]
    assert record(handler_store, "picky").dead_letters == 0
    with pytest.raises(HandlerUsageError, match="already retried"):
        retry_dead_letter(events, handler_store, picky, dead.id)


def test_non_retryable_errors_skip_the_remaining_attempts(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Strict(EventHandler):
        name = "strict_once"
        max_attempts = 5
        base_delay = 0.0

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            if event.data["n"] == 1:
                raise NonRetryableError("malformed order")

    append(events, 3)
    runner(events, handler_store, Strict()).run_until_idle()
    [dead] = handler_store.list_dead_letters()
    assert (dead.attempts, dead.error) == (1, "NonRetryableError: malformed order")


def test_the_stop_policy_halts_the_handler_until_it_is_resumed(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Ledger(Recorder):
        name = "ledger"
        on_failure = "stop"
        max_attempts = 1
        broken = True

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            if event.data["n"] == 2 and self.broken:
                raise KeyError("account 7")
            super().handle(event, ctx)

    appended = append(events, 5)
    ledger = Ledger()
    r = runner(events, handler_store, ledger)
    r.run_until_idle()
    # (In memory, events 0 and 1 were seen twice: the batch rolled back at event 2, and they
    # were handled again to commit them. Only database writes are exactly once.)
    assert set(ledger.seen) == {appended[0].position, appended[1].position}
    assert events.get_checkpoint("ledger") == appended[1].position
    rec = record(handler_store, "ledger")
    assert (rec.status, rec.owner) == ("stopped", None)
    assert rec.stopped_reason is not None
    assert f"event {appended[2].position} (B in stream 's-2')" in rec.stopped_reason
    assert "KeyError: 'account 7'" in rec.stopped_reason
    assert handler_store.list_dead_letters() == []

    seen = len(ledger.seen)
    r.run_until_idle()  # a stopped handler is not taken by any runner
    assert len(ledger.seen) == seen

    ledger.broken = False
    assert r.resume("ledger")
    r.run_until_idle()
    assert ledger.seen[seen:] == [e.position for e in appended[2:]]
    rec = record(handler_store, "ledger")
    assert (rec.status, rec.stopped_reason, rec.last_error) == ("running", None, None)
    with pytest.raises(HandlerNotFoundError):
        r.resume("nope")


# --- reset and rebuild ----------------------------------------------------------------------------


def test_reset_rebuilds_a_projection_to_the_same_table(
    events: EventStore, handler_store: HandlerStore
) -> None:
    appended = append(events, 40, streams=5)
    r = runner(events, handler_store, Counts())
    r.run_until_idle()
    before = counts(events)
    assert before == expected_counts(appended)

    with pytest.raises(HandlerUsageError, match="is a projection"):
        reset_handler(events, handler_store, "counts")  # its table would count twice
    with pytest.raises(HandlerNotFoundError):
        reset_handler(events, handler_store, "no_such_handler")

    r.reset("counts")
    assert counts(events) == {} and events.get_checkpoint("counts") == 0
    r.run_until_idle()
    assert counts(events) == before


def test_a_projection_without_tables_refuses_a_reset_that_would_count_twice(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Untabled(Projection):
        name = "untabled"

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None: ...

    with pytest.raises(HandlerUsageError, match="names no tables"):
        reset_handler(events, handler_store, Untabled())
    assert events.get_checkpoint("untabled") == 0


async def test_a_projection_whose_setup_fails_handles_nothing(
    events: EventStore, handler_store: HandlerStore, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(Counts):
        name = "broken_schema"
        schema = "CREATE TABLE IF NOT EXISTS broken ("

    append(events, 3)
    r = runner(events, handler_store, Broken())
    task = asyncio.create_task(r.run())
    try:
        # Each try logs a line: after the third, the runner has gone round twice more and
        # still handled nothing (a batch between two tries would have come before the line).
        await wait_until_async(
            lambda: [line for line in caplog.records if "setup(tx) failed" in line.getMessage()][
                2:
            ],
            what="the third failed setup(tx)",
        )
    finally:
        r.stop()
        await task
    assert r.handled == 0 and events.get_checkpoint("broken_schema") == 0
    assert handler_store.list_dead_letters() == []  # not one dead letter per event


def test_a_plain_handler_is_reset_by_name(events: EventStore, handler_store: HandlerStore) -> None:
    appended = append(events, 6)
    first = Recorder()
    runner(events, handler_store, first).run_until_idle()
    reset_handler(events, handler_store, "recorder")
    again = Recorder()
    runner(events, handler_store, again).run_until_idle()
    assert again.seen == first.seen == [e.position for e in appended]


async def test_a_reset_while_the_projection_runs_still_ends_exactly_right(
    events: EventStore, handler_store: HandlerStore
) -> None:
    appended = append(events, 60, streams=4)
    r = runner(events, handler_store, Counts())
    task = asyncio.create_task(r.run())
    try:
        await wait_until_async(
            lambda: events.get_checkpoint("counts") > 0, what="a first batch committed"
        )
        await asyncio.to_thread(r.reset, "counts")
        appended += append(events, 10, start=60, streams=4)
        await wait_until_async(
            lambda: events.get_checkpoint("counts") == appended[-1].position,
            what="the projection caught up after the reset",
        )
    finally:
        r.stop()
        await task
    assert counts(events) == expected_counts(appended)
    assert handler_store.list_dead_letters() == []


# --- one worker per handler -----------------------------------------------------------------------


def test_a_lease_keeps_a_handler_on_one_worker_until_it_expires(
    events: EventStore, handler_store: HandlerStore, clock: ManualClock
) -> None:
    assert handler_store.acquire("recorder", "handler", "worker-a", 30) is not None
    assert handler_store.acquire("recorder", "handler", "worker-b", 30) is None
    assert handler_store.renew(["recorder"], "worker-a", 30) == {"recorder"}
    clock.advance(31)
    assert handler_store.acquire("recorder", "handler", "worker-b", 30) is not None
    # worker-a comes back from a long pause: it cannot renew, and cannot commit a batch.
    assert handler_store.renew(["recorder"], "worker-a", 30) == set()
    lost = "'recorder' is no longer held by worker 'worker-a'"
    with pytest.raises(LeaseLostError, match=lost), events.transaction() as tx:
        handler_store.hold(tx, "recorder", "worker-a", 30)
    handler_store.release(["recorder"], "worker-b")
    assert handler_store.acquire("recorder", "handler", "worker-a", 30) is not None


def test_a_handler_held_by_a_dead_worker_is_taken_over_after_its_lease(
    events: EventStore, handler_store: HandlerStore, clock: ManualClock
) -> None:
    handler_store.acquire("recorder", "handler", "dead-worker", 30)
    appended = append(events, 5)
    handler = Recorder()
    r = runner(events, handler_store, handler)
    r.run_until_idle()  # held elsewhere: nothing to do here
    assert handler.seen == []
    clock.advance(31)
    r.run_until_idle()
    assert handler.seen == [e.position for e in appended]


def test_two_runners_never_run_one_handler_at_once(
    open_events: OpenStore, open_handlers: OpenHandlerStore, clock: ManualClock
) -> None:
    class Exclusive(Projection):
        name = "exclusive"
        batch_size = 5
        max_attempts = 1
        tables = "exclusive_seen"
        schema = (
            "CREATE TABLE IF NOT EXISTS exclusive_seen (position BIGINT PRIMARY KEY, "
            "runner TEXT NOT NULL)"
        )
        lock = threading.Lock()
        active = 0
        most = 0

        def __init__(self, tag: str) -> None:
            self.tag = tag

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            cls = type(self)
            with cls.lock:
                cls.active += 1
                cls.most = max(cls.most, cls.active)
            time.sleep(0.001)
            ctx.execute(
                "INSERT INTO exclusive_seen (position, runner) VALUES (%(p)s, %(r)s)",
                {"p": event.position, "r": self.tag},
            )
            with cls.lock:
                cls.active -= 1

    # Leases run on the test's ManualClock (every store below shares it): they expire only
    # when the test moves the clock, never because a loaded machine was slow.
    ttl = 0.6
    options = HandlerRunnerOptions(
        poll_interval=0.02, lease_ttl=ttl, heartbeat_interval=0.05, acquire_interval=0.05
    )
    writer = open_events()
    writer.migrate()
    runners = {
        tag: HandlerRunner(
            open_events(), open_handlers(), [Exclusive(tag)], worker_id=tag, options=options
        )
        for tag in ("a", "b")
    }
    threads = {
        tag: threading.Thread(target=lambda r=r: asyncio.run(r.run()), daemon=True)
        for tag, r in runners.items()
    }
    for t in threads.values():
        t.start()
    store = open_handlers()
    try:
        appended = append(writer, 60)
        wait_until(
            lambda: writer.get_checkpoint("exclusive") == appended[-1].position,
            what="every event handled",
        )
        owner = record(store, "exclusive").owner
        assert owner in runners
        # The heartbeat keeps the lease with its owner: three times the clock moves half a
        # lease on, and each time the owner renews before the lease runs out (1.5 leases in
        # all: without renewals the other runner, trying every 50 ms, would have taken it).
        for _ in range(3):
            clock.advance(ttl / 2)
            renewed_after = clock.now() + timedelta(seconds=ttl / 2)

            def renewed(after: datetime = renewed_after) -> bool:
                expires = record(store, "exclusive").lease_expires_at
                return expires is not None and expires > after

            wait_until(renewed, what="the owner's heartbeat renewing its lease")
            assert record(store, "exclusive").owner == owner
        appended += append(writer, 60, start=60)
        wait_until(
            lambda: writer.get_checkpoint("exclusive") > appended[70].position,
            what="the second burst under way",
        )
        runners[owner].stop()  # a graceful stop releases the lease: the other takes over
        threads[owner].join(timeout=10)
        appended += append(writer, 30, start=120)
        wait_until(
            lambda: writer.get_checkpoint("exclusive") == appended[-1].position,
            what="every event handled",
        )
        assert record(store, "exclusive").owner == ({"a", "b"} - {owner}).pop()
    finally:
        for r in runners.values():
            r.stop()
        for t in threads.values():
            t.join(timeout=10)
    assert Exclusive.most == 1
    rows = query(writer, "SELECT position, runner FROM exclusive_seen")
    assert sorted(p for p, _ in rows) == [e.position for e in appended]
    assert {tag for _, tag in rows} == {"a", "b"}
    assert store.list_dead_letters() == []


def spawn_worker(db_url: str, ttl: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.events.handler_worker", db_url, str(ttl)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_a_sigkilled_worker_is_replaced_after_its_lease_and_counts_stay_exact(
    db_url: str, open_events: OpenStore, open_handlers: OpenHandlerStore
) -> None:
    events = open_events(clock=SystemClock())
    events.migrate()
    store = open_handlers(clock=SystemClock())
    appended = append(events, 200, streams=7)
    first = spawn_worker(db_url, ttl=1.0)
    try:
        wait_until(
            lambda: events.get_checkpoint("tally") >= appended[40].position,
            what="the first worker 40 events in",
        )
        os.kill(first.pid, signal.SIGKILL)  # in the middle of a batch, most likely
        first.wait(timeout=10)
    finally:
        first.kill()
    killed_at = events.get_checkpoint("tally")
    assert killed_at < appended[-1].position, "the first worker must not have finished"
    assert record(store, "tally").owner == f"worker-{first.pid}"  # its lease outlives it
    second = spawn_worker(db_url, ttl=1.0)
    try:
        wait_until(
            lambda: events.get_checkpoint("tally") == appended[-1].position,
            what="the second worker done with every event",
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    assert second.returncode == 0
    seen = query(events, "SELECT position, worker FROM tally_seen")
    assert sorted(p for p, _ in seen) == [e.position for e in appended]  # each exactly once
    assert {w for _, w in seen} == {f"worker-{first.pid}", f"worker-{second.pid}"}
    totals = dict(query(events, "SELECT stream, n FROM tally_totals"))
    assert totals == {s: n for s, (n, _) in expected_counts(appended).items()}
    assert store.list_dead_letters() == []
    assert record(store, "tally").owner is None  # released on SIGTERM


# --- definitions and context ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"name": "Bad Name"}, "name 'Bad Name' is invalid"),
        ({"event_types": "A"}, "write ['A']"),
        ({"event_types": [""]}, "event type must not be empty"),
        ({"max_attempts": 0}, "max_attempts must be an int >= 1"),
        ({"base_delay": -1}, "base_delay must be a number of seconds >= 0"),
        ({"on_failure": "ignore"}, "on_failure must be 'dead_letter' or 'stop'"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
    ],
)
def test_handler_options_are_checked_when_the_class_is_defined(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(HandlerDefinitionError, match=message.replace("[", r"\[")):
        type("Bad", (EventHandler,), options)


def test_handler_names_default_to_the_class_name_and_must_be_unique() -> None:
    class OrderEmails(EventHandler):
        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None: ...

    assert OrderEmails.name == "order_emails"
    with pytest.raises(HandlerDefinitionError, match="a projection must be transactional"):
        type("Loose", (Projection,), {"transactional": False})
    with pytest.raises(HandlerDefinitionError, match="not a plain SQL identifier"):
        type("Odd", (Projection,), {"tables": "drop table x;"})
    with pytest.raises(HandlerDefinitionError, match="does not define handle"):
        HandlerRunner(None, None, [EventHandler()])  # type: ignore[arg-type]
    with pytest.raises(HandlerDefinitionError, match="two handlers are named 'order_emails'"):
        HandlerRunner(None, None, [OrderEmails, OrderEmails()])  # type: ignore[arg-type]


def test_ctx_execute_takes_one_placeholder_style_on_both_backends(
    events: EventStore, handler_store: HandlerStore
) -> None:
    class Notes(Projection):
        name = "notes"
        tables = "notes"
        schema = {
            "sqlite": "CREATE TABLE IF NOT EXISTS notes (p INTEGER PRIMARY KEY, t TEXT)",
            "postgresql": "CREATE TABLE IF NOT EXISTS notes (p bigint PRIMARY KEY, t text)",
        }

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            assert ctx.dialect == ("sqlite" if events.url.startswith("sqlite") else "postgresql")
            ctx.execute("INSERT INTO notes (p, t) VALUES (%s, '100%%')", (event.position,))
            ctx.execute(
                "UPDATE notes SET t = t || %(suffix)s WHERE p = %(p)s",
                {"suffix": " sure", "p": event.position},
            )

    append(events, 2)
    runner(events, handler_store, Notes()).run_until_idle()
    assert [r[0] for r in query(events, "SELECT t FROM notes")] == ["100% sure"] * 2


def test_run_until_idle_on_a_database_nobody_migrated_says_so_instead_of_waiting(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A script's ``run_until_idle`` (issue 12: it waited forever, logging every second): a
    serving runner waits for a migration, a run until idle raises ``SchemaNotReadyError``."""
    from tideflow.errors import SchemaNotReadyError
    from tideflow.storage import open_event_store

    def check(url: str) -> None:
        events, handlers = open_event_store(url), open_handler_store(url)
        try:
            with pytest.raises(SchemaNotReadyError, match="tideflow migrate"):
                HandlerRunner(events, handlers, [Recorder()]).run_until_idle()
        finally:
            events.close()
            handlers.close()

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'never-migrated.db'}")
        return
    from tests.pgdb import empty_database

    with empty_database(request.getfixturevalue("pg_url")) as bare:
        check(bare)
