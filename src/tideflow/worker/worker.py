"""The worker: claims tasks, runs them, records outcomes.

Shape of the loop (one asyncio task each):

* **claimer** - claims as many tasks as there are free slots, in one statement; sleeps until a
  slot frees, a NOTIFY (or in-process signal) says tasks are ready, or the poll interval passes.
* **one task per claimed task** - runs the step (sync steps in a thread pool) under its timeout.
* **flusher** - commits completions in batches: while one batch commits, the next accumulates
  (group commit), so throughput rises with load without adding latency when idle. A completion
  is only acknowledged once committed; if the process dies first, the task's lease expires and it
  runs again - at least once, never lost.
* **heartbeat** - extends the leases of tasks still running.
* **reaper** - retries or fails tasks whose lease expired (their worker died).

Shutdown (SIGINT/SIGTERM or ``stop()``): claim nothing more, let running tasks finish within the
grace period, then cancel the rest and release them to the queue without counting the attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tideflow.flows.dsl import Flow
from tideflow.flows.registry import FlowRegistry
from tideflow.storage.contract import (
    ClaimedTask,
    ClaimRequest,
    FlowStore,
    TaskCompletion,
        TaskKey,
)
from tideflow.worker.execute import execute

log = logging.getLogger("tideflow.worker")


@dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 10
    poll_interval: float = 1.0
    lease_margin: float = 30.0
    heartbeat_interval: float | None = None  # default: lease_margin / 3
    reap_interval: float = 5.0
    shutdown_grace: float = 30.0
    max_batch: int = 500


class Worker:
    def __init__(self, store: FlowStore, registry: FlowRegistry, *,
                 options: WorkerOptions | None = None, worker_id: str | None = None) -> None:
        self.store = store
        self.registry = registry
        self.options = options or WorkerOptions()
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[TaskKey, asyncio.Task[None]] = {}
        self._pending: list[TaskCompletion] = []  # completed, waiting for the next flush
        self._flushing: list[TaskCompletion] = []  # completed, being committed now
        self._has_pending = asyncio.Event()
        self._instances: dict[type[Flow], Flow] = {}
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.completed = 0
        self.failed = 0

    # --- public ----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the worker to shut down gracefully; safe to call from any thread or signal."""
        self._stopping = True
        self._wake_threadsafe()

    async def run(self, *, until_idle: bool = False) -> None:
        """Run until ``stop()``; with ``until_idle``, return once no task of this worker's flows
        is queued (including retries waiting out their backoff) or running - handy in tests,
        scripts and the demo."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._has_pending = asyncio.Event()
        opts = self.options
        executor = self._executor = ThreadPoolExecutor(max_workers=opts.concurrency,
                                                       thread_name_prefix="tideflow-step")
        unsubscribe = self.store.subscribe(self._wake_threadsafe)
        background = [
            asyncio.create_task(self._every(opts.heartbeat_interval or opts.lease_margin / 3,
                                            self._heartbeat)),
            asyncio.create_task(self._every(opts.reap_interval, self._reap)),
        ]
        flusher = asyncio.create_task(self._flush_loop())
        log.info("worker %s started: flows %s", self.worker_id, self.registry.slugs())
        try:
            await self._reap()
            await self._claim_loop(executor, until_idle)
        finally:
            self._stopping = True
            unsubscribe()
            await self._drain()
            for t in background:
                t.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._has_pending.set()  # let the flusher commit what is left and exit
            await flusher
            executor.shutdown(wait=False, cancel_futures=True)
            log.info("worker %s stopped", self.worker_id)

    # --- loops -------------------------------------------------------------------------------
    def _wake_threadsafe(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(wake.set)

    async def _claim_loop(self, executor: ThreadPoolExecutor, until_idle: bool) -> None:
        assert self._wake is not None
        opts = self.options
        while not self._stopping:
            self._wake.clear()
            busy = len(self._running) + len(self._pending) + len(self._flushing)
            free = min(opts.concurrency - busy, opts.max_batch)
            claimed: list[ClaimedTask] = []
            if free > 0:
                claimed = await asyncio.to_thread(
                    self.store.claim_tasks, self.worker_id, self.registry.slugs(), free,
                    opts.lease_margin)
                self._start(claimed)
            if claimed and len(claimed) == free:
                continue  # there may be more: claim again as soon as a slot frees
            if until_idle and not claimed and not busy:
                queued = await asyncio.to_thread(self.store.count_queued, self.registry.slugs())
                if not queued:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), opts.poll_interval)

    def _start(self, claimed: list[ClaimedTask]) -> None:
        assert self._executor is not None
        for task in claimed:
            self._running[task.key] = asyncio.create_task(self._run_task(task, self._executor))

    async def _run_task(self, task: ClaimedTask, executor: ThreadPoolExecutor) -> None:
        try:
            flow_cls = self.registry.get(task.flow_slug)
            instance = self._instances.get(flow_cls)
            if instance is None:
                instance = self._instances[flow_cls] = flow_cls()
            outcome = await execute(task, instance, executor)
            if isinstance(outcome, TaskCompletion):
                # Handed to the flusher; the task stays 'started' in the database until the
                # batch commits, so a crash before then re-runs it (after its lease) - never
                # loses it. Uncommitted completions still count against the concurrency limit.
                self._pending.append(outcome)
                self._has_pending.set()
            else:
                retry_at = await asyncio.to_thread(self.store.fail_task, self.worker_id, outcome)
                self.failed += 1
                if retry_at is not None:
                    # Wake when the retry becomes visible instead of at the next poll.
                    delay = (retry_at - self.store.clock.now()).total_seconds()
                    loop = asyncio.get_running_loop()
                    loop.call_later(max(0.0, delay), self._wake_threadsafe)
                log.info("task %s attempt %d failed: %s", task.key, task.attempt, outcome.error)
        finally:
            self._running.pop(task.key, None)
            if self._wake is not None:
                self._wake.set()

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
        free = self.options.concurrency - len(self._running) - len(self._pending)
        claim = None
        if not self._stopping and free > 0:
            claim = ClaimRequest(tuple(self.registry.slugs()), min(free, self.options.max_batch),
                                 self.options.lease_margin)
        try:
            claimed = await asyncio.to_thread(self.store.complete_tasks, self.worker_id,
                                              self._flushing, claim)
            self.completed += len(self._flushing)
            self._start(claimed)
        except Exception:
            log.exception("committing %d completions failed; their leases will expire and the "
                          "tasks run again", len(self._flushing))
        finally:
            self._flushing = []
            if self._wake is not None:
                self._wake.set()  # their slots are free now

    async def _drain(self) -> None:
        """Graceful shutdown: wait for running tasks, then cancel and release stragglers."""
        if not self._running:
            return
        log.info("waiting up to %.0fs for %d running task(s)", self.options.shutdown_grace,
                 len(self._running))
        _, late = await asyncio.wait(list(self._running.values()),
                                     timeout=self.options.shutdown_grace)
        if late:
            keys = [k for k, t in self._running.items() if t in late]
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            await asyncio.to_thread(self.store.release_tasks, self.worker_id, keys)
            log.info("released %d unfinished task(s) back to the queue", len(keys))

    async def _every(self, seconds: float, action: Callable[[], Awaitable[Any]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await action()
            except Exception:  # keep the worker alive; the next round retries
                log.exception("periodic %s failed", getattr(action, "__name__", action))

    async def _heartbeat(self) -> None:
        keys = list(self._running)
        if keys:
            await asyncio.to_thread(self.store.extend_leases, self.worker_id, keys,
                                    self.options.lease_margin)

    async def _reap(self) -> None:
        n = await asyncio.to_thread(self.store.requeue_stalled)
        if n:
            log.warning("recovered %d task(s) whose worker stopped heartbeating", n)
