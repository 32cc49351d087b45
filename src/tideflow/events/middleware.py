"""Middleware: code that runs around every dispatched command.

What belongs here is what every command needs and no aggregate should know about:
authorisation, stamping metadata (who asked, from which request), logging, metrics, tracing.
A middleware is an object with up to three hooks; subclass ``Middleware`` and override the ones
you need::

    class RequireUser(Middleware):
        def before_dispatch(self, ctx):
            if "user_id" not in ctx.command.metadata:
                raise CommandRejectedError(ctx.command, "commands need a user_id in metadata")

    dispatcher = CommandDispatcher(store, aggregates=[Inventory], middleware=[RequireUser()])

The order is that of an onion: ``before_dispatch`` hooks run in list order, then the command is
dispatched, then ``after_dispatch`` (or ``after_failure``) hooks run in reverse order - for every
middleware whose ``before_dispatch`` was called. A ``before_dispatch`` hook halts the dispatch by
raising (a ``CommandRejectedError`` says "refused by policy", any exception works) or by
returning a ``DispatchResult`` to answer in its place (a cache); either way nothing is written.

The ``after_*`` hooks observe; they cannot change the outcome. The command has already committed
when ``after_dispatch`` runs, so an exception there is logged (logger
``tideflow.runtime.dispatch``) rather than raised: raising would tell the caller that a command
that happened had failed, and invite a retry. Likewise an ``after_failure`` hook that raises is
logged and the command's own error is re-raised.

Hooks run once per dispatch, not once per attempt: a command retried after a version conflict
passes through them once (``ctx.attempts`` tells how many tries it took). A dispatcher recording
into a caller's transaction (``CommandDispatcher.within(tx)``, a process manager's batch) runs
``after_dispatch`` once that transaction commits (``Tx.on_commit``), and never if it rolls back:
a batch retried after a rollback dispatches its commands again, and only the attempt that
commits is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tideflow.events.commands import Command, CommandError, DispatchResult

if TYPE_CHECKING:
    from tideflow.events.aggregate import Aggregate

log = logging.getLogger("tideflow.runtime.dispatch")


class CommandRejectedError(CommandError):
    """A middleware refused the command (not authorised, rate limited, in maintenance...);
    nothing was written. ``command`` is the refused command and ``reason`` the middleware's
    words."""

    def __init__(self, command: Command, reason: str) -> None:
        self.command = command
        self.reason = reason
        super().__init__(
            f"command {command.command_type!r} for aggregate "
            f"{command.aggregate_id!r} was rejected: {reason}; nothing was written"
        )


@dataclass
class DispatchContext:
    """One command on its way through the dispatcher, as the middleware sees it.

    A ``before_dispatch`` hook may replace ``command`` - typically with
    ``dataclasses.replace(ctx.command, metadata={...})`` to add metadata every event should carry
    - but not change which aggregate it is for (``command_type``, ``aggregate_id``): that would
    bypass the routing already done. ``extras`` is a scratch dict shared by the hooks of one
    dispatch (a start time, a span).
    """

    command: Command
    aggregate: Aggregate
    stream_id: str
    extras: dict[str, Any] = field(default_factory=dict)
    attempts: int = 0
    """How many times the command was executed: 1, or more after version conflicts; 0 when a
    middleware answered in its place."""


class Middleware:
    """Base class of middleware: every hook does nothing until overridden."""

    def before_dispatch(self, ctx: DispatchContext) -> DispatchResult | None:
        """Before the aggregate is loaded. Return None to go on, a ``DispatchResult`` to answer
        in place of the dispatch, or raise to refuse."""
        return None

    def after_dispatch(self, ctx: DispatchContext, result: DispatchResult) -> None:
        """After the command's events committed (or it was replayed: ``result.replayed``)."""

    def after_failure(self, ctx: DispatchContext, error: Exception) -> None:
        """After the dispatch raised ``error`` (which is then re-raised); nothing was
        written."""


def run_pipeline(
    middleware: Sequence[Middleware],
    ctx: DispatchContext,
    dispatch: Callable[[DispatchContext], DispatchResult],
    after_commit: Callable[[Callable[[], None]], None] | None = None,
) -> DispatchResult:
    """Run ``dispatch(ctx)`` inside the hooks of ``middleware``, in the order described in the
    module docstring. ``after_commit``: the ``on_commit`` of the transaction ``dispatch``
    recorded into, to run the ``after_dispatch`` hooks once it commits; None when ``dispatch``
    committed on its own."""
    entered: list[Middleware] = []
    try:
        result = None
        for m in middleware:
            entered.append(m)
            result = m.before_dispatch(ctx)
            if result is not None:
                if not isinstance(result, DispatchResult):
                    raise CommandError(
                        f"{type(m).__name__}.before_dispatch returned {type(result).__name__}; "
                        "return None to go on or a DispatchResult to answer in place of the "
                        "dispatch"
                    )
                break
        if result is None:
            result = dispatch(ctx)
    except Exception as exc:
        for m in reversed(entered):
            try:
                m.after_failure(ctx, exc)
            except Exception:
                log.exception(
                    "%s.after_failure raised while handling the failure of command "
                    "%r; the command's own error is re-raised",
                    type(m).__name__,
                    ctx.command.command_type,
                )
        raise
    if after_commit is None:
        _after_dispatch(entered, ctx, result)
    elif entered:
        after_commit(lambda: _after_dispatch(entered, ctx, result))
    return result


def _after_dispatch(
    entered: Sequence[Middleware], ctx: DispatchContext, result: DispatchResult
) -> None:
    for m in reversed(entered):
        try:
            m.after_dispatch(ctx, result)
        except Exception:
            log.exception(
                "%s.after_dispatch raised after command %r (id %s) committed; the command stands",
                type(m).__name__,
                ctx.command.command_type,
                ctx.command.command_id,
            )
