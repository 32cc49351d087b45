"""A worker process with a per-second schedule: python -m tests.schedules.schedule_worker URL.

Every tick starts a run of ``heartbeat`` (catch_up="all": a tick missed while workers were down
or killed is fired late, never dropped), so the test can check the ticks are contiguous and each
has exactly one run."""

from __future__ import annotations

import logging
import sys

from tests.schedules.jobs_for_tests import heartbeat
from tideflow import App, Schedule

EVERY_SECOND = Schedule(heartbeat, "* * * * * *", catch_up="all", input={"beat": True})

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    app = App(sys.argv[1], jobs=[heartbeat], schedules=[EVERY_SECOND])
    print("worker ready", flush=True)
    app.run_worker(schedule_interval=0.05, poll_interval=0.1, lease_margin=2.0, reap_interval=0.5)
