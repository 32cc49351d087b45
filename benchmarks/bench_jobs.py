"""Jobs and schedules benchmark: python benchmarks/bench_jobs.py [--backend sqlite|postgres|all].

Prints, per backend, starts per second of a one-step task, the four ways interleaved in each
round (median of --rounds rounds of --runs each), so that machine noise hits them alike:
  start_flow     a one-step Flow class started with start_flow (the baseline)
  enqueue        the same work as a @job, enqueue(job, input)
  enqueue delay  enqueue(job, input, delay=60): one more UPDATE in the start's transaction
  enqueue key    enqueue(job, input, key=...): a fresh key each time (the run id is the key)
and the cost of a worker's schedule pass (fire_schedules) over --schedules schedules of which
none is due - what every worker pays every second. PostgreSQL figures use a database created for
the run and dropped after.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdb import postgres_database

from tideflow import App, Flow, Schedule, job, step


class OneStep(Flow, slug="bench_one_step"):
    @step()
    def work(self, input: Any) -> Any:
        return input


@job
def bench_job(input: Any) -> Any:
    return input


def measure(url: str, runs: int, rounds: int, schedules: int) -> dict[str, str]:
    declared = [
        Schedule(bench_job, "0 3 1 1 *", name=f"yearly_{i}", input={"i": i})
        for i in range(schedules)
    ]
    with App(url, flows=[OneStep], jobs=[bench_job], schedules=declared) as app:
        app.start_flow(OneStep, {"warm": True})  # connect, migrate, record the flows
        app.enqueue(bench_job, {"warm": True})
        app.sync_schedules()
        counter = iter(range(10**9))
        ways: dict[str, Callable[[int], object]] = {
            "start_flow": lambda i: app.start_flow(OneStep, {"i": i}),
            "enqueue": lambda i: app.enqueue(bench_job, {"i": i}),
            "enqueue delay": lambda i: app.enqueue(bench_job, {"i": i}, delay=60),
            "enqueue key": lambda i: app.enqueue(bench_job, {"i": i}, key=f"k{next(counter)}"),
        }
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(rounds):
            for name, start in ways.items():
                t0 = time.perf_counter()
                for i in range(runs):
                    start(i)
                rates[name].append(runs / (time.perf_counter() - t0))
        passes = 200
        t0 = time.perf_counter()
        for _ in range(passes):
            assert app.fire_schedules() == []
        pass_ms = (time.perf_counter() - t0) / passes * 1000
    row = {name: f"{statistics.median(r):,.0f}/s" for name, r in rates.items()}
    row["schedule pass"] = f"{pass_ms:.2f} ms"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--schedules", type=int, default=50)
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    print(
        f"one-step starts per second (median of {args.rounds} interleaved rounds of "
        f"{args.runs:,}); schedule pass: {args.schedules} schedules, none due"
    )
    columns = ["start_flow", "enqueue", "enqueue delay", "enqueue key", "schedule pass"]
    print(f"{'backend':>9} " + " ".join(f"{c:>14}" for c in columns))
    for backend in backends:
        if backend == "postgres":
            with postgres_database() as url:
                row = measure(url, args.runs, args.rounds, args.schedules)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                row = measure(f"sqlite:///{tmp}/bench.db", args.runs, args.rounds, args.schedules)
        print(f"{backend:>9} " + " ".join(f"{row[c]:>14}" for c in columns))


if __name__ == "__main__":
    main()
