"""The ``tideflow`` command: run workers, start and inspect runs, try the demo.

Each command is a thin shell over the public ``App`` API - the CLI can do nothing application code
cannot - and leaves the drawing to ``render`` and ``dag`` and the finding of user code to
``loading``. Errors are handled once, in ``_Group.invoke``, so no command can forget to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.json import JSON
from rich.logging import RichHandler
from rich.rule import Rule
from rich.text import Text
from typer.core import TyperGroup

from tideflow import App, __version__
from tideflow.cli.dag import nodes_from_definition, nodes_from_run, render_dag
from tideflow.cli.demo import run_demo
from tideflow.cli.errors import CliUsageError, CommandFailed, reporting
from tideflow.cli.events_cli import events_app
from tideflow.cli.json_output import emit, failure_json, flow_version_json, run_json
from tideflow.cli.live import watch_runs
from tideflow.cli.loading import build_app, redact
from tideflow.cli.options import (
    DATABASE_OPTION,
    AppOpt,
    DatabaseOpt,
    chosen_app,
    chosen_database,
    database_of,
    prepared,
    readable_metavars,
)
from tideflow.cli.render import (
    code_status,
    definition_table,
    failure_report,
    run_header,
    runs_table,
    steps_table,
    stored_flows_table,
    tasks_table,
)
from tideflow.cli.sagas_cli import sagas_app
from tideflow.cli.schedules_cli import schedules_app
from tideflow.cli.short_ids import resolve_run_id
from tideflow.jsonutil import loads
from tideflow.runtime.retention import DEFAULT_BATCH_SIZE, Retention
from tideflow.worker.worker import WorkerOptions

#: Output that is not a terminal (a pipe, a file, a test) gets this width instead of Rich's 80,
#: so that tables are not squeezed into truncated run ids that a script cannot use.
PIPE_WIDTH = 160


class _Group(TyperGroup):
    """The root command: reports errors once for every command (``reporting``), and gives
    every option a readable metavar (``options.readable_metavars``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        readable_metavars(self)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return prepared(super().get_command(ctx, cmd_name), ctx)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    def invoke(self, ctx: Any) -> Any:
        with reporting(bool(ctx.params.get("debug"))):
            return super().invoke(ctx)


cli = typer.Typer(
    cls=_Group,
    name="tideflow",
    help="Durable workflows, event sourcing and sagas on PostgreSQL or SQLite. New here? Run: "
    "tideflow demo",
    epilog="Exit codes: 0 success; 1 failure (a run failed, a database error, an unknown run); "
    "2 the command line is wrong (bad JSON, unknown flow, an --app that does not load).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

FlowOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--flow",
        "-f",
        metavar="MODULE:CLASS",
        show_default=False,
        help="One more flow class, module:Class (repeatable).",
    ),
]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print JSON for scripts, and nothing else on stdout (shapes: "
        "docs/concepts/operations.md).",
    ),
]
RunIdArg = typer.Argument(
    metavar="RUN_ID",
    show_default=False,
    help="The run's id, or the start of it that no other run's id has (as `tideflow runs` shows "
    "it).",
)
WideOpt = Annotated[
    bool,
    typer.Option(
        "--wide",
        "--full-ids",
        help="Show whole run ids (not the short prefixes every command also accepts) and "
        "every column, however wide.",
    ),
]


