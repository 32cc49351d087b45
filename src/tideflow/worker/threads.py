"""The threads that run plain ``def`` steps for a worker's event loop.

``loop.run_in_executor`` on a ``ThreadPoolExecutor`` costs a ``def`` step about 50 us more than
an ``async def`` one on a 2-core machine - as much as the rest of a no-op task's trip through
the worker - which made ``def`` no-op steps 30-50% slower (issue 12). The cost is the hand-off,
not the thread: a concurrent future chained to an asyncio future, and one
``call_soon_threadsafe`` per step, each a write to the loop's self-pipe and a wake-up of the
loop. Here a step's result goes into a deque and only the first result of a burst wakes the
loop, which then settles every result waiting - one wake-up for many steps while the loop is
busy, which is exactly when the wake-ups cost. It halves the hand-off (measured 19k against
40-55k hand-offs/s, 256 in flight).

The threads also say how long a call holds one (``pace``): the worker sizes how many ``def``
tasks it holds by it, so that quick steps are claimed in large batches and slow ones are not
hoarded (``Worker._def_limit``).

Threads start on demand, up to ``size``, and stay (an idle one waits on the queue); ``close``
lets idle ones end. They are not daemons: like ``ThreadPoolExecutor``'s, a step still running
when the worker stops keeps the interpreter until it returns (``tideflow worker`` ends the
process without waiting instead, see ``cli.main._exit_now_if_steps_linger``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Item = tuple["asyncio.Future[Any]", Callable[[], Any]]

PACE_WEIGHT = 0.05
"""Weight of each finished call in ``StepThreads.pace``'s moving average: about the last 20
calls count, so a step that turns slow shows within a few dozen calls (and a running call that
is slower than the average counts at once, see ``pace``)."""


class StepThreads:
    """Up to ``size`` threads running zero-argument calls for one event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"StepThreads needs at least one thread, got {size}")
        self._loop = loop
        self._size = size
        self._name = name
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._done: collections.deque[
            tuple[asyncio.Future[Any], Any, BaseException | None, float]
        ] = collections.deque()
        self._lock = threading.Lock()
        self._idle = 0  # threads waiting on the queue, or about to
        self._threads: list[threading.Thread] = []
        self._wake_pending = False  # a settle() is scheduled on the loop and has not run yet
        self._closed = False
        #: Per thread (by index), the perf_counter() reading when its current call began, 0.0
        #: while it has none. Written by the thread, read on the loop: a float store is atomic.
        self._busy_since: list[float] = []
        self._average: float | None = None  # moving average of calls' seconds, on the loop

    @property
    def threads(self) -> int:
        """Threads started so far."""
        return len(self._threads)

    @property
    def size(self) -> int:
        """Most threads that run at once."""
        return self._size

    def pace(self) -> float | None:
        """Seconds a call is expected to hold its thread (None before any call finished): the
        moving average of finished calls' durations, but at least as long as the youngest
        running call has run when every thread is busy - a step that starts to block (a slow
        service) raises the pace at once, before its first slow call returns."""
        average = self._average
        if average is None:
            return None
        busy = self._busy_since
        if len(busy) < self._size or 0.0 in busy:  # a thread is free, or can start
            return average
        return max(average, time.perf_counter() - max(busy))

    def start(self) -> None:
        """Start every thread now rather than on demand. ``Thread.start`` waits until the new
        thread runs, so a thread started in ``submit`` stalls the loop (and with it every task)
        while the OS creates it and it gets the GIL: 32 of them in the first burst of a worker's
        ``def`` steps cost that burst several milliseconds."""
        with self._lock:
            if self._closed:
                raise RuntimeError("StepThreads is closed")
            new = []
            while len(self._threads) < self._size:
                index = len(self._threads)
                new.append(self._new_thread(index))
                self._idle += 1  # it goes straight to the queue
        for thread in new:
            thread.start()

    def _new_thread(self, index: int) -> threading.Thread:
        """A thread to serve the queue, registered (under the lock), not yet started."""
        thread = threading.Thread(
            target=self._serve, args=(index,), name=f"{self._name}-{index}", daemon=False
        )
        self._threads.append(thread)
        self._busy_since.append(0.0)
        return thread

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Run ``call()`` in a thread; on the loop, the future of its result. Cancelling the
        future drops the call if it has not started (a started call cannot be stopped: its
        result is dropped)."""
        future: asyncio.Future[T] = self._loop.create_future()
        with self._lock:
            if self._closed:
                raise RuntimeError("StepThreads is closed")
            start = self._idle <= 0 and len(self._threads) < self._size
            if start:
                thread = self._new_thread(len(self._threads))
            else:
                self._idle -= 1  # this item is spoken for: the next submit may need a thread
        self._queue.put((future, call))
        if start:
            thread.start()
        return future

    def close(self) -> None:
        """Take no more calls; threads end once their current call returns."""
        with self._lock:
            self._closed = True
            n = len(self._threads)
        for _ in range(n):
            self._queue.put(None)

    # --- in the threads ---------------------------------------------------------------------
    def _serve(self, index: int) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._run(index, *item)
            del item  # hold nothing of a finished step while idle
            with self._lock:
                self._idle += 1

    def _run(self, index: int, future: asyncio.Future[Any], call: Callable[[], Any]) -> None:
        if future.done():  # cancelled while queued (a benign read across threads): skip it
            return
        result: Any = None
        error: BaseException | None = None
        busy = self._busy_since
        began = busy[index] = time.perf_counter()
        try:
            result = call()
        except StopIteration as exc:  # a future cannot hold it (asyncio's own rule)
            error = RuntimeError(f"a step raised StopIteration: {exc!r}")
        except BaseException as exc:
            error = exc
        busy[index] = 0.0
        self._done.append((future, result, error, time.perf_counter() - began))
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            if self._wake_pending:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._settle)

    # --- on the loop ------------------------------------------------------------------------
    def _settle(self) -> None:
        with self._lock:
            self._wake_pending = False
        done = self._done
        average = self._average
        while done:
            future, result, error, seconds = done.popleft()
            # Every call counts, a dropped one too: it held its thread as long.
            average = seconds if average is None else average + PACE_WEIGHT * (seconds - average)
            if future.done():  # cancelled (a timeout, a forced stop): the result is dropped
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
        self._average = average
