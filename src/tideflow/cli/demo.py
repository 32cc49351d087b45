"""``tideflow demo``: the first thing a new user runs, so it must need nothing.

No server, no configuration, no project: a SQLite file in the working directory (recreated each
time, and left behind on purpose so that ``tideflow runs`` and ``tideflow run`` have something to
show afterwards), the example flows from the package, and a worker in a thread of this process.
It finishes in about a second, and checks its own results: a demo that "succeeds" while a run
ended in the wrong state would teach the wrong thing, so that is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from pathlib import Path

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

from tideflow.app import App
from tideflow.cli.demo_flows import DEMO_FLOWS, DEMO_RUNS
from tideflow.cli.demo_saga import DEMO_ORDERS, DemoOrder, DemoOrders, DemoPayment, DemoStock
from tideflow.cli.errors import CommandFailed
from tideflow.cli.live import watch_runs
from tideflow.cli.loading import check_reachable, redact
from tideflow.cli.render import compact_json, fmt_duration, status_style, steps_table
from tideflow.storage.flow_contract import RunRecord
from tideflow.storage.process_contract import FINISHED
from tideflow.worker import Worker
from tideflow.worker.handlers import HandlerRunnerOptions

DEMO_FILE = "tideflow-demo.db"
DEMO_TIMEOUT = 60.0
SUMMARY_WIDTH = 100


def fresh_sqlite_url() -> str:
    """Remove the previous demo database (and its WAL files) so every demo starts empty. The
    URL stays relative, so the commands the demo suggests afterwards are short to type."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            Path(DEMO_FILE + suffix).unlink()
    return f"sqlite:///{DEMO_FILE}"


def run_demo(console: Console, database_url: str | None) -> list[RunRecord]:
    # The demo shows failures in its own panels: the worker's log lines about them (which
    # Python prints to stderr when nothing is configured) would only break up the display.
    quiet = logging.NullHandler()
    logger = logging.getLogger("tideflow.worker")
    logger.addHandler(quiet)
    try:
        return _run_demo(console, database_url)
    finally:
        logger.removeHandler(quiet)


def _run_demo(console: Console, database_url: str | None) -> list[RunRecord]:
    url = database_url or fresh_sqlite_url()
    check_reachable(url)
    console.print(
        Text.assemble(
            ("tideflow demo", "bold"),
            "  database ",
            (redact(url), "cyan"),
            "" if database_url else " (recreated)",
        )
    )
    with App(
        url,
        flows=DEMO_FLOWS,
        aggregates=[DemoStock, DemoPayment, DemoOrder],
        handlers=[DemoOrders],
    ) as app:
        captions: dict[str, str] = {}
        expected: dict[str, str] = {}
        for flow, run_input, caption, status in DEMO_RUNS:
            run_id = app.start_flow(flow, run_input)
            captions[run_id] = caption
            expected[run_id] = status
        worker = app.worker(concurrency=8, poll_interval=0.05, reap_interval=1.0)
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=_work, args=(worker, failure), name="tideflow-demo", daemon=True
        )
        thread.start()
        try:
            runs = watch_runs(
                app,
                list(captions),
                console,
                timeout=DEMO_TIMEOUT,
                interval=0.1,
                captions=captions,
                keep_going=thread.is_alive,
                display=console.is_terminal,
            )
        finally:
            if thread.is_alive():
                # stop() raises once the worker's loop has closed, which can happen between
                # the check and the call when the worker finishes on its own.
                with contextlib.suppress(RuntimeError):
                    worker.stop()
            thread.join(timeout=10)
        if failure:
            raise failure[0]
        console.print()
        for run in runs:
            console.print(
                _summary(
                    run,
                    captions[run.run_id],
                    expected[run.run_id],
                    min(SUMMARY_WIDTH, console.width),
                )
            )
        wrong = [r for r in runs if r.status != expected[r.run_id]]
        if wrong:
            raise CommandFailed(
                f"demo run {wrong[0].run_id} ({wrong[0].flow_slug}) ended {wrong[0].status}, "
                f"expected {expected[wrong[0].run_id]}; this installation is not working"
            )
        _saga(console, app)
        _next_steps(console, url, runs)
        return runs