#: Units of a duration on the command line (``30d``, ``12h``, ``90m``, ``45s``; a bare number is
#: seconds).
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str, option: str) -> float:
    """``30d`` -> seconds; ``CliUsageError`` naming ``option`` for anything else."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:]) if value else None
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1.0)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds == float("inf"):
        raise CliUsageError(
            f"{option} {text!r} is not a duration; write a positive number with a unit: 30d, "
            "12h, 90m, 45s (or plain seconds)"
        )
    return seconds


RetentionOpt = Annotated[
    str | None,
    typer.Option(
        "--retention",
        show_default=False,
        help="Delete runs that ended longer ago than this (30d, 12h, ...), with their steps and "
        "tasks, and retried dead letters and ended process instances as old, in small batches "
        "every minute [default: keep everything].",
    ),
]
IdempotencyWindowOpt = Annotated[
    str | None,
    typer.Option(
        "--idempotency-window",
        show_default=False,
        help="Delete idempotency keys older than this (7d, ...): a command or append that "
        "repeats an expired key is treated as new [default: keep them].",
    ),
]


def _retention(
    runs: str | None,
    keys: str | None,
    names: tuple[str, str] = ("--retention", "--idempotency-window"),
) -> Retention | None:
    """The Retention of two duration options (``names``: how the command calls them)."""
    if runs is None and keys is None:
        return None
    return Retention(
        runs=None if runs is None else parse_duration(runs, names[0]),
        idempotency_keys=None if keys is None else parse_duration(keys, names[1]),
    )


#: The root logger's handler that ``--debug`` installs (None without it).
_DEBUG_HANDLER: logging.Handler | None = None


def _console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, markup=False, emoji=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(
            stderr=stderr, highlight=False, markup=False, emoji=False, width=PIPE_WIDTH
        )
    return console


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tideflow {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug", help="Show full tracebacks and debug logs instead of one-line errors."
        ),
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            *DATABASE_OPTION,
            metavar="URL",
            show_default=False,
            help="The database of every command (each also takes -d after its name).",
        ),
    ] = None,
    app_path: Annotated[
        str | None,
        typer.Option(
            "--app",
            "-a",
            metavar="MODULE:ATTR",
            show_default=False,
            help="Your App, flows or handlers, for every command that takes --app (each also "
            "takes it after its name).",
        ),
    ] = None,
) -> None:
    if debug:
        global _DEBUG_HANDLER
        root = logging.getLogger()
        if _DEBUG_HANDLER is not None:  # an earlier --debug command in this process
            root.removeHandler(_DEBUG_HANDLER)
        _DEBUG_HANDLER = RichHandler(console=_console(stderr=True), show_path=False)
        _DEBUG_HANDLER.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(_DEBUG_HANDLER)
        root.setLevel(logging.DEBUG)


@cli.command()
def worker(
    ctx: typer.Context,
    app_path: AppOpt = None,
    flows: FlowOpt = None,
    database_url: DatabaseOpt = None,
    concurrency: Annotated[
        int,
        typer.Option(
            help="Tasks this worker holds at once (docs/concepts/operations.md: tuning).", min=1
        ),
    ] = WorkerOptions.concurrency,
    step_threads: Annotated[
        int,
        typer.Option(help="Threads for plain def steps: how many run at once.", min=1),
    ] = WorkerOptions.step_threads,
    poll_interval: Annotated[
        float,
        typer.Option(
            help="Seconds between checks for due tasks when no wake-up arrives.", min=0.01
        ),
    ] = 1.0,
    lease_margin: Annotated[
        float,
        typer.Option(
            help="Failover delay for flows: seconds (beyond a step's timeout) before another "
            "worker retries the tasks of a worker that died or lost the database.",
            min=0.1,
        ),
    ] = 30.0,
    heartbeat_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between lease renewals of running tasks [default: lease margin / 3].",
            min=0.01,
            show_default=False,
        ),
    ] = None,
    handler_lease: Annotated[
        float,
        typer.Option(
            help="Failover delay for event handlers: seconds before another worker takes over "
            "the handlers of a worker that died.",
            min=0.1,
        ),
    ] = 30.0,
    handler_batch_size: Annotated[
        int | None,
        typer.Option(
            help="Events per batch transaction for every event handler and process manager, "
            "overriding their batch_size [default: each handler's own].",
            min=1,
            show_default=False,
        ),
    ] = None,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            help="On Ctrl-C or SIGTERM, seconds running tasks get to finish before they are "
            "released to the queue (a second Ctrl-C releases them at once).",
            min=0.0,
        ),
    ] = 30.0,
    until_idle: Annotated[
        bool, typer.Option(help="Exit once no task of these flows is queued or running.")
    ] = False,
    retention: RetentionOpt = None,
    idempotency_window: IdempotencyWindowOpt = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (needs the dashboard or "
            "otel extra: pip install 'tideflow[dashboard]').",
            min=1,
            max=65535,
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="Interface the --metrics-port server listens on.")
    ] = "127.0.0.1",
) -> None:
    """Run a worker for your flows until Ctrl-C or SIGTERM (running tasks finish first).

    Database restarts and lost connections are waited out (one warning each); the worker exits
    only when told to (0; 130 after a second Ctrl-C) or on a bug (1, with a traceback)."""
    keep = _retention(retention, idempotency_window)  # a bad duration is reported before anything
    with (
        build_app(
            chosen_database(ctx, database_url),
            chosen_app(ctx, app_path),
            flows or [],
            need_flows=True,
        ) as app,
        _setup_logging(),
    ):
        work = [*app.registry.slugs(), *(str(getattr(h, "name", h)) for h in app.handlers)]
        _console(stderr=True).print(
            Text.assemble(
                "worker for ",
                (", ".join(work), "bold"),
                " on ",
                (redact(app.database_url), "cyan"),
                f", concurrency {concurrency} ({min(step_threads, concurrency)} threads)",
                "" if until_idle else "; Ctrl-C to stop",
            ),
            soft_wrap=True,
        )
        if metrics_port is not None:
            _serve_metrics(app, metrics_host, metrics_port)
        try:
            app.run_worker(
                until_idle=until_idle,
                concurrency=concurrency,
                step_threads=step_threads,
                poll_interval=poll_interval,
                lease_margin=lease_margin,
                heartbeat_interval=heartbeat_interval,
                handler_lease=handler_lease,
                handler_batch_size=handler_batch_size,
                shutdown_grace=shutdown_grace,
                retention=keep,
            )
        except KeyboardInterrupt:
            _exit_now_if_steps_linger(130)
            raise
        if not until_idle:  # stopped by a signal
            _exit_now_if_steps_linger(0)


def _serve_metrics(app: App, host: str, port: int) -> None:
    from tideflow.telemetry import metrics
    from tideflow.telemetry.collector import serve_metrics

    if not metrics.available():
        raise CliUsageError(
            "--metrics-port needs prometheus-client: pip install 'tideflow[dashboard]'"
        )
    app.store  # noqa: B018 - the worker migrates first; the collector only reads
    try:
        serve_metrics(app.metrics_collector(), port, host)
    except OSError as exc:
        raise CliUsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc
    _console(stderr=True).print(f"metrics at http://{host}:{port}/metrics", soft_wrap=True)


def _exit_now_if_steps_linger(code: int) -> None:
    """End the process without waiting for step threads the worker released (a sync step
    cannot be cancelled; Python would otherwise wait for it at exit). Their tasks are back in
    the queue already: the work is not lost, another worker runs it."""
    others = [t for t in threading.enumerate() if t.name.startswith("tideflow-") and not t.daemon]
    deadline = time.monotonic() + 1.0
    for t in others:  # idle pool threads end at once
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in others):
        logging.getLogger("tideflow.worker").warning(
            "exiting without waiting for released steps still running in threads"
        )
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


@contextlib.contextmanager
def _setup_logging() -> Iterator[None]:
    """Show the worker's own log lines (started, recovered stalled tasks, failures, one warning
    per database outage) while the command runs. The connection pool's own line per failed
    reconnection attempt - a dozen a second while a server restarts - is left to ``--debug``.
    What it installs is taken back when the command ends: a program (or test) that calls the
    CLI in-process keeps its own logging, instead of printing later log lines twice."""
    logger, pool = logging.getLogger("tideflow"), logging.getLogger("psycopg.pool")
    levels = logger.level, pool.level
    root = logging.getLogger()
    debug = _DEBUG_HANDLER in root.handlers
    if not root.handlers:
        pool.setLevel(logging.ERROR)
    handler = None
    if not logger.handlers and not debug:
        # Not under --debug: its handler on the root logger prints every line already, and
        # a second one here would print each line twice.
        handler = RichHandler(console=_console(stderr=True), show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    wanted = logging.DEBUG if debug else logging.INFO
    if logger.level == logging.NOTSET or logger.level > wanted:
        logger.setLevel(wanted)
    try:
        yield
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(levels[0])
        pool.setLevel(levels[1])


def parse_input(text: str) -> Any:
    """The run input: JSON text, ``@path`` to read it from a file, or ``-`` for stdin."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise CliUsageError(f"cannot read --input file {text[1:]!r}: {exc.strerror}") from exc
    return loads(text)


