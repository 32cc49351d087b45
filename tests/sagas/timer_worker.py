"""A worker process for the timer SIGKILL test: python -m tests.sagas.timer_worker URL.

It runs the ``Timed`` process manager (tests/sagas/timed.py) - which fires the instances' timers
- with a short lease and poll interval, on the wall clock, until SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from tests.sagas.saga_worker import serve
from tests.sagas.timed import timed_app

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    asyncio.run(serve(timed_app(sys.argv[1]), "timer-worker"))
