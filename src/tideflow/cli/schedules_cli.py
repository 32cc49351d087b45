"""The cron schedule commands of ``tideflow``: what is scheduled and when it fires next.

    tideflow schedules             every stored schedule: flow, cron, timezone, next tick
    tideflow schedule NAME         one schedule and its newest fired ticks with their runs

A thin shell over ``ScheduleStore``: it reads the database alone, no code needed (workers store
the schedules their app declares as they start). ``schedules_app`` holds the commands; ``main``
mounts it on the root command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from rich.text import Text

from tideflow.cli.errors import CliUsageError, CommandFailed
from tideflow.cli.events_cli import _console
from tideflow.cli.json_output import emit, schedule_json, tick_json
from tideflow.cli.loading import check_reachable
from tideflow.cli.options import DatabaseOpt, database_of
from tideflow.cli.render import compact_json, new_table
from tideflow.storage import Stores, open_database, resolve_url
from tideflow.storage.schedule_contract import ScheduleRecord

schedules_app = typer.Typer(add_completion=False)
"""The schedule commands; ``main`` mounts them on the root ``tideflow`` command."""


@contextmanager
def _stores(ctx: typer.Context, database_url: str | None) -> Iterator[Stores]:
    """The stores, read without creating or migrating anything; the database as
    ``options.database_of`` finds it (``-d`` before or after the command)."""
    url = resolve_url(database_of(ctx, database_url))
    check_reachable(url)
    with open_database(url, create=False) as stores:
        stores.db.check_schema()
        yield stores


def in_zone(moment: datetime | None, timezone: str) -> str:
    """``moment`` in the schedule's own timezone, with its offset: the time the cron expression
    speaks of."""
    if moment is None:
        return "never"
    return moment.astimezone(ZoneInfo(timezone)).strftime("%Y-%m-%d %H:%M:%S %z")


def schedules_table(records: list[ScheduleRecord]) -> Table:
    table = new_table()
    table.add_column("name", overflow="fold", min_width=6)
    table.add_column("flow", overflow="fold", min_width=6)
    table.add_column("cron", overflow="fold", min_width=6)
    table.add_column("timezone", overflow="fold", min_width=6)
    table.add_column("next tick", no_wrap=True)
    table.add_column("last handled", no_wrap=True, style="dim")
    table.add_column("catch-up", no_wrap=True)
    table.add_column("input", overflow="fold", style="dim")
    for r in records:
        # Text, not str: rich would read "[...]" in a value as markup and ":name:" as an emoji.
        table.add_row(
            Text(r.name),
            Text(r.flow_slug),
            Text(r.cron),
            Text(r.timezone),
            Text(in_zone(r.next_tick_at, r.timezone), style="green"),
            Text(in_zone(r.last_tick_at, r.timezone)),
            Text(r.catch_up if r.catch_up != "none" else f"none (grace {r.grace:g}s)"),
            Text(compact_json(r.input, 80)),
        )
    return table


JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print JSON for scripts, and nothing else on stdout.")
]


@schedules_app.command("schedules")
def schedules_command(
    ctx: typer.Context, as_json: JsonOpt = False, database_url: DatabaseOpt = None
) -> None:
    """List cron schedules: flow, cron expression, timezone and the next tick, in that
    timezone."""
    with _stores(ctx, database_url) as stores:
        records = stores.schedules.list_schedules()
    if as_json:
        emit([schedule_json(r) for r in records])
        return
    out = _console()
    if not records:
        out.print(
            Text(
                "no schedules on this database yet (a worker stores its app's schedules as it "
                "starts)",
                style="dim",
            )
        )
        return
    out.print(schedules_table(records))


@schedules_app.command("schedule")
def schedule_command(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The schedule's name.", show_default=False)
    ],
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="At most this many ticks, newest first.")
    ] = 20,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show one schedule and its newest fired ticks, each with its run and how late it fired."""
    if limit < 1:
        raise CliUsageError(f"--limit must be at least 1, got {limit}")
    with _stores(ctx, database_url) as stores:
        found = [r for r in stores.schedules.list_schedules() if r.name == name]
        ticks = stores.schedules.ticks(name, limit) if found else []
    if not found:
        raise CommandFailed(
            f"no schedule named {name!r} is stored; `tideflow schedules` lists those that are"
        )
    if as_json:
        emit({**schedule_json(found[0]), "ticks": [tick_json(t) for t in ticks]})
        return
    out = _console()
    out.print(schedules_table(found))
    if not ticks:
        out.print(Text("no tick fired yet", style="dim"))
        return
    table = new_table()
    table.add_column("tick", no_wrap=True)
    table.add_column("fired", justify="right", no_wrap=True)
    table.add_column("run", overflow="fold")
    for t in ticks:
        late = (t.fired_at - t.tick_at).total_seconds()
        table.add_row(Text(in_zone(t.tick_at, found[0].timezone)), f"+{late:.1f}s", Text(t.run_id))
    out.print(table)
