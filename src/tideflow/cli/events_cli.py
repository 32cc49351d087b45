"""The event commands of ``tideflow``: read the log, watch handlers, deal with dead letters.

    tideflow events [--type T] [--stream S] [--from POS] [--limit N] [--follow] [--json]
    tideflow stream ID
    tideflow handlers [--app A]                   tideflow handlers reset NAME [--app A]
    tideflow handlers resume NAME
    tideflow deadletters [--handler H] [--all]    tideflow deadletters retry ID --app A

Like the flow commands, each is a thin shell over the public API (``EventStore``,
``HandlerStore``, ``reset_handler``, ``retry_dead_letter``); errors become one red line through
the root group's ``reporting``. Commands that need a handler's *code* - retrying a dead letter,
resetting a projection (its table is emptied with its checkpoint) - find it with ``--app``, which
names whatever holds the handlers: an object with a ``handlers`` list (an App, a HandlerRunner),
a handler class or instance, a list of them, or a module (its ``handlers``, else the handler
classes it defines). Everything else reads the database alone.

``events_app`` holds them; ``main`` mounts it on the root command (``cli.add_typer``), whose
``_Group`` reports errors. This module imports nothing from ``main``, so that it works however
``main`` is run (console script or ``python -m tideflow.cli.main``).
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from types import ModuleType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tideflow.cli.errors import CliUsageError, CommandFailed
from tideflow.cli.json_output import dead_letter_json, emit, handler_json
from tideflow.cli.loading import check_reachable, load_object
from tideflow.cli.options import DatabaseOpt, chosen_app, chosen_database, database_of
from tideflow.cli.render import compact_json, fmt_time, fmt_when, new_table, truncate
from tideflow.codec import to_json_value
from tideflow.events.handling import EventHandler, HandlerNotFoundError, HandlerUsageError
from tideflow.events.model import RecordedEvent
from tideflow.storage import open_database, resolve_url
from tideflow.storage.event_contract import EventStore
from tideflow.storage.handler_contract import HandlerRecord, HandlerStore
from tideflow.worker.handlers import reset_handler, retry_dead_letter

HANDLERS_APP_HELP = (
    "Your event handlers, for commands that run their code: module:attr naming an App or "
    "HandlerRunner (its handlers), a handler class, or a list of them; or a module (its "
    "'handlers', else the handler classes it defines)."
)

#: As the flow commands (``main.PIPE_WIDTH``): piped output gets wide lines, not truncated ids.
PIPE_WIDTH = 160

HandlersAppOpt = Annotated[
    str | None,
    typer.Option(
        "--app",
        "-a",
        envvar="TIDEFLOW_APP",
        metavar="MODULE:ATTR",
        show_default=False,
        help=HANDLERS_APP_HELP,
    ),
]

events_app = typer.Typer(add_completion=False)
"""The event commands; ``main`` mounts them on the root ``tideflow`` command."""


def _console() -> Console:
    console = Console(highlight=False, markup=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(highlight=False, markup=False, emoji=False, width=PIPE_WIDTH)
    return console


# --- finding the database and the handlers --------------------------------------------------------


def load_handlers(app_path: str) -> tuple[str | None, list[EventHandler]]:
    """The handlers ``--app`` names, and the database URL it carries (an App's), if any."""
    obj = load_object(app_path)
    url = getattr(obj, "database_url", None)
    found = _handlers_of(obj)
    if not found:
        raise CliUsageError(
            f"{app_path!r} names no event handlers: point --app at an App or HandlerRunner with "
            "handlers, a handler class, a list of handlers, or a module that defines some"
        )
    return (url if isinstance(url, str) else None), found


def _handlers_of(obj: object) -> list[EventHandler]:
    if isinstance(obj, EventHandler):
        return [obj]
    if isinstance(obj, type) and issubclass(obj, EventHandler):
        return [obj()]
    if isinstance(obj, list | tuple):
        return [h for item in obj for h in _handlers_of(item)]
    bound = getattr(obj, "bound_handlers", None)
    if callable(bound):  # an App: its process managers need its dispatcher to run
        return list(bound())
    listed = getattr(obj, "handlers", None)
    if isinstance(listed, list | tuple):
        return _handlers_of(listed)
    if isinstance(obj, ModuleType):
        app = getattr(obj, "app", None)
        if app is not None and (
            callable(getattr(app, "bound_handlers", None))
            or isinstance(getattr(app, "handlers", None), list | tuple)
        ):
            return _handlers_of(app)
        return [
            cls()
            for cls in vars(obj).values()
            if isinstance(cls, type)
            and issubclass(cls, EventHandler)
            and cls.__module__ == obj.__name__
            and cls.handle is not EventHandler.handle
        ]
    return []


@contextmanager
def stores(
    ctx: typer.Context,
    database_url: str | None,
    app_path: str | None = None,
    *,
    with_handlers: bool = False,
) -> Iterator[tuple[EventStore, HandlerStore, list[EventHandler]]]:
    """The event and handler stores of the database and the handlers named by ``--app``; the
    URL is ``--database-url``, else the App's, else the default of ``resolve_url``. Both are
    taken wherever they were written (``options.group_value``): on the command, on its group
    (``tideflow handlers --app X -d URL reset NAME``), or on the root command. A command that
    runs no handler code (``with_handlers`` False) takes only the database of an ``--app``.

    Nothing is created or migrated: every command here reads, or changes rows (a reset, a
    resume, a retry) that only a migrated database can hold, so a database without the schema
    raises ``SchemaMissingError`` - a mistyped URL must not gain a schema or a file."""
    handlers: list[EventHandler] = []
    app_url = None
    app_path = chosen_app(ctx, app_path) if with_handlers else None
    if app_path:
        app_url, handlers = load_handlers(app_path)
        given = chosen_database(ctx, database_url)
    else:
        given = database_of(ctx, database_url)
    url = resolve_url(given or app_url)
    check_reachable(url)
    with open_database(url, create=False) as stores:
        stores.db.check_schema()
        yield stores.events, stores.handlers, handlers


# --- events ---------------------------------------------------------------------------------------


def event_line(event: RecordedEvent, width: int) -> Text:
    """One event on one line: position, time, stream@version, type, data (cut to fit; under
    120 columns the time is the time of day, for today's events). Rich wraps a line whose
    head alone is wider than the terminal: an id is never cut."""
    head = Text.assemble(
        (f"{event.position:>8}", "bold"),
        "  ",
        (fmt_time(event.recorded_at) if width >= 120 else fmt_when(event.recorded_at), "dim"),
        "  ",
        (f"{event.stream_id}@{event.version}", "cyan"),
        "  ",
        (event.event_type, "bold"),
        "  ",
    )
    return head + Text(compact_json(event.data, max(10, width - head.cell_len)))


def event_json(event: RecordedEvent) -> str:
    return json.dumps(
        {
            "position": event.position,
            "stream_id": event.stream_id,
            "version": event.version,
            "event_type": event.event_type,
            "event_id": str(event.event_id),
            "recorded_at": event.recorded_at.isoformat(),
            "data": to_json_value(event.data),
            "metadata": to_json_value(event.metadata),
            "causation_id": None if event.causation_id is None else str(event.causation_id),
            "correlation_id": None if event.correlation_id is None else str(event.correlation_id),
        },
        ensure_ascii=False,
    )


def _select(
    store: EventStore,
    types: list[str] | None,
    stream: str | None,
    after: int,
    to_position: int | None = None,
) -> Iterator[RecordedEvent]:
    if stream is None:
        return store.read_all(after, types, to_position=to_position)
    return (
        e
        for e in store.read_stream(stream)
        if e.position > after
        and (to_position is None or e.position <= to_position)
        and (types is None or e.event_type in types)
    )


def _tail(
    store: EventStore, types: list[str] | None, stream: str | None, limit: int
) -> tuple[list[RecordedEvent], int]:
    """The last ``limit`` matching events, and the head they were read up to. Reads growing
    windows back from the head, so a tail of a large log does not read all of it."""
    head = store.head_position()
    window = max(limit, 1) * 2
    while True:
        start = 0 if stream is not None else max(0, head - window)
        found = deque(_select(store, types, stream, start, head), maxlen=limit)
        if len(found) >= limit or start == 0:
            return list(found), head
        window *= 8


@events_app.command("events")
def events_command(
    ctx: typer.Context,
    event_types: Annotated[
        list[str] | None,
        typer.Option(
            "--type", "-t", help="Only events of this type (repeatable).", show_default=False
        ),
    ] = None,
    stream: Annotated[
        str | None,
        typer.Option("--stream", "-s", help="Only events of this stream.", show_default=False),
    ] = None,
    from_position: Annotated[
        int | None,
        typer.Option(
            "--from",
            help="Events after this position, oldest first (default: the last --limit events).",
            min=0,
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.", min=0)] = 20,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="Keep printing new events as they are appended (Ctrl-C to stop)."
        ),
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="One JSON object per event and line (JSON Lines), nothing else."
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option(help="With --follow: seconds between looks for new events.", min=0.01)
    ] = 0.5,
    database_url: DatabaseOpt = None,
) -> None:
    """Show events of the whole log, newest last; with --follow, keep tailing it."""
    types = list(event_types) if event_types else None
    out = _console()
    with stores(ctx, database_url) as (store, _, _):
        if from_position is None:
            shown, last = _tail(store, types, stream, limit)
        else:
            shown = []
            last = from_position
            for event in _select(store, types, stream, from_position):
                if len(shown) == limit:
                    break
                shown.append(event)
            if shown:
                last = shown[-1].position
        if not shown and not follow and not as_json:
            filtered = types or stream or from_position
            out.print(Text("no events" + (" match" if filtered else " yet"), style="dim"))
        while True:
            for event in shown:
                if as_json:
                    out.print(event_json(event), markup=False, soft_wrap=True, highlight=False)
                else:
                    out.print(event_line(event, out.width))
                last = max(last, event.position)
            if not follow:
                return
            time.sleep(interval)
            shown = list(_select(store, types, stream, last))
            if stream is None and not shown:
                # Nothing new; a type-filtered follower need not rescan unrelated events.
                last = max(last, store.head_position())


@events_app.command("stream")
def stream_command(
    ctx: typer.Context,
    stream_id: Annotated[
        str, typer.Argument(metavar="ID", help="The stream's id.", show_default=False)
    ],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="One JSON object per event and line (JSON Lines, as events --json), nothing else.",
        ),
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show every event of one stream, in version order."""
    with stores(ctx, database_url) as (store, _, _):
        events = list(store.read_stream(stream_id))
        if not events:
            raise CommandFailed(
                f"stream {stream_id!r} has no events; `tideflow events` shows the streams that do"
            )
        if as_json:
            for e in events:
                typer.echo(event_json(e))
            return
        out = _console()
        out.print(
            Text.assemble(
                "stream ",
                (stream_id, "bold"),
                f"  version {events[-1].version}, {len(events)} event(s)",
            ),
            soft_wrap=True,
        )
        table = new_table()
        table.add_column("version", justify="right", no_wrap=True)
        table.add_column("position", justify="right", no_wrap=True, style="dim")
        table.add_column("recorded", no_wrap=True)
        table.add_column("type", no_wrap=True, style="bold")
        table.add_column("data", overflow="fold")
        for e in events:
            table.add_row(
                str(e.version),
                str(e.position),
                fmt_time(e.recorded_at),
                e.event_type,
                compact_json(e.data, 400),
            )
        out.print(table)


# --- handlers -------------------------------------------------------------------------------------

handlers_cli = typer.Typer(
    help="Event handlers: their position, lag, status and owner; reset and resume them.",
    no_args_is_help=False,
    add_completion=False,
)
events_app.add_typer(handlers_cli, name="handlers")


#: A handler's status word (as ``--json`` gives it), with the glyph and style of the table.
_HANDLER_STATUS = {
    "never ran": ("○", "dim"),
    "stopped": ("■", "bold red"),
    "checkpoint only": ("-", "dim"),
    "running": ("▶", "green"),
    "no worker": ("○", "yellow"),
}


def handler_status_word(record: HandlerRecord | None, now: datetime) -> str:
    if record is None:
        return "never ran"
    if record.status == "stopped":
        return "stopped"
    if record.status is None:
        return "checkpoint only"
    return "running" if record.is_held(now) else "no worker"


def handler_status(record: HandlerRecord | None, now: datetime) -> Text:
    word = handler_status_word(record, now)
    glyph, style = _HANDLER_STATUS[word]
    return Text(f"{glyph} {word}", style=style)


def handler_rows(
    records: Sequence[HandlerRecord], known: Sequence[EventHandler], head: int, now: datetime
) -> list[dict[str, Any]]:
    """Handlers from the database, and those of ``--app`` that never ran there, by name: the
    ``--json`` shape, from which the table is drawn."""
    by_name: dict[str, HandlerRecord | None] = {r.name: r for r in records}
    kinds = {h.name: h.kind for h in known}
    for h in known:
        by_name.setdefault(h.name, None)
    return [
        handler_json(
            name,
            (r.kind if r and r.kind else kinds.get(name)) or None,
            handler_status_word(r, now),
            head,
            r,
            r.owner if r is not None and r.is_held(now) and r.owner else None,
        )
        for name, r in sorted(by_name.items())
    ]


def handlers_table(rows: Sequence[dict[str, Any]]) -> Table:
    table = new_table()
    table.add_column("handler", overflow="fold", min_width=8)
    table.add_column("kind", overflow="fold", style="dim")
    table.add_column("status", no_wrap=True)
    table.add_column("position", justify="right", no_wrap=True)
    table.add_column("lag", justify="right", no_wrap=True)
    table.add_column("owner", overflow="fold")
    table.add_column("dead", justify="right", no_wrap=True)
    problems = any(row["status"] == "stopped" or row["last_error"] for row in rows)
    if problems:
        table.add_column("problem", overflow="fold", min_width=12)
    for row in rows:
        problem = Text("")
        if row["status"] == "stopped":
            problem = Text(row["stopped_reason"] or "stopped", style="red")
        elif row["last_error"]:
            problem = Text(
                f"retrying event {row['failing_position']} (attempt {row['attempts']}): "
                f"{truncate(row['last_error'], 200)}",
                style="yellow",
            )
        glyph, style = _HANDLER_STATUS[row["status"]]
        dead = row["dead_letters"]
        table.add_row(
            row["name"],
            (row["kind"] or "-").replace("_", " "),
            Text(f"{glyph} {row['status']}", style=style),
            str(row["position"]),
            Text(str(row["lag"]), style="yellow" if row["lag"] else "green"),
            row["owner"] or "-",
            Text(str(dead), style="bold red" if dead else "dim"),
            *([problem] if problems else []),
        )
    return table


@handlers_cli.callback(invoke_without_command=True)
def handlers_command(
    ctx: typer.Context,
    app_path: HandlersAppOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array of handlers, and nothing else.")
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List event handlers: position, lag (head - position), status, owner, dead letters."""
    if ctx.invoked_subcommand is not None:
        return
    with stores(ctx, database_url, app_path, with_handlers=True) as (store, handler_store, known):
        records = handler_store.list_handlers()
        head = store.head_position()
        rows = handler_rows(records, known, head, datetime.now(UTC))
        if as_json:
            emit(rows)
            return
        out = _console()
        if not records and not known:
            out.print(
                Text(
                    "no handlers have run on this database yet (pass --app to list yours)",
                    style="dim",
                )
            )
            return
        out.print(handlers_table(rows))
        out.print(Text(f"head position {head}", style="dim"))


@handlers_cli.command("reset")
def handlers_reset(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The handler's name.", show_default=False)
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    app_path: HandlersAppOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Set a handler back to position 0 (a projection's tables are emptied with it): the worker
    running it processes the whole log again. A stopped handler runs again."""
    with stores(ctx, database_url, app_path, with_handlers=True) as (store, handler_store, known):
        handler: EventHandler | str = next((h for h in known if h.name == name), name)
        if (
            isinstance(handler, str)
            and known
            and not any(r.name == name for r in handler_store.list_handlers())
        ):
            raise HandlerNotFoundError(
                f"no handler named {name!r} in --app or in the "
                f"database; --app has {sorted(h.name for h in known)}"
            )
        what = "its tables are emptied and " if getattr(handler, "kind", "") == "projection" else ""
        if not yes:
            typer.confirm(
                f"Reset handler {name!r} to position 0? {what.capitalize()}every "
                "event is processed again.",
                abort=True,
            )
        reset_handler(store, handler_store, handler)
        _console().print(
            Text.assemble(
                "reset handler ",
                (name, "bold"),
                " to position 0; ",
                what,
                "a worker running it catches up from the start",
            ),
            soft_wrap=True,
        )


@handlers_cli.command("resume")
def handlers_resume(
    ctx: typer.Context,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The handler's name.", show_default=False)
    ],
    database_url: DatabaseOpt = None,
) -> None:
    """Let a stopped handler run again from where it stopped (retrying the event it stopped
    on, with its attempts counted afresh)."""
    with stores(ctx, database_url) as (_, handler_store, _):
        if not handler_store.restart(name):
            raise HandlerNotFoundError(
                f"no handler named {name!r} has run on this database; "
                "`tideflow handlers` lists those that have"
            )
        _console().print(Text.assemble("resumed handler ", (name, "bold")), soft_wrap=True)


# --- dead letters ---------------------------------------------------------------------------------

deadletters_cli = typer.Typer(
    help="Events handlers gave up on: list them, retry them.",
    no_args_is_help=False,
    add_completion=False,
)
events_app.add_typer(deadletters_cli, name="deadletters")


@deadletters_cli.callback(invoke_without_command=True)
def deadletters_command(
    ctx: typer.Context,
    handler: Annotated[
        str | None, typer.Option("--handler", help="Only this handler's.", show_default=False)
    ] = None,
    include_retried: Annotated[
        bool, typer.Option("--all", help="Also those retried successfully.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.", min=1)] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON array of dead letters, and nothing else.")
    ] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List dead letters, oldest first: the event, the handler, the last error."""
    if ctx.invoked_subcommand is not None:
        return
    with stores(ctx, database_url) as (_, handler_store, _):
        letters = handler_store.list_dead_letters(
            handler, include_retried=include_retried, limit=limit
        )
        if as_json:
            emit([dead_letter_json(d) for d in letters])
            return
        out = _console()
        if not letters:
            out.print(
                Text(
                    "no dead letters" + (f" for handler {handler!r}" if handler else ""),
                    style="dim",
                )
            )
            return
        table = new_table()
        for column in ("id", "handler", "position", "event", "stream", "attempts"):
            numeric = column in ("id", "position", "attempts")
            table.add_column(
                column,
                no_wrap=numeric,
                overflow="fold",
                justify="right" if numeric else "left",
            )
        table.add_column("error", overflow="fold")
        table.add_column("created", no_wrap=True)
        table.add_column("retried", no_wrap=True)
        for d in letters:
            table.add_row(
                str(d.id),
                d.handler,
                str(d.position),
                d.event_type,
                d.stream_id,
                str(d.attempts),
                Text(truncate(d.error, 300), style="red"),
                fmt_when(d.created_at),
                Text(fmt_when(d.retried_at), style="green") if d.retried_at else "-",
            )
        out.print(table)


@deadletters_cli.command("retry")
def deadletters_retry(
    ctx: typer.Context,
    dead_letter_id: Annotated[
        int, typer.Argument(metavar="ID", help="The dead letter's id.", show_default=False)
    ],
    app_path: HandlersAppOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Run the handler again on a dead letter's event, now, in this process; on success the
    dead letter is marked retried."""
    with stores(ctx, database_url, app_path, with_handlers=True) as (store, handler_store, known):
        dead = handler_store.get_dead_letter(dead_letter_id)
        handler = next((h for h in known if h.name == dead.handler), None)
        if handler is None:
            raise CliUsageError(
                f"dead letter {dead.id} belongs to handler {dead.handler!r}, whose code is "
                "needed to retry it: pass --app naming your handlers"
                + (f" (the --app given has {sorted(h.name for h in known)})" if known else "")
            )
        try:
            retry_dead_letter(store, handler_store, handler, dead.id)
        except HandlerUsageError as exc:
            raise CommandFailed(str(exc)) from exc
        _console().print(
            Text.assemble(
                "retried dead letter ",
                (str(dead.id), "bold"),
                ": handler ",
                (dead.handler, "bold"),
                f" handled event {dead.position} ({dead.event_type} in stream {dead.stream_id!r})",
            ),
            soft_wrap=True,
        )
