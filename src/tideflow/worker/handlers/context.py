"""What a handler's ``handle`` gets as ``ctx``, and the bridge that lets an ``async`` handler
use it from the event loop.

``DeliveryContext`` is the ``HandlerContext`` of one event: its writes go through the batch's
transaction (or, for a handler with ``transactional = False``, straight to the event store).
``ThreadBridge`` runs those writes in the handler's own thread while an ``async def handle``
runs on the runner's loop: the transaction (on SQLite, its lock) belongs to that thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from tideflow.events.handling import Cursor, Dialect, EventHandler, HandlerUsageError
from tideflow.events.model import ExpectedVersion, NewEvent, RecordedEvent
from tideflow.jsonutil import storable_text
from tideflow.storage.event_contract import EventStore, EventTransaction

T = TypeVar("T")


def describe(exc: BaseException) -> str:
    """An exception on one line, for logs, failure records and dead letters."""
    # storable_text: a user exception's text may hold NUL or surrogates, which must not make
    # recording the failure (a dead letter, a handler's last error) fail too.
    text = storable_text(" ".join(str(exc).split()))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _direct(fn: Callable[[], T]) -> T:
    return fn()


class DeliveryContext:
    """``HandlerContext`` for one event. ``call`` runs database work in the thread that owns the
    transaction (see ``ThreadBridge``)."""

    __slots__ = (
        "_call",
        "_store",
        "_tx",
        "appended",
        "attempt",
        "dialect",
        "event",
        "handler",
        "transactional",
    )

    def __init__(
        self,
        handler: EventHandler,
        event: RecordedEvent,
        attempt: int,
        tx: EventTransaction | None,
        store: EventStore,
        dialect: Dialect,
        call: Callable[[Callable[[], Any]], Any] = _direct,
    ) -> None:
        self.handler = handler.name
        self.event = event
        self.attempt = attempt
        self.dialect = dialect
        self.transactional = tx is not None
        self.appended = False
        self._tx = tx
        self._store = store
        self._call = call

    def _transaction(self) -> EventTransaction:
        if self._tx is None:
            raise HandlerUsageError(
                f"handler {self.handler!r} is not transactional, so there is no transaction "
                "whose connection it could write in: set transactional = True on the handler "
                "class to write atomically with its checkpoint"
            )
        return self._tx

    @property
    def transaction(self) -> EventTransaction:
        # Whoever takes the transaction itself (a process manager) may append through it: the
        # runner then looks at the log again before it calls the handlers idle.
        tx = self._transaction()
        self.appended = True
        return tx

    @property
    def connection(self) -> Any:
        return self._transaction().connection

    def execute(self, sql: str, params: Any = None) -> Cursor:
        tx = self._transaction()
        return self._call(lambda: tx.execute(sql, params))  # type: ignore[no-any-return]

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        expected_version: ExpectedVersion | int = ExpectedVersion.ANY,
        *,
        idempotency_key: str | None = None,
    ) -> list[RecordedEvent]:
        if not isinstance(events, NewEvent) and isinstance(events, Sequence):
            events = [
                e.caused_by(self.event) if isinstance(e, NewEvent) and e.causation_id is None else e
                for e in events
            ]
        target: EventTransaction | EventStore = self._tx if self._tx is not None else self._store
        self.appended = True
        return self._call(  # type: ignore[no-any-return]
            lambda: target.append(
                stream_id, events, expected_version, idempotency_key=idempotency_key
            )
        )


_LEAKED_CTX = (
    "a handler's ctx was used after its handle() returned (from a task or thread it "
    "started?): use ctx only while handle() runs, or the transaction is gone"
)


class ThreadBridge:
    """Lets an async ``handle`` run on the event loop while its transaction stays in the
    handler's thread: that thread waits for the coroutine *and* serves the database calls the
    coroutine makes through ``ctx`` (``call``), so they run where the transaction's lock is."""

    def __init__(self) -> None:
        self.thread_id: int | None = None
        self.serving = False
        self._requests: queue.SimpleQueue[
            tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None
        ] = queue.SimpleQueue()

    def call(self, fn: Callable[[], T]) -> T:
        if threading.get_ident() == self.thread_id:
            return fn()
        if not self.serving:
            raise HandlerUsageError(_LEAKED_CTX)
        done: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._requests.put((fn, done))
        return done.result()

    def wait_for(self, loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
        self.serving = True  # before the coroutine can start and call ctx
        try:
            future = asyncio.run_coroutine_threadsafe(_coroutine(awaitable), loop)
            future.add_done_callback(lambda _: self._requests.put(None))
            while (request := self._requests.get()) is not None:
                fn, done = request
                try:
                    done.set_result(fn())
                except BaseException as exc:
                    done.set_exception(exc)
        finally:
            self.serving = False
            while not self._requests.empty():  # a late call (a leaked ctx) must not hang
                late = self._requests.get_nowait()
                if late is not None:
                    late[1].set_exception(HandlerUsageError(_LEAKED_CTX))
        return future.result()


async def _coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


class HandleRaised(Exception):
    """``handle`` raised ``error`` on the event at ``index`` of the batch: roll back."""

    def __init__(self, index: int, error: Exception) -> None:
        self.index = index
        self.error = error


def invoke_inline(handler: EventHandler, event: RecordedEvent, ctx: DeliveryContext) -> None:
    """Call ``handle`` outside a runner (administrative calls): a coroutine runs to completion
    on a loop of its own in this thread, where the transaction is."""
    result = handler.handle(event, ctx)
    if result is not None and inspect.isawaitable(result):
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(_coroutine(result))
            return
        if inspect.iscoroutine(result):
            result.close()
        raise HandlerUsageError(
            f"handler {handler.name!r} is async and this call is synchronous: call it from a "
            "thread without a running event loop (await asyncio.to_thread(...))"
        )
