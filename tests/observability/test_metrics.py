"""Prometheus metrics: a worker's ``--metrics-port`` (a real worker process) and the dashboard's
``/metrics``, on both backends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.dashboard.conftest import Served, free_port
from tests.observability.flows import Broken, Fixable
from tests.polling import wait_until
from tideflow import App
from tideflow.dashboard import create_app
from tideflow.events import ExpectedVersion, NewEvent

ROOT = Path(__file__).resolve().parents[2]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in Prometheus' text format, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m is None or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def test_worker_serves_metrics_on_its_port(db_url: str) -> None:
    with App(db_url, flows=[Fixable, Broken]) as app:
        app.store.migrate()
        for _ in range(3):
            app.start_flow(Fixable, {"marker": __file__})
        app.start_flow(Broken, {})
    port = free_port()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tideflow.cli.main",
            "worker",
            "-f",
            "tests.observability.flows:Fixable",
            "-f",
            "tests.observability.flows:Broken",
            "-d",
            db_url,
            "--poll-interval",
            "0.05",
            "--metrics-port",
            str(port),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    text: str = answer.read().decode()
            except OSError:
                return None
            # Both flows' ends, not only the one expected last: the two retry at their own pace.
            failed = sample(
                text, "tideflow_runs_finished_total", flow="obs_broken", status="failed"
            )
            fixed = sample(
                text, "tideflow_runs_finished_total", flow="obs_fixable", status="completed"
            )
            return text if failed == 1 and fixed == 3 else None

        text = wait_until(scrape, timeout=30, what="the worker's metrics")
    finally:
        worker.send_signal(signal.SIGTERM)
        out, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, out
    assert f"metrics at http://127.0.0.1:{port}/metrics" in out
    assert sample(text, "tideflow_runs_finished_total", flow="obs_fixable", status="completed") == 3
    attempts = "tideflow_task_attempts_total"
    assert sample(text, attempts, flow="obs_fixable", step="check", outcome="completed") == 3
    assert sample(text, attempts, flow="obs_broken", step="total", outcome="retried") == 1
    assert sample(text, attempts, flow="obs_broken", step="total", outcome="failed") == 1
    assert sample(text, "tideflow_task_retries_total", flow="obs_broken", step="total") == 1
    count = sample(text, "tideflow_task_duration_seconds_count", flow="obs_fixable", step="fetch")
    assert count == 3
    # the database's gauges, scraped from the worker too
    assert sample(text, "tideflow_runs", flow="obs_fixable", status="completed") == 3
    assert sample(text, "tideflow_runs", flow="obs_broken", status="failed") == 1
    assert sample(text, "tideflow_workers_alive") == 1  # this worker, by its heartbeats


def test_dashboard_metrics_read_the_database(app: App) -> None:
    app.register(Fixable)
    queued = app.start_flow(Fixable, {"marker": __file__})
    positions = [
        app.event_store.append(f"s-{n}", [NewEvent("Happened", {"n": n})], ExpectedVersion.ANY)[
            0
        ].position
        for n in range(3)
    ]
    app.event_store.advance_checkpoint("audit", positions[0])
    time.sleep(0.05)
    with Served(create_app(app)) as served, urllib.request.urlopen(f"{served.url}/metrics") as r:
        text = r.read().decode()
    assert sample(text, "tideflow_queue_depth", flow="obs_fixable") == 1
    age = sample(text, "tideflow_queue_oldest_age_seconds", flow="obs_fixable")
    assert age is not None and age >= 0.05
    assert sample(text, "tideflow_runs", flow="obs_fixable", status="started") == 1
    assert sample(text, "tideflow_handler_lag_events", handler="audit") == 2
    assert sample(text, "tideflow_handler_dead_letters", handler="audit") == 0
    assert sample(text, "tideflow_event_log_head") == positions[-1]
    assert "# TYPE tideflow_process_instances gauge" in text
    assert app.get_run(queued).status == "started"