@cli.command()
def start(
    ctx: typer.Context,
    flow: Annotated[
        str,
        typer.Argument(
            metavar="FLOW",
            help="Slug of the flow to run: of a flow in --app/--flow, or of any flow a worker has "
            "stored in the database (no code needed).",
            show_default=False,
        ),
    ],
    input: Annotated[
        str, typer.Option("--input", "-i", help="Run input as JSON, @file.json, or - for stdin.")
    ] = "null",
    run_id: Annotated[
        str | None,
        typer.Option(
            help="Your own run id (e.g. an idempotency key); default: a new UUID.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", "-w", help="Show progress until the run finishes; exit 1 unless it completed."
        ),
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="With --wait: give up waiting after this many seconds (the run goes on).",
            show_default=False,
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            "--flow-version",
            help="Start this stored version of the flow; default: the code's, else the latest "
            "stored one (tideflow flows lists them).",
            show_default=False,
        ),
    ] = None,
    app_path: AppOpt = None,
    flows: FlowOpt = None,
    database_url: DatabaseOpt = None,
) -> None:
    """Start a run and print its id; with --wait, follow it to the end.

    Without --app the flow's stored shape is used: the process that starts runs needs none of
    their code."""
    value = parse_input(input)
    with build_app(
        chosen_database(ctx, database_url), chosen_app(ctx, app_path), flows or []
    ) as app:
        new_id = app.start_flow(flow, value, run_id=run_id, version=version)
        if not wait:
            typer.echo(new_id)
            return
        out = _console()
        out.print(
            Text.assemble("started run ", (new_id, "bold"), f" of flow {flow}"), soft_wrap=True
        )
        try:
            [run] = watch_runs(app, [new_id], out, timeout=timeout)
        except KeyboardInterrupt:
            _console(stderr=True).print(
                f"stopped watching; run {new_id} goes on (tideflow run {new_id})", soft_wrap=True
            )
            raise typer.Exit(130) from None
        if run.status == "completed":
            out.print(Text("output", style="bold green"))
            out.print(JSON.from_data(run.output, ensure_ascii=False))
            return
        out.print(
            Text.assemble(("run " + run.status, "bold red"), f": {run.error}" if run.error else ""),
            soft_wrap=True,
        )
        raise typer.Exit(1)


