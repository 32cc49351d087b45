"""Event store throughput: appends, batched appends and read_all, on SQLite and PostgreSQL.

    python benchmarks/bench_events.py [--backend sqlite|postgres|all] [--seconds 3]

Measures, per backend:
  * single-event appends/s, one writer (one stream, exact expected version each time);
  * single-event appends/s, four writers on four streams, each a process with its own store
    (processes, not threads, so the client's GIL is not what is measured), and the ratio to one;
  * events/s appended in batches of 10 (one writer);
  * read_all events/s over the whole store (at least 100,000 events, topped up if needed): the
    first pass in the process, and the best of two more (a long-running reader's steady state).

PostgreSQL: a database ``tideflow_bench_<random>`` is created on the server at --pg-url (default
$TIDEFLOW_TEST_PG, else postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end.
SQLite: a file in a temporary directory. The figures depend on the machine (CPU count, fsync
latency): compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

import psycopg

from tideflow.events import ExpectedVersion, NewEvent
from tideflow.storage.event_contract import open_event_store

WRITERS = 4
READ_EVENTS = 100_000
PAYLOAD = {"order_id": "9f1c2e4a", "customer": "c-1029", "amount": 129.5, "currency": "EUR",
           "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}]}
METADATA = {"user": "u-42", "source": "bench"}


def _event() -> NewEvent:
    return NewEvent("OrderPlaced", PAYLOAD, METADATA)


def _append_loop(url: str, stream: str, batch: int, seconds: float,
                 barrier: Barrier | None = None) -> int:
    """Append batches of ``batch`` events to ``stream`` for ``seconds``; return events written."""
    store = open_event_store(url)
    try:
        version = 0
        store.append(stream + "-warmup", [_event()], ExpectedVersion.ANY)  # connect, prepare
        if barrier is not None:
            barrier.wait()
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            store.append(stream, [_event() for _ in range(batch)], version)
            version += batch
        return version
    finally:
        store.close()


def _writer_process(url: str, stream: str, seconds: float, barrier: Barrier,
                    results: mp.Queue[int]) -> None:
    results.put(_append_loop(url, stream, 1, seconds, barrier))


@dataclass
class Result:
    backend: str
    one_writer: float
    four_writers: float
    batched: float
    read_first: float
    read_warm: float
    read_count: int


def _parallel_appends(url: str, seconds: float) -> float:
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WRITERS + 1)
    results: mp.Queue[int] = ctx.Queue()
    run = uuid.uuid4().hex[:8]
    procs = [ctx.Process(target=_writer_process,
                         args=(url, f"par-{run}-{i}", seconds, barrier, results))
             for i in range(WRITERS)]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    total = sum(results.get(timeout=seconds + 60) for _ in procs)
    elapsed = max(time.perf_counter() - started, seconds)
    for p in procs:
        p.join()
    return total / elapsed


def _timed(fn: Callable[[], int]) -> float:
    started = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - started)


def bench(backend: str, url: str, seconds: float) -> Result:
    store = open_event_store(url)
    store.migrate()
    run = uuid.uuid4().hex[:8]
    print(f"[{backend}] one writer, single-event appends ...", file=sys.stderr)
    one = _timed(lambda: _append_loop(url, f"one-{run}", 1, seconds))
    print(f"[{backend}] {WRITERS} writers (processes), single-event appends ...", file=sys.stderr)
    four = _parallel_appends(url, seconds)
    print(f"[{backend}] one writer, batches of 10 ...", file=sys.stderr)
    batched = _timed(lambda: _append_loop(url, f"batch-{run}", 10, seconds))
    missing = READ_EVENTS - store.head_position()
    if missing > 0:
        print(f"[{backend}] topping up {missing} events for read_all ...", file=sys.stderr)
        for i in range(0, missing, 100):
            store.append(f"fill-{run}-{i}", [_event() for _ in range(100)],
                         ExpectedVersion.NO_STREAM)
    print(f"[{backend}] read_all ...", file=sys.stderr)
    passes = []
    for _ in range(3):  # the first pass also pays for the process's first large allocations
        started = time.perf_counter()
        count = sum(1 for _ in store.read_all())
        passes.append(count / (time.perf_counter() - started))
    store.close()
    return Result(backend, one, four, batched, passes[0], max(passes[1:]), count)


def _pg_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    name = f"tideflow_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{admin_url.rsplit('/', 1)[0]}/{name}", drop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each write test")
    parser.add_argument("--pg-url", default=os.environ.get(
        "TIDEFLOW_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    results = []
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            results.append(bench("sqlite", f"sqlite:///{tmp}/bench.db", args.seconds))
    if args.backend in ("postgres", "all"):
        url, drop = _pg_database(args.pg_url)
        try:
            results.append(bench("postgres", url, args.seconds))
        finally:
            drop()
    print()
    print(f"{'backend':<10} {'1 writer':>11} {'4 writers':>11} {'ratio':>6} "
          f"{'batch of 10':>12} {'read_all':>12} {'read_all':>12}")
    print(f"{'':<10} {'appends/s':>11} {'appends/s':>11} {'':>6} {'events/s':>12} "
          f"{'1st pass/s':>12} {'warm/s':>12}")
    for r in results:
        print(f"{r.backend:<10} {r.one_writer:>11,.0f} {r.four_writers:>11,.0f} "
              f"{r.four_writers / r.one_writer:>6.2f} {r.batched:>12,.0f} "
              f"{r.read_first:>12,.0f} {r.read_warm:>12,.0f}")
    print(f"\n({os.cpu_count()} CPUs; read_all over {results[0].read_count:,} events)"
          if results else "")


if __name__ == "__main__":
    main()
