"""Cron schedules: start a flow or a job on every tick, once per tick across all workers.

    Schedule(target, "0 3 * * *", timezone="Europe/Berlin", input={...}, catch_up="latest")

Workers store the app's schedules as they start and fire the due ticks: a tick row with a unique
key per (schedule, tick) is written with the tick's run in one transaction, so however many
workers run, each tick starts exactly one run (``schedule:<name>@<tick>``). ``catch_up`` says
what happens to ticks missed while every worker was down: fire the latest (default), all, or
none. ``tideflow schedules`` shows each schedule's next tick in its timezone.

This script declares a nightly report (03:00 in Berlin) and a per-second heartbeat (six fields:
seconds first), runs a worker until three heartbeats have run, and prints the schedules.

Run it:                  python examples/nightly_report.py [DATABASE_URL]
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any
from zoneinfo import ZoneInfo

from tideflow import App, Flow, Schedule, job, step


class NightlyReport(Flow, slug="nightly_report"):
    @step()
    def gather(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"region": input["region"], "orders": 42}

    @step(depends_on=["gather"])
    def publish(self, gather: dict[str, Any]) -> str:
        return f"{gather['region']}: {gather['orders']} orders"


@job
def heartbeat(input: dict[str, str]) -> str:
    return f"alive ({input['from']})"


SCHEDULES = [
    Schedule(NightlyReport, "0 3 * * *", timezone="Europe/Berlin", input={"region": "EU"}),
    Schedule(heartbeat, "* * * * * *", input={"from": "cron"}, catch_up="none", grace=5),
]


def main(database_url: str | None = None) -> list[str]:
    with App(database_url, schedules=SCHEDULES) as app:
        worker = app.worker(schedule_interval=0.1, poll_interval=0.1)
        thread = threading.Thread(target=asyncio.run, args=(worker.run(),))
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                beats = app.list_runs(flow=heartbeat.flow, status="completed")
                if len(beats) >= 3:
                    break
                time.sleep(0.1)
        finally:
            worker.stop()
            thread.join()
        for s in app.list_schedules():
            assert s.next_tick_at is not None
            local = s.next_tick_at.astimezone(ZoneInfo(s.timezone))
            print(f"schedule {s.name}: {s.cron} in {s.timezone}, next tick {local}")
        results = [app.get_run(r.run_id).output["heartbeat"] for r in beats]
    print(f"{len(results)} heartbeats ran: {results[0]}")
    return [r.run_id for r in beats]


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
