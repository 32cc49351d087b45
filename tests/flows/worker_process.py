"""A worker process for crash tests: python -m tests.flows.worker_process URL [LEASE_MARGIN]
[CONCURRENCY] (CONCURRENCY "default": the worker's own defaults; else 4)."""

from __future__ import annotations

import logging
import sys

from tests.flows.flows_for_tests import ALL_FLOWS
from tideflow import App

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    margin = float(sys.argv[2]) if len(sys.argv) > 2 else 30.0
    app = App(sys.argv[1], flows=ALL_FLOWS)
    print("worker ready", flush=True)
    chosen = sys.argv[3] if len(sys.argv) > 3 else "4"
    tuned = {} if chosen == "default" else {"concurrency": int(chosen)}
    app.run_worker(lease_margin=margin, reap_interval=0.2, poll_interval=0.05, **tuned)
