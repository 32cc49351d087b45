"""Workers' heartbeats (the dashboard's Workers page, ``tideflow_workers_alive``), on both
backends: a worker records itself when it starts and at each heartbeat, and marks itself
stopped; one that went silent for three intervals is not alive; a day of silence forgets it."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

from tests.observability.flows import Fixable
from tests.polling import wait_until
from tideflow import App
from tideflow.clock import ManualClock
from tideflow.storage.monitor_contract import Heartbeat
from tideflow.worker.worker import WorkerOptions


def test_a_worker_beats_while_it_runs_and_says_when_it_stops(clocked_app: App) -> None:
    app = clocked_app
    app.register(Fixable)
    worker = app.worker(poll_interval=0.02, heartbeat_interval=0.05)
    thread = threading.Thread(target=lambda: asyncio.run(worker.run()))
    thread.start()
    try:
        monitor = app.monitor_store
        [record] = wait_until(monitor.list_workers, what="the worker's first heartbeat")
        assert record.worker_id == worker.worker_id and record.flows == ("obs_fixable",)
        assert record.concurrency == WorkerOptions.concurrency and record.stopped_at is None
        assert record.heartbeat_interval == 0.05
        assert record.alive(app.store.clock.now())
    finally:
        worker.stop()
        thread.join(30)
    [record] = app.monitor_store.list_workers()
    assert record.stopped_at is not None and not record.alive(app.store.clock.now())


def test_silent_workers_are_not_alive_and_are_forgotten_after_a_day(
    clocked_app: App, clock: ManualClock
) -> None:
    clocked_app.store.migrate()
    monitor = clocked_app.monitor_store

    def beat(worker_id: str) -> None:
        monitor.record_heartbeat(Heartbeat(worker_id, "host", 1, ("f",), 4, 2, 10.0))

    beat("old")
    clock.advance(31)  # three intervals and a second
    beat("new")
    now = clock.now()
    alive = {w.worker_id: w.alive(now) for w in monitor.list_workers()}
    assert alive == {"new": True, "old": False}
    clock.advance(timedelta(days=1).total_seconds() + 1)
    beat("newest")  # forgets those silent for a day
    assert [w.worker_id for w in monitor.list_workers()] == ["newest"]
