"""Cron schedules (issue 10 item 8) on both backends, with a ManualClock: what is stored, which
ticks fire under each catch-up mode, the worker's loop, and concurrent firing - each tick once."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.polling import wait_until
from tests.schedules.jobs_for_tests import Report, heartbeat
from tideflow import (
    App,
    FlowNotFoundError,
    InputNotSerializableError,
    InvalidCronError,
    MapInputError,
    Schedule,
    ScheduleConflictError,
    ScheduleError,
    UnknownTimezoneError,
)
from tideflow.clock import ManualClock
from tideflow.flows import Flow, scheduled_tick, step

START = datetime(2030, 1, 1, 0, 0, 30, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


def app_with(db_url: str, clock: ManualClock, *schedules: Schedule) -> App:
    return App(db_url, clock=clock, schedules=schedules)


@pytest.fixture
def apps(db_url: str, clock: ManualClock) -> Iterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.close()


def fired(app: App, name: str) -> list[str]:
    """The ticks fired, oldest first, as HH:MM."""
    return [t.tick_at.strftime("%H:%M") for t in reversed(app.schedule_ticks(name, 1000))]


# --- declaring ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"cron": "61 * * * *"}, InvalidCronError, "'61 * * * *'"),
        ({"cron": "* * * *"}, InvalidCronError, "'* * * *'"),
        ({"cron": "0 0 31 2 *"}, InvalidCronError, "'0 0 31 2 *'"),
        ({"cron": "every minute"}, InvalidCronError, "'every minute'"),
        ({"timezone": "Mars/Olympus"}, UnknownTimezoneError, "'Mars/Olympus'"),
        ({"timezone": "../../etc/passwd"}, UnknownTimezoneError, "'../../etc/passwd'"),
        ({"timezone": ""}, UnknownTimezoneError, "timezone must be"),
        ({"catch_up": "some"}, ScheduleError, "catch_up must be"),
        ({"grace": -1}, ScheduleError, "grace must be"),
        ({"name": "Bad Name"}, ScheduleError, "'Bad Name'"),
        ({"input": {"when": {1, 2}}}, InputNotSerializableError, "schedule"),
    ],
)
def test_a_malformed_schedule_is_refused_by_name_when_declared(
    kwargs: dict[str, object], error: type[Exception], named: str
) -> None:
    args: dict[str, object] = {"target": heartbeat, "cron": "* * * * *", **kwargs}
    with pytest.raises(error, match=named.replace("*", r"\*").replace(".", r"\.")) as info:
        Schedule(**args)  # type: ignore[arg-type]
    if isinstance(info.value, InvalidCronError):
        assert info.value.expression == args["cron"]
    if isinstance(info.value, UnknownTimezoneError):
        assert info.value.timezone == args["timezone"]


def test_two_schedules_with_one_name_conflict() -> None:
    with pytest.raises(ScheduleConflictError, match="'heartbeat'"):
        App(
            "sqlite:///:memory:",
            schedules=[Schedule(heartbeat, "* * * * *"), Schedule(heartbeat, "0 * * * *")],
        )


def test_an_unknown_target_or_a_bad_map_input_writes_nothing(
    db_url: str, clock: ManualClock
) -> None:
    class Fanout(Flow, slug="fanout"):
        @step(map=True)
        def each(self, item: object) -> object:
            return item

    with app_with(db_url, clock, Schedule("no_such_flow", "* * * * *")) as app:
        with pytest.raises(FlowNotFoundError, match="no_such_flow"):
            app.worker()
        assert app.list_schedules() == []
    bad_map = Schedule(Fanout, "* * * * *", input={"not": "a list"})
    with app_with(db_url, clock, Schedule(heartbeat, "* * * * *"), bad_map) as app:
        with pytest.raises(MapInputError):
            app.sync_schedules()
        assert app.list_schedules() == []


# --- storing -----------------------------------------------------------------------------------


def test_a_new_schedule_starts_now_and_an_unchanged_one_is_not_rewritten(
    db_url: str, clock: ManualClock, apps: list[App]
) -> None:
    every_minute = Schedule(Report, "*/5 * * * *", input={"kind": "daily"}, name="five")
    apps.append(app := app_with(db_url, clock, every_minute))
    app.sync_schedules()
    [row] = app.list_schedules()
    assert (row.name, row.flow_slug, row.input, row.catch_up) == (
        "five",
        "report",
        {"kind": "daily"},
        "latest",
    )
    assert row.last_tick_at == START  # ticks before it was stored never fire
    assert row.next_tick_at == START.replace(minute=5, second=0)
    clock.advance(60)
    app.sync_schedules()  # another worker starting: nothing changed, nothing written
    assert app.list_schedules() == [row]
    # A new input keeps the series; a new cron expression starts a new one from now.
    apps.append(changed := app_with(db_url, clock, Schedule(Report, "*/5 * * * *", name="five")))
    changed.sync_schedules()
    [kept] = changed.list_schedules()
    assert (kept.input, kept.last_tick_at, kept.updated_at) == (None, START, clock.now())
    apps.append(hourly := app_with(db_url, clock, Schedule(Report, "0 * * * *", name="five")))
    hourly.sync_schedules()
    [moved] = hourly.list_schedules()
    assert (moved.cron, moved.last_tick_at) == ("0 * * * *", clock.now())
    assert moved.next_tick_at == START.replace(hour=1, minute=0, second=0)


# --- firing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("catch_up", "after_downtime"),
    [
        ("all", ["00:01", "00:02", "00:03", "00:04", "00:05", "00:06"]),
        ("latest", ["00:01", "00:06"]),
        ("none", ["00:01"]),
    ],
)
def test_catch_up_after_downtime(
    db_url: str, clock: ManualClock, apps: list[App], catch_up: str, after_downtime: list[str]
) -> None:
    schedule = Schedule(heartbeat, "* * * * *", catch_up=catch_up, grace=30)  # type: ignore[arg-type]
    apps.append(app := app_with(db_url, clock, schedule))
    app.sync_schedules()
    assert app.fire_schedules() == []  # 00:00:30: nothing due yet
    clock.advance(40)  # 00:01:10, ten seconds late: within the grace
    assert app.fire_schedules() == ["schedule:heartbeat@2030-01-01T00:01:00Z"]
    assert scheduled_tick("schedule:heartbeat@2030-01-01T00:01:00Z") == START.replace(
        minute=1, second=0
    )
    assert scheduled_tick("schedule:x@nonsense") is None
    assert scheduled_tick("3f2a-uuid@2030-01-01T00:01:00Z") is None
    assert app.fire_schedules() == []  # that tick is done
    clock.advance(330)  # 00:06:40: the workers were down for six ticks, the latest 40 s ago
    app.fire_schedules()
    assert fired(app, "heartbeat") == after_downtime
    [row] = app.list_schedules()
    assert row.last_tick_at == START.replace(minute=6, second=0)  # passed-over ticks are done
    assert row.next_tick_at == START.replace(minute=7, second=0)
    clock.advance(30)  # 00:07:10: on time again, every mode fires the 00:07 tick
    app.fire_schedules()
    assert fired(app, "heartbeat")[-1] == "00:07"
    for tick in app.schedule_ticks("heartbeat"):
        run = app.get_run(tick.run_id)
        assert (run.flow_slug, run.input) == ("heartbeat", None)


def test_all_catches_up_in_bounded_passes(db_url: str, clock: ManualClock, apps: list[App]) -> None:
    apps.append(app := app_with(db_url, clock, Schedule(heartbeat, "* * * * * *", catch_up="all")))
    app.sync_schedules()
    clock.advance(250)  # 250 per-second ticks due: 100 per transaction
    assert len(app.fire_schedules()) == 100
    assert len(app.fire_schedules()) == 100
    assert len(app.fire_schedules()) == 50
    assert app.fire_schedules() == []
    assert len(app.schedule_ticks("heartbeat", 1000)) == 100  # the newest 100 rows are kept
    assert len(app.list_runs(limit=1000)) == 250


def test_the_worker_loop_fires_due_ticks(db_url: str, clock: ManualClock, apps: list[App]) -> None:
    apps.append(app := App(db_url, clock=clock, schedules=[Schedule(Report, "* * * * *")]))
    worker = app.worker(schedule_interval=0.02, poll_interval=0.02)
    thread = threading.Thread(target=lambda: __import__("asyncio").run(worker.run()))
    thread.start()
    try:
        clock.advance(30)
        run_id = wait_until(
            lambda: [t.run_id for t in app.schedule_ticks("report")], what="the 00:01 tick"
        )[0]
        assert app.wait_for_run(run_id, timeout=20).output == {"build": {"report": None}}
        clock.advance(60)
        wait_until(lambda: len(app.schedule_ticks("report")) == 2, what="the 00:02 tick")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert [t.tick_at.minute for t in app.schedule_ticks("report")] == [2, 1]


def test_many_processes_firing_at_once_fire_each_tick_once(
    db_url: str, clock: ManualClock, apps: list[App]
) -> None:
    """Eight Apps - eight connections, as eight workers would have - fire the same schedules at
    the same instants from eight threads: every tick has exactly one tick row and one run."""
    schedules = [
        Schedule(heartbeat, "* * * * * *", catch_up="all"),
        Schedule(Report, "*/2 * * * * *", catch_up="latest", name="report_latest"),
    ]
    for _ in range(8):
        apps.append(app_with(db_url, clock, *schedules))
    apps[0].sync_schedules()
    started: list[str] = []
    lock = threading.Lock()
    for _ in range(5):
        clock.advance(7)
        barrier = threading.Barrier(len(apps))

        def fire(app: App, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            runs = app.fire_schedules()
            with lock:
                started.extend(runs)

        threads = [threading.Thread(target=fire, args=(app,)) for app in apps]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert len(started) == len(set(started))
    beats = [t.tick_at for t in apps[0].schedule_ticks("heartbeat", 1000)]
    assert len(beats) == 35  # every second of the 35, once
    assert sorted(beats) == [START + timedelta(seconds=s) for s in range(1, 36)]
    assert len([r for r in started if r.startswith("schedule:heartbeat@")]) == 35
    assert len(apps[0].schedule_ticks("report_latest", 1000)) == 5  # the latest, each time
    assert len(started) == 40
    assert len(apps[0].list_runs(limit=1000)) == 40


def test_a_tick_whose_run_cannot_start_waits_and_is_logged_once(
    db_url: str, clock: ManualClock, apps: list[App], caplog: pytest.LogCaptureFixture
) -> None:
    """A schedule by slug whose latest stored version came to need an array input: the tick
    writes nothing and waits (it fires once the flow is fixed), the worker goes on, and the
    problem is logged once, not on every pass."""

    class Single(Flow, slug="by_slug"):
        @step()
        def one(self, input: object) -> object:
            return input

    class Mapped(Flow, slug="by_slug"):
        @step(map=True)
        def each(self, item: object) -> object:
            return item

    apps.append(app := app_with(db_url, clock, Schedule("by_slug", "* * * * *", input={"a": 1})))
    app.store.ensure_flow(Single.definition)
    app.sync_schedules()
    clock.advance(10)
    app.store.ensure_flow(Mapped.definition)  # the latest stored version now maps its input
    clock.advance(60)
    with caplog.at_level("ERROR", logger="tideflow.worker"):
        assert app.fire_schedules() == []
        assert app.fire_schedules() == []
    assert sum("schedule by_slug cannot fire" in r.message for r in caplog.records) == 1
    assert app.schedule_ticks("by_slug") == [] and app.list_runs() == []
    [row] = app.list_schedules()
    assert row.last_tick_at == START  # the tick still waits
