"""Real worker processes, really killed: nothing is lost, no task attempt runs twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.flows.flows_for_tests import ALL_FLOWS, Crowd, CrowdSync, OneShotSleeper, Recorder
from tests.polling import wait_until
from tideflow import App

ROOT = Path(__file__).resolve().parents[2]


def spawn_worker(
    db_url: str, lease_margin: float, concurrency: str = "4"
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.flows.worker_process",
            db_url,
            str(lease_margin),
            concurrency,
        ],
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


def test_a_worker_killed_with_hundreds_of_tasks_in_flight_loses_none(
    db_url: str, tmp_path: Path
) -> None:
    """At the default settings a worker holds hundreds of async tasks and up to four times its
    threads of def ones: SIGKILLed with them in flight, every one is recovered by the next
    worker as a stall (not an attempt: max_attempts is 1), each completed once."""
    app = App(db_url, flows=ALL_FLOWS)
    item = {"dir": str(tmp_path), "seconds": 2.0}
    crowd = app.start_flow(Crowd, [item] * 300)
    crowd_sync = app.start_flow(CrowdSync, [item] * 100)
    first = spawn_worker(db_url, lease_margin=2.0, concurrency="default")

    def begun_by_first() -> list[str]:
        return [p.name for p in tmp_path.glob(f"begun-*-{first.pid}")]

    try:
        # Both kinds in flight at once: all 300 async ones could be, and the def ones
        # up to the thread limit.
        wait_until(
            lambda: (
                sum("crowd_sync" in n for n in begun_by_first()) >= 20
                and sum("-crowd-" in n for n in begun_by_first()) >= 100
            ),
            timeout=60,
            what="hundreds of tasks to be in flight",
        )
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    killed = begun_by_first()
    ended = {p.name for p in tmp_path.glob(f"end-*-{first.pid}")}
    in_flight = [n for n in killed if n.replace("begun-", "end-", 1) not in ended]
    assert len(in_flight) >= 120, f"only {len(in_flight)} tasks were in flight at the kill"
    # A long lease for the second: on a loaded machine a renewal of hundreds of leases can come
    # late, and a lease of a second or two would then expire under a live worker.
    second = spawn_worker(db_url, lease_margin=30.0, concurrency="default")
    try:
        runs = [app.wait_for_run(r, timeout=120) for r in (crowd, crowd_sync)]
    finally:
        second.terminate()
        second.wait(timeout=30)
    for run, n in zip(runs, (300, 100), strict=True):
        assert run.status == "completed", run.error
        assert run.output == {"wait": list(range(n))}
        tasks = run.steps[0].tasks
        assert all(t.attempts == 1 for t in tasks)  # a kill is a stall, never a failed attempt
    stalled = {(r.flow_slug, t.task_index) for r in runs for t in r.steps[0].tasks if t.stalls}
    # Every task the kill cut short was requeued as a stall.
    cut = {(n.split("-")[1], int(n.split("-")[2])) for n in in_flight}
    assert cut <= stalled
    app.close()
