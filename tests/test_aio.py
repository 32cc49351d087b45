"""Waiting for runs without holding threads, and a worker inside a running event loop (issue 12,
items 2 and 3), on both backends.

A wait parks until the transaction that ends its run wakes it (NOTIFY on PostgreSQL, the commit
on SQLite) and only the waiters of the runs that ended read again. The tests that show waking
by notification set the fallback poll far beyond their timeout, so that polling cannot pass
them.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.flows.driving import W, claim, done
from tests.polling import wait_until
from tests.threads import in_thread
from tideflow import App, Flow, step
from tideflow.events import RecordedEvent
from tideflow.events.handling import EventHandler, HandlerContext
from tideflow.events.model import ExpectedVersion, NewEvent
from tideflow.runtime import waiting
from tideflow.storage.flow_contract import RunRecord, TaskCompletion
from tideflow.storage.flow_store import SqlFlowStore

ROOT = Path(__file__).resolve().parent.parent


class Trio(Flow, slug="trio"):
    @step()
    async def a(self, input: Any) -> int:
        return int(input)

    @step(depends_on=["a"])
    async def b(self, a: int) -> int:
        return a + 1

    @step(depends_on=["b"])
    async def c(self, b: int) -> int:
        return b * 2


class Single(Flow, slug="single"):
    @step()
    async def only(self, input: Any) -> Any:
        return input


SEEN: list[str] = []


class Seen(EventHandler):
    name = "seen"
    event_types = ("Ping",)

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        SEEN.append(event.data["id"])


@pytest.fixture
def flows_app(db_url: str) -> Iterator[App]:
    a = App(db_url, flows=[Trio, Single], handlers=[Seen])
    a.migrate()
    SEEN.clear()
    yield a
    a.close()


@pytest.fixture
def no_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waits look for themselves only after a minute: what wakes them sooner is a notification."""
    monkeypatch.setattr(waiting, "FALLBACK_POLL", 60.0)


FAST = {"poll_interval": 0.05, "concurrency": 32}


def _flow_store(app: App) -> SqlFlowStore:
    store = app.store
    assert isinstance(store, SqlFlowStore)
    return store


class Turn(NamedTuple):
    """One answer of the event loop: how late it came (``late``) and how much of that the loop's
    thread spent runnable but without a CPU (``no_cpu``: the OS's run queue, which a machine
    loaded by other processes lengthens, and no code in this process can shorten)."""

    late: float
    no_cpu: float

    @property
    def own(self) -> float:
        """The lateness that is this process's doing: its callbacks, its other threads' hold
        on the GIL."""
        return max(0.0, self.late - self.no_cpu)


def _waited_for_cpu() -> Callable[[], float]:
    """Seconds the calling thread has spent waiting for a CPU so far (Linux's schedstat), or
    a function returning 0 where the system does not say."""
    path = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
    try:
        path.read_text()
    except OSError:
        return lambda: 0.0
    return lambda: int(path.read_text().split()[1]) / 1e9


async def _pings(stop: asyncio.Event, turns: list[Turn], hops: list[float]) -> None:
    """Until ``stop``, every 10 ms: how late the loop answers - a 10 ms sleep's lateness past
    its due time and a ``call_soon`` round trip, the larger (``turns``) - and how long a call
    in the default executor's thread takes (``hops``: what a FastAPI endpoint with a blocking
    call needs; waits that held threads would queue it behind them for seconds)."""
    loop = asyncio.get_running_loop()
    no_cpu = _waited_for_cpu()
    while not stop.is_set():
        due = loop.time() + 0.01
        before = no_cpu()
        await asyncio.sleep(0.01)
        late = loop.time() - due
        asked = loop.time()
        answered = loop.create_future()
        loop.call_soon(answered.set_result, None)
        await answered
        turns.append(Turn(max(late, loop.time() - asked), no_cpu() - before))
        asked = loop.time()
        await asyncio.to_thread(int)
        hops.append(loop.time() - asked)


