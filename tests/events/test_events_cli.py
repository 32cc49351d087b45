"""The event commands of the ``tideflow`` CLI, on both backends: events, stream, handlers (list,
reset, resume) and deadletters (list, retry) - their output, exit codes and one-line errors."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.test_cli import assert_one_line_error
from tideflow.cli.main import cli
from tideflow.events import ANY, NewEvent, RecordedEvent
from tideflow.events.handling import EventHandler, HandlerContext
from tideflow.events.projections import Projection
from tideflow.storage.event_contract import EventStore
from tideflow.storage.handler_contract import HandlerStore
from tideflow.worker.handlers import HandlerRunner, HandlerRunnerOptions

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.events.test_events_cli:HANDLERS"


class Totals(Projection):
    name = "cli_totals"
    tables = "cli_totals"
    schema = "CREATE TABLE IF NOT EXISTS cli_totals (stream TEXT PRIMARY KEY, n BIGINT NOT NULL)"

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        ctx.execute(
            "INSERT INTO cli_totals (stream, n) VALUES (%(s)s, 1) ON CONFLICT (stream) "
            "DO UPDATE SET n = cli_totals.n + 1",
            {"s": event.stream_id},
        )


class Mailer(EventHandler):
    """Gives up on n == 3 while ``broken`` (a dead letter)."""

    name = "cli_mailer"
    max_attempts = 1
    broken = True

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        if event.data["n"] == 3 and self.broken:
            raise ConnectionError("smtp is down")


class Ledger(EventHandler):
    """Stops on n == 5 while ``broken``."""

    name = "cli_ledger"
    on_failure = "stop"
    max_attempts = 1
    broken = True

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        if event.data["n"] == 5 and self.broken:
            raise ValueError("unbalanced")


class Later(EventHandler):
    """In the app, never run."""

    name = "cli_later"

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None: ...


HANDLERS = [Totals(), Mailer(), Ledger(), Later()]


def append(events: EventStore, n: int, start: int = 0) -> list[RecordedEvent]:
    out: list[RecordedEvent] = []
    for i in range(start, start + n):
        out += events.append(f"s-{i % 3}", [NewEvent("A" if i % 2 else "B", {"n": i})], ANY)
    return out


@pytest.fixture
def ran(stores: tuple[EventStore, HandlerStore]) -> list[RecordedEvent]:
    """Ten events, processed by Totals, Mailer (one dead letter) and Ledger (stopped)."""
    events, handlers = stores
    Mailer.broken = Ledger.broken = True
    appended = append(events, 10)
    HandlerRunner(
        events, handlers, HANDLERS[:3], options=HandlerRunnerOptions(poll_interval=0.02)
    ).run_until_idle()
    return appended


def invoke(*args: str, input: str | None = None) -> Any:
    """Run the CLI in-process, wide, without inherited TIDEFLOW_* variables."""
    env: dict[str, str | None] = {
        "COLUMNS": "200",
        "TIDEFLOW_APP": None,
        "TIDEFLOW_DATABASE_URL": None,
    }
    return CliRunner().invoke(cli, list(args), env=env, input=input)


def lines(result: Any) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


# --- events and streams ---------------------------------------------------------------------------


def test_events_shows_the_tail_of_the_log_and_filters_it(
    db_url: str, stores: tuple[EventStore, HandlerStore]
) -> None:
    result = invoke("events", "-d", db_url)
    assert result.exit_code == 0 and "no events yet" in result.stdout
    appended = append(stores[0], 30)

    result = invoke("events", "-d", db_url, "-n", "4")
    assert result.exit_code == 0, result.output
    shown = lines(result)
    assert [int(line.split()[0]) for line in shown] == [e.position for e in appended[-4:]]
    last = appended[-1]
    assert f"s-2@{last.version}" in shown[-1] and '{"n": 29}' in shown[-1]

    result = invoke("events", "-d", db_url, "--type", "B", "--stream", "s-1", "-n", "100")
    wanted = [e for e in appended if e.event_type == "B" and e.stream_id == "s-1"]
    assert [int(line.split()[0]) for line in lines(result)] == [e.position for e in wanted]

    after = appended[9].position
    result = invoke("events", "-d", db_url, "--from", str(after), "-n", "3", "--json")
    records = [json.loads(line) for line in lines(result)]
    assert [r["position"] for r in records] == [e.position for e in appended[10:13]]
    assert records[0]["data"] == {"n": 10} and records[0]["event_id"] == str(appended[10].event_id)

    result = invoke("events", "-d", db_url, "--type", "Nope")
    assert "no events match" in result.stdout


def test_events_follow_prints_events_as_they_are_appended(
    db_url: str, stores: tuple[EventStore, HandlerStore]
) -> None:
    append(stores[0], 2)
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tideflow.cli.main",
            "events",
            "-d",
            db_url,
            "--follow",
            "--interval",
            "0.05",
            "--type",
            "A",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    seen: queue.Queue[str] = queue.Queue()
    assert follower.stdout is not None
    stdout = follower.stdout
    threading.Thread(target=lambda: [seen.put(line) for line in stdout], daemon=True).start()
    try:
        first = seen.get(timeout=15)
        assert '{"n": 1}' in first  # the tail so far: the one A event
        appended = append(stores[0], 4, start=2)
        got = [seen.get(timeout=10) for _ in range(2)]
        wanted = [e for e in appended if e.event_type == "A"]
        assert [int(line.split()[0]) for line in got] == [e.position for e in wanted]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(timeout=10)
    assert follower.returncode == 130
    assert follower.stderr is not None and "Traceback" not in follower.stderr.read()


def test_stream_shows_one_stream_in_version_order(
    db_url: str, stores: tuple[EventStore, HandlerStore]
) -> None:
    appended = append(stores[0], 9)
    result = invoke("stream", "s-1", "-d", db_url)
    assert result.exit_code == 0, result.output
    assert "stream s-1  version 3, 3 event(s)" in result.stdout
    for e in appended:
        if e.stream_id == "s-1":
            assert f'{{"n": {e.data["n"]}}}' in result.stdout
    assert '"n": 0' not in result.stdout
    assert_one_line_error(invoke("stream", "nope", "-d", db_url), 1, "stream 'nope' has no events")


# --- handlers -------------------------------------------------------------------------------------


def handler_rows(result: Any) -> dict[str, str]:
    """Table rows by handler name (the whole line)."""
    return {
        name: line
        for line in result.stdout.splitlines()
        for name in ("cli_totals", "cli_mailer", "cli_ledger", "cli_later", "held_elsewhere")
        if line.split("│")[0].strip() == name
    }


def test_handlers_lists_position_lag_status_owner_and_problems(
    db_url: str, stores: tuple[EventStore, HandlerStore], ran: list[RecordedEvent]
) -> None:
    events, handlers = stores
    assert handlers.acquire("held_elsewhere", "handler", "worker-7", 60) is not None
    more = append(events, 3, start=10)
    head = more[-1].position

    result = invoke("handlers", "-d", db_url)
    assert result.exit_code == 0, result.output
    rows = handler_rows(result)
    assert set(rows) == {"cli_totals", "cli_mailer", "cli_ledger", "held_elsewhere"}
    totals = rows["cli_totals"].split("│")
    assert "projection" in totals[1] and "no worker" in totals[2]
    assert totals[3].strip() == str(ran[-1].position) and totals[4].strip() == "3"  # lag
    assert rows["cli_mailer"].split("│")[6].strip() == "1"  # dead letters
    ledger = rows["cli_ledger"]
    assert "stopped" in ledger and "unbalanced" in ledger
    assert f"event {ran[5].position}" in ledger
    held = rows["held_elsewhere"].split("│")
    assert "running" in held[2] and held[5].strip() == "worker-7"
    assert f"head position {head}" in result.stdout

    with_app = handler_rows(invoke("handlers", "-d", db_url, "--app", APP))
    assert "never ran" in with_app["cli_later"]


def test_handlers_reset_sets_a_handler_back_and_empties_a_projection_with_its_code(
    db_url: str, stores: tuple[EventStore, HandlerStore], ran: list[RecordedEvent]
) -> None:
    events, _ = stores
    result = invoke("handlers", "reset", "cli_mailer", "-d", db_url, "--yes")
    assert result.exit_code == 0, result.output
    assert "reset handler cli_mailer to position 0" in result.stdout
    assert events.get_checkpoint("cli_mailer") == 0

    assert_one_line_error(
        invoke("handlers", "reset", "cli_totals", "-d", db_url, "--yes"),
        1,
        "'cli_totals' is a projection",
        "--app",
    )
    assert events.get_checkpoint("cli_totals") == ran[-1].position

    declined = invoke("handlers", "reset", "cli_totals", "-d", db_url, "--app", APP, input="n\n")
    assert declined.exit_code == 1 and "Aborted" in declined.output
    assert events.get_checkpoint("cli_totals") == ran[-1].position

    result = invoke("handlers", "reset", "cli_totals", "-d", db_url, "--app", APP, input="y\n")
    assert result.exit_code == 0, result.output
    assert "its tables are emptied" in result.stdout
    assert events.get_checkpoint("cli_totals") == 0
    with events.transaction() as tx:
        assert tx.connection.execute("SELECT count(*) FROM cli_totals").fetchone()[0] == 0

    assert_one_line_error(
        invoke("handlers", "reset", "nope", "-d", db_url, "-y"), 1, "no handler named 'nope'"
    )


def test_handlers_resume_lets_a_stopped_handler_run_again(
    db_url: str, stores: tuple[EventStore, HandlerStore], ran: list[RecordedEvent]
) -> None:
    result = invoke("handlers", "resume", "cli_ledger", "-d", db_url)
    assert result.exit_code == 0, result.output
    assert "resumed handler cli_ledger" in result.stdout
    assert "stopped" not in handler_rows(invoke("handlers", "-d", db_url))["cli_ledger"]
    assert_one_line_error(
        invoke("handlers", "resume", "nope", "-d", db_url), 1, "no handler named 'nope'"
    )


# --- dead letters ---------------------------------------------------------------------------------


def test_deadletters_are_listed_and_retried_with_the_handlers_code(
    db_url: str, stores: tuple[EventStore, HandlerStore], ran: list[RecordedEvent]
) -> None:
    _, handlers = stores
    [dead] = handlers.list_dead_letters()
    result = invoke("deadletters", "-d", db_url)
    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if "cli_mailer" in line).split("│")
    assert [c.strip() for c in row[0:6]] == [
        str(dead.id),
        "cli_mailer",
        str(ran[3].position),
        "A",
        "s-0",
        "1",
    ]
    assert "ConnectionError: smtp is down" in row[6]
    assert (
        "no dead letters for handler 'cli_totals'"
        in invoke("deadletters", "-d", db_url, "--handler", "cli_totals").stdout
    )

    assert_one_line_error(
        invoke("deadletters", "retry", str(dead.id), "-d", db_url),
        2,
        "belongs to handler 'cli_mailer'",
        "pass --app",
    )
    assert_one_line_error(
        invoke("deadletters", "retry", str(dead.id), "-d", db_url, "--app", APP),
        1,
        "failed again",
        "smtp is down",
    )
    Mailer.broken = False
    result = invoke("deadletters", "retry", str(dead.id), "-d", db_url, "--app", APP)
    assert result.exit_code == 0, result.output
    assert f"retried dead letter {dead.id}: handler cli_mailer handled event" in result.stdout
    assert "no dead letters" in invoke("deadletters", "-d", db_url).stdout
    retried = invoke("deadletters", "-d", db_url, "--all")
    assert "cli_mailer" in retried.stdout and "attempts" in retried.stdout
    assert_one_line_error(
        invoke("deadletters", "retry", str(dead.id), "-d", db_url, "--app", APP),
        1,
        "already retried",
    )
    assert_one_line_error(
        invoke("deadletters", "retry", "999", "-d", db_url, "--app", APP),
        1,
        "no dead letter has id 999",
    )


def test_an_app_without_handlers_is_a_usage_error(db_url: str) -> None:
    assert_one_line_error(
        invoke("handlers", "-d", db_url, "--app", "tests.test_cli:Quick"),
        2,
        "names no event handlers",
    )
    assert_one_line_error(
        invoke("handlers", "-d", db_url, "--app", "tests.nope:x"), 2, "cannot load 'tests.nope:x'"
    )


def test_a_follow_of_an_unreachable_database_fails_fast() -> None:
    started = time.monotonic()
    assert_one_line_error(
        invoke("events", "-d", "postgresql://postgres@127.0.0.1:1/x"),
        1,
        "cannot connect to PostgreSQL",
    )
    assert time.monotonic() - started < 5
