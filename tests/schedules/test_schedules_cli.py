"""``tideflow schedules`` and ``tideflow schedule NAME``: read from the database alone."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from tests.schedules.jobs_for_tests import Report, heartbeat
from tests.test_cli import assert_one_line_error, invoke
from tideflow import App, Schedule
from tideflow.clock import ManualClock


def test_schedules_lists_next_ticks_in_their_timezone(db_url: str) -> None:
    clock = ManualClock(datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC))
    schedules = [
        Schedule(heartbeat, "* * * * *", catch_up="none", grace=15),
        Schedule(Report, "0 3 * * *", timezone="Europe/Berlin", input={"kind": "daily"}),
    ]
    with App(db_url, clock=clock, schedules=schedules) as app:
        app.migrate()
        empty = invoke("schedules", "-d", db_url)
        assert empty.exit_code == 0, empty.output
        assert "no schedules on this database yet" in empty.output
        app.sync_schedules()
        clock.advance(40)
        [run_id] = app.fire_schedules()
    listed = invoke("schedules", "-d", db_url)
    assert listed.exit_code == 0, listed.output
    lines = {line.split("│")[0].strip(): line for line in listed.output.splitlines() if "│" in line}
    assert "2030-01-01 00:02:00 +0000" in lines["heartbeat"]  # its next tick
    assert "none (grace 15s)" in lines["heartbeat"]
    assert "2030-01-01 03:00:00 +0100" in lines["report"]  # 03:00 in Berlin, its own zone
    assert '{"kind": "daily"}' in lines["report"]
    one = invoke("schedule", "heartbeat", "-d", db_url)
    assert one.exit_code == 0, one.output
    assert run_id in one.output and "+10.0s" in one.output  # fired ten seconds after its tick
    assert_one_line_error(invoke("schedule", "nope", "-d", db_url), 1, "'nope'")

    # --json, and -d before the command (issue 12 item 7)
    as_json = json.loads(invoke("-d", db_url, "schedules", "--json").stdout)
    assert {s["name"]: s["next_tick_at"] for s in as_json} == {
        "heartbeat": "2030-01-01T00:02:00+00:00",
        "report": "2030-01-01T02:00:00+00:00",
    }
    shown = json.loads(invoke("schedule", "heartbeat", "--json", "-d", db_url).stdout)
    assert [(t["run_id"], t["late"]) for t in shown["ticks"]] == [(run_id, 10.0)]
