"""Failed attempts keep their exception type, message and traceback; a failed run can be
retried from its failed steps; the worker logs one line per failed attempt and per finished
run, with structured fields. On both backends."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.observability.flows import Broken, Fixable
from tideflow import App
from tideflow.cli.main import cli

FAST = {"poll_interval": 0.02, "reap_interval": 0.2}


def test_each_failed_attempt_keeps_type_message_and_traceback(app: App) -> None:
    app.register(Broken)
    run_id = app.start_flow(Broken, {})
    app.run_worker(until_idle=True, **FAST)
    run = app.get_run(run_id)
    assert run.status == "failed"
    assert [(f.step_slug, f.attempt, f.retried) for f in run.failures] == [
        ("total", 1, True),
        ("total", 2, False),
    ]
    last = run.last_failure
    assert last is not None
    assert last.error_type == "KeyError" and last.error == "KeyError: 'items'"
    assert last.traceback is not None
    # the step's own frames, newest last, and the exception line; not the worker's machinery
    assert "in total" in last.traceback and "in _lookup" in last.traceback
    assert last.traceback.rstrip().endswith("KeyError: 'items'")
    assert "tideflow/worker/execute.py" not in last.traceback
    assert last.worker_id and last.started_at and last.started_at <= last.failed_at


def test_a_traceback_is_bounded_to_its_newest_frames() -> None:
    from tideflow.worker.execute import TRACEBACK_FRAMES, format_tb

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("bottom")
        deep(n - 1)

    try:
        deep(200)
    except ValueError as exc:
        text = format_tb(exc)
    # 30 frames: the raising one, then 29 of the recursion, which Python prints as 3 + "26 more"
    assert TRACEBACK_FRAMES == 30
    assert text.count("in deep") == 4 and "[Previous line repeated 26 more times]" in text
    assert text.rstrip().endswith("ValueError: bottom")


def test_tideflow_run_shows_the_last_traceback(app: App) -> None:
    app.register(Broken)
    run_id = app.start_flow(Broken, {})
    app.run_worker(until_idle=True, **FAST)
    result = CliRunner().invoke(cli, ["run", run_id, "-d", app.database_url])
    assert result.exit_code == 0, result.output
    assert "last failure: step total attempt 2" in result.output
    assert "Traceback (most recent call last)" in result.output
    assert "in _lookup" in result.output and "KeyError: 'items'" in result.output


def test_worker_logs_each_failed_attempt_and_the_finished_run(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    app.register(Broken)
    run_id = app.start_flow(Broken, {})
    with caplog.at_level(logging.DEBUG, "tideflow.worker"):
        app.run_worker(until_idle=True, **FAST)
    failed = [
        r for r in caplog.records if " failed: " in r.getMessage() and "attempt" in r.getMessage()
    ]
    assert [r.levelno for r in failed] == [logging.INFO, logging.WARNING]  # retried, then final
    assert [r.getMessage() for r in failed] == [
        f"run {run_id} step total attempt 1 of 2 failed: KeyError: 'items'; retrying in "
        + failed[0].getMessage().rsplit("retrying in ", 1)[1],
        f"run {run_id} step total attempt 2 of 2 failed: KeyError: 'items'; no attempts left",
    ]
    assert [(r.run_id, r.step, r.attempt) for r in failed] == [  # type: ignore[attr-defined]
        (run_id, "total", 1),
        (run_id, "total", 2),
    ]
    tracebacks = [r for r in caplog.records if r.levelno == 10 and "traceback of" in r.getMessage()]
    assert len(tracebacks) == 2 and "in _lookup" in tracebacks[0].getMessage()
    ended = [r for r in caplog.records if r.getMessage().startswith(f"run {run_id} of flow")]
    assert len(ended) == 1 and ended[0].levelno == logging.INFO
    assert ended[0].status == "failed" and ended[0].duration > 0  # type: ignore[attr-defined]


def test_a_completed_run_is_logged_once(app: App, caplog: pytest.LogCaptureFixture) -> None:
    app.register(Fixable)
    run_id = app.start_flow(Fixable, {"marker": __file__})
    with caplog.at_level(logging.INFO, "tideflow.worker"):
        app.run_worker(until_idle=True, **FAST)
    ended = [r for r in caplog.records if r.getMessage().startswith(f"run {run_id} of flow")]
    assert len(ended) == 1
    assert ended[0].getMessage().startswith(f"run {run_id} of flow obs_fixable completed in ")
    assert ended[0].run_id == run_id  # type: ignore[attr-defined]


def test_a_retried_run_keeps_its_earlier_failures_on_record(app: App, tmp_path: Path) -> None:
    app.register(Fixable)
    marker = tmp_path / "marker"
    run_id = app.start_flow(Fixable, {"marker": str(marker)})
    app.run_worker(until_idle=True, **FAST)
    failed = app.get_run(run_id)
    assert failed.status == "failed"
    assert [s.status for s in failed.steps] == ["completed", "failed", "skipped"]
    fetched_at = failed.step("fetch").finished_at

    marker.write_text("here")
    app.retry_run(run_id)
    again = app.get_run(run_id)
    assert again.status == "started" and again.error is None and again.finished_at is None
    assert [s.status for s in again.steps] == ["completed", "started", "created"]
    assert again.step("fetch").finished_at == fetched_at  # kept, not run again
    assert again.step("check").tasks[0].attempts == 0  # a fresh attempt count
    app.run_worker(until_idle=True, **FAST)
    done = app.get_run(run_id)
    assert done.status == "completed" and done.output == {"report": {"result": "ok"}}
    assert done.step("check").attempts == 1 and done.step("fetch").attempts == 1
    assert len(done.failures) == 1  # the earlier failure stays on record


def test_debug_prints_each_log_line_once(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'd.db'}"
    with App(url, flows=[Broken]) as app:
        app.start_flow(Broken, {})
    env_app = "tests.observability.flows:Broken"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tideflow.cli.main",
            "--debug",
            "worker",
            "-f",
            env_app,
            "-d",
            url,
            "--until-idle",
            "--poll-interval",
            "0.02",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "COLUMNS": "300"},
    )
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if "attempt 1 of 2 failed" in line]
    assert len(lines) == 1, out.stderr
    assert "Traceback (most recent call last)" in out.stderr  # the traceback, at debug level
