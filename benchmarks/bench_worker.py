"""One worker process for ``bench_flows.py --defaults``: drains what is queued and prints the
CPU seconds the drain took (its own threads included; start-up and imports left out).

    python benchmarks/bench_worker.py URL CONCURRENCY|default

A plain subprocess, not multiprocessing: a spawned child takes its parent's ``sys.path``, so a
``PYTHONPATH`` naming another checkout (``--baseline``) would be ignored. This folder goes at the
end of ``sys.path`` for the same reason: the tideflow of ``PYTHONPATH`` must win.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parent))

from bench_flows_defs import FLOWS

from tideflow import App


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    url, chosen = sys.argv[1], sys.argv[2]
    app = App(url, flows=FLOWS)
    _ = app.store  # connect and migrate before the clock starts
    tuned = {} if chosen == "default" else {"concurrency": int(chosen)}
    before = cpu_seconds()
    app.run_worker(until_idle=True, poll_interval=0.05, **tuned)
    print(f"cpu {cpu_seconds() - before:.6f}", flush=True)
    app.close()
