"""Daylight saving time, as cronsim defines it (docs/concepts/schedules.md#daylight-saving-time):
a fixed local time skipped by the spring change fires once, right after the gap; one repeated by
the autumn change fires once, at its first occurrence; an expression with ``*`` in the minute or
hour field follows real time (no tick in the skipped hour, both passes of the repeated one).
Europe/Berlin in 2030: clocks go 02:00 -> 03:00 on 31 March, 03:00 -> 02:00 on 27 October."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.schedules.jobs_for_tests import heartbeat
from tideflow import App, Schedule
from tideflow.clock import ManualClock
from tideflow.flows.schedules import ticks_after

BERLIN = "Europe/Berlin"


def local_ticks(cron: str, start: datetime, end: datetime) -> list[str]:
    """The ticks in (start, end], in Berlin time with their UTC offset."""
    from zoneinfo import ZoneInfo

    zone = ZoneInfo(BERLIN)
    return [
        t.astimezone(zone).strftime("%m-%d %H:%M%z")
        for t in ticks_after(cron, BERLIN, start, end, 100)
    ]


def test_spring_forward_a_skipped_fixed_time_fires_once_after_the_gap() -> None:
    start, end = datetime(2030, 3, 30, 12, tzinfo=UTC), datetime(2030, 4, 1, 12, tzinfo=UTC)
    assert local_ticks("30 2 * * *", start, end) == ["03-31 03:00+0200", "04-01 02:30+0200"]
    assert local_ticks("0 3 * * *", start, end) == ["03-31 03:00+0200", "04-01 03:00+0200"]


def test_fall_back_a_repeated_fixed_time_fires_once_at_its_first_occurrence() -> None:
    start, end = datetime(2030, 10, 26, 12, tzinfo=UTC), datetime(2030, 10, 28, 12, tzinfo=UTC)
    assert local_ticks("30 2 * * *", start, end) == ["10-27 02:30+0200", "10-28 02:30+0100"]


def test_wildcard_hours_follow_real_time() -> None:
    night = datetime(2030, 3, 30, 23, 30, tzinfo=UTC)
    spring = local_ticks("0 * * * *", night, night + timedelta(hours=2, minutes=30))
    assert spring == ["03-31 01:00+0100", "03-31 03:00+0200", "03-31 04:00+0200"]  # no 02:00
    night = datetime(2030, 10, 26, 23, 30, tzinfo=UTC)
    autumn = local_ticks("0 * * * *", night, night + timedelta(hours=2, minutes=30))
    assert autumn == ["10-27 02:00+0200", "10-27 02:00+0100", "10-27 03:00+0100"]  # 02:00 twice


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (datetime(2030, 3, 30, 12, tzinfo=UTC), 2, ["03-31T01:00", "04-01T00:30"]),
        (datetime(2030, 10, 26, 12, tzinfo=UTC), 2, ["10-27T00:30", "10-28T01:30"]),
    ],
)
def test_a_stored_schedule_fires_across_a_change_once_a_day(
    db_url: str, start: datetime, days: int, expected: list[str]
) -> None:
    clock = ManualClock(start)
    nightly = Schedule(heartbeat, "30 2 * * *", timezone=BERLIN, catch_up="all")
    with App(db_url, clock=clock, schedules=[nightly]) as app:
        app.sync_schedules()
        for _ in range(days * 24 * 4):  # a look every 15 minutes
            clock.advance(timedelta(minutes=15).total_seconds())
            app.fire_schedules()
        ticks = [t.tick_at.strftime("%m-%dT%H:%M") for t in app.schedule_ticks("heartbeat")]
        assert sorted(ticks) == expected  # UTC
