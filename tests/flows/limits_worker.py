"""A worker process for the queue-limit tests: python -m tests.flows.limits_worker URL DIR."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tideflow import App, Flow, step


class LimitedSleeper(Flow, slug="limited_sleeper", concurrency=2, base_delay=0.01):
    """Sleeps, recording when it began and ended by the wall clock, which every process on the
    machine shares: the test counts how many ran at once."""

    @step()
    def nap(self, input: Any) -> int:
        begin = time.time()
        (Path(input["dir"]) / f"started-{os.getpid()}-{input['n']}").write_text("x")
        time.sleep(0.4)
        end = time.time()
        (Path(input["dir"]) / f"done-{os.getpid()}-{input['n']}").write_text(f"{begin} {end}")
        return os.getpid()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    app = App(sys.argv[1], flows=[LimitedSleeper])
    app.run_worker(lease_margin=1.0, reap_interval=0.2, poll_interval=0.05, concurrency=4)