@cli.command("runs")
def list_runs(
    ctx: typer.Context,
    flow: Annotated[
        str | None,
        typer.Option("--flow", "-f", help="Only runs of this flow (slug).", show_default=False),
    ] = None,
    status: Annotated[
        str | None,
        typer.Option(
            "--status",
            "-s",
            help="Only runs in this status: started, completed, failed, cancelled.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="At most this many.")] = 20,
    wide: WideOpt = False,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List runs, newest first.

    Ids are shown short (every command takes them so); --wide shows them whole."""
    with build_app(database_of(ctx, database_url)) as app:
        records = app.list_runs(flow=flow, status=status, limit=limit)
        if as_json:
            emit([run_json(r) for r in records])
            return
        out = _console()
        if not records:
            out.print(Text("no runs" + (" match" if flow or status else " yet"), style="dim"))
            return
        out.print(runs_table(records, wide=wide))


@cli.command("run")
def show_run(
    ctx: typer.Context,
    run_id: Annotated[str, RunIdArg],
    tasks: Annotated[
        bool, typer.Option("--tasks", "-t", help="Also list every task (one per map element).")
    ] = False,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show one run: status, input, output or error, its steps, and its DAG."""
    with build_app(database_of(ctx, database_url)) as app:
        run = app.get_run(resolve_run_id(app.read_store(), run_id))
        if as_json:
            found = run_json(run, with_steps=True)
            last = run.last_failure
            found["last_failure"] = None if last is None else failure_json(last)
            emit(found)
            return
        out = _console()
        out.print(run_header(run))
        out.print(steps_table(run, always_errors=True))
        if tasks:
            out.print(tasks_table(run))
        out.print()
        out.print(render_dag(nodes_from_run(run), max_width=out.width))
        failure = run.last_failure
        if failure is not None:
            out.print(failure_report(failure))


@cli.command("flows")
def list_flows(
    ctx: typer.Context,
    app_path: AppOpt = None,
    flows: FlowOpt = None,
    as_json: JsonOpt = False,
    database_url: DatabaseOpt = None,
) -> None:
    """List the flow versions stored in the database and, with --app, the flows in your code."""
    with build_app(
        chosen_database(ctx, database_url), chosen_app(ctx, app_path), flows or []
    ) as app:
        stored = app.read_store().list_flows()
        registered = {f.slug: f.definition.version for f in app.registry}
        if as_json:
            emit([flow_version_json(r, code_status(r, registered)) for r in stored])
            return
        out = _console()
        out.print(Rule("stored flow versions", align="left"))
        if stored:
            out.print(stored_flows_table(stored, registered if registered else None))
        else:
            out.print(
                Text(
                    "none yet: a version is stored when a worker starts or a run starts",
                    style="dim",
                )
            )
        for cls in app.registry:
            out.print(
                Rule(
                    f"{cls.slug}  version {cls.definition.version}  "
                    f"({cls.__module__}.{cls.__qualname__})",
                    align="left",
                )
            )
            out.print(definition_table(cls.definition))
            out.print(render_dag(nodes_from_definition(cls.definition), max_width=out.width))


@cli.command()
def cancel(
    ctx: typer.Context,
    run_id: Annotated[str, RunIdArg],
    database_url: DatabaseOpt = None,
) -> None:
    """Cancel a run: its queued and running tasks are cancelled, its unfinished steps skipped."""
    with build_app(database_of(ctx, database_url)) as app:  # cancel_run never migrates
        run_id = resolve_run_id(app.read_store(), run_id)
        if not app.cancel_run(run_id):
            status = app.read_store().get_run(run_id, with_steps=False).status
            raise CommandFailed(f"run {run_id} has already {status}; nothing to cancel")
        _console().print(Text.assemble("cancelled run ", (run_id, "bold")), soft_wrap=True)


@cli.command()
def retry(
    ctx: typer.Context,
    run_id: Annotated[str, RunIdArg],
    database_url: DatabaseOpt = None,
) -> None:
    """Retry a failed run from its failed steps.

    Completed steps keep their outputs, the rest run again with fresh attempts (tideflow runs
    --status failed lists failed runs)."""
    with build_app(database_of(ctx, database_url)) as app:  # like cancel: never migrates
        run_id = resolve_run_id(app.read_store(), run_id)
        app.retry_run(run_id)
        _console().print(Text.assemble("retrying run ", (run_id, "bold")), soft_wrap=True)


@cli.command()
def purge(
    ctx: typer.Context,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            show_default=False,
            help="Delete runs that ended longer ago than this (30d, 12h, 90m, 45s), with their "
            "steps and tasks, and the dead letters retried and process instances ended as long "
            "ago.",
        ),
    ] = None,
    idempotency_keys_older_than: Annotated[
        str | None,
        typer.Option(
            "--idempotency-keys-older-than",
            show_default=False,
            help="Delete idempotency keys older than this: a repeat of an expired key is "
            "treated as new.",
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Rows deleted per transaction (keep it small on a busy database).", min=1
        ),
    ] = DEFAULT_BATCH_SIZE,
    database_url: DatabaseOpt = None,
) -> None:
    """Delete finished runs and other records older than a window.

    In small batches that never hold a busy table for long (safe while workers run)."""
    if older_than is None and idempotency_keys_older_than is None:
        raise CliUsageError(
            "nothing to purge: pass --older-than (e.g. 30d) and/or "
            "--idempotency-keys-older-than (e.g. 7d)"
        )
    keep = _retention(
        older_than,
        idempotency_keys_older_than,
        ("--older-than", "--idempotency-keys-older-than"),
    )
    assert keep is not None
    with build_app(database_of(ctx, database_url)) as app:  # like cancel: never creates the schema
        done = app.purge(
            keep.runs, idempotency_keys_older_than=keep.idempotency_keys, batch_size=batch_size
        )
        _console().print(
            f"deleted {done.runs} run(s) with their steps and tasks, {done.dead_letters} "
            f"retried dead letter(s), {done.process_instances} ended process instance(s), "
            f"{done.idempotency_keys} idempotency key(s)",
            soft_wrap=True,
        )


@cli.command()
def migrate(ctx: typer.Context, database_url: DatabaseOpt = None) -> None:
    """Apply pending schema migrations (safe to run from many places at once)."""
    with build_app(database_of(ctx, database_url), migrate=False) as app:
        applied = app.migrate()
        out = _console()
        for name in applied:
            out.print(Text.assemble("applied ", (name, "green")))
        if not applied:
            out.print(f"schema is up to date on {redact(app.database_url)}", soft_wrap=True)


@cli.command()
def demo(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            "-d",
            show_default=False,
            help="Where to run the demo (default: a fresh ./tideflow-demo.db; "
            "$TIDEFLOW_DATABASE_URL is deliberately ignored, so a demo never lands in a "
            "real database by accident)",
        ),
    ] = None,
) -> None:
    """Run the example flows, with live progress. Needs no setup.

    A fork/join, a map step, retries, a permanent failure and a saga, with a worker in this
    process."""
    run_demo(_console(), database_url)


