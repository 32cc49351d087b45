"""Process manager throughput: the order saga of examples/order_saga.py working through orders.

    python benchmarks/bench_sagas.py [--backend sqlite|postgres|all] [--orders 1000]

Places --orders orders (over 200 products, each stocked first), then times one handler runner
taking the saga (``OrderFulfilment``) from position 0 until every order is confirmed
(``run_until_idle``). Each order is four events the saga reacts to (OrderPlaced, StockReserved,
PaymentCharged, OrderConfirmed), three commands it dispatches (ReserveStock, ChargeCard,
ConfirmOrder - each loads its aggregate and appends, inside the batch transaction) and one flow
run it creates (ship_order); the instance row is read and written once per event. Reported:
orders/s and reactions (events handled)/s, for batch_size 20 (the default) and 100.

PostgreSQL: a database ``tideflow_bench_<random>`` on --pg-url (default $TIDEFLOW_TEST_PG, else
postgresql://postgres@127.0.0.1:5432/postgres), dropped at the end. SQLite: a temporary file.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # examples/ is not installed

from benchdb import ADMIN_URL, pg_database
from examples.order_saga import OrderFulfilment, shop

from tideflow.events import Command
from tideflow.worker.handlers import HandlerRunnerOptions

PRODUCTS = 200
BATCHES = (20, 100)


def _fulfilment(batch: int) -> type[OrderFulfilment]:
    class Fulfilment(OrderFulfilment):
        name = f"fulfilment_{batch}"
        batch_size = batch

    return Fulfilment


def bench(
    backend: str, database: Callable[[], tuple[str, Callable[[], None]]], orders: int
) -> dict[int, tuple[float, float]]:
    """batch size -> (orders/s, reactions/s); each batch size on a database of its own (one
    saga would otherwise react to the other's orders)."""
    results: dict[int, tuple[float, float]] = {}
    for batch in BATCHES:
        url, drop = database()
        app = shop(url)
        try:
            manager = _fulfilment(batch)
            app.handlers = [manager]
            for n in range(PRODUCTS):
                app.dispatch(Command("AddStock", f"p-{batch}-{n}", {"qty": orders}))
            for n in range(orders):
                app.dispatch(
                    Command(
                        "PlaceOrder",
                        f"o-{batch}-{n}",
                        {"sku": f"p-{batch}-{n % PRODUCTS}", "qty": 1, "amount": 100},
                    )
                )
            runner = app.handler_runner(options=HandlerRunnerOptions(poll_interval=0.01))
            print(
                f"[{backend}] batch {batch}: {orders:,} orders placed, saga catching up ...",
                file=sys.stderr,
            )
            started = time.perf_counter()
            runner.run_until_idle()
            seconds = time.perf_counter() - started
            done = app.process_store.counts().get((manager.name, "completed"), 0)
            assert done == orders, (batch, done)
            results[batch] = (orders / seconds, runner.handled / seconds)
        finally:
            app.close()
            drop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--pg-url", default=ADMIN_URL)
    args = parser.parse_args()
    results: dict[str, dict[int, tuple[float, float]]] = {}
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory() as tmp:

            def sqlite_file() -> tuple[str, Callable[[], None]]:
                return f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.db", lambda: None

            results["sqlite"] = bench("sqlite", sqlite_file, args.orders)
    if args.backend in ("postgres", "all"):
        results["postgres"] = bench("postgres", lambda: pg_database(args.pg_url), args.orders)
    print()
    print(f"{'backend':<10}{'batch':>7}{'orders/s':>12}{'reactions/s':>14}")
    for backend, by_batch in results.items():
        for batch, (orders_s, reactions_s) in by_batch.items():
            print(f"{backend:<10}{batch:>7}{orders_s:>12,.0f}{reactions_s:>14,.0f}")
    print(
        f"\n({os.cpu_count()} CPUs; {args.orders:,} orders over {PRODUCTS} products; a "
        "reaction = one event handled by the saga, with its commands and instance row)"
    )


if __name__ == "__main__":
    main()
