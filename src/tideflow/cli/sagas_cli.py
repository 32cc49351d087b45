"""The process manager commands of ``tideflow``: what each saga instance is doing.

    tideflow sagas [--manager M] [--status running|completed|failed] [--limit N]
    tideflow saga MANAGER PROCESS_ID

A thin shell over ``ProcessStore``: read the database alone, no code needed. A process manager's
*handler* - position, lag, a stop and its reason - is in ``tideflow handlers``; these commands
show its instances, one per process id, with their state and the last command failure.
``sagas_app`` holds them; ``main`` mounts it on the root command.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from tideflow.cli.errors import CliUsageError, CommandFailed
from tideflow.cli.events_cli import _console
from tideflow.cli.json_output import counts_json, emit, instance_json
from tideflow.cli.loading import check_reachable
from tideflow.cli.options import DatabaseOpt, database_of
from tideflow.cli.render import compact_json, fmt_time, fmt_when, new_table, truncate
from tideflow.codec import to_json_value
from tideflow.jsonutil import loads
from tideflow.storage import Stores, open_database, resolve_url
from tideflow.storage.process_contract import (
    PROCESS_STATUSES,
    ProcessInstance,
    ProcessStatus,
)

sagas_app = typer.Typer(add_completion=False)
"""The process manager commands; ``main`` mounts them on the root ``tideflow`` command."""

_STYLES = {"running": "green", "completed": "dim", "compensated": "yellow", "failed": "bold red"}


@contextmanager
def _stores(ctx: typer.Context, database_url: str | None) -> Iterator[Stores]:
    """The stores, read without creating or migrating anything (``SchemaMissingError`` on a
    database without the schema); the database as ``options.database_of`` finds it."""
    url = resolve_url(database_of(ctx, database_url))
    check_reachable(url)
    with open_database(url, create=False) as stores:
        stores.db.check_schema()
        yield stores


def instances_table(instances: list[ProcessInstance]) -> Table:
    table = new_table()
    table.add_column("manager", overflow="fold", min_width=7)
    table.add_column("process id", overflow="fold", min_width=8)
    table.add_column("status", no_wrap=True)
    table.add_column("events", justify="right", no_wrap=True)
    table.add_column("pos", justify="right", no_wrap=True, style="dim")
    table.add_column("updated", no_wrap=True)
    table.add_column("state/error", overflow="fold", min_width=12)
    for i in instances:
        detail = (
            Text(truncate(i.error, 200), style="red" if i.status == "failed" else "yellow")
            if i.error
            else Text(compact_json(i.state, 160), style="dim")
        )
        table.add_row(
            i.manager,
            i.process_id,
            Text(i.status, style=_STYLES[i.status]),
            str(i.version),
            str(i.last_position),
            fmt_when(i.updated_at),
            detail,
        )
    return table


@sagas_app.command("sagas")
def sagas_command(
    ctx: typer.Context,
    manager: Annotated[
        str | None,
        typer.Option(
            "--manager", "-m", help="Only this process manager's instances.", show_default=False
        ),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            "-s",
            help="Only instances in this status: running, completed, compensated or failed.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="At most this many, most recently updated first.")
    ] = 50,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="A JSON object: the instances and the counts by status, nothing else."
        ),
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List process manager (saga) instances: status, events applied, state or last failure."""
    if status is not None and status not in PROCESS_STATUSES:
        raise CliUsageError(
            f"--status {status!r} is not a process status; use one of {', '.join(PROCESS_STATUSES)}"
        )
    if limit < 1:
        raise CliUsageError(f"--limit must be at least 1, got {limit}")
    checked: ProcessStatus | None = status  # narrowed by the check above
    with _stores(ctx, database_url) as stores:
        instances = stores.processes.list_instances(manager, checked, limit)
        counts = stores.processes.counts()
    if as_json:
        wanted = {k: n for k, n in counts.items() if manager is None or k[0] == manager}
        emit({"instances": [instance_json(i) for i in instances], "counts": counts_json(wanted)})
        return
    out = _console()
    if not instances:
        out.print(
            Text(
                "no process manager instances"
                + (" match" if manager or status else " on this database yet"),
                style="dim",
            )
        )
        return
    out.print(instances_table(instances))
    summary = ", ".join(
        f"{m} {s}: {n}" for (m, s), n in sorted(counts.items()) if manager is None or m == manager
    )
    out.print(Text(summary, style="dim"))


@sagas_app.command("saga")
def saga_command(
    ctx: typer.Context,
    manager: Annotated[
        str,
        typer.Argument(metavar="MANAGER", help="The process manager's name.", show_default=False),
    ],
    process_id: Annotated[
        str,
        typer.Argument(metavar="PROCESS_ID", show_default=False, help="The instance's process id."),
    ],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="A JSON object: the instance, the commands it sent, its timers, nothing else.",
        ),
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show one process manager instance.

    Its status, timings, failure, the commands it sent and undid in order, and its whole
    state."""
    with _stores(ctx, database_url) as stores:
        found = stores.processes.get(manager, process_id)
        timers = stores.timers.pending(manager, process_id) if found is not None else []
    if found is None:
        raise CommandFailed(
            f"process manager {manager!r} has no instance {process_id!r}; "
            f"`tideflow sagas --manager {manager}` lists those it has"
        )
    if as_json:
        emit(instance_json(found, timers=timers))
        return
    out = _console()
    out.print(
        Text.assemble(
            (found.manager, "bold"),
            " / ",
            found.process_id,
            "  ",
            (found.status, _STYLES[found.status]),
        ),
        soft_wrap=True,
    )
    ended = f", ended {fmt_time(found.finished_at)}" if found.finished_at else ""
    out.print(
        f"events applied {found.version}, last at position {found.last_position}; "
        f"started {fmt_time(found.started_at)}, updated {fmt_time(found.updated_at)}{ended}"
    )
    if found.error:
        out.print(Text(found.error, style="red" if found.status == "failed" else "yellow"))
    for sent in found.sent:
        at = "" if sent["position"] is None else f" (event at {sent['position']})"
        out.print(
            Text.assemble(
                ("undid " if sent["undo"] else "sent  ", "yellow" if sent["undo"] else "dim"),
                f"{sent['command_type']} -> {sent['aggregate_id']}{at}",
            )
        )
    pending = len(loads(found.undo_json))
    if pending and found.status == "running":
        out.print(Text(f"{pending} undo(s) recorded, dispatched if a command is refused", "dim"))
    for timer in timers:
        out.print(
            Text.assemble(
                ("timer ", "cyan"),
                f"{timer.name} -> {timer.event_type} at {fmt_time(timer.fire_at)}",
            )
        )
    out.print(json.dumps(to_json_value(found.state), indent=2, ensure_ascii=False), soft_wrap=True)
