"""Saga steps: the unit of a process manager's work, as issue 9 defines it.

    python benchmarks/bench_saga_steps.py [--backend sqlite|postgres|all] [--instances 500]

(a) steps/s: one step = an event in -> the instance's state saved -> one command dispatched ->
its event out (which is the next step's event in). --instances instances of a ping-pong saga each
take STEPS steps; one handler runner at default settings (batch_size 20) catches up from the
start of the log. (b) latency: a three-step saga on an idle worker (a real ``App.run_worker``
in a thread, woken by LISTEN/NOTIFY or SQLite's watcher): p50 and p99 from the first dispatch to
the instance completed, over --samples sagas one at a time.

PostgreSQL: a database ``tideflow_bench_<random>`` on --pg-url (default $TIDEFLOW_TEST_PG, else
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. SQLite: a temporary file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchdb import ADMIN_URL, pg_database

from tideflow import App
from tideflow.events import Aggregate, Command, RecordedEvent, handles
from tideflow.sagas import Action, ProcessManager

STEPS = 4


class Ball(Aggregate):
    @handles("Serve")
    def serve(self, state: Any, command: Command) -> tuple[str, dict[str, Any]]:
        return ("Hit", {"game": command.aggregate_id, "n": 0})

    @handles("Return")
    def hit_back(self, state: Any, command: Command) -> tuple[str, dict[str, Any]]:
        return ("Hit", {"game": command.aggregate_id, "n": command.payload["n"]})


def rally(steps: int) -> type[ProcessManager]:
    class Rally(ProcessManager):
        name = f"rally_{steps}"
        event_types = ["Hit"]
        starts_with = ["Hit"]

        def process_id(self, event: RecordedEvent) -> str:
            return str(event.data["game"])

        def react(self, state: Any, event: RecordedEvent) -> list[Action]:
            n = event.data["n"] + 1
            if n >= steps:
                return []
            return [Command("Return", event.data["game"], {"n": n})]

        def apply(self, state: Any, event: RecordedEvent) -> Any:
            return {"n": event.data["n"] + 1}

        def is_done(self, state: Any) -> bool:
            return bool(state["n"] >= steps)

    return Rally


def throughput(url: str, instances: int) -> float:
    manager = rally(STEPS)
    app = App(url, aggregates=[Ball], handlers=[manager])
    try:
        for n in range(instances):
            app.dispatch(Command("Serve", f"g-{n}"))
        runner = app.handler_runner()
        started = time.perf_counter()
        while app.process_store.counts().get((manager.name, "completed"), 0) < instances:
            runner.run_until_idle()
        seconds = time.perf_counter() - started
        return instances * STEPS / seconds
    finally:
        app.close()


def latency(url: str, samples: int) -> tuple[float, float]:
    manager = rally(3)
    app = App(url, aggregates=[Ball], handlers=[manager])
    runner = app.handler_runner()  # default options: woken by the database, polling at 1 s
    worker = threading.Thread(target=lambda: asyncio.run(runner.run()), daemon=True)
    worker.start()
    try:
        app.dispatch(Command("Serve", "warm-up"))
        app.process(manager, "warm-up").wait("completed", timeout=30)
        times = []
        for n in range(samples):
            handle = app.process(manager, f"l-{n}")
            started = time.perf_counter()
            app.dispatch(Command("Serve", f"l-{n}"))
            handle.wait("completed", timeout=10)
            times.append((time.perf_counter() - started) * 1000)
        times.sort()
        return statistics.median(times), times[max(int(len(times) * 0.99) - 1, 0)]
    finally:
        runner.stop()
        worker.join(timeout=30)
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--pg-url", default=ADMIN_URL)
    args = parser.parse_args()
    rows: list[tuple[str, float, float, float]] = []
    backends: list[tuple[str, Callable[[], tuple[str, Callable[[], None]]]]] = []
    tmp = tempfile.TemporaryDirectory()
    if args.backend in ("sqlite", "all"):
        backends.append(
            ("sqlite", lambda: (f"sqlite:///{tmp.name}/b-{uuid.uuid4().hex[:8]}.db", lambda: None))
        )
    if args.backend in ("postgres", "all"):
        backends.append(("postgres", lambda: pg_database(args.pg_url)))
    for backend, database in backends:
        print(f"[{backend}] {args.instances} rallies of {STEPS} steps ...", file=sys.stderr)
        url, drop = database()
        try:
            steps = throughput(url, args.instances)
        finally:
            drop()
        print(f"[{backend}] latency of a 3-step saga, {args.samples} samples ...", file=sys.stderr)
        url, drop = database()
        try:
            p50, p99 = latency(url, args.samples)
        finally:
            drop()
        rows.append((backend, steps, p50, p99))
    tmp.cleanup()
    print()
    print(f"{'backend':<10}{'steps/s':>10}{'3-step p50 ms':>16}{'p99 ms':>10}")
    for backend, steps, p50, p99 in rows:
        print(f"{backend:<10}{steps:>10,.0f}{p50:>16.1f}{p99:>10.1f}")
    print(
        f"\n({os.cpu_count()} CPUs; one runner at default settings; a step = event in -> state "
        "saved -> one command dispatched -> its event out)"
    )


if __name__ == "__main__":
    main()
