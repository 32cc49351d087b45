"""Watching runs until they finish, with a live display.

The CLI watches by polling ``get_run`` rather than subscribing to anything: the runs may be worked
on by other processes on other machines, and the database is the only thing everyone shares. A
poll every 0.1-0.25 s is one indexed read per run, which no database notices.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from tideflow.app import App
from tideflow.cli.render import progress_view
from tideflow.errors import RunTimeoutError
from tideflow.storage.flow_contract import RunRecord

#: After this long with nothing started, the display suggests that no worker is running.
IDLE_HINT_AFTER = 3.0


def watch_runs(
    app: App,
    run_ids: Sequence[str],
    console: Console,
    *,
    timeout: float | None = None,
    interval: float = 0.2,
    captions: dict[str, str] | None = None,
    keep_going: Callable[[], bool] | None = None,
    display: bool = True,
) -> list[RunRecord]:
    """Show the runs' progress until all are final; return their final records.

    ``keep_going`` lets a caller with its own worker stop watching when that worker dies,
    instead of waiting for a timeout. ``display=False`` only waits, for callers that print
    their own summary. Raises ``RunTimeoutError`` after ``timeout`` seconds.
    """
    started = time.monotonic()
    runs = [app.get_run(r) for r in run_ids]

    def view() -> RenderableType:
        body = progress_view(runs, captions=captions)
        waited = time.monotonic() - started
        if waited > IDLE_HINT_AFTER and _nothing_started(runs):
            hint = Text(
                "nothing has started yet: is a worker running for these flows? "
                "(tideflow worker --app ...)",
                style="yellow",
            )
            return Group(body, hint)
        return body

    live = Live(
        view(), console=console, refresh_per_second=10, transient=False, auto_refresh=display
    )
    with live if display else contextlib.nullcontext(live):
        while not all(r.is_final for r in runs):
            if timeout is not None and time.monotonic() - started > timeout:
                pending = [r for r in runs if not r.is_final]
                raise RunTimeoutError(
                    f"run {pending[0].run_id} of flow {pending[0].flow_slug!r} is still "
                    f"{pending[0].status} after {timeout:g}s; it goes on running - check it "
                    f"later with `tideflow run {pending[0].run_id}`"
                )
            if keep_going is not None and not keep_going():
                break
            time.sleep(interval)
            runs = [app.get_run(r) for r in run_ids]
            live.update(view(), refresh=display)
        runs = [app.get_run(r) for r in run_ids]
        live.update(view(), refresh=display)
    if display and not console.is_terminal:
        console.line()  # Live ends its last frame with a newline only on a terminal
    return runs


def _nothing_started(runs: Sequence[RunRecord]) -> bool:
    return all(
        t.started_at is None for r in runs if not r.is_final for s in r.steps for t in s.tasks
    )
