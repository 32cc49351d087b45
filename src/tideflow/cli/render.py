"""Rich renderables for runs, steps, tasks and flows.

Everything here is a pure function from records to renderables, so the same pieces serve the
one-shot commands, the live progress of ``start --wait`` and the demo, and can be tested without a
terminal. Colour carries status everywhere, but so does a glyph: output piped to a file or read on
a monochrome terminal must stay unambiguous.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from tideflow.cli.short_ids import short_ids
from tideflow.codec import to_json_value
from tideflow.flows.definition import FlowDefinition
from tideflow.storage.flow_contract import (
    AttemptFailure,
    FlowVersionRecord,
    RunRecord,
    StepRecord,
    TaskRecord,
)

STATUS_STYLE = {
    "completed": "green",
    "failed": "bold red",
    "cancelled": "magenta",
    "started": "yellow",
    "queued": "cyan",
    "created": "dim",
    "skipped": "dim",
}
STATUS_GLYPH = {
    "completed": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "started": "▶",
    "queued": "…",
    "created": "○",
    "skipped": "-",
}


def new_table() -> Table:
    """The look of every list: a rule under the header and a line between columns, but no
    frame, which leaves an 80-column terminal the room the frame took. Columns that hold
    names or ids fold rather than cut: a table may wrap, it never shows a truncated id."""
    return Table(
        box=box.MINIMAL, header_style="bold", expand=False, pad_edge=False, show_edge=False
    )


def status_style(status: str | None) -> str:
    return STATUS_STYLE.get(status or "", "")


def glyph(status: str | None) -> str:
    return STATUS_GLYPH.get(status or "", "●")


def status_text(status: str) -> Text:
    return Text(f"{glyph(status)} {status}", style=status_style(status))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def elapsed(start: datetime | None, end: datetime | None, *, now: datetime | None = None) -> str:
    """Duration of a finished interval, or the time so far (marked with …) of a running one."""
    if start is None:
        return "-"
    if end is not None:
        return fmt_duration((end - start).total_seconds())
    current = now or datetime.now(UTC)
    return fmt_duration(max(0.0, (current - start).total_seconds())) + " …"


def fmt_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_when(moment: datetime | None, *, now: datetime | None = None) -> str:
    """A time for a table column: the time of day for today, the date and minute before that
    (``fmt_time`` and ``--json`` give the whole of it)."""
    if moment is None:
        return "-"
    local = moment.astimezone()
    today = (now or datetime.now(UTC)).astimezone().date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def compact_json(value: Any, limit: int | None = None) -> str:
    text = json.dumps(to_json_value(value), separators=(", ", ": "), ensure_ascii=False)
    if limit is not None and len(text) > limit:
        return text[: max(1, limit - 1)] + "…"
    return text


def truncate(text: str | None, limit: int) -> str:
    if not text:
        return ""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[: limit - 1] + "…"


# --- runs -------------------------------------------------------------------------------------


def runs_table(runs: Sequence[RunRecord], *, wide: bool = False) -> Table:
    """Runs, one a row: short ids and no version column unless ``wide`` (``--wide``), so that
    80 columns hold the rest uncut (``short_ids``: every command takes the short form)."""
    shown = short_ids([r.run_id for r in runs], full=wide)
    table = new_table()
    table.add_column("run id", overflow="fold", min_width=8)
    table.add_column("flow", overflow="fold", min_width=8)
    if wide:
        table.add_column("version", overflow="fold", style="dim")
    table.add_column("status", no_wrap=True)
    table.add_column("started", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    for run in runs:
        table.add_row(
            shown[run.run_id],
            run.flow_slug,
            *([run.flow_version] if wide else []),
            status_text(run.status),
            fmt_time(run.started_at) if wide else fmt_when(run.started_at),
            elapsed(run.started_at, run.finished_at),
        )
    return table


def run_header(run: RunRecord) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("run", run.run_id)
    grid.add_row("flow", Text.assemble(run.flow_slug, (f"  version {run.flow_version}", "dim")))
    grid.add_row("status", status_text(run.status))
    grid.add_row("started", fmt_time(run.started_at))
    if run.finished_at is not None:
        grid.add_row("finished", f"{fmt_time(run.finished_at)}  ({fmt_duration(run.duration)})")
    else:
        grid.add_row("running for", elapsed(run.started_at, None))
    grid.add_row("input", compact_json(run.input, 2000))
    if run.status == "completed":
        grid.add_row("output", compact_json(run.output, 2000))
    if run.error:
        grid.add_row("error", Text(run.error, style="red"))
    return grid


def task_counts(step: StepRecord) -> str:
    """ "done/total" tasks, or "-" before the step has tasks."""
    total = step.initial_tasks
    if total is None:
        return "-"
    done = sum(1 for t in step.tasks if t.status == "completed")
    return f"{done}/{total}"


def step_duration(step: StepRecord, now: datetime | None = None) -> str:
    if step.status == "skipped":
        return "-"
    return elapsed(step.started_at, step.finished_at, now=now)


def steps_table(
    run: RunRecord,
    *,
    error_width: int = 60,
    now: datetime | None = None,
    always_errors: bool = False,
) -> Table:
    """One row per step. The error column is left out when no step has an error and the caller
    does not insist, which keeps the demo's summaries narrow."""
    table = new_table()
    table.add_column("step", overflow="fold")
    table.add_column("kind", no_wrap=True, style="dim")
    table.add_column("status", no_wrap=True)
    table.add_column("tasks", justify="right", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    errors = always_errors or any(step.error for step in run.steps)
    if errors:
        table.add_column("error", overflow="fold", style="red")
    for step in run.steps:
        row: list[RenderableType] = [
            step.step_slug,
            step.kind,
            (
                Text.assemble(status_text(step.status), (f" ({step.skip_reason})", "dim"))
                if step.skip_reason
                else status_text(step.status)
            ),
            task_counts(step),
            str(step.attempts),
            step_duration(step, now),
        ]
        table.add_row(*row, *([truncate(step.error, error_width)] if errors else []))
    return table


def tasks_table(run: RunRecord) -> Table:
    table = new_table()
    table.add_column("step", overflow="fold")
    table.add_column("task", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("attempts", justify="right", no_wrap=True)
    # Lease expiries (worker killed or lost): requeued without counting an attempt.
    table.add_column("stalls", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("output / error", overflow="fold")
    tasks: list[TaskRecord] = [t for s in run.steps for t in s.tasks]
    for t in tasks:
        detail = (
            Text(truncate(t.error, 80), style="red")
            if t.error and t.status != "completed"
            else Text(compact_json(t.output, 80))
            if t.status == "completed"
            else Text("")
        )
        table.add_row(
            t.step_slug,
            str(t.task_index),
            status_text(t.status),
            str(t.attempts),
            str(t.stalls),
            elapsed(t.started_at, t.finished_at) if t.started_at else "-",
            detail,
        )
    return table


def progress_view(
    runs: Iterable[RunRecord],
    *,
    captions: dict[str, str] | None = None,
    now: datetime | None = None,
) -> RenderableType:
    """One compact block per run: a title line, then its steps with live task counts."""
    blocks: list[RenderableType] = []
    for run in runs:
        title = Text.assemble(
            (f"{glyph(run.status)} ", status_style(run.status)),
            (run.flow_slug, "bold"),
            (f"  {run.run_id}", "dim"),
            "  ",
            (run.status, status_style(run.status)),
            f"  {elapsed(run.started_at, run.finished_at, now=now)}",
        )
        if captions and run.run_id in captions:
            title.append(f"  - {captions[run.run_id]}", style="italic dim")
        table = Table.grid(padding=(0, 2))
        for _ in range(5):
            table.add_column(no_wrap=True)
        for step in run.steps:
            label = Text.assemble(
                ("  " + glyph(step.status) + " ", status_style(step.status)), step.step_slug
            )
            if step.kind == "map":
                label.append(" (map)", style="dim")
            retries = step.attempts - sum(1 for t in step.tasks if t.attempts > 0)
            table.add_row(
                label,
                Text(step.status, style=status_style(step.status)),
                task_counts(step) + " tasks",
                Text(f"{retries} retr{'y' if retries == 1 else 'ies'}", style="yellow")
                if retries > 0
                else "",
                step_duration(step, now),
            )
        blocks.extend([title, table])
    return Group(*blocks)


# --- flows ------------------------------------------------------------------------------------


def stored_flows_table(
    records: Sequence[FlowVersionRecord], registered: dict[str, str] | None = None
) -> Table:
    table = new_table()
    table.add_column("flow", overflow="fold")
    table.add_column("version", overflow="fold")
    table.add_column("steps", overflow="fold")
    table.add_column("recorded", no_wrap=True)
    if registered:
        table.add_column("code", no_wrap=True)
    for rec in records:
        steps = ", ".join(str(s.get("slug")) for s in rec.shape.get("steps", []))
        row: list[RenderableType] = [rec.flow_slug, rec.version, steps, fmt_time(rec.created_at)]
        code = code_status(rec, registered)
        if code is not None:
            row.append(Text(code, style="green" if code == "current" else "dim"))
        table.add_row(*row)
    return table


def code_status(record: FlowVersionRecord, registered: dict[str, str] | None) -> str | None:
    """How a stored version stands to the code of ``--app`` ("current", "older", "not
    registered"); None without ``--app``."""
    if not registered:
        return None
    current = registered.get(record.flow_slug)
    if current == record.version:
        return "current"
    return "older" if current else "not registered"


def definition_table(definition: FlowDefinition) -> Table:
    table = new_table()
    table.add_column("step", overflow="fold")
    table.add_column("kind", no_wrap=True)
    table.add_column("depends on", overflow="fold")
    table.add_column("attempts", justify="right", no_wrap=True)
    table.add_column("backoff", no_wrap=True)
    table.add_column("timeout", justify="right", no_wrap=True)
    for s in definition.steps:
        table.add_row(
            s.slug,
            s.kind,
            ", ".join(s.depends_on) or Text("(run input)", style="dim"),
            str(s.retry.max_attempts),
            f"{s.retry.base_delay:g}s doubling, max {s.retry.max_delay:g}s",
            f"{s.timeout:g}s" if s.timeout is not None else "-",
        )
    return table


def failure_report(failure: AttemptFailure) -> RenderableType:
    """The newest failed attempt of a run: where, which exception, and its traceback."""
    index = f"[{failure.task_index}]" if failure.task_index else ""
    head = Text.assemble(
        ("last failure: ", "bold red"),
        f"step {failure.step_slug}{index} attempt {failure.attempt}",
        f" at {fmt_time(failure.failed_at)}",
        f" on {failure.worker_id}" if failure.worker_id else "",
        " (retried)" if failure.retried else "",
    )
    body = Text(failure.traceback.rstrip() if failure.traceback else failure.error, style="red")
    return Group(head, body)
