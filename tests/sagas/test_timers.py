"""Durable timers of process managers, on both backends.

What is checked: a timer fires once, when the clock passes its due time, and its instance
reacts to its event (fired by ``fire_due`` or by the worker's own loop); scheduling a name again
replaces the timer; a cancelled timer, and the timers of an instance that completed or failed,
never fire; two stores firing at once fire each timer once; a worker SIGKILLed while timers
come due, or inside its firing transaction, is replaced and every timer fires exactly once; the
worker's loop wakes early for a timer its process scheduled and waits out an outage; bad timer
actions are refused with a typed error and write nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_until, wait_until_async
from tests.sagas.timed import Ctl, Timed, do, timed_app
from tideflow import App
from tideflow.clock import ManualClock
from tideflow.errors import DatabaseUnavailableError
from tideflow.storage import open_database
from tideflow.storage.event_store import SqlEventTransaction
from tideflow.storage.process_contract import ProcessInstance
from tideflow.storage.timer_contract import TIMER_METADATA
from tideflow.storage.timer_store import timer_stream
from tideflow.worker.handlers import HandlerRunnerOptions

ROOT = Path(__file__).resolve().parents[2]
FAST = HandlerRunnerOptions(poll_interval=0.02, acquire_interval=0.05)


@pytest.fixture
def open_app(db_url: str, clock: ManualClock) -> Iterator[Callable[[], App]]:
    apps: list[App] = []

    def make() -> App:
        app = timed_app(db_url, clock=clock)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def catch_up(app: App) -> None:
    """Run the app's handlers - and its timer loop - until there is nothing left to do."""
    app.handler_runner(options=FAST).run_until_idle()


def instance(app: App, process: str) -> ProcessInstance:
    found = app.process_store.get(Timed.name, process)
    assert found is not None, f"no instance {process!r}"
    return found


def notes(app: App, process: str) -> list[str]:
    return [e.data["timer"] for e in app.event_store.read_stream(f"ctl-note-{process}")]


def fired_events(app: App) -> list[Any]:
    return [e for e in app.event_store.read_all() if TIMER_METADATA in e.metadata]


def handler_record(app: App) -> Any:
    return next((r for r in app.handler_store.list_handlers() if r.name == Timed.name), None)


