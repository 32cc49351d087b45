"""The worker: claims tasks, runs them, records outcomes.

Shape of the loop (one asyncio task each):

* **claimer** - claims as many tasks as there are free slots, in one statement; sleeps until a
  slot frees, a NOTIFY (or in-process signal) says tasks are ready, or the poll interval passes.
  The slots are ``concurrency`` (1,000 by default: a claim and a commit cost a round trip
  whatever their size, so the batch must be allowed to grow); ``def`` steps have their own,
  smaller limit (``step_threads``, see ``WorkerOptions``).
* **one task per claimed task** - runs the step under its timeout: ``async def`` steps on the
  loop, plain ``def`` ones on ``StepThreads`` (``tideflow.worker.threads``).
* **flusher** - commits completions in batches: while one batch commits, the next accumulates
  (group commit), so throughput rises with load without adding latency when idle. A completion
  is only acknowledged once committed; if the process dies first, the task's lease expires and it
  runs again - at least once, never lost.
* **heartbeat** - extends the leases of tasks still running.
* **reaper** - retries or fails tasks whose lease expired (their worker died).
* **scheduler** - when the app declares cron schedules, fires their due ticks every
  ``schedule_interval`` (each tick once across all workers: ``storage/schedule_store.py``).

The database going away (a server restart, a lost connection, a SQLite file locked by another
process) stops none of them: each waits it out with backoff (``tideflow.worker.outage``), logging
one warning per outage. A batch of completions that could not be committed is kept and committed
when the database is back; repeating it is safe because ``complete_tasks`` only completes the
worker's own still-started attempt, so a batch whose COMMIT did land before the connection
dropped changes nothing the second time. A batch the database refuses for its content (a step
output PostgreSQL's jsonb will not take) is split in halves until the healthy completions commit;
the completion it refuses fails its task at once, without retries, with the error's message.
Any other exception is a bug: the worker stops (gracefully) and ``run()`` raises it.

Shutdown (``stop()``, SIGINT/SIGTERM through ``App.run_worker``): claim nothing more, let running
tasks finish within ``shutdown_grace``, then cancel the rest and release them to the queue without
counting the attempt. ``stop(force=True)`` (a second Ctrl-C) skips the wait: running tasks are
cancelled and released at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tideflow.errors import InvalidDataError, StorageError
from tideflow.flows.dsl import Flow
from tideflow.flows.registry import FlowRegistry
from tideflow.retrying import Backoff
from tideflow.storage.flow_contract import (
    ClaimedTask,
    ClaimRequest,
    FlowStore,
    TaskCompletion,
    TaskFailure,
    TaskKey,
)
from tideflow.storage.monitor_contract import Heartbeat, MonitorStore
from tideflow.telemetry import metrics
from tideflow.telemetry.observer import WorkerObserver
from tideflow.worker.execute import StepDispatch, execute, sync_steps
from tideflow.worker.outage import WAIT_OUT, Outage, retrying
from tideflow.worker.threads import StepThreads

log = logging.getLogger("tideflow.worker")

T = TypeVar("T")


DEF_TASKS_PER_THREAD = 4
"""``def`` tasks a worker holds per step thread at least: the running one and three waiting.
Waiting ones keep the threads fed while a claim or a commit makes its round trip, and a claim
from flows with ``def`` steps is at most this room. At 2 the claims were half as large and a
drain of ``def`` no-op steps ran 30% slower (bench_flows --defaults). Quick steps are held in
larger numbers (``DEF_HELD_SECONDS``); slow ones stay at this floor, since every one more
costs another worker that much of a backlog it could have run."""

DEF_HELD_SECONDS = 0.05
"""How long, by the threads' pace (``StepThreads.pace``), the ``def`` tasks a worker holds may
take its threads: beyond the floor of ``DEF_TASKS_PER_THREAD`` per thread, a worker holds as
many as its threads run in this time, up to ``concurrency``. At 4 per thread a claim of quick
``def`` steps was capped at 128 tasks where ``async def`` ones got 500, and the round trips per
task made ``def`` no-op drains 25-45% slower (issue 12, bench_flows --defaults); 50 ms of work
is more than a claim and a commit take, and little for another worker to miss. A step that
takes 10 ms gets 160 held on 32 threads; one of 50 ms or more, the floor."""


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 1000
    """Tasks a worker holds at once: running, or done and waiting for their batch to commit.

    Why 1,000 and not 10 as before: a no-op task costs the worker ~60 us of Python, but a claim
    or a commit costs a round trip and ~1 ms of CPU whatever its size, and the concurrency caps
    the batch - at 10, a worker spent most of its time on round trips (2,600 runs/s on
    PostgreSQL against 8,800 at 256, issue 12). An ``async def`` step in flight costs a
    coroutine, so holding many is cheap. Twice ``max_batch``: while one full batch commits,
    the next one runs (at 500, the worker sat idle during each commit of 500: 8,700-9,900
    runs/s on PostgreSQL against 11,800-13,300 at 1,024, bench_flows --defaults). ``def``
    steps are held to their own, smaller limit (``step_threads``).

    Lower it when one worker should not take many tasks at once: steps that each use much
    memory or CPU on the event loop, or several workers that should share a small queue of
    slow ``async`` steps (a worker takes up to this many before another gets any)."""
    step_threads: int = 32
    """Threads that run plain ``def`` steps, and so how many run at once (at most
    ``concurrency``). A worker holds as many ``def`` tasks as these threads run in
    ``DEF_HELD_SECONDS`` (50 ms) at the pace its ``def`` steps have shown, at least
    ``DEF_TASKS_PER_THREAD`` (4) per thread, at most ``concurrency``, and claims no more from
    flows with ``def`` steps while it does: a ``def`` task held beyond what its threads can
    soon run would only wait, leased, while other workers have free threads. 32 as Python's
    own thread pools (at most 32):
    plenty for steps that wait on I/O; for CPU-bound ``def`` steps more threads only contend
    for the GIL (use processes: more workers)."""
    poll_interval: float = 1.0
    """Seconds between looks for due tasks when no wake-up arrives."""
    lease_margin: float = 30.0
    """Seconds (beyond a step's timeout) a claimed task stays with this worker without a
    heartbeat: how long a killed or cut-off worker's tasks wait before another worker retries
    them - the failover delay."""
    heartbeat_interval: float | None = None
    """Seconds between lease renewals; default ``lease_margin / 3``."""
    reap_interval: float = 5.0
    """Seconds between looks for tasks whose lease expired."""
    shutdown_grace: float = 30.0
    """How long a graceful stop waits for running tasks before releasing them to the queue."""
    max_batch: int = 500
    """Most tasks claimed, or completions committed, in one statement."""
    purge_interval: float = 60.0
    """Seconds between retention passes, when the worker was given a ``purge`` (the App's
    retention): each pass deletes what is old in small batches (``runtime/retention.py``)."""
    schedule_interval: float = 1.0
    """Seconds between looks for due cron ticks, when the worker was given ``schedules`` (the
    App's): how late, at most, a tick fires while workers are up."""


class Worker:
    def __init__(
        self,
        store: FlowStore,
        registry: FlowRegistry,
        *,
        options: WorkerOptions | None = None,
        worker_id: str | None = None,
        dispatch: StepDispatch | None = None,
        purge: Callable[[Callable[[], bool]], object] | None = None,
        monitor: MonitorStore | None = None,
        schedules: Callable[[], object] | None = None,
    ) -> None:
        """``dispatch``: how steps' ``ctx.dispatch`` sends commands (the App passes its
        dispatcher); without it a step that dispatches fails with a message that says so.
        ``purge``: the retention pass run every ``purge_interval`` seconds (the App passes one
        when given a retention); it is handed a function that says when to stop between
        batches (the worker is stopping). ``monitor``: where the worker records its heartbeats
        (the dashboard's Workers page). ``schedules``: the pass that fires due cron ticks (the
        App passes one when it declares schedules), run every ``schedule_interval`` seconds."""
        self.store = store
        self.registry = registry
        self._dispatch = dispatch
        self._purge_pass = purge
        self._schedule_pass = schedules
        self.options = options or WorkerOptions()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[TaskKey, asyncio.Task[None]] = {}
        self._pending: list[TaskCompletion] = []  # completed, waiting for the next flush
        self._flushing: list[TaskCompletion] = []  # completed, being committed now
        self._has_pending = asyncio.Event()
        self._instances: dict[type[Flow], Flow] = {}
        self._stopping = False
        self._forced = False
        self._stop_at: float | None = None  # loop time when the stop began
        self._bug: BaseException | None = None
        self._wake: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None  # set by stop(): cuts backoff pauses short
        self._forced_event: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: StepThreads | None = None
        #: (flow slug, step slug) of the steps that run in threads (``def``), and how many such
        #: tasks this worker holds now: they have their own limit (``WorkerOptions.step_threads``).
        self._sync_steps: frozenset[tuple[str, str]] = frozenset()
        self._in_threads = 0
        self._all_flows: list[str] = []
        self._async_flows: list[str] = []  # the flows without def steps
        #: Logs database outages once for all of this worker's loops.
        self.outage = Outage(log, f"worker {self.worker_id}")
        #: Logs, metrics and spans of attempts and runs (tideflow.telemetry).
        self.observer = WorkerObserver(store, registry)
        self._monitor = monitor
        self.completed = 0
        self.failed = 0

    # --- public ----------------------------------------------------------------------------------
    def stop(self, *, force: bool = False) -> None:
        """Ask the worker to shut down gracefully (running tasks get ``shutdown_grace`` to
        finish); with ``force``, cancel running tasks now and release them to the queue. Safe to
        call from any thread or signal handler, and again (a second Ctrl-C) to force."""
        self._stopping = True
        self._forced = self._forced or force
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(self._on_stop)

    @property
    def stopping(self) -> bool:
        return self._stopping

    async def run(self, *, until_idle: bool = False) -> None:
        """Run until ``stop()``; with ``until_idle``, return once no task of this worker's flows
        is queued (including retries waiting out their backoff) or running - handy in tests,
        scripts and the demo. Raises only for a bug (after stopping gracefully): database
        outages are waited out."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()
        self._forced_event = asyncio.Event()
        self._has_pending = asyncio.Event()
        if self._stopping:
            self._on_stop()
        opts = self.options
        threads = self._threads = StepThreads(
            self._loop, min(opts.step_threads, opts.concurrency), "tideflow-step"
        )
        self._sync_steps = sync_steps(self.registry)
        self._all_flows = self.registry.slugs()
        self._async_flows = [
            f for f in self._all_flows if not any(s[0] == f for s in self._sync_steps)
        ]
        if self._sync_steps:
            # Now, off the loop, rather than one by one in the first burst of def steps, where
            # each Thread.start stalled the loop until the new thread ran: 10-40 ms of a
            # 1,000-run drain on a loaded 2-core machine.
            await asyncio.to_thread(threads.start)
        unsubscribe = self.store.subscribe(self._wake_threadsafe)
        self.observer.refresh()
        background = [
            asyncio.create_task(
                self._every(
                    opts.heartbeat_interval or opts.lease_margin / 3,
                    "renewing task leases",
                    self._heartbeat,
                )
            ),
            asyncio.create_task(
                self._every(opts.reap_interval, "recovering stalled tasks", lambda: self._reap)
            ),
        ]
        if self._purge_pass is not None:
            background.append(
                asyncio.create_task(
                    self._every(opts.purge_interval, "applying retention", self._purge)
                )
            )
        if self._schedule_pass is not None:
            background.append(
                asyncio.create_task(
                    self._every(opts.schedule_interval, "firing cron schedules", self._schedules)
                )
            )
        if self._monitor is not None:
            await self._beat_now()
            background.append(
                asyncio.create_task(
                    self._every(self._beat_interval(), "recording its heartbeat", self._beat)
                )
            )
        flusher = asyncio.create_task(self._flush_loop())
        claimer = asyncio.create_task(self._claim_loop(until_idle))
        log.info("worker %s started: flows %s", self.worker_id, self.registry.slugs())
        try:
            await asyncio.wait([claimer, flusher, *background], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._stopping = True
            self._on_stop()
            unsubscribe()
            # The claimer ends at its next look (a claim in flight is not cancelled: its
            # tasks would be claimed and never run).
            await asyncio.wait([claimer])
            await self._drain()
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._has_pending.set()  # let the flusher commit what is left and exit
            await asyncio.wait([flusher])
            threads.close()
            await self._beat_now(stopped=True)
            log.info("worker %s stopped", self.worker_id)
        for task in (claimer, flusher, *background):
            if task.done() and not task.cancelled() and task.exception() is not None:
                self._bug = self._bug or task.exception()
        if self._bug is not None:
            raise self._bug

    # --- loops -------------------------------------------------------------------------------
    def _wake_threadsafe(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(wake.set)

    def _on_stop(self) -> None:
        """On the loop: note when the stop began; wake every wait that should notice it."""
        assert self._loop is not None
        if self._stop_at is None:
            self._stop_at = self._loop.time()
        for event in (self._wake, self._stopped, self._has_pending):
            if event is not None:
                event.set()
        if self._forced and self._forced_event is not None:
            self._forced_event.set()

    def _past_deadline(self) -> bool:
        """Shutting down and out of time: forced, or ``shutdown_grace`` after the stop began."""
        if self._forced:
            return True
        if self._stop_at is None or self._loop is None:
            return False
        return self._loop.time() > self._stop_at + self.options.shutdown_grace

    async def _retrying(
        self,
        what: str,
        call: Callable[[], T],
        backoff: Backoff,
        give_up: Callable[[], bool],
        interrupt: asyncio.Event | None = None,
    ) -> T:
        """``call()`` in a thread, outages waited out (``outage.retrying``) until ``give_up()``;
        ``interrupt`` (the stop or the force event) cuts a backoff pause short."""
        return await retrying(
            self.outage,
            what,
            call,
            backoff=backoff,
            give_up=give_up,
            interrupt=interrupt or self._forced_event,
        )

    async def _claim_loop(self, until_idle: bool) -> None:
        assert self._wake is not None
        opts = self.options
        backoff = Backoff()
        stopping: Callable[[], bool] = lambda: self._stopping  # noqa: E731
        slugs = self.registry.slugs()
        try:
            await self._retrying(
                "recovering stalled tasks", self._reap, backoff, stopping, self._stopped
            )
            while not self._stopping:
                self._wake.clear()
                busy = len(self._running) + len(self._pending) + len(self._flushing)
                some, free = self._claim_plan(busy)
                claimed: list[ClaimedTask] = []
                if free > 0:
                    claimed = await self._retrying(
                        "claiming tasks",
                        functools.partial(
                            self.store.claim_tasks, self.worker_id, some, free, opts.lease_margin
                        ),
                        backoff,
                        stopping,
                        self._stopped,
                    )
                    if self._stopping:
                        await self._release(claimed)
                        return
                    self._start(claimed)
                if claimed and len(claimed) == free:
                    continue  # there may be more: claim again as soon as a slot frees
                if until_idle and not claimed and not busy:
                    queued = await self._retrying(
                        "counting queued tasks",
                        lambda: self.store.count_queued(slugs),
                        backoff,
                        stopping,
                        self._stopped,
                    )
                    if not queued:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), opts.poll_interval)
        except WAIT_OUT:
            return  # stopping while the database is away: nothing was claimed

    def _claim_plan(self, busy: int) -> tuple[list[str], int]:
        """Which flows to claim tasks of, and how many, ``busy`` being the tasks held: the free
        slots of ``concurrency``, at most ``max_batch``. Flows with ``def`` steps are claimed
        only while their limit (``_def_limit``) has room, and then at most that room (a claim
        may bring nothing but ``def`` tasks); while it is full, only flows without any are
        claimed, so that ``async`` flows do not wait behind busy threads."""
        opts = self.options
        free = min(opts.concurrency - busy, opts.max_batch)
        if not self._sync_steps:
            return self._all_flows, free
        room = self._def_limit() - self._in_threads
        if room > 0:
            return self._all_flows, min(free, room)
        return self._async_flows, free if self._async_flows else 0

    def _def_limit(self) -> int:
        """How many ``def`` tasks this worker may hold now: ``DEF_TASKS_PER_THREAD`` per
        thread, or as many as its threads run in ``DEF_HELD_SECONDS`` at their pace if more,
        at most ``concurrency``."""
        threads = self._threads
        assert threads is not None
        floor = DEF_TASKS_PER_THREAD * threads.size
        pace = threads.pace()
        if pace is None:  # nothing ran yet: the floor until the steps show their speed
            return floor
        quick = int(threads.size * DEF_HELD_SECONDS / max(pace, 1e-7))
        return max(floor, min(self.options.concurrency, quick))

    def _start(self, claimed: list[ClaimedTask]) -> None:
        assert self._threads is not None
        for task in claimed:
            self._running[task.key] = asyncio.create_task(self._run_task(task, self._threads))
            if (task.flow_slug, task.key.step_slug) in self._sync_steps:
                self._in_threads += 1

    async def _run_task(self, task: ClaimedTask, threads: StepThreads) -> None:
        try:
            flow_cls = self.registry.get(task.flow_slug)
            instance = self._instances.get(flow_cls)
            if instance is None:
                instance = self._instances[flow_cls] = flow_cls()
            async with self.observer.attempt(task) as attempt:
                outcome = await execute(task, instance, threads, self._dispatch)
                attempt.ended(outcome)
            if isinstance(outcome, TaskCompletion):
                # Handed to the flusher; the task stays 'started' in the database until the
                # batch commits, so a crash before then re-runs it (after its lease) - never
                # loses it. Uncommitted completions still count against the concurrency limit.
                self._pending.append(outcome)
                self._has_pending.set()
            else:
                await self._fail(outcome, task.flow_slug)
        except WAIT_OUT:
            log.warning(
                "task %s attempt %d: its failure was not recorded (the database stayed "
                "unavailable until shutdown); it runs again once its lease expires",
                task.key,
                task.attempt,
            )
        except Exception as exc:
            # A bug in tideflow (step exceptions become outcomes in execute): stop the worker
            # and let run() raise it rather than limp on without this task.
            self._bug = self._bug or exc
            self.stop()
        finally:
            self._running.pop(task.key, None)
            if (task.flow_slug, task.key.step_slug) in self._sync_steps:
                self._in_threads -= 1
            if self._wake is not None:
                self._wake.set()

    async def _fail(self, outcome: TaskFailure, flow_slug: str | None = None) -> None:
        retry_at = await self._retrying(
            "recording a failed task",
            lambda: self.store.fail_task(self.worker_id, outcome),
            Backoff(),
            self._past_deadline,
        )
        self.failed += 1
        if retry_at is not None:
            # Wake when the retry becomes visible instead of at the next poll.
            delay = (retry_at - self.store.clock.now()).total_seconds()
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, delay), self._wake_threadsafe)
        self.observer.failed(flow_slug, outcome, retry_at)
        if retry_at is None:
            await self.observer.ended([outcome.key.run_id])

    async def _flush_loop(self) -> None:
        while True:
            await self._has_pending.wait()
            self._has_pending.clear()
            await self._flush()
            if self._stopping and not self._running and not self._pending:
                return

    async def _flush(self) -> None:
        """Commit every completion gathered so far in one transaction."""
        if not self._pending:
            return
        self._flushing, self._pending = self._pending, []
        # Slots free once this batch commits; offer them to the tasks it makes ready.
        some, free = self._claim_plan(len(self._running) + len(self._pending))
        claim = None
        if not self._stopping and free > 0:
            claim = ClaimRequest(tuple(some), free, self.options.lease_margin)
        try:
            claimed = await self._commit(self._flushing, claim, Backoff())
            if self._stopping:
                await self._release(claimed)
            else:
                self._start(claimed)
            await self.observer.committed(self._flushing)
        except WAIT_OUT:
            self.observer.forget(self._flushing)
            log.warning(
                "%d completion(s) were not recorded: the database stayed unavailable "
                "until shutdown; their tasks run again once their leases expire",
                len(self._flushing),
            )
        finally:
            self._flushing = []
            if self._wake is not None:
                self._wake.set()  # their slots are free now

    async def _commit(
        self, completions: list[TaskCompletion], claim: ClaimRequest | None, backoff: Backoff
    ) -> list[ClaimedTask]:
        """Commit ``completions``, waiting out outages. A batch the database refuses is split
        in halves until the healthy completions commit; a single refused completion fails its
        task without retries (no retry can make the same output acceptable)."""
        tries = 0

        def commit() -> list[ClaimedTask]:
            # Only the first try claims: after a COMMIT whose answer was lost, the tasks it
            # claimed are this worker's until their lease expires (then the reaper requeues them
            # as a stall, not an attempt) - claiming again would only add to them.
            nonlocal tries
            tries += 1
            return self.store.complete_tasks(
                self.worker_id, completions, claim if tries == 1 else None
            )

        try:
            claimed = await self._retrying(
                "committing completions", commit, backoff, self._past_deadline
            )
        except WAIT_OUT:
            raise
        except (StorageError, InvalidDataError) as exc:
            if len(completions) == 1:
                done = completions[0]
                failure = TaskFailure(
                    done.key,
                    done.attempt,
                    f"its output could not be stored: {exc}",
                    retryable=False,
                )
                log.error(
                    "task %s attempt %d: the database refused its output; failing it: %s",
                    done.key,
                    done.attempt,
                    exc,
                )
                await self._fail(failure)
                return []
            half = len(completions) // 2
            return [
                *await self._commit(completions[:half], None, backoff),
                *await self._commit(completions[half:], None, backoff),
            ]
        self.completed += len(completions)
        return claimed

    async def _release(self, claimed: list[ClaimedTask]) -> None:
        """Put tasks this worker claimed but will not run back in the queue."""
        if claimed:
            await self._release_keys([t.key for t in claimed])

    async def _release_keys(self, keys: list[TaskKey]) -> None:
        assert self._loop is not None
        until = self._loop.time() + min(5.0, self.options.shutdown_grace)
        loop = self._loop
        try:
            await self._retrying(
                "releasing tasks",
                lambda: self.store.release_tasks(self.worker_id, keys),
                Backoff(),
                lambda: self._forced or loop.time() > until,
            )
        except WAIT_OUT:
            log.warning(
                "%d task(s) could not be released (the database is unavailable); they "
                "run again once their leases expire",
                len(keys),
            )
            return
        log.info("released %d unfinished task(s) back to the queue", len(keys))

    async def _drain(self) -> None:
        """Graceful shutdown: wait for running tasks, then cancel and release stragglers."""
        if not self._running:
            return
        assert self._loop is not None and self._stop_at is not None
        assert self._forced_event is not None
        if not self._forced:
            log.info(
                "waiting up to %.0fs for %d running task(s); Ctrl-C again to stop at once",
                self.options.shutdown_grace,
                len(self._running),
            )
        forced = asyncio.create_task(self._forced_event.wait())
        try:
            deadline = self._stop_at + self.options.shutdown_grace
            while self._running and not self._forced:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    break
                await asyncio.wait(
                    [*self._running.values(), forced],
                    timeout=remaining,
                    return_when=asyncio.FIRST_COMPLETED,
                )
        finally:
            forced.cancel()
        if self._running:
            late = dict(self._running)
            for t in late.values():
                t.cancel()
            await asyncio.gather(*late.values(), return_exceptions=True)
            await self._release_keys(list(late))

    async def _every(
        self, seconds: float, what: str, prepare: Callable[[], Callable[[], object] | None]
    ) -> None:
        """Every ``seconds``, the call ``prepare()`` returns (prepared on the loop, run in a
        thread), retried through outages. Runs on during a graceful stop: running tasks still
        need their leases renewed; ``run()`` cancels it once they are done."""
        backoff = Backoff()
        while True:
            await asyncio.sleep(seconds)
            call = prepare()
            if call is None:
                continue
            try:
                await self._retrying(what, call, backoff, lambda: self._forced, self._forced_event)
            except WAIT_OUT:
                return  # forced to stop while the database is away: nothing left to renew

    def _heartbeat(self) -> Callable[[], object] | None:
        keys = list(self._running)  # on the loop: the dict changes under a thread
        if not keys:
            return None
        return lambda: self.store.extend_leases(self.worker_id, keys, self.options.lease_margin)

    def _purge(self) -> Callable[[], object] | None:
        purge_pass = self._purge_pass
        if purge_pass is None or self._stopping:
            return None
        return lambda: purge_pass(lambda: self._stopping)

    def _schedules(self) -> Callable[[], object] | None:
        return None if self._stopping else self._schedule_pass

    # --- heartbeats (the dashboard's Workers page) ------------------------------------------------
    def _beat_interval(self) -> float:
        return self.options.heartbeat_interval or self.options.lease_margin / 3

    def _beat(self) -> Callable[[], object] | None:
        monitor = self._monitor
        if monitor is None:
            return None
        beat = Heartbeat(
            self.worker_id,
            socket.gethostname(),
            os.getpid(),
            tuple(self.registry.slugs()),
            self.options.concurrency,
            len(self._running),
            self._beat_interval(),
        )
        return lambda: monitor.record_heartbeat(beat)

    async def _beat_now(self, *, stopped: bool = False) -> None:
        """One heartbeat (or the stop's mark) now; a failure costs the dashboard a line, not
        the worker its work, so it is logged at DEBUG."""
        monitor, call = self._monitor, self._beat()
        if monitor is None or call is None:
            return
        try:
            if stopped:
                await asyncio.to_thread(monitor.record_worker_stopped, self.worker_id)
            else:
                await asyncio.to_thread(call)
        except Exception as exc:
            log.debug("worker %s: recording its heartbeat failed: %s", self.worker_id, exc)

    def _reap(self) -> None:
        n = self.store.requeue_stalled()
        metrics.stalls(n)
        if n:
            log.warning("recovered %d task(s) whose worker stopped heartbeating", n)
