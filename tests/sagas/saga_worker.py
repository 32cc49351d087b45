"""A saga worker process for the SIGKILL test: python -m tests.sagas.saga_worker URL.

It runs the order saga's process manager - slowed down, so that a test can kill it in the middle
of a batch - with a short lease, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from typing import Any

from examples.order_saga import OrderFulfilment, shop

from tideflow import App
from tideflow.events import RecordedEvent
from tideflow.worker.handlers import HandlerRunnerOptions


class SlowFulfilment(OrderFulfilment):
    name = "order_fulfilment"
    batch_size = 5

    def react(self, state: Any, event: RecordedEvent) -> Any:
        time.sleep(0.02)
        return super().react(state, event)


async def main(url: str) -> None:
    app = shop(url)
    app.handlers = [SlowFulfilment]
    await serve(app, "saga-worker")


async def serve(app: App, name: str) -> None:
    """Run ``app``'s handlers with a short lease until SIGTERM; then close it."""
    runner = app.handler_runner(
        f"{name}-{os.getpid()}",
        HandlerRunnerOptions(poll_interval=0.05, lease_ttl=1.0, acquire_interval=0.1),
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.stop)
    try:
        await runner.run()
    finally:
        app.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(sys.argv[1]))
