"""A flow worker and an event handler runner, run together in one event loop - the loop of
``tideflow worker`` (``App.run_worker``, which owns its loop and its signals) or of an asyncio
application that has its own (``app.aio.run_worker``, ``app.aio.worker``: FastAPI's lifespan,
pytest-asyncio), where the host decides when to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from tideflow.worker import Worker
from tideflow.worker.handlers import HandlerRunner


async def run_together(worker: Worker, runner: HandlerRunner | None, until_idle: bool) -> None:
    """Run the flow worker and the handler runner side by side. If one of them raises (a bug:
    outages are waited out inside), the other is stopped gracefully and the error re-raised - a
    process must not go on half-dead, running handlers with no flows or the reverse."""
    jobs = [asyncio.create_task(worker.run(until_idle=until_idle))]
    if runner is not None:
        jobs.append(asyncio.create_task(runner.run(until_idle=until_idle)))
    try:
        await asyncio.wait(jobs, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        if not all(job.done() for job in jobs):
            worker.stop()
            if runner is not None:
                runner.stop()
        await asyncio.wait(jobs)
    for job in jobs:
        error = None if job.cancelled() else job.exception()
        if error is not None:
            raise error


class Serving:
    """What one worker process runs: the app's flows (``Worker``) and its event handlers,
    projections and process managers (``HandlerRunner``), until stopped or, with
    ``until_idle``, until neither has anything left to do. ``worker``: the first flow worker;
    ``make_worker`` builds a fresh one for each further idle round."""

    def __init__(
        self, make_worker: Callable[[], Worker], runner: HandlerRunner | None, worker: Worker
    ) -> None:
        self._make_worker = make_worker
        self.worker = worker
        self.runner = runner
        self.stopped = False

    def stop(self, *, force: bool = False) -> None:
        """Stop gracefully (running tasks and handler batches get ``shutdown_grace`` to
        finish); with ``force``, at once (running tasks go back to the queue). Safe from any
        thread, and again to force."""
        self.stopped = True
        self.worker.stop(force=force)
        if self.runner is not None:
            self.runner.stop(force=force)

    async def run(self, *, until_idle: bool = False) -> None:
        """Run until ``stop()`` (or idle). Cancelled - the host's task torn down - it stops
        gracefully first (``run_together``), then lets the cancellation through."""
        try:
            while True:
                runner = self.runner
                handled = runner.handled if runner is not None else 0
                await run_together(self.worker, runner, until_idle)
                # Idle means idle together: a handler may have started a flow after the worker
                # found nothing to do, and a step may have appended events after the handlers
                # caught up. Another round until one does nothing at all.
                worker = self.worker
                busy = worker.completed + worker.failed > 0 or (
                    runner is not None and runner.handled > handled
                )
                if not until_idle or self.stopped or not busy:
                    return
                self.worker = await asyncio.to_thread(self._make_worker)
        except asyncio.CancelledError:
            self.stopped = True
            raise
