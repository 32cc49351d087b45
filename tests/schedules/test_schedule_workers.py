"""Real worker processes over one database fire a per-second schedule: every tick exactly once,
including the ticks during which a worker was SIGKILLed (its transaction, if any, rolls back
and another worker fires the tick). On the wall clock: the processes cannot share a ManualClock.
What the test checks needs no timing: the ticks are contiguous seconds (catch_up="all" fires a
missed tick late, never drops it) and each has exactly one run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tests.polling import wait_until
from tests.schedules.jobs_for_tests import heartbeat
from tideflow import App

ROOT = Path(__file__).resolve().parents[2]


def spawn(db_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.schedules.schedule_worker", db_url],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def tick_runs(app: App) -> list[str]:
    return [r.run_id for r in app.list_runs(flow=heartbeat.flow, limit=10_000)]


def kill_right_after_a_second_starts(worker: subprocess.Popen[bytes], offset: float) -> None:
    """SIGKILL ``offset`` seconds after the wall clock's next whole second: when a tick has just
    become due and workers (polling every 50 ms) are firing it."""
    now = time.time()
    time.sleep(1 - (now % 1) + offset)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)


def test_worker_processes_fire_each_tick_once_through_kills(db_url: str) -> None:
    app = App(db_url, jobs=[heartbeat])
    app.migrate()  # SQLite: the file exists before three processes race to create it
    workers = [spawn(db_url) for _ in range(3)]
    try:
        wait_until(lambda: len(tick_runs(app)) >= 3, what="three ticks", timeout=60)
        for offset in (0.005, 0.02, 0.04):
            victim = workers.pop(0)
            kill_right_after_a_second_starts(victim, offset)
            workers.append(spawn(db_url))
        seen = len(tick_runs(app))
        wait_until(lambda: len(tick_runs(app)) >= seen + 3, what="three more ticks", timeout=60)
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(timeout=60)
            except subprocess.TimeoutExpired:
                w.kill()
    runs = tick_runs(app)
    assert len(runs) == len(set(runs))
    seconds = sorted(
        datetime.strptime(r.removeprefix("schedule:heartbeat@"), "%Y-%m-%dT%H:%M:%SZ").timestamp()
        for r in runs
    )
    assert seconds == [seconds[0] + i for i in range(len(seconds))], "a tick was missed"
    ticks = {t.run_id for t in app.schedule_ticks("heartbeat", 1000)}
    assert ticks == set(runs)  # one tick row per run, one run per tick row
    app.close()
