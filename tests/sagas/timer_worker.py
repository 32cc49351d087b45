"""A worker process for the timer SIGKILL test: python -m tests.sagas.timer_worker URL.

It runs the ``Timed`` process manager (tests/sagas/timed.py) - which fires the instances' timers
- with a short lease and poll interval, on the wall clock, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from tests.sagas.timed import timed_app
from tideflow.worker.handlers import HandlerRunnerOptions


async def main(url: str) -> None:
    app = timed_app(url)
    runner = app.handler_runner(
        f"timer-worker-{os.getpid()}",
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
