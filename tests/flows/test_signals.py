"""Stopping ``tideflow worker``: SIGTERM drains up to ``--shutdown-grace`` and exits 0; a second
Ctrl-C stops at once with exit code 130. Either way a step still running goes back to the queue
without counting the attempt (issue 7, section 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.flows_for_tests import Sleeper
from tests.polling import wait_until
from tideflow import App

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def sleeping(db_url: str, tmp_path: Path) -> Iterator[tuple[App, str]]:
    app = App(db_url, flows=[Sleeper])
    run_id = app.start_flow(Sleeper, {"dir": str(tmp_path), "seconds": 60})
    yield app, run_id
    app.close()


def spawn(db_url: str, log: Path, *options: str) -> subprocess.Popen[bytes]:
    """``tideflow worker`` with its stderr in ``log`` (readable while it runs)."""
    with log.open("w") as err:
        return subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tideflow.cli.main import main; main()",
                "worker",
                "--app",
                "tests.flows.flows_for_tests",
                "-d",
                db_url,
                "--poll-interval",
                "0.05",
                *options,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "COLUMNS": "300"},
        )


def wait_for_step(tmp_path: Path, worker: subprocess.Popen[bytes], log: Path) -> None:
    def started() -> bool:
        assert worker.poll() is None, log.read_text()
        return bool(list(tmp_path.glob("started-*")))

    wait_until(started, what="the step to start")


def test_sigterm_drains_up_to_the_deadline_then_releases_the_step_and_exits_0(
    db_url: str, sleeping: tuple[App, str], tmp_path: Path
) -> None:
    app, run_id = sleeping
    log = tmp_path / "worker.err"
    worker = spawn(db_url, log, "--shutdown-grace", "0.5")
    wait_for_step(tmp_path, worker, log)
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    worker.wait(timeout=20)
    err = log.read_text()
    assert worker.returncode == 0, err
    assert time.monotonic() - started < 10  # the deadline, not the 60 s step
    task = app.get_run(run_id).step("nap").tasks[0]
    assert (task.status, task.attempts) == ("queued", 0), err  # released, attempt not counted
    assert "Traceback" not in err and "released 1 unfinished task" in err


def test_a_second_ctrl_c_stops_at_once_and_exits_130(
    db_url: str, sleeping: tuple[App, str], tmp_path: Path
) -> None:
    app, run_id = sleeping
    log = tmp_path / "worker.err"
    worker = spawn(db_url, log, "--shutdown-grace", "60")
    wait_for_step(tmp_path, worker, log)
    worker.send_signal(signal.SIGINT)
    # The first one waits for the running step: not a quiet period, the worker's own word that
    # it is draining (a worker that stopped at once would have exited instead).
    wait_until(
        lambda: (
            "waiting up to 60s for 1 running task" in log.read_text() or worker.poll() is not None
        ),
        what="the worker to start draining",
    )
    assert worker.poll() is None, log.read_text()
    started = time.monotonic()
    worker.send_signal(signal.SIGINT)
    worker.wait(timeout=20)
    err = log.read_text()
    assert worker.returncode == 130, err
    assert time.monotonic() - started < 10
    task = app.get_run(run_id).step("nap").tasks[0]
    assert (task.status, task.attempts) == ("queued", 0), err
    assert "Traceback" not in err
