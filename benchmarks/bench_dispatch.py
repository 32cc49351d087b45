"""Command dispatch throughput: commands/s to aggregates that already have 10 events each.

    python benchmarks/bench_dispatch.py [--backend sqlite|postgres|all] [--aggregates 600]
                                        [--commands 2400] [--threads 8]

Each scenario gets its own ``--aggregates`` accounts, seeded with 10 events each (one append of
10), then ``--commands`` Deposit commands spread round robin over them - so an aggregate holds
10 events at its first command and 10 + commands/aggregates - 1 at its last (13 by default).
One dispatch is the whole pipeline: load the state (read_stream + apply x10..13), decide,
append with the expected version (and the idempotency key, where the scenario says so).

Scenarios, per backend:
  * 1 thread                 - one caller, one command at a time: the latency-bound figure;
  * N threads                - N callers sharing one dispatcher and store (a web server's
                               request threads); each thread has its own aggregates, so there are
                               no version conflicts and what is measured is throughput;
  * N threads + keys         - the same with an idempotency key on every command;
  * N threads + snapshots    - the same with ``snapshot_every = 5`` and a snapshot already taken
                               at version 10: a load reads the snapshot, then the 0-3 events
                               after it (two queries instead of one, fewer rows).

PostgreSQL: a database ``tideflow_bench_<random>`` is created on the server at --pg-url (default
$TIDEFLOW_TEST_PG, else postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end.
SQLite: a file in a temporary directory. Figures depend on the machine (CPU count, fsync
latency): compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchdb import ADMIN_URL, postgres_database

from tideflow.events import ExpectedVersion, NewEvent, RecordedEvent
from tideflow.events.aggregate import Aggregate, DomainError, applies, handles
from tideflow.events.commands import Command
from tideflow.events.middleware import DispatchContext, Middleware
from tideflow.runtime.dispatch import CommandDispatcher
from tideflow.storage import EventStore, open_event_store

PRIOR_EVENTS = 10


class InvalidAmount(DomainError):
    pass


class Account(Aggregate):
    def initial_state(self, aggregate_id: str) -> dict[str, Any]:
        return {"balance": 0, "deposits": 0}

    @handles("Deposit")
    def deposit(self, state: dict[str, Any], command: Command) -> Any:
        amount = command.payload["amount"]
        if amount <= 0:
            raise InvalidAmount(f"deposits must be positive, got {amount}")
        return ("Deposited", {"amount": amount, "currency": "EUR", "reference": "bench"})

    @applies("Deposited")
    def deposited(self, state: dict[str, Any], event: RecordedEvent) -> dict[str, Any]:
        return {
            "balance": state["balance"] + event.data["amount"],
            "deposits": state["deposits"] + 1,
        }


class SnapshottedAccount(Account):
    aggregate_type = "account"
    snapshot_every = 5


class Conflicts(Middleware):
    """Counts commands that needed more than one attempt."""

    def __init__(self) -> None:
        self.count = 0

    def after_dispatch(self, ctx: DispatchContext, result: Any) -> None:
        if ctx.attempts > 1:
            self.count += 1


@dataclass
class Row:
    backend: str
    scenario: str
    commands: int
    seconds: float
    p50_ms: float
    p99_ms: float
    conflicts: int

    @property
    def rate(self) -> float:
        return self.commands / self.seconds


def _seed(
    store: EventStore, aggregate: type[Account], prefix: str, aggregates: int, threads: int
) -> list[str]:
    """Give each of ``aggregates`` new accounts 10 prior events (and, if the aggregate takes
    snapshots, a snapshot at version 10, as if it had been running); return their ids."""
    ids = [f"{prefix}-{i}" for i in range(aggregates)]

    def seed(part: list[str]) -> None:
        for aggregate_id in part:
            stream_id = aggregate.stream_id(aggregate_id)
            store.append(
                stream_id,
                [
                    NewEvent("Deposited", {"amount": 10, "currency": "EUR", "reference": "seed"})
                    for _ in range(PRIOR_EVENTS)
                ],
                ExpectedVersion.NO_STREAM,
            )
            if aggregate.snapshot_every:
                store.save_snapshot(
                    stream_id,
                    PRIOR_EVENTS,
                    {"balance": 10 * PRIOR_EVENTS, "deposits": PRIOR_EVENTS},
                    snapshot_type=aggregate.aggregate_type,
                    schema_version=aggregate.snapshot_version,
                )

    _in_threads([lambda part=ids[t::threads]: seed(part) for t in range(threads)])  # type: ignore[misc]
    return ids


def _in_threads(calls: list[Callable[[], Any]]) -> None:
    errors: list[BaseException] = []

    def run(call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def _scenario(
    store: EventStore,
    backend: str,
    name: str,
    aggregate: type[Account],
    threads: int,
    aggregates: int,
    commands: int,
    keys: bool,
) -> Row:
    ids = _seed(store, aggregate, uuid.uuid4().hex[:8], aggregates, min(threads, 4))
    conflicts = Conflicts()
    dispatcher = CommandDispatcher(store, [aggregate], middleware=[conflicts])
    work = [
        Command(
            "Deposit",
            ids[i % aggregates],
            {"amount": 5},
            idempotency_key=f"dep-{uuid.uuid4().hex}" if keys else None,
        )
        for i in range(commands)
    ]
    # Thread t sends the commands of the aggregates t, t + threads, ... so threads never race.
    parts = [
        [c for i, c in enumerate(work) if (i % aggregates) % threads == t] for t in range(threads)
    ]
    latencies: list[list[float]] = [[] for _ in range(threads)]

    def send(t: int) -> None:
        clock, out = time.perf_counter, latencies[t]
        for command in parts[t]:
            began = clock()
            dispatcher.dispatch(command)
            out.append(clock() - began)

    started = time.perf_counter()
    _in_threads([lambda t=t: send(t) for t in range(threads)])  # type: ignore[misc]
    elapsed = time.perf_counter() - started
    every = sorted(x for part in latencies for x in part)
    p99 = every[min(len(every) - 1, int(len(every) * 0.99))]
    return Row(
        backend,
        name,
        len(every),
        elapsed,
        statistics.median(every) * 1000,
        p99 * 1000,
        conflicts.count,
    )


def _run(backend: str, url: str, args: argparse.Namespace) -> list[Row]:
    store = open_event_store(url)
    try:
        store.migrate()
        n = args.threads
        plan = [
            ("1 thread", Account, 1, False),
            (f"{n} threads", Account, n, False),
            (f"{n} threads + keys", Account, n, True),
            (f"{n} threads + snapshots", SnapshottedAccount, n, False),
        ]
        # warm up: connections, prepared plans, code paths
        _scenario(store, backend, "warm-up", Account, n, 50, 100, True)
        rows = []
        for name, aggregate, threads, keys in plan:
            row = _scenario(
                store, backend, name, aggregate, threads, args.aggregates, args.commands, keys
            )
            print(f"  {backend:8} {name:24} {row.rate:9,.0f} commands/s", file=sys.stderr)
            rows.append(row)
        return rows
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--aggregates", type=int, default=600)
    parser.add_argument("--commands", type=int, default=2400)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--pg-url", default=ADMIN_URL)
    args = parser.parse_args()

    rows: list[Row] = []
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            rows += _run("sqlite", f"sqlite:///{tmp}/bench.db", args)
    if args.backend in ("postgres", "all"):
        with postgres_database(args.pg_url) as url:
            rows += _run("postgres", url, args)

    print(f"\ncommand dispatch, {PRIOR_EVENTS} prior events per aggregate, {os.cpu_count()} CPUs")
    print(
        f"{'backend':9} {'scenario':24} {'commands':>8} {'seconds':>8} {'commands/s':>11} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'conflicts':>9}"
    )
    for r in rows:
        print(
            f"{r.backend:9} {r.scenario:24} {r.commands:8} {r.seconds:8.2f} {r.rate:11,.0f} "
            f"{r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.conflicts:9}"
        )


if __name__ == "__main__":
    main()