@cli.command()
def dashboard(
    ctx: typer.Context,
    database_url: DatabaseOpt = None,
    app_path: AppOpt = None,
    host: Annotated[
        str,
        typer.Option(help="Interface to listen on; beyond loopback only with --auth."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8080,
    allow_actions: Annotated[
        bool,
        typer.Option(
            "--allow-actions",
            help="Offer the buttons that change things: cancel and retry runs, retry and skip "
            "dead letters (read-only without).",
        ),
    ] = False,
    auth: Annotated[
        str | None,
        typer.Option(
            envvar="TIDEFLOW_DASHBOARD_AUTH",
            help="A token, or user:password (HTTP basic auth); required to listen beyond loopback.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the web dashboard (needs: pip install 'tideflow[dashboard]').

    Runs (DAG, timeline, tracebacks), flows, events, handlers and dead letters, process
    managers, workers and queues, and /metrics."""
    try:
        import uvicorn

        from tideflow.dashboard import DashboardConfigError, check_bind, create_app
    except ImportError as exc:
        raise CliUsageError(
            f"the dashboard needs its extra ({exc.name} is missing): "
            "pip install 'tideflow[dashboard]'"
        ) from exc
    try:
        check_bind(host, auth)  # before anything connects
    except DashboardConfigError as exc:
        raise CliUsageError(str(exc)) from exc
    with build_app(chosen_database(ctx, database_url), chosen_app(ctx, app_path)) as app:
        app.read_store()  # fail now, in one line, on a database without the schema
        asgi = create_app(app, allow_actions=allow_actions, auth=auth, host=host)
        _console(stderr=True).print(
            Text.assemble(
                "dashboard of ",
                (redact(app.database_url), "cyan"),
                f" at http://{host}:{port}/ (",
                "actions allowed" if allow_actions else "read-only",
                ", authentication on" if auth else "",
                "); Ctrl-C to stop",
            ),
            soft_wrap=True,
        )
        uvicorn.run(asgi, host=host, port=port, log_level="warning")


cli.add_typer(events_app)  # events, stream, handlers, deadletters (tideflow.cli.events_cli)
cli.add_typer(sagas_app)  # sagas, saga (tideflow.cli.sagas_cli)
cli.add_typer(schedules_app)  # schedules, schedule (tideflow.cli.schedules_cli)


def main() -> None:
    cli(prog_name="tideflow")


if __name__ == "__main__":  # pragma: no cover
    main()