def _saga(console: Console, app: App) -> None:
    """The order saga: three orders placed, their instances followed until each has ended
    (printed as they change), then checked like the runs."""
    console.print(Text.assemble(("order saga", "bold"), "  process manager demo_orders"))
    expected: dict[str, tuple[str, str]] = {}
    for command, status, caption in DEMO_ORDERS:
        app.dispatch(command)
        expected[command.aggregate_id] = (status, caption)
    runner = app.handler_runner(options=HandlerRunnerOptions(poll_interval=0.05))
    thread = threading.Thread(
        target=lambda: asyncio.run(runner.run()), name="tideflow-demo-saga", daemon=True
    )
    thread.start()
    seen: dict[str, str] = {}
    deadline = time.monotonic() + DEMO_TIMEOUT
    try:
        while time.monotonic() < deadline:
            for order in expected:
                found = app.process_store.get(DemoOrders.name, order)
                status = "waiting" if found is None else found.status
                if seen.get(order) != status:
                    seen[order] = status
                    console.print(
                        Text.assemble(
                            "  order ", (order, "bold"), "  ", (status, _saga_style(status))
                        )
                    )
            if all(s in FINISHED for s in seen.values()):
                break
            time.sleep(0.05)
    finally:
        runner.stop()
        thread.join(timeout=10)
    for order, (status, caption) in expected.items():
        instance = app.process(DemoOrders, order).get()
        sent = ", ".join(("undid " if s["undo"] else "") + s["command_type"] for s in instance.sent)
        mark = Text("ok", style="green") if instance.status == status else Text("WRONG", "bold red")
        console.print(
            Text.assemble("  ", mark, f"  order {order} {instance.status}: {caption} [{sent}]"),
            soft_wrap=True,
        )
        if instance.status != status:
            raise CommandFailed(
                f"demo order {order} ended {instance.status}, expected {status}; this "
                "installation is not working"
            )


def _saga_style(status: str) -> str:
    return {"completed": "green", "compensated": "yellow", "failed": "bold red"}.get(status, "dim")


def _work(worker: Worker, failure: list[BaseException]) -> None:
    try:
        asyncio.run(worker.run(until_idle=True))
    except BaseException as exc:  # reported by the main thread, which owns the terminal
        failure.append(exc)


def _summary(run: RunRecord, caption: str, expected: str, width: int) -> Panel:
    title = Text.assemble(
        (run.flow_slug, "bold"),
        "  ",
        (run.status, status_style(run.status)),
        f" in {fmt_duration(run.duration)}",
    )
    if run.status == expected:
        verdict = Text(f"as expected: {caption}", style="dim")
    else:
        verdict = Text(f"expected {expected}: {caption}", style="bold red")
    detail = (
        Text(f"output: {compact_json(run.output, 2000)}", no_wrap=True, overflow="ellipsis")
        if run.status == "completed"
        else Text(f"error: {run.error}", style="red")
    )
    return Panel(
        Group(steps_table(run, error_width=50), detail, verdict),
        title=title,
        subtitle=Text(run.run_id, style="dim"),
        title_align="left",
        subtitle_align="right",
        width=width,
    )


def _next_steps(console: Console, url: str, runs: list[RunRecord]) -> None:
    flag = f" -d {redact(url)}"
    failed = next((r for r in runs if r.status == "failed"), runs[0])
    console.print(Text("next:", style="bold"))
    for command in (
        f"tideflow runs{flag}",
        f"tideflow run {failed.run_id}{flag}",
        f"tideflow saga demo_orders B{flag}",
        "tideflow worker --app examples.order_pipeline   # from a clone of the repo",
    ):
        console.print(Text(f"  {command}", style="cyan"), soft_wrap=True)
