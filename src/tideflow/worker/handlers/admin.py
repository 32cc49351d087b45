"""Administration of handlers outside the runner: reset a checkpoint (and a projection's tables),
retry a dead letter. Both are safe while a worker runs the handler: they lock its row, so they
never overlap one of its batches."""

from __future__ import annotations

import logging

from tideflow.events.handling import (
    EventHandler,
    HandlerError,
    HandlerFailedError,
    HandlerNotFoundError,
    HandlerUsageError,
    check_handler,
)
from tideflow.events.projections import Projection
from tideflow.storage.event_contract import EventStore
from tideflow.storage.handler_contract import DeadLetter, HandlerStore
from tideflow.worker.handlers.context import (
    DeliveryContext,
    HandleRaised,
    describe,
    invoke_inline,
)

log = logging.getLogger("tideflow.handlers")


def reset_handler(
    event_store: EventStore, handler_store: HandlerStore, handler: EventHandler | str
) -> None:
    """Set a handler's checkpoint back to 0 so that it processes the whole log again, and let it
    run if it was stopped. A projection's tables are emptied in the same transaction (the
    Projection is needed for that: a name alone is refused for a projection). Safe while a
    worker runs the handler: it waits for the batch in hand, and the next batch starts at 0."""
    if isinstance(handler, str):
        name, kind = handler, None
        if name not in {r.name for r in handler_store.list_handlers()}:
            raise HandlerNotFoundError(
                f"no handler named {name!r} has run on this database; `tideflow handlers` "
                "lists those that have"
            )
    else:
        name, kind = handler.name, handler.kind
    with event_store.transaction() as tx:
        stored_kind, _ = handler_store.lock_handler(tx, name, kind or "handler")
        if isinstance(handler, Projection):
            handler.setup(tx)
            handler.reset(tx)
        elif stored_kind == "projection":
            raise HandlerUsageError(
                f"handler {name!r} is a projection: resetting its checkpoint without emptying "
                "its table would apply every event to it twice. Reset it with its code: "
                f"`tideflow handlers reset {name} --app module:attr`, or pass the Projection"
            )
        handler_store.reset_checkpoint(tx, name, 0)
        handler_store.restart(name, tx)
    log.info("handler %s: reset to position 0", name)


def retry_dead_letter(
    event_store: EventStore, handler_store: HandlerStore, handler: EventHandler, dead_letter_id: int
) -> DeadLetter:
    """Run ``handler`` again on the event of a dead letter, now, in this thread; on success mark
    the dead letter retried (in the handler's transaction, if it is transactional) and return
    it. ``HandlerFailedError`` if the handler fails again (the dead letter keeps the new error).
    It holds the handler's row meanwhile, so it never overlaps a batch of the same handler."""
    handler = check_handler(handler)
    dead = handler_store.get_dead_letter(dead_letter_id)
    if dead.handler != handler.name:
        raise HandlerUsageError(
            f"dead letter {dead.id} belongs to handler {dead.handler!r}, not {handler.name!r}"
        )
    if dead.retried_at is not None:
        raise HandlerUsageError(
            f"dead letter {dead.id} was already retried successfully "
            f"({dead.retried_at:%Y-%m-%d %H:%M:%S}); nothing to do"
        )
    found = list(event_store.read_all(dead.position - 1, limit=1, to_position=dead.position))
    if not found or str(found[0].event_id) != dead.event_id:
        raise HandlerError(
            f"the event of dead letter {dead.id} (position {dead.position}, "
            f"id {dead.event_id}) is no longer in the event store"
        )
    event = found[0]
    dialect = event_store.dialect
    try:
        with event_store.transaction() as tx:
            handler_store.lock_handler(tx, handler.name, handler.kind)
            ctx = DeliveryContext(
                handler,
                event,
                dead.attempts + 1,
                tx if handler.transactional else None,
                event_store,
                dialect,
            )
            try:
                invoke_inline(handler, event, ctx)
            except HandlerUsageError:
                raise
            except Exception as exc:
                raise HandleRaised(0, exc) from exc
            handler_store.mark_dead_letter_retried(tx, dead.id)
    except HandleRaised as raised:
        error = describe(raised.error)
        handler_store.record_dead_letter_failure(dead.id, error)
        raise HandlerFailedError(
            f"handler {handler.name!r} failed again on dead letter {dead.id} (event "
            f"{event.position}, {event.event_type} in stream {event.stream_id!r}): {error}",
            raised.error,
        ) from raised.error
    log.info("handler %s: dead letter %d (event %d) retried", handler.name, dead.id, event.position)
    return handler_store.get_dead_letter(dead.id)
