"""The ``tideflow`` command line's output for people and for scripts, on both backends: tables
that fit 80, 120 and 200 columns without cutting an id, short run ids that every command takes,
``--json`` on every list and show command, the group options (``-d``, ``--app``) in any
position, readable metavars, and one-line errors for malformed database URLs (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from tests.test_cli import QUICK, Quick, assert_one_line_error
from tideflow import App
from tideflow.cli.main import cli
from tideflow.cli.short_ids import SHORT, short_ids


def invoke(*args: str, width: int = 200, **env: str | None) -> Any:
    environ: dict[str, str | None] = {
        "COLUMNS": str(width),
        "TIDEFLOW_APP": None,
        "TIDEFLOW_DATABASE_URL": None,
        **env,
    }
    return CliRunner().invoke(cli, list(args), env=environ)


@pytest.fixture
def demo(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The demo's runs, events, process manager and saga instances on the test's database;
    the working directory is empty, so that a command that ignored ``-d`` would fail."""
    monkeypatch.chdir(tmp_path)
    result = invoke("demo", "-d", db_url)
    assert result.exit_code == 0, result.output
    return db_url


def ok(result: Any) -> Any:
    assert result.exit_code == 0, result.output
    return result


# --- tables at 80, 120 and 200 columns --------------------------------------------------------


def test_every_table_fits_the_terminal_and_shows_ids_whole_or_as_their_short_form(
    demo: str,
) -> None:
    runs = json.loads(ok(invoke("runs", "--json", "-d", demo)).stdout)
    ids = [r["run_id"] for r in runs]
    failed = next(r["run_id"] for r in runs if r["status"] == "failed")
    shown = short_ids(ids)
    commands = [
        ["runs"],
        ["run", shown[failed]],
        ["run", shown[failed], "--tasks"],
        ["flows"],
        ["events"],
        ["stream", "demo_order-A"],
        ["handlers"],
        ["sagas"],
        ["saga", "demo_orders", "C"],
        ["deadletters"],
    ]
    for width in (80, 120, 200):
        for args in commands:
            result = ok(invoke(*args, "-d", demo, width=width))
            for line in result.stdout.splitlines():
                assert cell_len(line) <= width, (args, width, line)
        table = invoke("runs", "-d", demo, width=width).stdout
        cells = {c.strip() for line in table.splitlines() for c in line.split("│")}
        for run_id in ids:
            assert shown[run_id] in cells, (width, run_id, table)  # never cut, never ellipsed
            assert len(shown[run_id]) >= SHORT
        assert "…" not in table.replace(" …", "")  # only a running duration may end in …
    wide = ok(invoke("runs", "--wide", "-d", demo, width=250)).stdout
    assert all(run_id in wide for run_id in ids)
    assert "version" in wide


def test_short_ids_tell_apart_uuids_that_share_a_long_prefix_and_keep_chosen_ids_whole() -> None:
    a = "01234567-89ab-4def-8123-000000000001"
    b = "01234567-89ab-4def-8123-000000000002"
    c = "fedcba98-0000-4000-8000-000000000000"
    chosen = "order-1234567890-a-long-chosen-id"
    shown = short_ids([a, b, c, "order-1", chosen])
    assert (shown[a], shown[b]) == (a, b)  # they differ only in the last character
    assert shown[c] == c[:SHORT]
    assert shown["order-1"] == "order-1" and shown[chosen] == chosen
    assert short_ids([c], full=True) == {c: c}


# --- short ids as arguments ---------------------------------------------------------------------


