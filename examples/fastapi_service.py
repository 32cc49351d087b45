"""A web service that starts a flow per request and answers with its result (FastAPI).

    POST /quotes {"qty": 3} ──▶ app.aio.start_flow(Quote) ──▶ await app.aio.wait_for_run(...)
                                       │                                 ▲
                                       ▼                                 │ woken by the commit
                           worker in the app's lifespan: price ──▶ tax ──▶ total

Everything runs in the service's own event loop: ``app.aio.worker()`` runs the flows (and any
event handlers) inside it for as long as the lifespan lasts, and ``app.aio.wait_for_run`` parks
the request until the transaction that ends its run wakes it - no thread is held per waiting
request, so slow runs do not starve the other endpoints (``/health`` answers meanwhile). In
production the worker usually runs in processes of its own (``tideflow worker --app ...``) and
the service only starts and awaits runs; the code of the endpoint is the same.

Run it:    python examples/fastapi_service.py [DATABASE_URL]
           (serves twenty quotes and a health check to itself through httpx, then exits)
Serve it:  TIDEFLOW_DATABASE_URL=... uvicorn examples.fastapi_service:api
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from pydantic import BaseModel

from tideflow import App, Flow, step

UNIT_CENTS = 250


class Quote(Flow, slug="quote"):
    @step()
    async def price(self, input: Any) -> int:
        return int(input["qty"]) * UNIT_CENTS

    @step(depends_on=["price"])
    async def tax(self, price: int) -> dict[str, int]:
        return {"net": price, "tax": price * 20 // 100}

    @step(depends_on=["tax"])
    async def total(self, tax: dict[str, int]) -> int:
        return tax["net"] + tax["tax"]


class Order(BaseModel):
    qty: int


def create_api(database_url: str | None = None) -> FastAPI:
    """The service on ``database_url`` (default: $TIDEFLOW_DATABASE_URL, else ./tideflow.db)."""
    app = App(database_url, flows=[Quote])

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The worker stops gracefully when the service shuts down.
        async with app.aio.worker(poll_interval=0.5):
            yield
        app.close()

    api = FastAPI(lifespan=lifespan)

    @api.post("/quotes")
    async def quote(order: Order) -> dict[str, Any]:
        run_id = await app.aio.start_flow(Quote, {"qty": order.qty})
        run = await app.aio.wait_for_run(run_id, timeout=30)
        return {"run_id": run_id, "status": run.status, "total_cents": run.output["total"]}

    @api.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    return api


api = create_api()
"""For ``uvicorn examples.fastapi_service:api``."""


async def main(database_url: str | None = None) -> list[int]:
    """Drive the service through httpx, in this process: twenty quotes at once and a health
    check while they wait; print and return the totals."""
    service = create_api(database_url)
    async with service.router.lifespan_context(service):  # httpx's transport runs no lifespan
        transport = httpx.ASGITransport(app=service)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            quotes = [client.post("/quotes", json={"qty": qty}) for qty in range(1, 21)]
            *answers, health = await asyncio.gather(*quotes, client.get("/health"))
    assert health.json() == {"ok": True}
    totals = [answer.json()["total_cents"] for answer in answers]
    print(f"{len(totals)} quotes completed; the largest: {max(totals)} cents")
    return totals


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None))
