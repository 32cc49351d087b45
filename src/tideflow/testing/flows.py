"""Run flows to the end in a test, on an in-memory SQLite database, on a manual clock.

    from tideflow.testing import run_flow

    def test_a_flaky_charge_is_retried():
        run = run_flow(Checkout, {"sku": "A-1"})
        assert run.status == "completed"
        assert run.step("charge").attempts == 3
        assert run.output == {"charge": {"paid": True}}

The same worker code as production runs the steps - claims, retries, map fan-out, step
dispatch, process managers - against a private database that disappears with the test bed. Time
is a ``ManualClock``: when every task left is waiting out a retry's backoff, the clock jumps to
the soonest, so a step with ``base_delay=60`` and five attempts is tested in milliseconds, and
``run.finished_at - run.started_at`` says how long it would have taken. A step's ``timeout`` is
real time (a hung step is cancelled after it, whatever the clock says): give tests short ones.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

from tideflow.app import App
from tideflow.clock import ManualClock
from tideflow.events.aggregate import Aggregate
from tideflow.events.handling import EventHandler
from tideflow.flows.dsl import Flow
from tideflow.storage.flow_contract import RunRecord

#: How long ``FlowTestbed.finish`` waits for a run (real seconds) before it fails the test.
DEFAULT_TIMEOUT = 30.0


class FlowTestbed:
    """An ``App`` on a private in-memory SQLite database and a ``ManualClock``, with a worker
    that runs while ``run``/``finish`` wait. Use it as a context manager (or ``close`` it).

    ``flows``, ``aggregates`` and ``handlers`` are the App's: a step's ``ctx.dispatch`` reaches
    the aggregates, and process managers among the handlers react while the worker runs (a
    flow they start is run too)."""

    def __init__(
        self,
        flows: Iterable[type[Flow]] = (),
        *,
        aggregates: Iterable[type[Aggregate]] = (),
        handlers: Iterable[type[EventHandler] | EventHandler] = (),
        start: datetime | None = None,
    ) -> None:
        self.clock = ManualClock(start)
        self.app = App(
            "sqlite:///:memory:",
            flows=list(flows),
            aggregates=list(aggregates),
            handlers=list(handlers),
            clock=self.clock,
        )

    def __enter__(self) -> FlowTestbed:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.app.close()

    def run(
        self,
        flow: type[Flow] | str,
        input: Any = None,
        *,
        run_id: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> RunRecord:
        """Start a run of ``flow`` with ``input`` and ``finish`` it."""
        return self.finish(self.app.start_flow(flow, input, run_id=run_id), timeout=timeout)

    def finish(self, run_id: str, *, timeout: float = DEFAULT_TIMEOUT) -> RunRecord:
        """Run the worker until run ``run_id`` has ended - completed, failed or cancelled - and
        return it with its steps and tasks. Whenever nothing is running and every queued task is
        waiting out a backoff, the clock jumps to the soonest. ``AssertionError`` (the run as it
        stands) if it has not ended after ``timeout`` real seconds."""
        run: RunRecord = self._serve(lambda: self._step(run_id), timeout, f"run {run_id!r} to end")
        return run

    def finish_all(self, run_ids: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT) -> None:
        """``finish`` each of ``run_ids`` (a flow whose steps start others, a saga's runs)."""
        for run_id in run_ids:
            self.finish(run_id, timeout=timeout)

    # --- the loop -------------------------------------------------------------------------------

    def _step(self, run_id: str) -> RunRecord | None:
        """The run if it ended; else move the clock on if only backoffs are left, and None."""
        run = self.app.get_run(run_id)
        if run.is_final:
            return run
        tasks = [t for s in run.steps for t in s.tasks]
        if any(t.status == "started" for t in tasks):
            return None
        waiting = [t.visible_at for t in tasks if t.status == "queued" and t.visible_at]
        now = self.clock.now()
        if waiting and all(at > now for at in waiting):
            self.clock.advance((min(waiting) - now).total_seconds())
        return None

    def _serve(self, check: Any, timeout: float, what: str) -> Any:
        worker = self.app.worker(poll_interval=0.005, reap_interval=3600.0)
        runner = self.app.handler_runner() if self.app.handlers else None
        failure: list[BaseException] = []

        async def both() -> None:
            jobs = [worker.run()] + ([runner.run()] if runner is not None else [])
            await asyncio.gather(*jobs)

        def serve() -> None:
            try:
                asyncio.run(both())
            except BaseException as exc:  # a tideflow bug: reported by the waiting thread
                failure.append(exc)

        thread = threading.Thread(target=serve, name="tideflow-testbed", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        try:
            while True:
                if failure:
                    raise AssertionError(f"the worker failed while waiting for {what}") from (
                        failure[0]
                    )
                found = check()
                if found is not None:
                    return found
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
                time.sleep(0.002)
        finally:
            worker.stop()
            if runner is not None:
                runner.stop()
            thread.join(timeout=30)


def run_flow(
    flow: type[Flow],
    input: Any = None,
    *,
    aggregates: Iterable[type[Aggregate]] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> RunRecord:
    """Run ``flow`` once on a fresh ``FlowTestbed`` and return the ended run (steps, tasks,
    attempts, outputs, errors)."""
    with FlowTestbed([flow], aggregates=aggregates) as bed:
        return bed.run(flow, input, timeout=timeout)
