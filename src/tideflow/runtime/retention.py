"""Retention: deleting what is old, in small batches (``tideflow purge``, a worker's ``retention``).

Nothing that tideflow writes is deleted on its own: finished runs with their steps and tasks,
idempotency keys, retried dead letters and ended process instances add up, and the hot tables'
indexes and vacuums grow with them. Retention deletes them once they are older than a window.

Each batch is one short transaction of at most ``batch_size`` rows, oldest first, through the
stores (``purge_finished_runs``, ``expire_idempotency_keys``, ``purge_retried_dead_letters``, and
the process store's ``prune_finished``), so a purge never holds locks on many rows of a table that
workers are writing, and can stop between any two batches. Running it from several workers at
once is safe: on PostgreSQL a batch skips rows another batch has locked.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from tideflow.errors import InvalidRetentionError
from tideflow.storage.event_contract import EventStore
from tideflow.storage.flow_contract import FlowStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.storage.process_contract import ProcessStore

#: The most rows one batch deletes, by default: small enough that a batch holds its locks for
#: milliseconds, large enough that a backlog of millions goes in minutes.
DEFAULT_BATCH_SIZE = 500


@dataclass(frozen=True)
class Retention:
    """How long tideflow keeps what it no longer needs (``None``: keep it forever).

    ``runs``: seconds after a run ended (completed, failed or cancelled) before it goes, with
    its steps and tasks; retried dead letters and ended process instances follow the same
    window (a process manager's own ``retention`` may remove its instances sooner).
    ``idempotency_keys``: seconds an idempotency key is kept; an append or command that repeats
    a key older than that - once it is deleted - is treated as new.
    """

    runs: float | None = None
    idempotency_keys: float | None = None
    batch_size: int = DEFAULT_BATCH_SIZE

    def __post_init__(self) -> None:
        for name in ("runs", "idempotency_keys"):
            value = getattr(self, name)
            if value is not None and not (
                isinstance(value, int | float) and value > 0 and math.isfinite(value)
            ):
                raise InvalidRetentionError(
                    f"retention {name}={value!r} is not a positive number of seconds; pass "
                    f"e.g. {name}=30 * 86400 for 30 days, or None to keep them"
                )
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InvalidRetentionError(
                f"retention batch_size={self.batch_size!r} is not a positive whole number; "
                f"pass e.g. batch_size={DEFAULT_BATCH_SIZE}"
            )

    @property
    def enabled(self) -> bool:
        return self.runs is not None or self.idempotency_keys is not None


@dataclass
class Purged:
    """How many rows a purge deleted, by kind."""

    runs: int = 0
    idempotency_keys: int = 0
    dead_letters: int = 0
    process_instances: int = 0

    @property
    def total(self) -> int:
        return self.runs + self.idempotency_keys + self.dead_letters + self.process_instances


def _batches(delete: Callable[[], int], size: int, stop: Callable[[], bool], pause: float) -> int:
    """Call ``delete`` (one batch) until a batch comes back short or ``stop()`` says so."""
    total = 0
    while not stop():
        n = delete()
        total += n
        if n < size:
            break
        if pause:
            time.sleep(pause)
    return total


def purge(
    retention: Retention,
    *,
    flows: FlowStore,
    events: EventStore,
    handlers: HandlerStore,
    processes: ProcessStore,
    stop: Callable[[], bool] = lambda: False,
    pause: float = 0.0,
) -> Purged:
    """Delete everything ``retention`` says is old, batch by batch; ``stop()`` is asked before
    each batch, ``pause`` seconds pass between full batches (a worker's background purge yields
    the database to the hot path that way)."""
    size = retention.batch_size
    done = Purged()
    if retention.runs is not None:
        window = retention.runs
        done.runs = _batches(lambda: flows.purge_finished_runs(window, size), size, stop, pause)
        done.dead_letters = _batches(
            lambda: handlers.purge_retried_dead_letters(window, size), size, stop, pause
        )
        for handler in handlers.list_handlers():
            if handler.kind != "process_manager":
                continue

            def prune(name: str = handler.name) -> int:
                with events.transaction() as tx:
                    return processes.prune_finished(tx, name, window, size)

            done.process_instances += _batches(prune, size, stop, pause)
    if retention.idempotency_keys is not None:
        keys = retention.idempotency_keys
        done.idempotency_keys = _batches(
            lambda: events.expire_idempotency_keys(keys, size), size, stop, pause
        )
    return done


__all__ = ["DEFAULT_BATCH_SIZE", "Purged", "Retention", "purge"]
