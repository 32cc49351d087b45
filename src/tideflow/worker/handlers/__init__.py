"""Running event handlers: feeds them the log, in order, one worker per handler.

    runner = HandlerRunner(event_store, handler_store, handlers=[OrderTotals(), OrderMailer()])
    await runner.run()              # beside the flow Worker; runner.stop() to shut down

Modules: ``runner`` (``HandlerRunner`` and its options: when each handler runs), ``batches`` (one
batch of one handler, and what follows a failure), ``context`` (the ``ctx`` a handler gets, and
the thread bridge of async handlers), ``admin`` (``reset_handler``, ``retry_dead_letter``),
``timers`` (the loop beside the handlers that fires process managers' due timers, when the
runner is given a timer store).

Shape (one asyncio task per handler, plus a heartbeat):

* **lease** - a handler runs on one worker at a time, across processes and machines: the worker
  that ``acquire``s its row (no owner, or the owner's lease expired) runs it and renews the lease
  every ``heartbeat_interval``; the others try again every ``acquire_interval``. A worker that
  dies (SIGKILL, lost machine) stops renewing; once its lease expires another worker takes the
  handler and resumes from the checkpoint of the last batch that committed.
* **batches** - the task reads up to ``batch_size`` events after the handler's checkpoint (before
  any transaction, so a batch holds one connection), then opens ONE transaction that ``hold``s
  the lease (proving it is still ours and locking it to commit: a worker whose lease lapsed
  cannot commit after a new owner started), checks the checkpoint did not move, calls ``handle``
  on each event and advances the checkpoint. Handler writes through ``ctx`` are in that
  transaction: exactly once. A handler with ``transactional = False`` is called outside any
  transaction and the checkpoint advanced after it: at least once.
* **failures** - when ``handle`` raises on event k, the transaction rolls back and the events
  before k are handled again and committed (no savepoint per event: they cost a round trip each
  on the happy path); event k is retried after a backoff, its attempts counted in the handler's
  row so that a new owner goes on counting. After ``max_attempts`` the handler's ``on_failure``
  applies, in one transaction with the checkpoint: a dead letter and the checkpoint moved past
  the event, or the handler stopped where it is.
* **wake-ups** - the handler store's ``subscribe`` (SQLite: commits of other connections;
  PostgreSQL: NOTIFY on ``EVENTS_CHANNEL``), ``wake()``, or the poll interval.

Plain ``handle`` methods run in the handler's own thread (one per handler, so a handler's code
always runs in the same thread); ``async`` ones on the runner's event loop while the batch's
transaction waits in that thread, which also runs the database calls the coroutine makes through
``ctx`` (on SQLite the transaction's lock belongs to that thread).

Shutdown (``stop()``): handlers finish the batch in hand (a non-transactional one stops after the
event in hand), leases are released so that another worker takes over at once.
"""

from tideflow.worker.handlers.admin import reset_handler, retry_dead_letter
from tideflow.worker.handlers.runner import HandlerRunner, HandlerRunnerOptions

__all__ = [
    "HandlerRunner",
    "HandlerRunnerOptions",
    "reset_handler",
    "retry_dead_letter",
]
