"""Event handler catch-up speed: how fast a HandlerRunner works through a backlog.

    python benchmarks/bench_handlers.py [--backend sqlite|postgres|all] [--events 20000]

Appends --events events (in batches of 100, over 1,000 streams), then, per backend, times one
runner catching a fresh handler up from position 0 to the head (``run_until_idle``: startup,
every batch transaction, and the final idle look included). Handlers:

  * no-op          - a sync ``handle`` that does nothing: the runner's own cost per event
                     (read, decode, one transaction per batch with its checkpoint);
  * no-op async    - the same as ``async def``: the cost of running it on the event loop;
  * no-op, not tx  - ``transactional = False``: no transaction around the batch;
  * projection     - one upsert per event into a read-model table through ``ctx.execute``,
                     committed with the checkpoint (the exactly-once path).

each with batch_size 100 (the default) and 1,000.

PostgreSQL: a database ``tideflow_bench_<random>`` on --pg-url (default $TIDEFLOW_TEST_PG, else
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. SQLite: a temporary file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchdb import ADMIN_URL, pg_database

from tideflow.events import ExpectedVersion, NewEvent, RecordedEvent
from tideflow.events.handling import EventHandler, HandlerContext
from tideflow.events.projections import Projection
from tideflow.storage import open_event_store, open_handler_store
from tideflow.worker.handlers import HandlerRunner, HandlerRunnerOptions

PAYLOAD = {
    "order_id": "9f1c2e4a",
    "customer": "c-1029",
    "amount": 129.5,
    "currency": "EUR",
    "lines": [{"sku": "A-1", "qty": 2}, {"sku": "B-7", "qty": 1}],
}
STREAMS = 1000


def _noop(batch: int) -> EventHandler:
    class NoOp(EventHandler):
        name = f"noop_{batch}"
        batch_size = batch

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            pass

    return NoOp()


def _noop_async(batch: int) -> EventHandler:
    class NoOpAsync(EventHandler):
        name = f"noop_async_{batch}"
        batch_size = batch

        async def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            pass

    return NoOpAsync()


def _noop_plain(batch: int) -> EventHandler:
    class NoOpPlain(EventHandler):
        name = f"noop_plain_{batch}"
        batch_size = batch
        transactional = False

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            pass

    return NoOpPlain()


def _projection(batch: int) -> EventHandler:
    table = f"bench_totals_{batch}"

    class Totals(Projection):
        name = f"totals_{batch}"
        batch_size = batch
        tables = table
        schema = (
            f"CREATE TABLE IF NOT EXISTS {table} (customer TEXT PRIMARY KEY, "
            "orders BIGINT NOT NULL, amount DOUBLE PRECISION NOT NULL)"
        )
        upsert = (
            f"INSERT INTO {table} (customer, orders, amount) VALUES (%(c)s, 1, %(a)s) "
            f"ON CONFLICT (customer) DO UPDATE SET orders = {table}.orders + 1, "
            f"amount = {table}.amount + excluded.amount"
        )

        def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
            ctx.execute(self.upsert, {"c": event.stream_id, "a": event.data["amount"]})

    return Totals()


HANDLERS: list[tuple[str, Callable[[int], EventHandler]]] = [
    ("no-op", _noop),
    ("no-op async", _noop_async),
    ("no-op, not tx", _noop_plain),
    ("projection", _projection),
]
BATCHES = (100, 1000)


def _append(url: str, n: int) -> None:
    store = open_event_store(url)
    try:
        store.migrate()
        for start in range(0, n, 100):
            count = min(100, n - start)
            store.append(
                f"order-{start // 100 % STREAMS}",
                [NewEvent("OrderPlaced", PAYLOAD) for _ in range(count)],
                ExpectedVersion.ANY,
            )
    finally:
        store.close()


def _catch_up(url: str, handler: EventHandler) -> tuple[float, int]:
    events = open_event_store(url)
    handlers = open_handler_store(url)
    try:
        runner = HandlerRunner(
            events, handlers, [handler], options=HandlerRunnerOptions(poll_interval=0.01)
        )
        started = time.perf_counter()
        runner.run_until_idle()
        return time.perf_counter() - started, runner.handled
    finally:
        handlers.close()
        events.close()


def bench(backend: str, url: str, n: int) -> dict[tuple[str, int], float]:
    print(f"[{backend}] appending {n:,} events ...", file=sys.stderr)
    _append(url, n)
    results: dict[tuple[str, int], float] = {}
    for label, make in HANDLERS:
        for batch in BATCHES:
            seconds, handled = _catch_up(url, make(batch))
            assert handled == n, (label, batch, handled)
            results[(label, batch)] = n / seconds
            print(
                f"[{backend}] {label}, batch {batch}: {n / seconds:,.0f} events/s", file=sys.stderr
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--pg-url", default=ADMIN_URL)
    args = parser.parse_args()
    results: dict[str, dict[tuple[str, int], Any]] = {}
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:
            results["sqlite"] = bench("sqlite", f"sqlite:///{tmp}/bench.db", args.events)
    if args.backend in ("postgres", "all"):
        url, drop = pg_database(args.pg_url)
        try:
            results["postgres"] = bench("postgres", url, args.events)
        finally:
            drop()
    print()
    print(
        f"{'catch-up, events/s':<22}"
        + "".join(f"{f'{backend} b={batch}':>18}" for backend in results for batch in BATCHES)
    )
    for label, _ in HANDLERS:
        print(
            f"{label:<22}"
            + "".join(
                f"{results[backend][(label, batch)]:>18,.0f}"
                for backend in results
                for batch in BATCHES
            )
        )
    print(
        f"\n({os.cpu_count()} CPUs; {args.events:,} events, {STREAMS:,} streams; "
        "b = batch_size, events per transaction)"
    )


if __name__ == "__main__":
    main()