def test_every_command_that_takes_a_run_id_takes_an_unambiguous_prefix(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with App(db_url, flows=[Quick]) as app:
        for run_id in ("abc-1", "abc-12", "zeta-0001-first", "zeta-0002-second"):
            app.start_flow(Quick, {"n": 1}, run_id=run_id)

    shown = ok(invoke("run", "abc-1", "-d", db_url)).stdout
    assert "abc-1 " in shown or shown.split()[1] == "abc-1"  # the exact id wins over a prefix
    assert "abc-12" not in shown
    assert "zeta-0001-first" in ok(invoke("run", "zeta-0001", "-d", db_url)).stdout
    as_json = json.loads(ok(invoke("run", "zeta-0002", "--json", "-d", db_url)).stdout)
    assert as_json["run_id"] == "zeta-0002-second"

    assert_one_line_error(
        invoke("run", "zeta", "-d", db_url), 2, "run id 'zeta' is ambiguous", "zeta-0001-first"
    )
    assert_one_line_error(invoke("cancel", "abc", "-d", db_url), 2, "is ambiguous")
    assert_one_line_error(invoke("run", "a_c", "-d", db_url), 1, "no run with id 'a_c'")
    assert_one_line_error(invoke("run", "ab%", "-d", db_url), 1, "no run with id 'ab%'")

    cancelled = ok(invoke("cancel", "zeta-0001", "-d", db_url))
    assert "cancelled run zeta-0001-first" in cancelled.stdout
    assert_one_line_error(
        invoke("retry", "zeta-0002", "-d", db_url), 1, "zeta-0002-second"
    )  # resolved, then refused: the run has not failed
    with App(db_url) as app:
        assert app.get_run("zeta-0001-first").status == "cancelled"
        assert app.get_run("abc-1").status == "started"


# --- --json ---------------------------------------------------------------------------------------

RUN_KEYS = {
    "run_id",
    "flow",
    "version",
    "status",
    "started_at",
    "finished_at",
    "duration",
    "input",
    "output",
    "error",
}
STEP_KEYS = {
    "step",
    "kind",
    "depends_on",
    "status",
    "skip_reason",
    "attempts",
    "tasks_total",
    "tasks_done",
    "started_at",
    "finished_at",
    "output",
    "error",
    "tasks",
}
TASK_KEYS = {
    "index",
    "status",
    "attempts",
    "stalls",
    "queued_at",
    "started_at",
    "finished_at",
    "output",
    "error",
}
FAILURE_KEYS = {
    "step",
    "task_index",
    "attempt",
    "error",
    "error_type",
    "traceback",
    "retried",
    "worker_id",
    "started_at",
    "failed_at",
}
FLOW_KEYS = {"flow", "version", "steps", "recorded_at", "code"}
EVENT_KEYS = {
    "position",
    "stream_id",
    "version",
    "event_type",
    "event_id",
    "recorded_at",
    "data",
    "metadata",
    "causation_id",
    "correlation_id",
}
HANDLER_KEYS = {
    "name",
    "kind",
    "status",
    "position",
    "lag",
    "owner",
    "dead_letters",
    "stopped_reason",
    "failing_position",
    "attempts",
    "last_error",
}
INSTANCE_KEYS = {
    "manager",
    "process_id",
    "status",
    "events",
    "last_position",
    "error",
    "started_at",
    "updated_at",
    "finished_at",
    "state",
}


def test_json_of_every_list_and_show_command_has_the_documented_shape(demo: str) -> None:
    runs = json.loads(ok(invoke("runs", "--json", "-d", demo, width=40)).stdout)
    assert len(runs) == 4 and all(set(r) == RUN_KEYS for r in runs)
    failed = next(r for r in runs if r["status"] == "failed")
    assert failed["error"] and failed["finished_at"] and failed["duration"] > 0

    run = json.loads(ok(invoke("run", failed["run_id"][:SHORT], "--json", "-d", demo)).stdout)
    assert set(run) == RUN_KEYS | {"steps", "failures", "last_failure"}
    assert run["run_id"] == failed["run_id"]
    assert all(set(s) == STEP_KEYS for s in run["steps"])
    assert all(set(t) == TASK_KEYS for s in run["steps"] for t in s["tasks"])
    assert run["failures"] and all(set(f) == FAILURE_KEYS for f in run["failures"])
    assert set(run["last_failure"]) == FAILURE_KEYS
    assert "Traceback" in run["last_failure"]["traceback"]

    flows = json.loads(ok(invoke("flows", "--json", "-d", demo)).stdout)
    assert {f["flow"] for f in flows} == {r["flow"] for r in runs}
    assert all(set(f) == FLOW_KEYS and f["code"] is None for f in flows)

    lines = ok(invoke("events", "--json", "-n", "5", "-d", demo)).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert len(events) == 5 and all(set(e) == EVENT_KEYS for e in events)
    stream = [
        json.loads(line)
        for line in ok(invoke("stream", "demo_order-A", "--json", "-d", demo)).stdout.splitlines()
    ]
    assert [e["version"] for e in stream] == list(range(1, len(stream) + 1))

    handlers = json.loads(ok(invoke("handlers", "--json", "-d", demo)).stdout)
    [manager] = handlers
    assert set(manager) == HANDLER_KEYS
    assert (manager["name"], manager["kind"], manager["status"]) == (
        "demo_orders",
        "process_manager",
        "no worker",
    )
    assert json.loads(ok(invoke("deadletters", "--json", "-d", demo)).stdout) == []

    sagas = json.loads(ok(invoke("sagas", "--json", "-d", demo)).stdout)
    assert set(sagas) == {"instances", "counts"}
    assert all(set(i) == INSTANCE_KEYS for i in sagas["instances"])
    assert {(c["status"], c["count"]) for c in sagas["counts"]} == {
        ("compensated", 2),
        ("completed", 1),
    }
    saga = json.loads(ok(invoke("saga", "demo_orders", "C", "--json", "-d", demo)).stdout)
    assert set(saga) == INSTANCE_KEYS | {"sent", "pending_undos", "timers"}
    assert saga["status"] == "compensated" and saga["sent"]

    # Nothing but JSON on stdout, even when there is nothing to list.
    assert (
        json.loads(ok(invoke("runs", "--json", "--status", "cancelled", "-d", demo)).stdout) == []
    )


# --- group options in any position ----------------------------------------------------------------


def test_database_and_app_options_are_taken_before_or_after_the_command(demo: str) -> None:
    db_url = demo
    assert "flaky_payment" in ok(invoke("-d", db_url, "runs")).stdout
    assert "flaky_payment" in ok(invoke("runs", "-d", db_url)).stdout
    # The command's own value wins over the group's.
    assert (
        "flaky_payment" in ok(invoke("-d", "sqlite:///elsewhere.db", "runs", "-d", db_url)).stdout
    )

    # Issue 12: `tideflow handlers --app X -d D reset N` ignored the group's options.
    reset = ok(invoke("handlers", "-d", db_url, "reset", "demo_orders", "--yes"))
    assert "reset handler demo_orders to position 0" in reset.stdout
    listed = json.loads(ok(invoke("-d", db_url, "handlers", "--json")).stdout)
    assert listed[0]["position"] == 0
    ok(invoke("-d", db_url, "handlers", "reset", "demo_orders", "-y"))
    assert "demo_orders" in ok(invoke("-d", db_url, "handlers")).stdout
    assert "demo_orders" in ok(invoke("-d", db_url, "sagas")).stdout
    assert "OrderPlaced" in ok(invoke("-d", db_url, "events")).stdout
    assert ok(invoke("-d", db_url, "deadletters")).stdout.startswith("no dead letters")

    started = ok(invoke("--app", QUICK, "-d", db_url, "start", "cli_quick", "-i", '{"n": 1}'))
    assert (
        json.loads(ok(invoke("run", started.stdout.strip(), "--json", "-d", db_url)).stdout)["flow"]
        == "cli_quick"
    )
    # A group --app naming an App gives its database to the commands without an --app.
    global DEMO_APP
    DEMO_APP = App(db_url)
    try:
        found = ok(invoke("--app", "tests.test_cli_output:DEMO_APP", "events")).stdout
        assert "demo_order" in found
        assert (
            "flaky_payment" in ok(invoke("--app", "tests.test_cli_output:DEMO_APP", "runs")).stdout
        )
    finally:
        DEMO_APP.close()
        DEMO_APP = None


DEMO_APP: App | None = None
"""An App on a test's database, for ``--app tests.test_cli_output:DEMO_APP``."""


# --- help ---------------------------------------------------------------------------------------


def _commands(group: Any, path: list[str]) -> list[list[str]]:
    found = [path]
    for name, command in (getattr(group, "commands", None) or {}).items():
        found += _commands(command, [*path, name])
    return found


def test_help_names_values_in_words_not_python_types() -> None:
    from typer.main import get_command

    paths = _commands(get_command(cli), [])
    assert ["handlers", "reset"] in paths and ["deadletters", "retry"] in paths
    for path in paths:
        text = ok(invoke(*path, "--help")).stdout
        for python_type in ("<bool>", "<str>", "<int", "<float", "<list[", "<text>"):
            assert python_type not in text, (path, python_type)
    worker = ok(invoke("worker", "--help")).stdout
    assert "URL" in worker and "MODULE:ATTR" in worker and "MODULE:CLASS" in worker
    assert "pip install 'tideflow[dashboard]'" in ok(invoke("dashboard", "--help")).stdout
    assert "[default: lease margin / 3]" in worker


# --- malformed database URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("tideflow.db", ("not a URL but a file path", "write sqlite:///tideflow.db")),
        ("sqlite:tideflow.db", ("missing slashes", "write sqlite:///tideflow.db")),
        ("sqlite:/tideflow.db", ("missing slashes", "write sqlite:///tideflow.db")),
        ("sqlite:///", ("names no file", "sqlite:///tideflow.db")),
        ("postgresql:/host/db", ("missing slashes", "postgresql://user@host:5432/dbname")),
        ("postgresql+psycopg://u:secret@h/db", ("names a driver", "write postgresql://u:***@h/db")),
        ("sqlite+pysqlite:///x.db", ("names a driver", "write sqlite:///x.db")),
        ("postgresql://u@h:port/db", ("is malformed", "postgresql://user@host:5432/dbname")),
        ("postgresql://u@h:99999/db", ("is malformed", "out of range")),
        ("postgresql://[::1/db", ("is malformed", "postgresql://user@host:5432/dbname")),
        ("u:secret@h/db", ("with '@' but no scheme", "postgresql://user@host:5432/dbname")),
        ("mysql://h/db", ("unsupported database URL 'mysql'", "postgresql://")),
        ("", ("--database-url is empty", "postgresql://user@host:5432/dbname")),
    ],
)
def test_malformed_database_urls_are_one_line_errors_showing_the_form_to_write(
    url: str, fragments: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for args in (["runs"], ["events"], ["sagas"], ["handlers"], ["migrate"]):
        result = invoke(*args, "-d", url)
        assert_one_line_error(result, 2, *fragments)
        assert "secret" not in result.output
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_ids_and_values_are_printed_as_written_never_as_markup_or_emoji(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run id is the caller's text: ``:heartbeat:`` is not an emoji code and ``[bold]`` not a
    style (a schedule's tick ids hold colons), in tables, details and errors alike."""
    monkeypatch.chdir(tmp_path)
    run_id = "nightly:heartbeat:[bold]2026"
    with App(db_url, flows=[Quick]) as app:
        app.migrate()
        app.start_flow(Quick, {"n": 1}, run_id=run_id)
    listing = ok(invoke("runs", "-d", db_url, "--wide", width=200))
    assert run_id in listing.output
    detail = ok(invoke("run", run_id, "-d", db_url))
    assert run_id in detail.output
    missing = invoke("run", "x:heartbeat:[red]y", "-d", db_url)
    assert missing.exit_code != 0 and "x:heartbeat:[red]y" in missing.output
