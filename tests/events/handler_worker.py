"""A handler worker process for failover tests: python -m tests.events.handler_worker URL TTL.

It runs one slow projection (``Tally``) until SIGTERM, so that a test can SIGKILL it in the middle
of a batch and check that another worker finishes the job with every event counted once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time

from tideflow.events.handling import HandlerContext
from tideflow.events.model import RecordedEvent
from tideflow.events.projections import Projection
from tideflow.storage import open_event_store, open_handler_store
from tideflow.worker.handlers import HandlerRunner, HandlerRunnerOptions


class Tally(Projection):
    """Counts events per stream; ``tally_seen`` has one row per event, so a double delivery
    would violate its primary key (and show up as a dead letter)."""

    name = "tally"
    batch_size = 20
    max_attempts = 1
    tables = ("tally_seen", "tally_totals")
    schema = """
        CREATE TABLE IF NOT EXISTS tally_seen (position BIGINT PRIMARY KEY, worker TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS tally_totals (stream TEXT PRIMARY KEY, n BIGINT NOT NULL);
    """

    def __init__(self, worker: str = "test") -> None:
        self.worker = worker

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        time.sleep(0.003)  # slow enough to be killed in the middle of a batch
        ctx.execute(
            "INSERT INTO tally_seen (position, worker) VALUES (%(p)s, %(w)s)",
            {"p": event.position, "w": self.worker},
        )
        ctx.execute(
            "INSERT INTO tally_totals (stream, n) VALUES (%(s)s, 1) ON CONFLICT (stream) "
            "DO UPDATE SET n = tally_totals.n + 1",
            {"s": event.stream_id},
        )


async def main(url: str, ttl: float) -> None:
    events = open_event_store(url)
    handlers = open_handler_store(url)
    worker_id = f"worker-{os.getpid()}"
    runner = HandlerRunner(
        events,
        handlers,
        [Tally(worker_id)],
        worker_id=worker_id,
        options=HandlerRunnerOptions(poll_interval=0.05, lease_ttl=ttl, acquire_interval=0.1),
    )
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, runner.stop)
    print("worker ready", flush=True)
    try:
        await runner.run()
    finally:
        handlers.close()
        events.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
