"""Retention (issue 13 item 4, issue 10 item 10): what is old goes, in batches; nothing else does.

Every test runs on SQLite and PostgreSQL with a ManualClock, so "30 days later" is a clock move.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tideflow import App, Flow, Purged, Retention, step
from tideflow.cli.errors import CliUsageError
from tideflow.cli.main import cli, parse_duration
from tideflow.clock import ManualClock
from tideflow.errors import InvalidRetentionError, SchemaMissingError
from tideflow.events.model import ExpectedVersion, NewEvent, RecordedEvent

DAY = 86400.0


class Once(Flow, slug="retention_once"):
    @step()
    async def only(self, input: dict[str, int]) -> int:
        return input["n"]


class Forever(Flow, slug="retention_forever"):
    @step(timeout=3600)
    async def wait(self, input: dict[str, int]) -> int:
        raise AssertionError("never claimed in these tests")


@pytest.fixture
def kept(db_url: str, clock: ManualClock) -> Iterator[App]:
    a = App(db_url, flows=[Once, Forever], clock=clock)
    yield a
    a.close()


def _finish(app: App, n: int) -> list[str]:
    ids = [app.start_flow(Once, {"n": i}) for i in range(n)]
    app.run_worker(until_idle=True)
    assert {app.get_run(i).status for i in ids} == {"completed"}
    return ids


def _count(app: App, table: str) -> int:
    db = app._open().db
    name = table if db.dialect == "sqlite" else f"tideflow.{table}"
    with db.transaction() as tx:
        cursor = tx.connection.execute(f"SELECT count(*) FROM {name}")
        return int(cursor.fetchone()[0])


def test_purge_deletes_runs_that_ended_before_the_window_with_steps_and_tasks(
    kept: App, clock: ManualClock
) -> None:
    _finish(kept, 3)
    clock.advance(20 * DAY)
    recent = _finish(kept, 2)
    running = kept.start_flow(Forever, {"n": 0})  # never claimed: no worker serves it here
    clock.advance(15 * DAY)  # the old runs ended 35 days ago, the recent ones 15

    done = kept.purge(30 * DAY, batch_size=2)  # two batches and a short one

    assert done == Purged(runs=3)
    assert sorted(r.run_id for r in kept.list_runs(flow=Once)) == sorted(recent)
    assert kept.get_run(running).status == "started"
    assert _count(kept, "run_steps") == 3 and _count(kept, "tasks") == 3
    clock.advance(100 * DAY)
    assert kept.purge(30 * DAY).runs == 2
    assert kept.get_run(running).status == "started"  # a run that has not ended stays


def test_idempotency_keys_expire_and_a_repeat_after_that_is_new(
    kept: App, clock: ManualClock
) -> None:
    es = kept.event_store
    first = es.append("s", [NewEvent("Happened", {})], ExpectedVersion.ANY, idempotency_key="k1")
    clock.advance(5 * DAY)
    es.append("s", [NewEvent("Happened", {})], ExpectedVersion.ANY, idempotency_key="k2")
    clock.advance(3 * DAY)

    assert kept.purge(idempotency_keys_older_than=7 * DAY) == Purged(idempotency_keys=1)

    assert es.get_idempotent_result("k1") is None
    assert es.get_idempotent_result("k2") is not None
    again = es.append("s", [NewEvent("Happened", {})], ExpectedVersion.ANY, idempotency_key="k1")
    assert again[0].event_id != first[0].event_id  # appended anew, not replayed
    assert len(list(es.read_stream("s"))) == 3


def _event(app: App) -> RecordedEvent:
    app.event_store.append("d", [NewEvent("Happened", {})], ExpectedVersion.ANY)
    return list(app.event_store.read_stream("d"))[-1]


def test_retried_dead_letters_and_ended_process_instances_follow_the_window(
    kept: App, clock: ManualClock
) -> None:
    handlers, processes = kept.handler_store, kept._open().processes
    handlers.acquire("pm", "process_manager", "me", 30)
    with kept.event_store.transaction() as tx:
        retried = handlers.record_dead_letter(tx, "h", _event(kept), "boom", 3)
        pending = handlers.record_dead_letter(tx, "h", _event(kept), "boom", 3)
        handlers.mark_dead_letter_retried(tx, retried)
        for pid, finished in (("ended", True), ("running", False)):
            processes.save(
                tx,
                "pm",
                pid,
                status="completed" if finished else "running",
                state_json="{}",
                version=1,
                last_position=0,
                error=None,
                finished=finished,
            )
    clock.advance(31 * DAY)

    assert kept.purge(30 * DAY) == Purged(dead_letters=1, process_instances=1)

    ids = [d.id for d in handlers.list_dead_letters(include_retried=True)]
    assert ids == [pending]
    assert [p.process_id for p in processes.list_instances("pm")] == ["running"]


def test_bad_retention_is_refused_before_anything_is_deleted(kept: App, clock: ManualClock) -> None:
    _finish(kept, 1)
    clock.advance(100 * DAY)
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidRetentionError, match="positive number of seconds"):
            kept.purge(bad)
    with pytest.raises(InvalidRetentionError, match="batch_size"):
        Retention(runs=DAY, batch_size=0)
    assert len(kept.list_runs()) == 1


def test_purge_creates_no_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/never.db"
    with App(url) as app, pytest.raises(SchemaMissingError):
        app.purge(DAY)


def test_the_worker_applies_its_retention_in_the_background(
    db_url: str, clock: ManualClock
) -> None:
    app = App(db_url, flows=[Once], clock=clock)
    try:
        _finish(app, 4)
        clock.advance(2 * DAY)
        worker = app.worker(retention=Retention(runs=DAY, batch_size=3))
        worker.options = replace(worker.options, purge_interval=0.01, poll_interval=0.01)

        async def run_until_purged() -> None:
            task = asyncio.create_task(worker.run())
            for _ in range(500):
                await asyncio.sleep(0.01)
                if not app.list_runs():
                    break
            worker.stop()
            await task

        asyncio.run(run_until_purged())
        assert app.list_runs() == []
    finally:
        app.close()


def test_cli_purge(db_url: str, kept: App) -> None:
    kept.migrate()
    runner = CliRunner()
    result = runner.invoke(cli, ["purge", "-d", db_url])
    assert result.exit_code == 2 and "nothing to purge" in result.output
    result = runner.invoke(cli, ["purge", "-d", db_url, "--older-than", "3x"])
    assert result.exit_code == 2 and "--older-than '3x' is not a duration" in result.output
    result = runner.invoke(cli, ["purge", "-d", db_url, "--older-than", "30d"])
    assert result.exit_code == 0, result.output
    assert "deleted 0 run(s)" in result.output


def test_cli_worker_refuses_a_bad_retention_before_it_starts(db_url: str) -> None:
    result = CliRunner().invoke(
        cli,
        ["worker", "-d", db_url, "--flow", "tests.test_retention:Once", "--retention", "soon"],
    )
    assert result.exit_code == 2
    assert "--retention 'soon' is not a duration" in result.output


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * DAY),
        ("12h", 43200.0),
        ("90m", 5400.0),
        ("45s", 45.0),
        ("2w", 14 * DAY),
        ("1.5", 1.5),
        (" 7D ", 7 * DAY),
    ],
)
def test_durations_on_the_command_line(text: str, seconds: float) -> None:
    assert parse_duration(text, "--older-than") == seconds


@pytest.mark.parametrize("text", ["", "d", "-1d", "0", "1e400", "30 days"])
def test_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(CliUsageError, match=r"--older-than .* is not a duration"):
        parse_duration(text, "--older-than")
