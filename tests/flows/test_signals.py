"""Stopping ``tideflow worker``: SIGTERM drains up to ``--shutdown-grace`` and exits 0; a second
Ctrl-C stops at once with exit code 130. Either way a step still running goes back to the queue
without counting the attempt (issue 7, section 6)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.flows_for_tests import Sleeper
from tideflow import App

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def sleeping(db_url: str, tmp_path: Path) -> Iterator[tuple[App, str]]:
    app = App(db_url, flows=[Sleeper])
    run_id = app.start_flow(Sleeper, {"dir": str(tmp_path), "seconds": 60})
    yield app, run_id
    app.close()


def spawn(db_url: str, *options: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", "from tideflow.cli.main import main; main()", "worker",
         "--app", "tests.flows.flows_for_tests", "-d", db_url, "--poll-interval", "0.05",
         *options],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_step(tmp_path: Path, worker: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while not list(tmp_path.glob("started-*")):
        assert worker.poll() is None, worker.communicate()[1]
        assert time.monotonic() < deadline, "the step never started"
        time.sleep(0.02)


def test_sigterm_drains_up_to_the_deadline_then_releases_the_step_and_exits_0(
        db_url: str, sleeping: tuple[App, str], tmp_path: Path) -> None:
    app, run_id = sleeping
    worker = spawn(db_url, "--shutdown-grace", "0.5")
    wait_for_step(tmp_path, worker)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err
    assert time.monotonic() - started < 10  # the deadline, not the 60 s step
    task = app.get_run(run_id).step("nap").tasks[0]
    assert (task.status, task.attempts) == ("queued", 0), err  # released, attempt not counted
    assert "Traceback" not in err and "released 1 unfinished task" in err


def test_a_second_ctrl_c_stops_at_once_and_exits_130(
        db_url: str, sleeping: tuple[App, str], tmp_path: Path) -> None:
    app, run_id = sleeping
    worker = spawn(db_url, "--shutdown-grace", "60")
    wait_for_step(tmp_path, worker)
    worker.send_signal(signal.SIGINT)
    time.sleep(0.5)
    assert worker.poll() is None  # the first one waits for the running step
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    _, err = worker.communicate(timeout=20)
    assert worker.returncode == 130, err
    assert time.monotonic() - started < 10
    task = app.get_run(run_id).step("nap").tasks[0]
    assert (task.status, task.attempts) == ("queued", 0), err
    assert "Traceback" not in err
