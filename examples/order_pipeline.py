"""An order pipeline: a DAG that forks and joins.

    validate ──▶ reserve_stock ──┐
        └──────▶ price_order ────┴──▶ create_shipment ──▶ send_confirmation

``reserve_stock`` and ``price_order`` both depend only on ``validate``, so they run at the same
time; ``create_shipment`` waits for both and receives both outputs as keyword arguments. A step
that declares ``ctx`` also gets the run's context (here: the run input, to read the order id).

Run it:                  python examples/order_pipeline.py [DATABASE_URL]
Or with a worker:        tideflow worker --app examples.order_pipeline
                         tideflow start order_pipeline --app examples.order_pipeline \\
                             --input @order.json --wait
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

from tideflow import App, Flow, NonRetryableError, RunRecord, StepContext, step

PRICES_CENTS = {"tea": 450, "mug": 1200, "kettle": 3900, "biscuits": 299}


class OrderPipeline(Flow, slug="order_pipeline"):
    @step()
    def validate(self, input: dict[str, Any]) -> dict[str, Any]:
        # A bad order will not get better by retrying: fail the run at once.
        unknown = [i["sku"] for i in input["items"] if i["sku"] not in PRICES_CENTS]
        if unknown:
            raise NonRetryableError(f"unknown products: {', '.join(unknown)}")
        return {
            "order_id": input["order_id"],
            "customer": input["customer"],
            "items": input["items"],
        }

    @step(depends_on=["validate"])
    def reserve_stock(self, validate: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.2)  # stands in for a call to the warehouse
        return {"reserved": [f"{i['qty']}x {i['sku']}" for i in validate["items"]]}

    @step(depends_on=["validate"])
    def price_order(self, validate: dict[str, Any]) -> dict[str, int]:
        time.sleep(0.1)
        subtotal = sum(PRICES_CENTS[i["sku"]] * i["qty"] for i in validate["items"])
        shipping = 0 if subtotal >= 2000 else 495
        return {
            "subtotal_cents": subtotal,
            "shipping_cents": shipping,
            "total_cents": subtotal + shipping,
        }

    @step(depends_on=["reserve_stock", "price_order"])
    def create_shipment(
        self, reserve_stock: dict[str, Any], price_order: dict[str, int], ctx: StepContext
    ) -> dict[str, Any]:
        time.sleep(0.1)
        return {
            "tracking": f"TRK-{ctx.run_input['order_id']}",
            "parcels": len(reserve_stock["reserved"]),
            "charged_cents": price_order["total_cents"],
        }

    @step(depends_on=["create_shipment"])
    async def send_confirmation(self, create_shipment: dict[str, Any], ctx: StepContext) -> str:
        await asyncio.sleep(0.05)  # async steps run on the worker's event loop
        return f"mailed {ctx.run_input['customer']}: parcel {create_shipment['tracking']}"


ORDER = {
    "order_id": 1001,
    "customer": "ada@example.com",
    "items": [{"sku": "tea", "qty": 2}, {"sku": "mug", "qty": 1}],
}


def main(database_url: str | None = None) -> list[RunRecord]:
    """Start one order, work until nothing is left, print what happened.

    Without a URL this uses $TIDEFLOW_DATABASE_URL, else ./tideflow.db - the CLI's default, so
    `tideflow runs` shows the run afterwards."""
    with App(database_url, flows=[OrderPipeline]) as app:
        run_id = app.start_flow(OrderPipeline, ORDER)
        app.run_worker(until_idle=True)
        run = app.get_run(run_id)
    print(f"run {run.run_id}: {run.status} in {run.duration:.2f}s")
    for s in run.steps:
        print(f"  {s.step_slug:<18} {s.status:<10} {s.output}")
    return [run]


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
