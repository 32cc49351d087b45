"""Event store throughput: appends, batched appends and read_all, on SQLite and PostgreSQL.

    python benchmarks/bench_events.py [--backend sqlite|postgres|all] [--seconds 3] [--runs 1]
    python benchmarks/bench_events.py --large [--events 5000000]

Measures, per backend:
  * the commit ceiling: single-row INSERTs/s, one writer, each in its own transaction, through
    the same driver on the same database - a single-event append is one commit too, so one
    writer's appends/s cannot exceed this (on PostgreSQL it is mostly the WAL flush, fsync);
  * single-event appends/s, one writer (one stream, exact expected version each time);
  * single-event appends/s, four writers on four streams, each a process with its own store
    (processes, not threads, so the client's GIL is not what is measured), and the ratio to one;
  * events/s appended in batches of 10 (one writer);
  * read_all events/s over the whole store (at least 100,000 events, topped up if needed): the
    first pass in the process, and the best of two more (a long-running reader's steady state).

--floors (PostgreSQL; issue 12 item 8): where a single append's time goes. Interleaved rounds
of one-writer loops, one statement per commit each: the bare one-row INSERT (autocommit, as above),
the same in an explicit transaction (psycopg's default: BEGIN, INSERT, COMMIT), one event's row
INSERTed straight into tideflow.events (its three indexes, no function, no stream row), the append
function called through psycopg's cursor, and EventStore.append.

--large (PostgreSQL; issue 13): read_stream of a 100-event stream, a single-event append, and
read_all of a rare event type over the whole log, on a store of 10,000 events and on one of 5M
(50,000 streams of 100 events, bulk-inserted with generate_series, then ANALYZE).

PostgreSQL: a database ``tideflow_bench_<random>`` is created on the server at --pg-url (default
$TIDEFLOW_TEST_PG, else postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end.
SQLite: a file in a temporary directory. --runs N repeats everything N times, each on a fresh
database, and prints the range: on a shared machine single runs vary by tens of percent. The
figures depend on the machine (CPU count, fsync latency): compare runs on the same machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.synchronize import Barrier

import psycopg
from benchdb import ADMIN_URL, pg_database

from tideflow.events import ExpectedVersion, NewEvent
from tideflow.storage import open_event_store

WRITERS = 4
READ_EVENTS = 100_000
PAYLOAD = {
    "order_id": "9f1c2e4a",
    "customer": "c-1029",
    "amount": 129.5,
    "currency": "EUR",
    "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
}
METADATA = {"user": "u-42", "source": "bench"}


def _event() -> NewEvent:
    return NewEvent("OrderPlaced", PAYLOAD, METADATA)


def _append_loop(
    url: str, stream: str, batch: int, seconds: float, barrier: Barrier | None = None
) -> int:
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


def _writer_process(
    url: str, stream: str, seconds: float, barrier: Barrier, results: mp.Queue[int]
) -> None:
    results.put(_append_loop(url, stream, 1, seconds, barrier))


def _bare_commits(url: str, seconds: float, rows: int = 1) -> float:
    """Rows/s of a bare loop, one writer, the driver's way (the SQLite one with the store's
    pragmas): one INSERT of ``rows`` rows and its COMMIT per iteration, each row carrying the
    events' data and metadata as JSON text - the ceiling of one writer's appends of ``rows``
    events (issue 12: tideflow's appends should reach 90% of it)."""
    data, metadata = json.dumps(PAYLOAD), json.dumps(METADATA)
    deadline = time.perf_counter() + seconds
    count = 0
    started = time.perf_counter()
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("CREATE TABLE IF NOT EXISTS bench_floor (id INTEGER PRIMARY KEY, d, m)")
            sql = "INSERT INTO bench_floor (d, m) VALUES " + ", ".join(["(?, ?)"] * rows)
            params = [data, metadata] * rows
            started = time.perf_counter()
            while time.perf_counter() < deadline:
                conn.execute(sql, params)
                count += rows
        finally:
            conn.close()
    else:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute(
                "CREATE TABLE IF NOT EXISTS public.bench_floor "
                "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, d json, m json)"
            )
            sql = "INSERT INTO public.bench_floor (d, m) VALUES " + ", ".join(["(%s, %s)"] * rows)
            params = [data, metadata] * rows
            started = time.perf_counter()
            while time.perf_counter() < deadline:
                pg.execute(sql, params, prepare=True)
                count += rows
    return count / (time.perf_counter() - started)


@dataclass
class Result:
    backend: str
    bare_commits: float
    bare_batched: float
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
    procs = [
        ctx.Process(target=_writer_process, args=(url, f"par-{run}-{i}", seconds, barrier, results))
        for i in range(WRITERS)
    ]
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
    print(f"[{backend}] one writer, single-row INSERT commits (the ceiling) ...", file=sys.stderr)
    bare = _bare_commits(url, seconds)
    print(f"[{backend}] one writer, 10-row INSERT commits ...", file=sys.stderr)
    bare10 = _bare_commits(url, seconds, rows=10)
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
            store.append(
                f"fill-{run}-{i}", [_event() for _ in range(100)], ExpectedVersion.NO_STREAM
            )
    print(f"[{backend}] read_all ...", file=sys.stderr)
    passes = []
    for _ in range(3):  # the first pass also pays for the process's first large allocations
        started = time.perf_counter()
        count = sum(1 for _ in store.read_all())
        passes.append(count / (time.perf_counter() - started))
    store.close()
    return Result(backend, bare, bare10, one, four, batched, passes[0], max(passes[1:]), count)


_BULK_EVENTS = [
    """
INSERT INTO tideflow.streams (stream_id, version)
SELECT 'bulk-' || s, 100 FROM generate_series(1, %(streams)s) AS s
""",
    """
INSERT INTO tideflow.events (position, version, schema_version, stream_id, event_id, event_type,
                             recorded_at, data, metadata)
SELECT nextval('tideflow.event_position_seq'), v, 1, 'bulk-' || s, gen_random_uuid(),
       CASE WHEN (s * 100 + v) %% 100000 = 0 THEN 'RareHappened' ELSE 'OrderPlaced' END,
       now(), %(data)s::json, %(metadata)s::json
FROM generate_series(1, %(streams)s) AS s, generate_series(1, 100) AS v
ORDER BY s, v
""",
]


def _median_ms(call: Callable[[], object], repeat: int = 50) -> float:
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return samples[len(samples) // 2]


def _fill(url: str, total: int) -> float:
    """``total`` events in streams of 100, in bulk, then ANALYZE; seconds it took."""
    t0 = time.perf_counter()
    params = {
        "streams": total // 100,
        "data": json.dumps(PAYLOAD),
        "metadata": json.dumps(METADATA),
    }
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in _BULK_EVENTS:
            conn.execute(statement, params)
        conn.execute("ANALYZE")
    return time.perf_counter() - t0


def _measure(url: str, total: int) -> tuple[float, float, float]:
    """Median ms of read_stream (100 events), of a single-event append, of a rare type's read."""
    store = open_event_store(url)
    try:
        middle = f"bulk-{total // 200}"
        read = _median_ms(lambda: list(store.read_stream(middle)))
        version = [100]

        def append() -> None:
            store.append("bulk-1", [_event()], version[0])
            version[0] += 1

        appended = _median_ms(append, 200)
        rare = _median_ms(lambda: list(store.read_all(event_types=["RareHappened"])), 5)
    finally:
        store.close()
    return read, appended, rare


def bench_large(events: int, admin_url: str) -> None:
    rows = []
    for total in (10_000, events):
        url, drop = pg_database(admin_url)
        try:
            migrating = open_event_store(url)
            migrating.migrate()
            migrating.close()
            filled = _fill(url, total)
            rows.append((total, filled, *_measure(url, total)))
        finally:
            drop()
    print(f"{'events':>10} {'fill s':>7} {'read_stream ms':>15} {'append ms':>10} {'rare ms':>8}")
    for total, filled, read, appended, rare in rows:
        print(f"{total:>10,} {filled:>7.0f} {read:>15.2f} {appended:>10.2f} {rare:>8.1f}")
    print("(read_stream: one stream of 100 events; append: one event at an exact version;")
    print(" rare: read_all(event_types=[...]) over the whole log, 1 event in 100,000)")


def bench_floors(admin_url: str, seconds: float, rounds: int) -> None:
    """The --floors table: median and range of each loop's commits/s over ``rounds``."""
    url, drop = pg_database(admin_url)
    try:
        store = open_event_store(url)
        store.migrate()
        store.close()
        data, metadata = json.dumps(PAYLOAD), json.dumps(METADATA)
        now = datetime.now(UTC)
        with psycopg.connect(url, autocommit=True) as pg, psycopg.connect(url) as tx:
            pg.execute(
                "CREATE TABLE public.bench_floor "
                "(id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, d json, m json)"
            )
            bare = "INSERT INTO public.bench_floor (d, m) VALUES (%s, %s)"
            row = (
                "INSERT INTO tideflow.events (position, version, schema_version, stream_id, "
                "event_id, event_type, recorded_at, data, metadata) VALUES "
                "(nextval('tideflow.event_position_seq'), %s, 1, 'rows', %s, 'OrderPlaced', %s, "
                "%s, %s)"
            )
            call = (
                "SELECT first_version FROM tideflow.append_events_v3(%s, 'exact', %s, %s::json, "
                "%s::json, %s::json, %s, NULL, NULL)"
            )
            count = {"row": 0, "call": 0, "append": 0}

            def one_row() -> None:
                count["row"] += 1
                pg.execute(row, (count["row"], uuid.uuid4(), now, data, metadata), prepare=True)

            def in_transaction() -> None:
                tx.execute(bare, (data, metadata), prepare=True)
                tx.commit()

            def function_call() -> None:
                events = json.dumps(
                    [
                        {
                            "event_id": uuid.uuid4().hex,
                            "event_type": "OrderPlaced",
                            "schema_version": 1,
                            "causation_id": None,
                            "correlation_id": None,
                        }
                    ]
                )
                pg.execute(
                    call,
                    ("calls", count["call"], events, f"[{data}]", f"[{metadata}]", now),
                    prepare=True,
                )
                count["call"] += 1

            events = open_event_store(url)
            events.append("calls", [_event()], ExpectedVersion.NO_STREAM)
            count["call"] = 1
            events.append("appends", [_event()], ExpectedVersion.NO_STREAM)
            count["append"] = 1

            def append() -> None:
                events.append("appends", [_event()], count["append"])
                count["append"] += 1

            loops: dict[str, Callable[[], None]] = {
                "bare INSERT (autocommit)": lambda: pg.execute(
                    bare, (data, metadata), prepare=True
                ),
                "bare BEGIN/INSERT/COMMIT": in_transaction,
                "one row into tideflow.events": one_row,
                "append_events_v3 via cursor": function_call,
                "EventStore.append": append,
            }
            rates: dict[str, list[float]] = {name: [] for name in loops}
            for _ in range(rounds):
                for name, loop in loops.items():
                    n, started = 0, time.perf_counter()
                    while time.perf_counter() - started < seconds:
                        loop()
                        n += 1
                    rates[name].append(n / (time.perf_counter() - started))
            events.close()
    finally:
        drop()
    first = statistics.median(rates["bare INSERT (autocommit)"])
    print(f"{'one writer, one commit per loop':<32} {'median/s':>10} {'range':>16} {'of bare':>8}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(
            f"{name:<32} {median:>10,.0f} {min(values):>7,.0f}-{max(values):<8,.0f} "
            f"{median / first:>8.0%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each write test")
    parser.add_argument(
        "--runs",
        type=int,
        default=1,
        help="repeat everything this many times, each on a fresh database",
    )
    parser.add_argument("--pg-url", default=ADMIN_URL)
    parser.add_argument("--large", action="store_true", help="the large-store mode (PostgreSQL)")
    parser.add_argument("--events", type=int, default=5_000_000, help="events in --large mode")
    parser.add_argument("--floors", action="store_true", help="where an append's time goes")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of --floors")
    args = parser.parse_args()
    if args.floors:
        bench_floors(args.pg_url, min(args.seconds, 2.0), args.rounds)
        return
    if args.large:
        bench_large(args.events, args.pg_url)
        return
    results = []
    for _ in range(max(args.runs, 1)):
        if args.backend in ("sqlite", "all"):
            with tempfile.TemporaryDirectory() as tmp:
                results.append(bench("sqlite", f"sqlite:///{tmp}/bench.db", args.seconds))
        if args.backend in ("postgres", "all"):
            url, drop = pg_database(args.pg_url)
            try:
                results.append(bench("postgres", url, args.seconds))
            finally:
                drop()
    print()
    print(
        f"{'backend':<10} {'bare 1-row':>11} {'1 writer':>10} {'of bare':>8} {'4 writers':>10} "
        f"{'ratio':>6} {'bare 10-row':>12} {'batch of 10':>12} {'of bare':>8} {'read_all':>10} "
        f"{'read_all':>10}"
    )
    print(
        f"{'':<10} {'rows/s':>11} {'appends/s':>10} {'':>8} {'appends/s':>10} {'':>6} "
        f"{'rows/s':>12} {'events/s':>12} {'':>8} {'1st pass/s':>10} {'warm/s':>10}"
    )
    for r in results:
        print(
            f"{r.backend:<10} {r.bare_commits:>11,.0f} {r.one_writer:>10,.0f} "
            f"{r.one_writer / r.bare_commits:>8.0%} {r.four_writers:>10,.0f} "
            f"{r.four_writers / r.one_writer:>6.2f} {r.bare_batched:>12,.0f} "
            f"{r.batched:>12,.0f} {r.batched / r.bare_batched:>8.0%} "
            f"{r.read_first:>10,.0f} {r.read_warm:>10,.0f}"
        )
    if args.runs > 1:
        print()
        for backend in dict.fromkeys(r.backend for r in results):
            mine = [r for r in results if r.backend == backend]

            def span(values: list[float], fmt: str = ",.0f") -> str:
                return f"{min(values):{fmt}}-{max(values):{fmt}}"

            print(
                f"{backend} over {len(mine)} runs (min-max): bare INSERT "
                f"{span([r.bare_commits for r in mine])}, 1 writer "
                f"{span([r.one_writer for r in mine])}, 4 writers "
                f"{span([r.four_writers for r in mine])} (ratio "
                f"{span([r.four_writers / r.one_writer for r in mine], '.2f')}), batch of 10 "
                f"{span([r.batched for r in mine])}, read_all 1st pass "
                f"{span([r.read_first for r in mine])}, warm {span([r.read_warm for r in mine])}"
            )
    print(
        f"\n({os.cpu_count()} CPUs; read_all over {results[0].read_count:,} events)"
        if results
        else ""
    )


if __name__ == "__main__":
    main()
