"""Real worker processes, really killed: nothing is lost, no task attempt runs twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.flows.flows_for_tests import ALL_FLOWS, OneShotSleeper, Recorder
from tests.polling import wait_until
from tideflow import App

ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(db_url: str, lease_margin: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.flows.worker_process", db_url, str(lease_margin)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_sigkilled_worker_task_is_finished_by_another_worker(db_url: str, tmp_path: Path) -> None:
    """With max_attempts=1: the kill is a stall, requeued without costing the only attempt."""
    app = App(db_url, flows=ALL_FLOWS)
    run_id = app.start_flow(OneShotSleeper, {"dir": str(tmp_path), "seconds": 0.5})
    first = spawn_worker(db_url, lease_margin=1.0)
    try:
        wait_until(lambda: list(tmp_path.glob("started-*")), what="the step to start")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    assert not list(tmp_path.glob("done-*")), "the killed worker must not have finished"
    second = spawn_worker(db_url, lease_margin=1.0)
    try:
        run = app.wait_for_run(run_id, timeout=30)
    finally:
        second.terminate()
        second.wait(timeout=30)
    assert run.status == "completed"
    assert run.output == {"nap": second.pid}
    task = run.step("nap").tasks[0]
    assert (task.attempts, task.stalls) == (1, 1)  # the kill was a stall, not an attempt
    assert task.error is not None and "requeued (stall 1 of 3)" in task.error
    assert len(list(tmp_path.glob("done-*"))) == 1
    app.close()


def test_two_worker_processes_never_run_the_same_task_attempt(db_url: str, tmp_path: Path) -> None:
    app = App(db_url, flows=ALL_FLOWS)
    items = [{"dir": str(tmp_path)}] * 60
    run_ids = [app.start_flow(Recorder, items) for _ in range(3)]
    workers = [spawn_worker(db_url, lease_margin=30.0) for _ in range(2)]
    try:
        runs = [app.wait_for_run(r, timeout=60) for r in run_ids]
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            w.wait(timeout=30)
    assert all(r.status == "completed" for r in runs)
    assert all(w.returncode == 0 for w in workers), [w.returncode for w in workers]
    markers = [p.name.split("-") for p in tmp_path.glob("exec-*")]
    # 3 runs x 60 elements; every execution was attempt 1 and no (run, index) ran twice
    assert len(markers) == 180
    assert {m[2] for m in markers} == {"1"}
    pids = {m[3] for m in markers}
    assert len(pids) == 2, "both workers should have taken part"
    app.close()