async def _until(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_thousand_async_waits_hold_no_thread_and_leave_the_loop_free(
    flows_app: App,
) -> None:
    """1,000 waits in flight: each is a parked coroutine (a watched run, no thread); the event
    loop answers within 50 ms every time - while the waits start and look at their runs, and
    while a worker process ends the runs and wakes them (batches of up to 64 runs per
    notification: ``runtime/waiting.py`` wakes them and reads their runs in chunks) - and
    every wait returns its completed run."""
    run_ids = await flows_app.aio.start_flows(Single, [{"i": i} for i in range(1000)])
    watch = _flow_store(flows_app)._run_watch
    # The heap that pytest and the tests before this one left is this process's, not the
    # waits': frozen, the collector's full passes - which waits' garbage still triggers - scan
    # only what was made since (a service does the same after its start-up with gc.freeze).
    # Unfrozen, one such pass over the whole suite's heap takes 40-120 ms here by itself.
    gc.collect()
    gc.freeze()
    try:
        await _thousand_waits(flows_app, run_ids, watch)
    finally:
        gc.unfreeze()


async def _thousand_waits(flows_app: App, run_ids: list[str], watch: Any) -> None:
    threads_before = threading.active_count()
    stop, turns, hops = asyncio.Event(), list[Turn](), list[float]()
    pinger = asyncio.create_task(_pings(stop, turns, hops))
    waits = []
    for i in range(0, 1000, 50):  # as requests come in, not all in one tick of the loop
        waits += [
            asyncio.create_task(flows_app.aio.wait_for_run(r, timeout=120))
            for r in run_ids[i : i + 50]
        ]
        await asyncio.sleep(0)
    await _until(lambda: watch.watching() == 1000)
    parked_threads = threading.active_count()
    await asyncio.sleep(0.2)  # parked: the loop has nothing to do for them
    worker = _worker_process(flows_app.database_url)
    try:
        runs = await asyncio.gather(*waits)
    finally:
        worker.terminate()
        await asyncio.to_thread(worker.wait, 30)
        stop.set()
        await pinger
    assert all(r.status == "completed" for r in runs)
    assert [r.output["only"]["i"] for r in runs] == list(range(1000))
    # A listener or watcher thread and the default executor's few threads: not one per wait.
    assert parked_threads - threads_before < 20, (threads_before, parked_threads)
    assert watch.watching() == 0
    hops.sort()
    worst = max(turns, key=lambda t: t.late)
    own = max(t.own for t in turns)
    print(
        f"loop answers: {len(turns)}, slowest {worst.late * 1000:.1f} ms ({worst.no_cpu * 1000:.1f}"
        f" waiting for a CPU), slowest without that {own * 1000:.1f} ms; p95 "
        f"{sorted(t.late for t in turns)[int(len(turns) * 0.95)] * 1000:.1f} ms; thread calls: "
        f"p95 {hops[int(len(hops) * 0.95)] * 1000:.1f} ms, slowest {hops[-1] * 1000:.1f} ms"
    )
    assert len(turns) > 5
    # Every answer within 50 ms, but for the time the OS kept the loop's thread from a CPU:
    # other processes on a loaded 2-core machine make that tens of milliseconds now and then,
    # whatever this process does.
    assert own < 0.05, f"the loop answered {own * 1000:.0f} ms late (with a CPU)"
    assert worst.late < 1.0, worst
    late_p95 = sorted(t.late for t in turns)[int(len(turns) * 0.95)]
    assert late_p95 < 0.05, f"the 95th percentile answer came {late_p95 * 1000:.0f} ms late"
    # A thread's answer also needs the OS to schedule it, which a loaded 2-core machine does
    # not promise within 50 ms: the slowest twentieth may take up to a second (a thread held
    # per wait would hold it up for the whole wait).
    assert hops[-1] < 1.0, hops[-5:]
    slow = hops[int(len(hops) * 0.95)]
    assert slow < 0.05, f"the 95th percentile call in a thread took {slow * 1000:.0f} ms"


async def test_only_the_waiters_of_ended_runs_read_again(
    flows_app: App, no_fallback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _flow_store(flows_app)
    reads: list[str] = []
    read = store.look_runs_async

    async def counting(run_ids: Sequence[str]) -> dict[str, RunRecord]:
        reads.extend(run_ids)
        return await read(run_ids)

    monkeypatch.setattr(store, "look_runs_async", counting)
    run_ids = flows_app.start_flows(Single, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    waits = {r: asyncio.create_task(flows_app.aio.wait_for_run(r, timeout=30)) for r in run_ids}
    await _until(lambda: store._run_watch.watching() == 10)
    await _until(lambda: len(reads) == 10)  # each waiter's first look
    tasks = store.claim_tasks(W, ["single"], 100, 30)
    first = next(t for t in tasks if t.key.run_id == run_ids[0])
    await asyncio.to_thread(done, store, first, 1)
    run = await waits[run_ids[0]]
    assert run.status == "completed" and run.output == {"only": 1}
    await asyncio.sleep(0.2)  # a wake-up of the others would have read by now
    assert reads[10:] == [run_ids[0]]
    assert not any(waits[r].done() for r in run_ids[1:])
    rest = [TaskCompletion(t.key, t.attempt, "0") for t in tasks if t is not first]
    await asyncio.to_thread(store.complete_tasks, W, rest)
    assert {(await waits[r]).status for r in run_ids[1:]} == {"completed"}


def test_a_blocking_wait_wakes_on_the_commit(flows_app: App, no_fallback: None) -> None:
    run_id = flows_app.start_flow(Trio, 3)
    worker = flows_app.worker(**FAST)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        run = flows_app.wait_for_run(run_id, timeout=30)
    finally:
        worker.stop()
        thread.join()
    assert run.status == "completed" and run.output == {"c": 8}
    assert [s.status for s in run.steps] == ["completed"] * 3


@pytest.mark.parametrize("how", ["blocking", "async"])
def test_waits_wake_on_a_worker_in_another_process(
    flows_app: App, db_url: str, no_fallback: None, how: str
) -> None:
    """The end reaches a waiter through the database: LISTEN/NOTIFY, or SQLite's watcher."""
    run_ids = [flows_app.start_flow(Trio, i) for i in range(3)]
    worker = _worker_process(db_url)
    try:
        if how == "blocking":
            runs = [flows_app.wait_for_run(r, timeout=30) for r in run_ids]
        else:

            async def wait_all() -> list[RunRecord]:
                return list(
                    await asyncio.gather(
                        *(flows_app.aio.wait_for_run(r, timeout=30) for r in run_ids)
                    )
                )

            runs = asyncio.run(wait_all())
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert [r.output for r in runs] == [{"c": (i + 1) * 2} for i in range(3)]


WORKER_SCRIPT = """
import sys
from tests.test_aio import Trio, Single
from tideflow import App
App(sys.argv[1], flows=[Trio, Single]).run_worker(poll_interval=0.05, concurrency=64)
"""


def _worker_process(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WORKER_SCRIPT, url], cwd=ROOT)


async def test_a_batch_too_long_for_one_notification_wakes_every_waiter(
    flows_app: App, no_fallback: None
) -> None:
    """300 runs with 60-character ids end in one transaction: their ids would not fit in one
    NOTIFY (8000 bytes), so it goes out empty and the waiters check with one query."""
    ids = [f"{i:04d}-" + "x" * 55 for i in range(300)]
    flows_app.start_flows(Single, list(range(300)), run_ids=ids)
    store = _flow_store(flows_app)
    waits = [asyncio.create_task(flows_app.aio.wait_for_run(r, timeout=30)) for r in ids]
    await _until(lambda: store._run_watch.watching() == 300)
    tasks = store.claim_tasks(W, ["single"], 500, 30)
    assert len(tasks) == 300
    completions = [TaskCompletion(t.key, t.attempt, "1") for t in tasks]
    await asyncio.to_thread(store.complete_tasks, W, completions)
    assert {r.status for r in await asyncio.gather(*waits)} == {"completed"}


async def test_woken_waits_read_their_runs_together(
    flows_app: App, no_fallback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """300 waits whose runs end in one transaction read them in a few batched reads (each run
    whole, with its steps), not in 300 - and so did their first looks."""
    store = _flow_store(flows_app)
    batches: list[int] = []
    read = store.look_runs_async

    async def counting(run_ids: Sequence[str]) -> dict[str, RunRecord]:
        batches.append(len(run_ids))
        return await read(run_ids)

    monkeypatch.setattr(store, "look_runs_async", counting)
    run_ids = flows_app.start_flows(Single, list(range(300)))
    waits = [asyncio.create_task(flows_app.aio.wait_for_run(r, timeout=30)) for r in run_ids]
    await _until(lambda: store._run_watch.watching() == 300 and sum(batches) == 300)
    first_looks = len(batches)
    tasks = store.claim_tasks(W, ["single"], 500, 30)
    completions = [TaskCompletion(t.key, t.attempt, "1") for t in tasks]
    await asyncio.to_thread(store.complete_tasks, W, completions)
    runs = await asyncio.gather(*waits)
    assert [r.status for r in runs] == ["completed"] * 300
    assert all(len(r.steps) == 1 and r.steps[0].output == 1 for r in runs)
    assert first_looks <= 6, batches
    assert sum(batches[first_looks:]) == 300 and len(batches) - first_looks <= 8, batches


@pytest.mark.parametrize("end", ["cancel", "fail"])
def test_a_wait_wakes_when_its_run_is_cancelled_or_fails(
    flows_app: App, no_fallback: None, end: str
) -> None:
    from tests.flows.driving import fail

    run_id = flows_app.start_flow(Trio, 1)
    store = _flow_store(flows_app)

    def finish() -> None:
        wait_until(lambda: store._run_watch.watching() == 1, what="the wait to park")
        if end == "cancel":
            flows_app.cancel_run(run_id)
        else:
            fail(store, claim(store, "trio")[("a", 0)])

    thread, result = in_thread(finish)
    run = flows_app.wait_for_run(run_id, timeout=30)
    thread.join()
    assert "error" not in result
    assert run.status == ("cancelled" if end == "cancel" else "failed")


async def test_a_worker_runs_flows_and_handlers_inside_a_running_loop(flows_app: App) -> None:
    """``async with app.aio.worker()``: flows and handlers run in this very loop (pytest-asyncio's),
    which ``run_worker()`` - ``asyncio.run`` - cannot do."""
    async with flows_app.aio.worker(poll_interval=0.05) as serving:
        run_id = await flows_app.aio.start_flow(Trio, 5)
        await asyncio.to_thread(
            flows_app.event_store.append,
            "pings",
            [NewEvent("Ping", {"id": "p1"})],
            ExpectedVersion.ANY,
        )
        run = await flows_app.aio.wait_for_run(run_id, timeout=30)
        await _until(lambda: SEEN == ["p1"])
    assert run.output == {"c": 12}
    assert serving.stopped and serving.worker.stopping


async def test_run_worker_until_idle_inside_a_running_loop(flows_app: App) -> None:
    run_id = await flows_app.aio.start_flow(Trio, 1)
    flows_app.event_store.append("pings", [NewEvent("Ping", {"id": "p2"})], ExpectedVersion.ANY)
    await flows_app.aio.run_worker(until_idle=True, poll_interval=0.05)
    assert (await flows_app.aio.get_run(run_id)).output == {"c": 4}
    assert SEEN == ["p2"]


async def test_cancelling_the_worker_task_stops_it_gracefully(flows_app: App) -> None:
    task = asyncio.create_task(flows_app.aio.run_worker(poll_interval=0.05))
    run_id = await flows_app.aio.start_flow(Trio, 2)
    assert (await flows_app.aio.wait_for_run(run_id, timeout=30)).output == {"c": 6}
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_async_reads_match_the_blocking_ones(flows_app: App) -> None:
    run_id = await flows_app.aio.start_flow(Trio, 7)
    await flows_app.aio.run_worker(until_idle=True, poll_interval=0.05)
    assert await flows_app.aio.get_run(run_id) == flows_app.get_run(run_id)
    assert await flows_app.aio.list_runs(flow=Trio) == flows_app.list_runs(flow=Trio)
    assert await flows_app.aio.list_runs(status="started") == []


async def test_async_waits_refuse_bad_input_and_time_out(flows_app: App) -> None:
    from tideflow import RunNotFoundError, RunTimeoutError
    from tideflow.errors import InvalidDataError

    with pytest.raises(InvalidDataError, match="run_id"):
        await flows_app.aio.wait_for_run("", timeout=1)
    with pytest.raises(RunNotFoundError, match="nope"):
        await flows_app.aio.wait_for_run("nope", timeout=1)
    run_id = await flows_app.aio.start_flow(Trio, 1)
    with pytest.raises(RunTimeoutError, match=run_id):
        await flows_app.aio.wait_for_run(run_id, timeout=0.2)
    assert _flow_store(flows_app)._run_watch.watching() == 0
