"""Cron schedules: start a flow or a job on every tick of a cron expression, in a timezone.

    App(flows=[Report], schedules=[Schedule(Report, "0 3 * * *", timezone="Europe/Berlin")])

This module is the domain half: what a schedule is, checked when it is declared (a bad cron
expression, an unknown timezone or an input that is not JSON raise a ``ScheduleError`` subclass
naming it, before anything is stored), and which ticks are due given the last one handled and
the time now. Storing schedules, firing ticks exactly once across workers and starting their
runs is ``storage/schedule_store.py``; the worker's loop calls it.

Cron expressions are parsed and iterated by ``cronsim`` (five fields, or six with seconds first;
``L``, ``#``, names of days and months; day-of-month and day-of-week combined as Debian cron
does). Ticks are computed in the schedule's timezone (``zoneinfo``) and stored as UTC instants.
Daylight saving time is cronsim's, which mimics Debian cron for expressions with a fixed minute
and hour (``30 2 * * *``): a local time skipped when clocks go forward fires once, at the first
valid time after the gap (03:00); a local time repeated when clocks go back fires once, at its
first occurrence. Expressions with ``*`` or a step in the minute or hour field (``*/15 * * * *``)
follow real time: the skipped hour has no ticks and the repeated hour fires on both passes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tideflow.errors import InvalidCronError, ScheduleError, UnknownTimezoneError
from tideflow.flows.definition import MAX_SLUG_LENGTH, SLUG_RE
from tideflow.flows.dsl import Flow, is_flow_class
from tideflow.flows.jobs import Job, is_job
from tideflow.jsonutil import dumps

CatchUp = Literal["none", "latest", "all"]
CATCH_UP_MODES: tuple[CatchUp, ...] = ("none", "latest", "all")

#: Ticks fired per schedule in one transaction with ``catch_up="all"``: a long downtime of a
#: frequent schedule drains in short transactions rather than one long one.
MAX_TICKS_PER_PASS = 100

#: A schedule name is a slug with dashes and dots allowed: it is part of each tick's run id.
NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")


@dataclass(frozen=True)
class Schedule:
    """Start ``target`` (a ``Flow`` class, a ``@job``, or a flow slug) with ``input`` on every
    tick of ``cron`` in ``timezone``; one run per tick, however many workers declare it.

    ``name`` (default: the target's slug) identifies the schedule - its row, its ticks, its
    runs' ids ``schedule:<name>@<tick, UTC>`` - so two schedules of one target need names.
    ``catch_up`` says what a worker does with ticks it finds already past (all workers were
    down, or busy): ``"latest"`` (default) fires the latest missed tick only, ``"all"`` fires
    every one of them, oldest first, ``"none"`` fires a tick only while it is at most
    ``grace`` seconds late and skips it otherwise. Ticks before the schedule was first stored
    never fire."""

    target: type[Flow] | Job[Any, Any] | str
    cron: str
    timezone: str = "UTC"
    input: Any = None
    name: str | None = None
    catch_up: CatchUp = "latest"
    grace: float = 60.0
    #: The target's flow slug (derived).
    flow_slug: str = field(init=False)
    #: The input as stored (derived; JSON text).
    input_json: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        target = self.target
        if is_flow_class(target) or is_job(target):
            slug = target.slug
        elif isinstance(target, str) and SLUG_RE.match(target):
            slug = target
        else:
            raise ScheduleError(
                f"a schedule's target is a Flow class, a @job or a flow slug, got {target!r}"
            )
        name = self.name if self.name is not None else slug
        if not isinstance(name, str) or not NAME_RE.match(name) or len(name) > MAX_SLUG_LENGTH:
            raise ScheduleError(
                f"schedule name {name!r} is invalid: use lowercase letters, digits, '_', '-' "
                f"and '.', starting with a letter, at most {MAX_SLUG_LENGTH} characters"
            )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "flow_slug", slug)
        zone = check_timezone(self.timezone, name)
        check_cron(self.cron, name, zone)
        if self.catch_up not in CATCH_UP_MODES:
            raise ScheduleError(
                f"schedule {name!r}: catch_up must be one of {', '.join(CATCH_UP_MODES)}, got "
                f"{self.catch_up!r}"
            )
        grace = self.grace
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
            raise ScheduleError(
                f"schedule {name!r}: grace must be a number of seconds >= 0, got {grace!r}"
            )
        if not math.isfinite(grace):
            raise ScheduleError(f"schedule {name!r}: grace must be finite, got {grace!r}")
        object.__setattr__(
            self, "input_json", dumps(self.input, what=f"input of schedule {name!r}")
        )

    @property
    def key(self) -> str:
        """The schedule's name (set by ``__post_init__``)."""
        assert self.name is not None
        return self.name

    def stored(self) -> dict[str, Any]:
        """What the schedules table keeps of it: enough to fire it without the code."""
        return {
            "name": self.key,
            "flow_slug": self.flow_slug,
            "cron": self.cron,
            "timezone": self.timezone,
            "input": self.input_json,
            "catch_up": self.catch_up,
            "grace": float(self.grace),
        }


_TICK_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def tick_run_id(name: str, tick: datetime) -> str:
    """The run id of a schedule's tick, ``schedule:<name>@<tick, UTC>``: readable, and unique per
    (schedule, tick) like the tick row's key - a second guard against a tick starting two runs.
    ``@`` rather than a second ``:``: terminals that render ``:name:`` as an emoji would show
    ``schedule💓...`` for a schedule named heartbeat."""
    return f"schedule:{name}@{tick.astimezone(UTC).strftime(_TICK_FORMAT)}"


def scheduled_tick(run_id: str) -> datetime | None:
    """The tick a schedule's run was started for (UTC), read from its run id - what a step of a
    scheduled flow or job uses to know which period it covers (``scheduled_tick(ctx.run_id)``);
    None for a run no schedule started."""
    prefix, at, when = run_id.rpartition("@")
    if not at or not prefix.startswith("schedule:"):
        return None
    try:
        return datetime.strptime(when, _TICK_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def check_timezone(timezone: object, name: str) -> ZoneInfo:
    """The zone, or ``UnknownTimezoneError`` naming it."""
    if not isinstance(timezone, str) or not timezone:
        raise UnknownTimezoneError(
            f"schedule {name!r}: timezone must be an IANA zone name such as 'UTC' or "
            f"'Europe/Berlin', got {timezone!r}",
            str(timezone),
        )
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise UnknownTimezoneError(
            f"schedule {name!r}: unknown timezone {timezone!r}; use an IANA zone name such as "
            "'UTC', 'Europe/Berlin' or 'America/New_York'",
            timezone,
        ) from exc


def check_cron(expression: object, name: str, zone: ZoneInfo | None = None) -> None:
    """``InvalidCronError`` naming the expression (and cronsim's reason) unless it parses and
    has a next tick."""
    if not isinstance(expression, str):
        raise InvalidCronError(
            f"schedule {name!r}: the cron expression must be a str, got {expression!r}",
            str(expression),
        )
    try:
        it = CronSim(expression, datetime(2000, 1, 1, tzinfo=zone or UTC))
        next(it)
    except (CronSimError, StopIteration, ValueError, IndexError) as exc:
        reason = str(exc) or "it never matches"
        raise InvalidCronError(
            f"schedule {name!r}: cron expression {expression!r} is invalid ({reason}); write "
            "five fields 'minute hour day-of-month month day-of-week' (e.g. '0 3 * * *'), or "
            "six with seconds first",
            expression,
        ) from exc


def ticks_after(
    cron: str, timezone: str, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The ticks of ``cron`` in ``timezone`` in (``after``, ``until``], as UTC instants, oldest
    first, at most ``limit`` (the oldest ones)."""
    found: list[datetime] = []
    for tick in _iterate(cron, timezone, after):
        if tick > until or len(found) >= limit:
            break
        found.append(tick)
    return found


def next_tick(cron: str, timezone: str, after: datetime) -> datetime | None:
    """The first tick after ``after`` (UTC), or None when the expression never fires again."""
    return next(_iterate(cron, timezone, after), None)


def _iterate(cron: str, timezone: str, after: datetime) -> Any:
    zone = ZoneInfo(timezone)
    # Ticks are whole seconds: start from the second ``after`` is in, so that a cursor with
    # microseconds does not fire its own second again.
    local = after.astimezone(zone).replace(microsecond=0)
    for tick in CronSim(cron, local):
        instant = tick.astimezone(UTC)
        if instant > after:
            yield instant


@dataclass(frozen=True)
class DueTicks:
    """What one pass does with a schedule: fire ``fire`` (UTC instants) and move the cursor
    (the last tick handled) to ``cursor``, passing over the ticks before it that are not fired
    (catch-up)."""

    fire: list[datetime]
    cursor: datetime


def due_ticks(
    cron: str,
    timezone: str,
    catch_up: str,
    grace: float,
    cursor: datetime,
    now: datetime,
    limit: int = MAX_TICKS_PER_PASS,
) -> DueTicks | None:
    """The ticks due at ``now`` for a schedule whose last handled tick is ``cursor``, by its
    catch-up mode; None when nothing is due. With ``"all"``, at most ``limit`` per pass (the
    oldest): the next pass takes the rest."""
    if catch_up == "all":
        ticks = ticks_after(cron, timezone, cursor, now, limit)
        return DueTicks(ticks, ticks[-1]) if ticks else None
    # Only the latest past tick matters. Walking from a cursor far behind (a per-second
    # schedule after a week down) would take long: start at most a day back instead - the
    # ticks before that are passed over either way.
    latest: datetime | None = None
    for tick in _iterate(cron, timezone, max(cursor, now - timedelta(days=1))):
        if tick > now:
            break
        latest = tick
    if latest is None and cursor < now - timedelta(days=1):
        latest = _latest_before(cron, timezone, cursor, now)
    if latest is None:
        return None
    if catch_up == "none" and (now - latest).total_seconds() > grace:
        return DueTicks([], latest)
    return DueTicks([latest], latest)


def _latest_before(cron: str, timezone: str, cursor: datetime, now: datetime) -> datetime | None:
    """The last tick in (cursor, now] of a schedule that ticked not once in the last day (a
    monthly one): walk from the cursor, which crosses few ticks at that pace."""
    latest = None
    for tick in _iterate(cron, timezone, cursor):
        if tick > now:
            break
        latest = tick
    return latest
