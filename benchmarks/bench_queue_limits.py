"""Queue limits: python benchmarks/bench_queue_limits.py [--backend ...] [--runs N] [--rounds R].

Drains N single-step no-op runs with one worker process (concurrency 256) for three flows,
interleaved over R rounds on a fresh database each time, and prints runs/s (median and all):

  no limits        - the flow of bench_flows.py (a); its claim looks its slug up in flow_limits
  flow limit       - concurrency=1,000,000: never binds, so what remains is the limited claim's
                     own cost (the flow's row locked, slots counted, candidates read)
  key limit        - concurrency_key over 64 keys, 100 per key: the ranking's cost

The cost of the feature for flows without limits (issue 10 item 9: < 10%) is measured against
the previous release's code, which this script cannot run: see docs/benchmarks.md for how it
was measured (the same drain, the two trees' code interleaved).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flows import drain_in_worker_process
from bench_flows_defs import FLOWS, NoOp, NoOpLimited, NoOpPerKey
from benchdb import pg_database

from tideflow import App

CASES = [("no limits", NoOp), ("flow limit", NoOpLimited), ("key limit", NoOpPerKey)]


def drain(backend: str, flow: type, n: int) -> float:
    if backend == "postgres":
        url, drop = pg_database()
    else:
        url, drop = f"sqlite:///{tempfile.mkdtemp()}/bench.db", lambda: None
    try:
        with App(url, flows=FLOWS) as app:
            app.migrate()
            app.store.ensure_flow(flow.definition)  # its limits stored, as a worker does
            for i in range(0, n, 5000):
                app.start_flows(flow, [{"k": j % 64} for j in range(i, min(n, i + 5000))])
        rate = n / drain_in_worker_process(url, 256)
        with App(url, flows=FLOWS) as app:
            done = len(app.list_runs(status="completed", flow=flow.slug, limit=n + 10))
        assert done == n, f"only {done} of {n} runs completed"
        return rate
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="postgres")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    for backend in backends:
        found: dict[str, list[float]] = {name: [] for name, _ in CASES}
        for _ in range(args.rounds):
            for name, flow in CASES:
                found[name].append(drain(backend, flow, args.runs))
        print(f"{backend}, {args.runs:,} runs, concurrency 256, {args.rounds} rounds")
        for name, rates in found.items():
            all_ = ", ".join(f"{r:,.0f}" for r in rates)
            print(f"  {name:<11} | median {statistics.median(rates):>7,.0f} runs/s | {all_}")


if __name__ == "__main__":
    main()
