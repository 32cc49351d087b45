"""Plain ``def`` steps: the threads that run them (``StepThreads``) and the worker's separate
limit for them (``WorkerOptions.step_threads``), on both backends."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

from tests.polling import wait_until
from tideflow import App, Flow, step
from tideflow.storage.flow_contract import ClaimedTask, ClaimRequest, TaskCompletion
from tideflow.worker.threads import StepThreads
from tideflow.worker.worker import DEF_TASKS_PER_THREAD

# --- StepThreads --------------------------------------------------------------------------------


def test_results_errors_and_the_callers_context_come_back_to_the_loop() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")

    async def main() -> None:
        threads = StepThreads(asyncio.get_running_loop(), 4, "test-step")
        try:
            var.set("the caller's")
            context = contextvars.copy_context()
            assert await threads.submit(lambda: context.run(var.get)) == "the caller's"
            results = await asyncio.gather(*(threads.submit(lambda i=i: i * i) for i in range(500)))
            assert results == [i * i for i in range(500)]
            assert threads.threads <= 4

            def boom() -> None:
                raise ValueError("boom")

            with pytest.raises(ValueError, match="boom"):
                await threads.submit(boom)

            def stop() -> None:
                raise StopIteration

            with pytest.raises(RuntimeError, match="StopIteration"):
                await threads.submit(stop)
        finally:
            threads.close()

    asyncio.run(main())


def test_a_cancelled_call_is_dropped_and_close_ends_idle_threads() -> None:
    ran: list[int] = []
    gate = threading.Event()

    async def main() -> None:
        threads = StepThreads(asyncio.get_running_loop(), 1, "test-step")
        first = threads.submit(lambda: gate.wait(10))
        queued = threads.submit(lambda: ran.append(1))
        queued.cancel()
        gate.set()
        assert await first is True
        assert await threads.submit(lambda: 2) == 2
        threads.close()
        with pytest.raises(RuntimeError, match="closed"):
            threads.submit(lambda: 3)

    asyncio.run(main())
    assert ran == []  # cancelled while queued: never run
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("test-step")],
        what="the idle threads to end",
    )


def test_start_starts_every_thread_up_front_and_they_serve_calls() -> None:
    async def main() -> None:
        threads = StepThreads(asyncio.get_running_loop(), 3, "test-start")
        await asyncio.to_thread(threads.start)
        assert threads.threads == 3
        names = await asyncio.gather(
            *(threads.submit(lambda: threading.current_thread().name) for _ in range(50))
        )
        assert set(names) <= {"test-start-0", "test-start-1", "test-start-2"}
        assert threads.threads == 3  # none started on demand beyond them
        threads.close()

    asyncio.run(main())
    wait_until(
        lambda: not [t for t in threading.enumerate() if t.name.startswith("test-start")],
        what="the started threads to end",
    )


def test_the_pace_is_the_calls_average_and_rises_while_every_thread_is_held() -> None:
    """``pace`` is None before any call ends, then the calls' moving average; while every
    thread is busy it is at least as long as the youngest running call has run, before that
    call returns - a quick step that starts to block stops looking quick at once."""
    gate = threading.Event()

    async def main() -> None:
        threads = StepThreads(asyncio.get_running_loop(), 2, "test-step")
        try:
            assert threads.pace() is None
            await asyncio.gather(*(threads.submit(lambda: None) for _ in range(200)))
            quick = threads.pace()
            assert quick is not None and quick < 0.01, quick
            held = [threads.submit(lambda: gate.wait(10)) for _ in range(2)]
            await asyncio.sleep(0.2)
            pace = threads.pace()
            assert pace is not None and pace >= 0.15, pace  # both threads held for 0.2 s
            gate.set()
            await asyncio.gather(*held)
            after = threads.pace()  # the average again, the two long calls in it
            assert after is not None and quick < after < pace, (quick, after, pace)
        finally:
            gate.set()
            threads.close()

    asyncio.run(main())


# --- the worker's limit for def steps ---------------------------------------------------------

PEAK = {"now": 0, "max": 0}
BEGUN: set[int] = set()
LOCK = threading.Lock()


class Blocking(Flow, slug="blocking_def", max_attempts=1):
    @step(map=True)
    def hold(self, item: Any) -> int:
        with LOCK:
            BEGUN.add(int(item))
            PEAK["now"] += 1
            PEAK["max"] = max(PEAK["max"], PEAK["now"])
        time.sleep(0.05)
        with LOCK:
            PEAK["now"] -= 1
        return int(item)


class Quick(Flow, slug="quick_async", max_attempts=1):
    @step(map=True)
    async def echo(self, item: Any) -> int:
        return int(item)


def test_def_steps_run_on_step_threads_and_the_worker_holds_at_most_twice_as_many(
    app: App,
) -> None:
    """With 2 threads and concurrency 100, at most 2 def steps run at once and at most 8 def
    tasks are held for the threads (DEF_TASKS_PER_THREAD x 2; claimed and not yet begun: at
    most 6, counted loosely as 8) - while async tasks of another flow are still claimed."""
    PEAK.update(now=0, max=0)
    BEGUN.clear()
    app.register(Blocking)
    app.register(Quick)
    blocking = app.start_flow(Blocking, list(range(40)))
    quick = app.start_flow(Quick, list(range(200)))
    worker = app.worker(concurrency=100, step_threads=2, poll_interval=0.02)
    waiting: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            run = app.get_run(blocking)
            claimed = {t.task_index for t in run.step("hold").tasks if t.status == "started"}
            with LOCK:  # read after the run: a task begun meanwhile only lowers the count
                waiting.append(len(claimed - BEGUN))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()

    async def drive() -> None:
        task = asyncio.create_task(worker.run(until_idle=True))
        # The async flow finishes while the def one still has most of its 40 x 50 ms to go.
        await asyncio.to_thread(
            wait_until,
            lambda: app.get_run(quick).status == "completed",
            what="the async flow to complete",
            timeout=60,
        )
        assert app.get_run(blocking).status == "started"
        await task

    try:
        asyncio.run(drive())
    finally:
        done.set()
        watcher.join(10)
    assert app.get_run(blocking).output == {"hold": list(range(40))}
    assert PEAK["max"] <= 2
    assert max(waiting) <= DEF_TASKS_PER_THREAD * 2, max(waiting)


class QuickDef(Flow, slug="quick_def", max_attempts=1):
    @step(map=True)
    def echo(self, item: Any) -> int:
        return int(item)


def test_quick_def_steps_are_claimed_in_large_batches_once_their_pace_is_known(app: App) -> None:
    """With one step thread the floor is DEF_TASKS_PER_THREAD tasks: the first claim (the
    steps' pace unknown) takes no more; once the steps have shown they are quick, the worker
    holds as many as its concurrency, as it would ``async def`` ones."""
    app.register(QuickDef)
    run_id = app.start_flow(QuickDef, list(range(600)))
    worker = app.worker(concurrency=200, step_threads=1, poll_interval=0.02)
    limits: list[int] = []
    store: Any = worker.store
    claim_tasks, complete_tasks = store.claim_tasks, store.complete_tasks

    def claim(worker_id: str, flows: list[str], limit: int, lease: float) -> list[ClaimedTask]:
        limits.append(limit)
        claimed: list[ClaimedTask] = claim_tasks(worker_id, flows, limit, lease)
        return claimed

    def complete(
        worker_id: str, completions: list[TaskCompletion], claim: ClaimRequest | None
    ) -> list[ClaimedTask]:
        if claim is not None:
            limits.append(claim.limit)
        claimed: list[ClaimedTask] = complete_tasks(worker_id, completions, claim)
        return claimed

    store.claim_tasks, store.complete_tasks = claim, complete
    try:
        asyncio.run(worker.run(until_idle=True))
    finally:
        del store.claim_tasks, store.complete_tasks
    assert app.get_run(run_id).output == {"echo": list(range(600))}
    assert limits[0] <= DEF_TASKS_PER_THREAD, limits
    assert max(limits) >= 100, limits
