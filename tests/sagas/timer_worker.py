"""A worker process for the timer SIGKILL tests: python -m tests.sagas.timer_worker URL [die].

It runs the ``Timed`` process manager (tests/sagas/timed.py) - which fires the instances' timers
- with a short lease and poll interval, on the wall clock, until SIGTERM. With ``die``, it
SIGKILLs itself inside its first firing transaction, after appending the first timer's event and
before committing: where a crash would lose or double a timer if anything could.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import Any

from tests.sagas.saga_worker import serve
from tests.sagas.timed import timed_app
from tideflow.storage.event_store import SqlEventTransaction
from tideflow.storage.timer_store import SqlTimerStore


def die_in_the_first_firing() -> None:
    append = SqlEventTransaction.append
    fire_due = SqlTimerStore.fire_due
    firing = False

    def dying_append(self: SqlEventTransaction, *args: Any, **kwargs: Any) -> Any:
        recorded = append(self, *args, **kwargs)
        if firing:
            os.kill(os.getpid(), signal.SIGKILL)
        return recorded

    def flagged_fire_due(self: SqlTimerStore, limit: int = 100) -> int:
        nonlocal firing
        firing = True
        return fire_due(self, limit)

    SqlEventTransaction.append = dying_append  # type: ignore[method-assign]
    SqlTimerStore.fire_due = flagged_fire_due  # type: ignore[method-assign]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if sys.argv[2:] == ["die"]:
        die_in_the_first_firing()
    asyncio.run(serve(timed_app(sys.argv[1]), "timer-worker"))
