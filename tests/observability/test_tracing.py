"""OpenTelemetry: one trace from start_flow to the last step, across two worker processes (each
with the SDK's in-memory exporter), on both backends; and nothing stored without an SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.observability.flows import Traced
from tideflow import App

ROOT = Path(__file__).resolve().parents[2]


def spans_of(db_url: str, out: Path, mode: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "tests.observability.traced_process", db_url, str(out), mode],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_one_trace_from_start_flow_to_the_last_step_across_two_workers(
    db_url: str, tmp_path: Path
) -> None:
    with App(db_url, flows=[Traced]) as app:
        app.store.migrate()
    started = spans_of(db_url, tmp_path / "start.jsonl", "start")
    first = spans_of(db_url, tmp_path / "first.jsonl", "first")
    rest = spans_of(db_url, tmp_path / "rest.jsonl", "rest")
    spans = started + first + rest

    assert {s["trace_id"] for s in spans} == {started[0]["trace_id"]}  # one trace
    by_name = {s["name"]: s for s in spans}
    start, run = by_name["start_flow obs_traced"], by_name["run obs_traced"]
    assert start["parent_id"] is None and run["parent_id"] == start["span_id"]
    tasks = {s["attributes"]["tideflow.step"]: s for s in spans if s["name"].startswith("task ")}
    assert set(tasks) == {"first", "second", "third"}
    assert all(t["parent_id"] == run["span_id"] for t in tasks.values())
    # two worker processes ran the steps: the last one in the second
    assert {tasks["first"]["pid"], tasks["second"]["pid"]} == {first[0]["pid"]}
    assert tasks["third"]["pid"] == rest[0]["pid"] != first[0]["pid"]
    assert by_name["inside third"]["parent_id"] == tasks["third"]["span_id"]
    assert tasks["third"]["attributes"]["tideflow.run_id"] == run["attributes"]["tideflow.run_id"]
    with App(db_url) as app:
        assert app.get_run(run["attributes"]["tideflow.run_id"]).status == "completed"


def test_without_an_sdk_no_trace_context_is_stored(app: App) -> None:
    from tideflow.telemetry import tracing

    assert not tracing.enabled()
    app.register(Traced)
    run_id = app.start_flow(Traced, {})
    assert app.store.trace_contexts([run_id]) == {}


def test_dispatch_append_handler_reaction_and_its_commands_in_one_trace(
    db_url: str, tmp_path: Path
) -> None:
    spans = spans_of(db_url, tmp_path / "saga.jsonl", "saga")
    by_id = {s["span_id"]: s for s in spans}

    def parent(s: dict[str, Any]) -> dict[str, Any] | None:
        return by_id.get(s["parent_id"]) if s["parent_id"] else None

    reactions = [s for s in spans if s["name"].startswith("react order_fulfilment ")]
    assert reactions, sorted({s["name"] for s in spans})
    # a process manager's reaction continues the trace of the dispatch whose events it reacts
    # to: its parent is that dispatch's append, itself inside the dispatch
    placed = next(r for r in reactions if r["attributes"]["tideflow.event_type"] == "OrderPlaced")
    append = parent(placed)
    assert append is not None and append["name"].startswith("append ")
    dispatch = parent(append)
    assert dispatch is not None and dispatch["name"] == "dispatch PlaceOrder"
    # the commands it sends are children of the reaction, and their events' reactions follow
    sent = [s for s in spans if s["parent_id"] == placed["span_id"]]
    assert [s["name"] for s in sent if s["name"].startswith("dispatch ")] == [
        "dispatch ReserveStock"
    ]
    assert {s["trace_id"] for s in reactions if s["trace_id"] == placed["trace_id"]}
    chain = [r for r in reactions if r["trace_id"] == placed["trace_id"]]
    assert len(chain) >= 2  # OrderPlaced, then the events of the commands it sent
