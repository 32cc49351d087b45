"""The flows ``tideflow demo`` runs.

They are the flows of ``examples/`` (order_pipeline.py, image_thumbnails.py, flaky_payment.py),
kept inside the package because ``pip install .`` installs the package and not the examples, and
the demo must work straight after it. The examples stay free-standing files a reader can copy;
``tests/test_examples.py`` runs both versions and checks they have the same shape, settings and
results, so the two cannot drift apart unnoticed.

The short sleeps stand in for the I/O real steps would do; they make the live progress visible.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tideflow import Flow, NonRetryableError, StepContext, step

# --- order_pipeline: a diamond (fork, then join) -----------------------------------------------

PRICES_CENTS = {"tea": 450, "mug": 1200, "kettle": 3900, "biscuits": 299}


class OrderPipeline(Flow, slug="order_pipeline"):
    @step()
    def validate(self, input: dict[str, Any]) -> dict[str, Any]:
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
        time.sleep(0.2)
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
        await asyncio.sleep(0.05)
        return f"mailed {ctx.run_input['customer']}: parcel {create_shipment['tracking']}"


# --- image_thumbnails: a map step, one task per image --------------------------------------------

THUMBNAIL_WIDTH = 160


class ImageThumbnails(Flow, slug="image_thumbnails"):
    @step()
    def list_images(self, input: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            img
            for img in input["images"]
            if img["name"].lower().endswith((".jpg", ".jpeg", ".png"))
        ]

    @step(depends_on=["list_images"], map=True)
    async def thumbnail(self, item: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.15)
        scale = THUMBNAIL_WIDTH / item["width"]
        stem = item["name"].rsplit(".", 1)[0]
        return {
            "name": f"{stem}.thumb.jpg",
            "width": THUMBNAIL_WIDTH,
            "height": max(1, round(item["height"] * scale)),
        }

    @step(depends_on=["thumbnail"])
    def publish_gallery(self, thumbnail: list[dict[str, Any]]) -> dict[str, Any]:
        return {"count": len(thumbnail), "files": [t["name"] for t in thumbnail]}


# --- flaky_payment: retries with backoff, and a failure no retry can fix ----------------------


class GatewayTimeout(ConnectionError):
    """A transient failure: worth retrying."""


class CardDeclined(NonRetryableError):
    """A permanent failure: retrying would only decline the card again."""


DECLINED_CARDS = frozenset({"4000000000000002"})


class FlakyPayment(Flow, slug="flaky_payment", max_attempts=4, base_delay=0.05, max_delay=1.0):
    @step()
    def authorize(self, input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        time.sleep(0.05)
        if input["card"] in DECLINED_CARDS:
            raise CardDeclined(f"card ending in {input['card'][-4:]} was declined")
        if ctx.attempt <= input.get("gateway_failures", 0):
            raise GatewayTimeout(f"payment gateway did not answer (attempt {ctx.attempt})")
        return {
            "authorization": f"AUTH-{input['order_id']}",
            "amount_cents": input["amount_cents"],
            "attempts_needed": ctx.attempt,
        }

    @step(depends_on=["authorize"])
    def capture(self, authorize: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.05)
        return {
            "captured_cents": authorize["amount_cents"],
            "authorization": authorize["authorization"],
        }

    @step(depends_on=["capture"])
    def receipt(self, capture: dict[str, Any], ctx: StepContext) -> str:
        return (
            f"order {ctx.run_input['order_id']}: paid "
            f"{capture['captured_cents'] / 100:.2f} ({capture['authorization']})"
        )


DEMO_FLOWS: list[type[Flow]] = [OrderPipeline, ImageThumbnails, FlakyPayment]

ORDER_INPUT = {
    "order_id": 1001,
    "customer": "ada@example.com",
    "items": [{"sku": "tea", "qty": 2}, {"sku": "mug", "qty": 1}],
}
IMAGES_INPUT = {
    "images": [
        {"name": "beach.jpg", "width": 4000, "height": 3000},
        {"name": "harbour.png", "width": 1920, "height": 1080},
        {"name": "notes.txt", "width": 0, "height": 0},
        {"name": "lighthouse.jpeg", "width": 3000, "height": 4000},
        {"name": "sunset.jpg", "width": 6000, "height": 4000},
        {"name": "tide-pool.png", "width": 1200, "height": 1200},
    ]
}
PAYMENT_INPUT = {
    "order_id": 1001,
    "amount_cents": 2595,
    "card": "4242424242424242",
    "gateway_failures": 2,
}
DECLINED_INPUT = {"order_id": 1002, "amount_cents": 1299, "card": "4000000000000002"}


# (flow, input, what the demo tells the user to expect, expected final run status)
DEMO_RUNS: list[tuple[type[Flow], dict[str, Any], str, str]] = [
    (OrderPipeline, ORDER_INPUT, "fork and join: two steps run in parallel", "completed"),
    (ImageThumbnails, IMAGES_INPUT, "map step: one task per image", "completed"),
    (FlakyPayment, PAYMENT_INPUT, "gateway fails twice, retried with backoff", "completed"),
    (FlakyPayment, DECLINED_INPUT, "card declined: NonRetryableError, no retry", "failed"),
]