def all_timer_rows(app: App) -> int:
    """Timer rows of every kind: pending, and fired but not yet taken by their instance."""
    table = (
        "tideflow.process_timers" if app.event_store.dialect == "postgresql" else "process_timers"
    )
    with app.event_store.transaction() as tx:
        return int(tx.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def due_now(app: App, clock: ManualClock, process: str) -> None:
    """``process`` gets an instance with a timer "t", and the clock moves to its due time."""
    do(app, process, {"schedule": "t", "after": 1})
    catch_up(app)
    clock.advance(1)


# --- firing ---------------------------------------------------------------------------------------


def test_a_timer_fires_once_when_due_and_its_instance_reacts(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    app = open_app()
    do(app, "p1", {"schedule": "payment", "after": 60, "data": {"order": "o-1"}})
    catch_up(app)
    [pending] = app.timer_store.pending()
    assert (pending.manager, pending.process_id, pending.name) == (Timed.name, "p1", "payment")
    assert pending.fire_at == clock.now() + timedelta(seconds=60)
    assert pending.event_type == "TimerElapsed"
    assert pending.data == {"timer": "payment", "order": "o-1"}

    clock.advance(59.9)
    assert app.timer_store.fire_due() == 0
    clock.advance(0.1)
    assert app.timer_store.fire_due() == 1
    assert app.timer_store.fire_due() == 0
    assert app.timer_store.pending() == []
    catch_up(app)

    assert instance(app, "p1").state["fired"] == ["payment"]
    assert notes(app, "p1") == ["payment"]
    [event] = fired_events(app)
    assert event.stream_id == timer_stream(Timed.name, "p1") == "timer-timed-p1"
    assert event.event_type == "TimerElapsed"
    assert event.data == {"timer": "payment", "order": "o-1"}
    assert event.metadata[TIMER_METADATA] == {
        "manager": Timed.name,
        "process_id": "p1",
        "timer": "payment",
        "token": pending.token,
    }
    assert app.timer_store.pending() == []
    assert all_timer_rows(app) == 0  # the instance took its fired timer
    assert event.correlation_id is None  # "p1" is not a uuid: the instance is found by metadata


def test_the_worker_fires_due_timers_itself(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    app = open_app()
    do(app, "p1", {"schedule": "soon", "after": 5}, {"schedule": "later", "after": 3600})
    do(app, "p2", {"schedule": "soon", "after": 5, "event_type": "Late"})
    catch_up(app)
    clock.advance(5)
    catch_up(app)  # fires what is due, then handles the events it appended
    assert instance(app, "p1").state["fired"] == ["soon"]
    assert instance(app, "p2").state["fired"] == ["soon"]
    assert sorted(e.event_type for e in fired_events(app)) == ["Late", "TimerElapsed"]
    assert [t.name for t in app.timer_store.pending()] == ["later"]
    assert app.timer_store.next_due() == clock.now() + timedelta(seconds=3595)

    clock.advance(3595)
    app.run_worker(until_idle=True, poll_interval=0.02)  # the App's worker: flows + handlers
    assert instance(app, "p1").state["fired"] == ["soon", "later"]
    assert app.timer_store.pending() == [] and app.timer_store.next_due() is None


def test_a_timer_at_a_time_fires_then(open_app: Callable[[], App], clock: ManualClock) -> None:
    app = open_app()
    at = clock.now() + timedelta(hours=2)
    do(app, "p1", {"schedule": "t", "at": at.isoformat()})
    catch_up(app)
    assert [t.fire_at for t in app.timer_store.pending()] == [at]
    clock.advance(2 * 3600)
    catch_up(app)
    assert instance(app, "p1").state["fired"] == ["t"]


def test_scheduling_a_name_again_replaces_the_timer(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    app = open_app()
    do(app, "p1", {"schedule": "t", "after": 60, "data": {"n": 1}})
    catch_up(app)
    clock.advance(30)
    do(app, "p1", {"schedule": "t", "after": 60, "data": {"n": 2}})
    catch_up(app)
    [pending] = app.timer_store.pending()
    assert pending.fire_at == clock.now() + timedelta(seconds=60)
    assert pending.data == {"timer": "t", "n": 2}
    clock.advance(30)  # the first due time: nothing fires
    assert app.timer_store.fire_due() == 0
    clock.advance(30)
    catch_up(app)
    assert [e.data for e in fired_events(app)] == [{"timer": "t", "n": 2}]
    assert instance(app, "p1").state["fired"] == ["t"]


def test_a_cancelled_timer_never_fires(open_app: Callable[[], App], clock: ManualClock) -> None:
    app = open_app()
    do(app, "p1", {"schedule": "t", "after": 60}, {"schedule": "u", "after": 60})
    catch_up(app)
    do(app, "p1", {"cancel": "t"}, {"cancel": "never-scheduled"})
    catch_up(app)
    assert [t.name for t in app.timer_store.pending()] == ["u"]
    clock.advance(3600)
    assert app.timer_store.fire_due() == 1  # "u" only: the firing had its chance at "t"
    catch_up(app)
    assert instance(app, "p1").state["fired"] == ["u"]
    assert [e.data["timer"] for e in fired_events(app)] == ["u"]


def test_a_timer_cancelled_after_it_fired_is_ignored_when_its_event_arrives(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    """The race: the event whose reaction cancels the timer is in the log before the timer's
    own event - the timer fired while the instance had not reached the cancel yet."""
    app = open_app()
    do(app, "p1", {"schedule": "t", "after": 60}, {"schedule": "u", "after": 60})
    catch_up(app)
    do(app, "p1", {"cancel": "t"})  # in the log, not handled yet
    clock.advance(60)
    assert app.timer_store.fire_due() == 2  # both fire, after the cancel in the log
    catch_up(app)
    assert instance(app, "p1").state["fired"] == ["u"]
    assert notes(app, "p1") == ["u"]
    assert [e.data["timer"] for e in fired_events(app)] == ["t", "u"]  # t's event is stale
    assert all_timer_rows(app) == 0


def test_a_timer_rescheduled_after_it_fired_waits_for_its_new_time(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    app = open_app()
    do(app, "p1", {"schedule": "t", "after": 60, "data": {"n": 1}})
    catch_up(app)
    do(app, "p1", {"schedule": "t", "after": 60, "data": {"n": 2}})  # not handled yet
    clock.advance(60)
    assert app.timer_store.fire_due() == 1  # the first scheduling fires
    catch_up(app)  # the instance reschedules, then meets the first one's event: stale
    assert instance(app, "p1").state["fired"] == []
    [pending] = app.timer_store.pending()
    assert pending.data == {"timer": "t", "n": 2}
    clock.advance(60)
    catch_up(app)
    assert instance(app, "p1").state["fired"] == ["t"]
    assert [e.data["n"] for e in fired_events(app)] == [1, 2]
    assert all_timer_rows(app) == 0


def test_the_timers_of_an_instance_that_ended_never_fire(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    app = open_app()
    do(app, "done", {"schedule": "t", "after": 60}, {"schedule": "u", "after": 90})
    do(app, "fails", {"schedule": "t", "after": 60})
    do(app, "other", {"schedule": "t", "after": 60})
    catch_up(app)
    assert len(app.timer_store.pending()) == 4
    do(app, "done", finish=True)
    do(app, "fails", {"refuse": True})  # refused, its compensation too: the instance fails
    catch_up(app)
    assert instance(app, "done").status == "completed"
    assert instance(app, "fails").status == "failed"
    assert [(t.process_id, t.name) for t in app.timer_store.pending()] == [("other", "t")]
    clock.advance(3600)
    catch_up(app)
    assert [e.metadata[TIMER_METADATA]["process_id"] for e in fired_events(app)] == ["other"]
    assert instance(app, "done").state["fired"] == []
    assert instance(app, "other").state["fired"] == ["t"]


def test_a_timer_of_a_long_process_id_goes_to_a_hashed_stream(
    open_app: Callable[[], App], clock: ManualClock
) -> None:
    app = open_app()
    process = "p" * 190  # fits a stream id, but not with "timer-timed-" before it
    due_now(app, clock, process)
    catch_up(app)
    [event] = fired_events(app)
    assert event.stream_id == timer_stream(Timed.name, process)
    assert event.stream_id.startswith("timer-") and len(event.stream_id) == 6 + 64
    assert instance(app, process).state["fired"] == ["t"]


# --- exactly once ---------------------------------------------------------------------------------


def test_two_stores_firing_at_once_fire_each_timer_once(db_url: str, clock: ManualClock) -> None:
    instances, per_instance = 40, 5
    stores = [open_database(db_url, clock=clock) for _ in range(2)]  # two pools / connections
    try:
        stores[0].db.migrate()
        with stores[0].db.transaction() as tx:
            for i in range(instances):
                for n in range(per_instance):
                    stores[0].timers.schedule(
                        tx,
                        "m",
                        f"p{i}",
                        f"t{n}",
                        clock.now() + timedelta(seconds=n),
                        "TimerElapsed",
                        f'{{"timer": "t{n}"}}',
                    )
        clock.advance(per_instance)
        start = threading.Barrier(2)
        fired = [0, 0]
        errors: list[BaseException] = []

        def fire(k: int) -> None:
            try:
                start.wait()
                while n := stores[k].timers.fire_due(limit=7):
                    fired[k] += n
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=fire, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        assert sum(fired) == instances * per_instance
        events = [e for e in stores[0].events.read_all() if TIMER_METADATA in e.metadata]
        keys = [(e.metadata[TIMER_METADATA]["process_id"], e.data["timer"]) for e in events]
        assert len(keys) == len(set(keys)) == instances * per_instance
        for i in range(instances):
            stream = list(stores[0].events.read_stream(timer_stream("m", f"p{i}")))
            assert sorted(e.data["timer"] for e in stream) == [f"t{n}" for n in range(per_instance)]
        assert stores[1].timers.pending() == []
    finally:
        for s in stores:
            s.close()


def test_a_sigkilled_worker_is_replaced_and_every_timer_fires_exactly_once(db_url: str) -> None:
    app = timed_app(db_url)  # the wall clock: the workers are other processes
    try:
        processes = 30
        for n in range(processes):
            # Due one after another over about 1.5 s, so the kill lands while they come due.
            do(app, f"k{n}", {"schedule": "t", "after": 0.3 + n * 0.05})
        first = spawn(db_url)
        try:
            wait_until(lambda: len(fired_events(app)) >= 5, what="five timers fired")
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        assert len(fired_events(app)) < processes, "the first worker must not have finished"
        second = spawn(db_url)
        try:
            wait_until(
                lambda: all(
                    (i := app.process_store.get(Timed.name, f"k{n}")) and i.state["fired"]
                    for n in range(processes)
                ),
                timeout=60,
                what=f"all {processes} instances reacted to their timer",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=20)
        assert second.returncode == 0
        events = fired_events(app)
        assert sorted(e.metadata[TIMER_METADATA]["process_id"] for e in events) == sorted(
            f"k{n}" for n in range(processes)
        )
        for n in range(processes):
            assert instance(app, f"k{n}").state["fired"] == ["t"]
            assert notes(app, f"k{n}") == ["t"]
        assert app.timer_store.pending() == []
    finally:
        app.close()


def test_a_worker_killed_inside_its_firing_transaction_leaves_every_timer_to_fire_once(
    db_url: str,
) -> None:
    app = timed_app(db_url)
    try:
        for n in range(3):
            do(app, f"d{n}", {"schedule": "t", "after": 0})
        dying = spawn(db_url, "die")
        try:
            assert dying.wait(timeout=30) == -signal.SIGKILL
        finally:
            dying.kill()
        # It appended a timer's event, then died before committing: nothing of it remains.
        assert fired_events(app) == []
        assert sorted(t.process_id for t in app.timer_store.pending()) == ["d0", "d1", "d2"]
        second = spawn(db_url)
        try:
            wait_until(
                lambda: all(notes(app, f"d{n}") for n in range(3)),
                what="every instance reacted to its timer",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=20)
        assert second.returncode == 0
        for n in range(3):
            assert instance(app, f"d{n}").state["fired"] == ["t"]
            assert notes(app, f"d{n}") == ["t"]
        assert len(fired_events(app)) == 3 and app.timer_store.pending() == []
    finally:
        app.close()


def spawn(db_url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sagas.timer_worker", db_url, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (
            {"schedule": "t", "after": 1, "event_type": "Nope"},
            "ProcessStateError: process manager 'timed': timer 't' would deliver 'Nope', which "
            "is not in its event_types",
        ),
        (
            {"schedule": "t", "after": 1, "at": "2030-01-01T00:00:00+00:00"},
            "ProcessStateError: process manager 'timed': timer 't' needs exactly one of after=",
        ),
        ({"schedule": "t"}, "ProcessStateError: process manager 'timed': timer 't' needs exactly"),
        (
            {"schedule": "t", "at": "2030-01-01T00:00:00"},
            "ProcessStateError: process manager 'timed': timer 't' has a naive at= datetime",
        ),
        (
            {"schedule": "bad<NUL>name", "after": 1},
            "ProcessStateError: process manager 'timed': timer name 'bad\\x00name' contains a NUL",
        ),
        (
            {"cancel": "bad<NUL>name"},
            "ProcessStateError: process manager 'timed': timer name 'bad\\x00name' contains",
        ),
    ],
)
def test_a_bad_timer_stops_the_manager_with_a_reason_and_writes_nothing(
    open_app: Callable[[], App], spec: dict[str, Any], reason: str
) -> None:
    app = open_app()
    # A good timer first, in the same reaction: it must roll back with the bad one.
    do(app, "p1", {"schedule": "good", "after": 1}, spec)
    catch_up(app)
    record = handler_record(app)
    assert record.status == "stopped", record
    assert reason in record.stopped_reason, record.stopped_reason
    assert app.process_store.list_instances() == []
    assert app.timer_store.pending() == []
    assert fired_events(app) == []


def test_a_firing_that_fails_before_it_commits_leaves_the_timer_to_fire_once_later(
    open_app: Callable[[], App], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = open_app()
    due_now(app, clock, "p1")
    real_append = SqlEventTransaction.append

    def broken(self: SqlEventTransaction, *args: Any, **kwargs: Any) -> Any:
        real_append(self, *args, **kwargs)  # appended, then the worker dies before commit
        raise RuntimeError("killed")

    monkeypatch.setattr(SqlEventTransaction, "append", broken)
    with pytest.raises(RuntimeError, match="killed"):
        app.timer_store.fire_due()
    monkeypatch.setattr(SqlEventTransaction, "append", real_append)
    assert [t.name for t in app.timer_store.pending()] == ["t"] and fired_events(app) == []
    assert app.timer_store.fire_due() == 1
    catch_up(app)
    assert len(fired_events(app)) == 1
    assert instance(app, "p1").state["fired"] == ["t"]


# --- the worker's timer loop ----------------------------------------------------------------------


async def test_a_serving_worker_wakes_for_a_timer_due_before_its_next_poll(
    open_app: Callable[[], App],
) -> None:
    app = open_app()
    slow = HandlerRunnerOptions(poll_interval=60, acquire_interval=0.05)
    runner = app.handler_runner(options=slow)
    task = asyncio.create_task(runner.run())
    try:
        await wait_until_async(lambda: handler_record(app), what="the runner took the handler")
        # Due at once (the clock stands still): without the wake-up it would wait a minute.
        await asyncio.to_thread(do, app, "p1", {"schedule": "t", "after": 0})
        # The runner counts a firing once its transaction has returned to the loop, which may
        # be after the handler batch has already handled the timer's event: wait for both.
        await wait_until_async(
            lambda: notes(app, "p1") == ["t"] and runner.timers_fired == 1,
            what="the timer fired (counted by this runner) and its instance reacted",
        )
    finally:
        runner.stop()
        await asyncio.wait_for(task, timeout=20)


@pytest.mark.usefixtures("quick_backoff")
def test_the_timer_loop_waits_out_a_database_outage(
    open_app: Callable[[], App], clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    app = open_app()
    due_now(app, clock, "p1")
    store = app.timer_store
    real_fire_due = store.fire_due
    failures = iter(range(3))

    def flaky(limit: int = 100) -> int:
        if next(failures, None) is not None:
            raise DatabaseUnavailableError("the server is restarting (simulated)")
        return real_fire_due(limit)

    store.fire_due = flaky  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, "tideflow.handlers")
    catch_up(app)
    assert instance(app, "p1").state["fired"] == ["t"]
    lines = [r.getMessage() for r in caplog.records]
    assert sum("firing timers failed" in line for line in lines) == 1, lines
    assert any("database back" in line for line in lines), lines


class TimedToo(Timed):
    name = "timed_too"


def test_a_timer_event_goes_to_its_own_managers_instance_only(
    db_url: str, clock: ManualClock
) -> None:
    # Two managers follow the same events and timer type, with the same process ids: each
    # instance schedules "t", and each fired event reaches the instance that scheduled it only.
    app = App(db_url, aggregates=[Ctl], handlers=[Timed, TimedToo], clock=clock)
    try:
        due_now(app, clock, "p1")
        assert sorted(t.manager for t in app.timer_store.pending()) == ["timed", "timed_too"]
        catch_up(app)
        for manager in ("timed", "timed_too"):
            found = app.process_store.get(manager, "p1")
            assert found is not None and found.state["fired"] == ["t"], manager
        assert notes(app, "p1") == ["t", "t"]
        assert len(fired_events(app)) == 2
    finally:
        app.close()


def test_a_runner_without_process_managers_fires_no_timers(db_url: str) -> None:
    with App(db_url) as plain, timed_app(db_url) as timed:
        assert plain.handler_runner().timers is None
        assert timed.handler_runner().timers is timed.timer_store


def test_tideflow_saga_shows_the_pending_timers(open_app: Callable[[], App], db_url: str) -> None:
    from typer.testing import CliRunner

    from tideflow.cli.main import cli

    app = open_app()
    do(app, "p1", {"schedule": "payment", "after": 900})
    catch_up(app)
    result = CliRunner().invoke(cli, ["saga", Timed.name, "p1", "-d", db_url])
    assert result.exit_code == 0, result.output
    assert "timer payment -> TimerElapsed at" in result.output
