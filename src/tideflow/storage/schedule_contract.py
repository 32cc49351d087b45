"""The schedule store contract: cron schedules stored, and their ticks fired exactly once.

Schedules are declared in code (``tideflow.flows.schedules.Schedule``) and written to the
``schedules`` table by each worker as it starts (``sync``); the worker's loop then asks which of
its schedules are due (``due``) and fires each (``fire``). The design - a cursor per schedule, a
tick row per fired tick with a unique key, the tick's run started in the same transaction - is
in migration 0020 of each backend. One implementation, ``storage/schedule_store.py``, over every
backend's ``Database``, held to the same tests (``tests/schedules/``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from tideflow.flows.definition import FlowDefinition
from tideflow.flows.schedules import Schedule


@dataclass(frozen=True)
class ScheduleRecord:
    """A stored schedule: what it starts and when, its cursor and its next tick."""

    name: str
    flow_slug: str
    cron: str
    timezone: str
    input: Any
    catch_up: str
    grace: float
    last_tick_at: datetime
    """The last tick handled (fired, or passed over by catch-up); at first, when it was
    stored."""
    next_tick_at: datetime | None
    """The first tick after ``last_tick_at``; None when the expression never fires again."""
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class TickRecord:
    """A fired tick: the run it started, and when (``fired_at`` minus ``tick_at`` is how
    late)."""

    schedule: str
    tick_at: datetime
    run_id: str
    fired_at: datetime


#: How a store finds the definition a schedule's run starts from, by flow slug: the App's
#: registered class, else the latest stored version (``Client.flow_definition``).
DefinitionFor = Callable[[str], FlowDefinition]


class ScheduleStore(Protocol):
    def sync(self, schedules: Sequence[Schedule]) -> None:
        """Write these schedules' rows in one transaction: a new one starts its cursor now (no
        earlier tick fires); a changed one is updated - with a new cron expression or
        timezone its cursor moves to now, so the new series starts from here; an unchanged one
        is left alone (no write)."""
        ...

    def due(self, names: Sequence[str]) -> list[str]:
        """Those of these schedules whose next tick is past (a read; firing decides)."""
        ...

    def fire(self, name: str, definition_for: DefinitionFor) -> list[str]:
        """Fire the due ticks of one schedule - by its catch-up mode - in one transaction: a
        tick row and a run per fired tick, and the cursor moved; the run ids started. A
        schedule another transaction is firing right now is passed over (PostgreSQL: its row
        is locked) and returns []. Exactly once per tick, however many workers call it."""
        ...

    def list_schedules(self) -> list[ScheduleRecord]:
        """Every stored schedule, by name."""
        ...

    def ticks(self, name: str, limit: int = 20) -> list[TickRecord]:
        """The schedule's newest fired ticks, newest first (the newest 100 are kept)."""
        ...
