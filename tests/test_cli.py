"""The ``tideflow`` command line, on both backends: output, exit codes, one-line errors, the DAG
drawing, and the demo run through the installed console script."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tideflow import App, Flow, NonRetryableError, RunNotFoundError, step
from tideflow.cli.dag import Node, render_dag, render_list
from tideflow.cli.loading import build_app, load_object
from tideflow.cli.main import cli
from tideflow.errors import FlowImportError, NotAFlowError

REPO = Path(__file__).resolve().parent.parent
QUICK = "tests.test_cli:Quick"
BROKEN = "tests.test_cli:Broken"
# A port nothing listens on: refused at once, so the "unreachable" path is fast.
UNREACHABLE_PG = "postgresql://postgres@127.0.0.1:1/nothing"


class Quick(Flow, slug="cli_quick"):
    @step()
    def spread(self, input: dict[str, int]) -> list[int]:
        return list(range(1, input["n"] + 1))

    @step(depends_on=["spread"], map=True)
    def square(self, item: int) -> int:
        return item * item

    @step(depends_on=["square"])
    def total(self, square: list[int]) -> int:
        return sum(square)


class Broken(Flow, slug="cli_broken", max_attempts=1):
    @step()
    def explode(self, input: Any) -> None:
        raise NonRetryableError("boom, on purpose")


def invoke(*args: str, **env: str | None) -> Any:
    """Run the CLI in-process with a wide, clean environment (no inherited TIDEFLOW_*)."""
    environ: dict[str, str | None] = {
        "COLUMNS": "200",
        "TIDEFLOW_APP": None,
        "TIDEFLOW_DATABASE_URL": None,
        **env,
    }
    return CliRunner().invoke(cli, list(args), env=environ)


def assert_one_line_error(result: Any, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def worker(db_url: str) -> Iterator[None]:
    """A worker for Quick and Broken in a background thread, as another process would be."""
    app = App(db_url, flows=[Quick, Broken])
    w = app.worker(poll_interval=0.02)
    thread = threading.Thread(target=lambda: asyncio.run(w.run()), daemon=True)
    thread.start()
    try:
        yield
    finally:
        w.stop()
        thread.join(timeout=10)
        app.close()


# --- start, runs, run, cancel, flows, migrate, worker -------------------------------------------


def test_start_wait_completed_exits_0(db_url: str, worker: None) -> None:
    result = invoke(
        "start",
        "cli_quick",
        "--input",
        '{"n": 3}',
        "--wait",
        "--timeout",
        "20",
        "--app",
        QUICK,
        "-d",
        db_url,
    )
    assert result.exit_code == 0, result.output
    assert "completed" in result.stdout
    assert '"total": 14' in result.stdout
    assert "square (map)" in result.stdout


def test_start_wait_failed_exits_1(db_url: str, worker: None) -> None:
    result = invoke(
        "start",
        "cli_broken",
        "--wait",
        "--timeout",
        "20",
        "--app",
        QUICK,
        "--flow",
        BROKEN,
        "-d",
        db_url,
    )
    assert result.exit_code == 1, result.output
    assert "run failed" in result.stdout
    assert "boom, on purpose" in result.stdout
    assert "Traceback" not in result.output


def test_start_wait_timeout_leaves_the_run_going(db_url: str) -> None:
    result = invoke(
        "start",
        "cli_quick",
        "-i",
        '{"n": 1}',
        "--wait",
        "--timeout",
        "0.3",
        "--app",
        QUICK,
        "-d",
        db_url,
    )
    assert_one_line_error(result, 1, "still started after 0.3s")


def test_start_prints_only_the_run_id_then_runs_run_and_cancel_show_it(db_url: str) -> None:
    started = invoke(
        "start", "cli_quick", "-i", '{"n": 2}', "--run-id", "order-42", "--app", QUICK, "-d", db_url
    )
    assert started.exit_code == 0, started.output
    assert started.stdout == "order-42\n"

    listed = invoke("runs", "--wide", "-d", db_url)
    assert listed.exit_code == 0, listed.output
    for field in (
        "run id",
        "flow",
        "version",
        "status",
        "started",
        "duration",
        "order-42",
        "cli_quick",
        Quick.definition.version,
        "started",
    ):
        assert field in listed.stdout
    assert (
        "order-42"
        in invoke("runs", "--flow", "cli_quick", "--status", "started", "-d", db_url).stdout
    )
    assert "no runs match" in invoke("runs", "--status", "failed", "-d", db_url).stdout

    shown = invoke("run", "order-42", "-d", db_url)
    assert shown.exit_code == 0, shown.output
    for field in (
        "order-42",
        "cli_quick",
        '{"n": 2}',
        "running for",
        "spread",
        "square",
        "total",
        "map",
        "attempts",
        "▼",
    ):
        assert field in shown.stdout

    cancelled = invoke("cancel", "order-42", "-d", db_url)
    assert cancelled.exit_code == 0, cancelled.output
    assert "cancelled run order-42" in cancelled.stdout
    assert "cancelled" in invoke("runs", "-d", db_url).stdout
    again = invoke("cancel", "order-42", "-d", db_url)
    assert_one_line_error(again, 1, "already cancelled")


def test_run_shows_output_tasks_and_a_coloured_dag(db_url: str) -> None:
    with App(db_url, flows=[Quick]) as app:
        run_id = app.start_flow(Quick, {"n": 3})
        app.run_worker(until_idle=True, poll_interval=0.02)
    result = invoke("run", run_id, "--tasks", "-d", db_url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "✓ completed" in out
    assert '"total": 14' in out
    assert "square \u00d73" in out  # the DAG labels a map step with its task count
    assert out.count("✓ completed") >= 3 + 5  # 3 steps + 5 tasks


def test_worker_command_runs_until_idle(db_url: str) -> None:
    with App(db_url, flows=[Quick]) as app:
        run_id = app.start_flow(Quick, {"n": 4})
    logger = logging.getLogger("tideflow")
    before = logger.handlers[:], logger.level
    result = invoke(
        "worker",
        "--app",
        QUICK,
        "-d",
        db_url,
        "--until-idle",
        "--poll-interval",
        "0.02",
        "--concurrency",
        "4",
    )
    assert result.exit_code == 0, result.output
    assert "worker" in result.output and "started" in result.output  # its own log lines...
    assert (logger.handlers, logger.level) == before  # ...for as long as the command ran
    with App(db_url) as app:
        run = app.get_run(run_id)
    assert run.status == "completed"
    assert run.output == {"total": 30}


def test_worker_takes_the_url_from_an_app_unless_overridden(tmp_path: Path) -> None:
    own = App(f"sqlite:///{tmp_path / 'own.db'}", flows=[Quick])
    module = type(sys)("cli_test_app_module")
    module.app = own  # type: ignore[attr-defined]
    sys.modules["cli_test_app_module"] = module
    try:
        assert build_app(None, "cli_test_app_module:app") is own
        other = build_app(f"sqlite:///{tmp_path / 'other.db'}", "cli_test_app_module")
        assert other is not own
        assert other.database_url.endswith("other.db")
        assert other.registry.slugs() == ["cli_quick"]
    finally:
        del sys.modules["cli_test_app_module"]
        own.close()


def test_flows_lists_stored_versions_and_registered_steps(db_url: str) -> None:
    assert invoke("migrate", "-d", db_url).exit_code == 0  # reads never create the schema
    empty = invoke("flows", "-d", db_url)
    assert empty.exit_code == 0, empty.output
    assert "none yet" in empty.stdout
    with App(db_url, flows=[Quick]) as app:
        app.start_flow(Quick, {"n": 1})
    result = invoke("flows", "--app", QUICK, "-d", db_url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for field in (
        "cli_quick",
        Quick.definition.version,
        "spread, square, total",
        "current",
        "depends on",
        "map",
        "square (map)",
        "tests.test_cli.Quick",
    ):
        assert field in out


def test_migrate_reports_applied_then_up_to_date(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = invoke("migrate", "-d", url)
    assert first.exit_code == 0, first.output
    assert "applied 0001_initial" in first.stdout
    second = invoke("migrate", "-d", url)
    assert second.exit_code == 0
    assert "up to date" in second.stdout


def test_input_from_a_file(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "input.json"
    path.write_text('{"n": 5}')
    result = invoke("start", "cli_quick", "-i", f"@{path}", "--app", QUICK, "-d", db_url)
    assert result.exit_code == 0, result.output
    with App(db_url) as app:
        assert app.get_run(result.stdout.strip()).input == {"n": 5}


# --- errors: one red line, the right exit code, no traceback -----------------------------------


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["start", "nope", "--app", QUICK], 2, "flow 'nope' is neither registered here nor stored"),
        (["start", "cli_quick", "--app", QUICK, "-i", "{n: 1"], 2, "--input is not valid JSON"),
        (["start", "cli_quick"], 2, "(stored flows: none)"),
        (["retry", "no-such-run"], 1, "no run with id 'no-such-run'"),
        (["start", "cli_quick", "--app", "no_such_module:app"], 2, "No module named"),
        (["start", "cli_quick", "--app", "tests.test_cli:Nope"], 2, "has no attribute 'Nope'"),
        (["start", "cli_quick", "--app", "json:dumps"], 2, "must name an App"),
        (["start", "cli_quick", "--app", "tests.test_cli:"], 2, "write 'package.module:attr'"),
        (["start", "cli_quick", "--app", QUICK, "-i", "@/no/such.json"], 2, "cannot read"),
        (["run", "no-such-run"], 1, "no run with id 'no-such-run'"),
        (["cancel", "no-such-run"], 1, "no run with id 'no-such-run'"),
        (["runs", "--status", "done"], 2, "unknown run status 'done'"),
        (["runs", "--limit", "0"], 2, "limit must be >= 1"),
    ],
)
def test_errors_are_one_line(db_url: str, args: list[str], code: int, fragment: str) -> None:
    assert invoke("migrate", "-d", db_url).exit_code == 0  # reads never create the schema
    assert_one_line_error(invoke(*args, "-d", db_url), code, fragment)


def test_start_by_slug_without_code_and_retry_a_failed_run(db_url: str, worker: None) -> None:
    """`tideflow start SLUG -d URL` needs no --app once a worker stored the flow; `tideflow
    retry` runs a failed run again; `tideflow runs --status failed` lists failed runs."""
    with App(db_url, flows=[Quick, Broken]) as app:  # what the worker fixture stored
        for flow in (Quick, Broken):
            app.store.ensure_flow(flow.definition)
    done = invoke("start", "cli_quick", "-i", '{"n": 3}', "--wait", "-d", db_url)
    assert done.exit_code == 0, done.output
    assert '"total": 14' in done.stdout
    failed = invoke("start", "cli_broken", "--run-id", "b-1", "--wait", "-d", db_url)
    assert failed.exit_code == 1, failed.output
    assert "b-1" in invoke("runs", "--status", "failed", "-d", db_url).stdout
    retried = invoke("retry", "b-1", "-d", db_url)
    assert retried.exit_code == 0, retried.output
    assert "retrying run b-1" in retried.stdout
    with App(db_url) as app:
        run = app.wait_for_run("b-1", timeout=10)
        assert run.status == "failed" and run.step("explode").attempts == 1
    again = invoke("retry", "cli-no-such", "-d", db_url)
    assert_one_line_error(again, 1, "no run with id")
    pinned = invoke(
        "start", "cli_quick", "--flow-version", "000000000000", "-i", '{"n": 1}', "-d", db_url
    )
    assert_one_line_error(pinned, 2, "has no stored version '000000000000'")


def test_retry_refuses_a_run_that_did_not_fail(db_url: str) -> None:
    started = invoke("start", "cli_quick", "-i", '{"n": 1}', "--app", QUICK, "-d", db_url)
    run_id = started.stdout.strip()
    assert_one_line_error(invoke("retry", run_id, "-d", db_url), 1, "is started, not failed")


def test_run_id_already_taken(db_url: str) -> None:
    assert (
        invoke("start", "cli_quick", "--run-id", "dup", "--app", QUICK, "-d", db_url).exit_code == 0
    )
    again = invoke("start", "cli_quick", "--run-id", "dup", "--app", QUICK, "-d", db_url)
    assert_one_line_error(again, 1, "already exists")


@pytest.mark.parametrize(
    ("url", "code", "fragment"),
    [
        (UNREACHABLE_PG, 1, "cannot connect to PostgreSQL at"),
        ("postgresql://postgres:secret@127.0.0.1:1/x", 1, "postgres:***@127.0.0.1"),
        ("mysql://localhost/db", 2, "unsupported database URL"),
    ],
)
def test_database_errors_are_one_line(url: str, code: int, fragment: str) -> None:
    result = invoke("runs", "-d", url)
    assert_one_line_error(result, code, fragment)
    assert "secret" not in result.output


def test_database_url_from_environment(db_url: str) -> None:
    with App(db_url, flows=[Quick]) as app:
        app.start_flow(Quick, {"n": 1}, run_id="from-env")
    result = invoke("runs", TIDEFLOW_DATABASE_URL=db_url)
    assert "from-env" in result.stdout


def test_app_from_environment(db_url: str) -> None:
    result = invoke("start", "cli_quick", "-i", '{"n": 1}', "-d", db_url, TIDEFLOW_APP=QUICK)
    assert result.exit_code == 0, result.output


def test_debug_lets_the_exception_through(db_url: str) -> None:
    assert invoke("migrate", "-d", db_url).exit_code == 0  # reads never create the schema
    result = invoke("--debug", "run", "no-such-run", "-d", db_url)
    assert result.exit_code != 0
    assert isinstance(result.exception, RunNotFoundError)


def test_parser_errors_keep_exit_code_2() -> None:
    result = invoke("start")
    assert result.exit_code == 2
    assert "Missing argument" in result.output


# --- loading ------------------------------------------------------------------------------------


def test_load_a_module_without_attr_takes_all_its_flows() -> None:
    app = build_app("sqlite:///:memory:", "tideflow.cli.demo_flows")
    assert app.registry.slugs() == ["flaky_payment", "image_thumbnails", "order_pipeline"]


def test_load_a_file_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    app = build_app("sqlite:///:memory:", "examples/order_pipeline.py:OrderPipeline")
    assert app.registry.slugs() == ["order_pipeline"]
    with pytest.raises(FlowImportError, match="no such file"):
        load_object("examples/missing.py:X")


def test_load_refuses_a_module_without_flows() -> None:
    with pytest.raises(NotAFlowError, match="defines no Flow classes"):
        build_app("sqlite:///:memory:", "json")


# --- the DAG drawing -----------------------------------------------------------------------------


DIAMOND = [
    Node("validate", (), status="completed"),
    Node("reserve", ("validate",), status="completed"),
    Node("price", ("validate",), status="failed"),
    Node("ship", ("reserve", "price"), status="skipped"),
]


def test_dag_draws_a_fork_and_a_join() -> None:
    assert render_dag(DIAMOND).plain == "\n".join(
        [
            "     ✓ validate",
            "     ┌────┴─────┐",
            "     ▼          ▼",
            "✓ reserve   ✗ price",
            "     └────┬─────┘",
            "          ▼",
            "       - ship",
        ]
    )


def test_dag_colours_steps_by_status() -> None:
    text = render_dag(DIAMOND)
    styles = {text.plain[s.start : s.end]: str(s.style) for s in text.spans}
    assert styles["✓ validate"] == "green"
    assert styles["✗ price"] == "bold red"
    assert styles["- ship"] == "dim"


def test_dag_threads_long_edges_past_labels() -> None:
    nodes = [Node("a", ()), Node("b", ("a",)), Node("c", ("b",)), Node("d", ("a", "c"))]
    lines = render_dag(nodes).plain.splitlines()
    label_rows = [line for line in lines if "●" in line]
    assert [row.split("●")[1].split()[0] for row in label_rows] == ["a", "b", "c", "d"]
    # the edge a -> d passes the rows of b and c as a vertical line beside them
    assert all("│" in row for row in label_rows[1:3])


def test_dag_of_ten_steps_stays_narrow_and_falls_back_when_too_wide() -> None:
    deps = {
        1: (0,),
        2: (0,),
        3: (0,),
        4: (1, 2),
        5: (2, 3),
        6: (4,),
        7: (5, 1),
        8: (6, 7),
        9: (8, 0),
    }
    nodes = [Node(f"step_{i}", tuple(f"step_{d}" for d in deps.get(i, ()))) for i in range(10)]
    drawing = render_dag(nodes)
    assert max(len(line) for line in drawing.plain.splitlines()) <= 80
    assert drawing.plain.count("●") == 10
    narrow = render_dag(nodes, max_width=20)
    assert narrow.plain == render_list(nodes).plain
    assert "step_9  ◀ step_8, step_0" in narrow.plain


# --- the demo -----------------------------------------------------------------------------------


def _console_script() -> list[str]:
    script = shutil.which("tideflow", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "tideflow.cli.main"]


def test_demo_console_script_needs_no_setup(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIDEFLOW_")}
    env["COLUMNS"] = "200"
    result = subprocess.run(
        [*_console_script(), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert (tmp_path / "tideflow-demo.db").exists()
    for flow in ("order_pipeline", "image_thumbnails", "flaky_payment"):
        assert flow in out
    assert out.count("as expected") == 4
    assert out.count("completed in") == 3
    assert out.count("failed in") == 1
    assert "card ending in 0002 was declined" in out
    assert "tideflow run " in out  # tells the user where to look next
    # the order saga: one confirmed, one undone after a refusal, one undone after its timer
    assert "ok  order A completed" in out
    assert "ok  order B compensated: card declined" in out and "undid ReleaseStock" in out
    assert "ok  order C compensated: transfer not there" in out
    assert "WRONG" not in out and "tideflow saga demo_orders B" in out
    # the file is recreated, not appended to: a second demo shows four runs again
    again = subprocess.run(
        [*_console_script(), "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr
    runs = invoke("runs", "-d", f"sqlite:///{tmp_path / 'tideflow-demo.db'}")
    assert runs.stdout.count("flaky_payment") == 2
    assert runs.stdout.count("order_pipeline") == 1


def test_demo_on_a_given_database(db_url: str) -> None:
    result = invoke("demo", "-d", db_url)
    assert result.exit_code == 0, result.output
    assert result.stdout.count("as expected") == 4
    with App(db_url) as app:
        runs = app.list_runs()
        assert sorted(r.status for r in runs) == ["completed", "completed", "completed", "failed"]
        payment = next(
            app.get_run(r.run_id)
            for r in runs
            if r.flow_slug == "flaky_payment" and r.status == "completed"
        )
    assert payment.step("authorize").attempts == 3
    with App(db_url) as app:
        instances = app.process_store.list_instances("demo_orders")
    statuses = {i.process_id: i.status for i in instances}
    assert statuses == {"A": "completed", "B": "compensated", "C": "compensated"}
