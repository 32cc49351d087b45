"""Bulk start benchmark: python benchmarks/bench_bulk_start.py [--backend sqlite|postgres|all].

Prints, per backend, runs started per second:
  one by one   start_flow in a loop: one transaction per run (--single runs)
  bulk         start_flows: --runs single-step runs in one transaction (best of --rounds)
and checks that a worker then completes every bulk-started run of the last round.
PostgreSQL figures use a database created for the run and dropped after.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_flows_defs import NoOp
from benchdb import postgres_database

from tideflow import App


def measure(url: str, runs: int, single: int, rounds: int) -> dict[str, str]:
    with App(url, flows=[NoOp]) as app:
        _ = app.store  # connect, migrate and record the flow before the clock starts
        app.start_flow(NoOp, {"warm": True})
        t0 = time.perf_counter()
        for i in range(single):
            app.start_flow(NoOp, {"i": i})
        one_by_one = single / (time.perf_counter() - t0)
        best = 0.0
        ids: list[str] = []
        for _ in range(rounds):
            inputs = [{"i": i} for i in range(runs)]
            t0 = time.perf_counter()
            ids = app.start_flows(NoOp, inputs)
            best = max(best, runs / (time.perf_counter() - t0))
        app.run_worker(until_idle=True, concurrency=256, poll_interval=0.05)
        statuses = {app.get_run(run_id).status for run_id in ids[:: max(1, runs // 50)]}
        assert statuses == {"completed"}, statuses
    return {"one by one": f"{one_by_one:,.0f}", "bulk": f"{best:,.0f}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--single", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    print(f"runs started per second ({args.runs:,} single-step runs per bulk start)")
    for backend in backends:
        if backend == "postgres":
            with postgres_database() as url:
                row = measure(url, args.runs, args.single, args.rounds)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(f"sqlite:///{tmp}/bench.db", args.runs, args.single, args.rounds)
        print(f"{backend:>9}: one by one {row['one by one']:>8}/s   bulk {row['bulk']:>8}/s")


if __name__ == "__main__":
    main()
