"""Automatic undo, routing and the instance API of process managers, on both backends.

Undo: each ``Undoable`` that succeeded is recorded on the instance; a later refusal dispatches
the recorded undos newest first and the instance ends ``compensated``; a refused undo fails it
with both errors; ``compensate`` stays the override (commands, or ``SKIP``); a worker killed with
SIGKILL while undoing leaves every undo done exactly once. Routing: several instances per event,
``stops_with``, a new instance after an ended one, retention. The instance API of the seed:
start with a config, handle_event, state, compensate, stop, wait (sync and async). And the
defects: a subclass without a name, the event's metadata on the commands sent.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.polling import wait_until
from tests.sagas.trip import Booking, Trips, TripSaga, book_trip, trip_app
from tideflow import App
from tideflow.clock import ManualClock
from tideflow.events import Command, RecordedEvent
from tideflow.events.handling import HandlerDefinitionError
from tideflow.runtime.instances import ProcessNotFoundError, ProcessWaitTimeoutError
from tideflow.sagas import SKIP, Action, ProcessManager, Undoable
from tideflow.worker.handlers import HandlerRunnerOptions

ROOT = Path(__file__).resolve().parents[2]
FAST = HandlerRunnerOptions(poll_interval=0.02, acquire_interval=0.05)


@pytest.fixture
def app(db_url: str, clock: ManualClock) -> Iterator[App]:
    opened = trip_app(db_url, clock=clock)
    yield opened
    opened.close()


def catch_up(app: App) -> None:
    app.handler_runner(options=FAST).run_until_idle()


def types(app: App, stream_id: str) -> list[str]:
    return [e.event_type for e in app.event_store.read_stream(stream_id)]


# --- automatic undo -----------------------------------------------------------------------------


def test_a_refused_command_undoes_the_recorded_commands_newest_first(app: App) -> None:
    book_trip(app, "t1")  # takes the only seat of flight-1
    book_trip(app, "t2")  # its flight is refused: its car, then its hotel, are cancelled
    catch_up(app)

    first = app.process("trip_saga", "t1").get()
    assert (first.status, first.state["booked"], first.error) == ("running", 3, None)
    assert len(first.undo_json) > 2  # three undos recorded, none used

    second = app.process("trip_saga", "t2").get()
    assert second.status == "compensated" and second.finished_at is not None
    assert second.error is not None and "Book for 'flight-1' was refused: Refused" in second.error
    assert types(app, "booking-hotel-t2") == ["Booked", "Cancelled"]
    assert types(app, "booking-car-t2") == ["Booked", "Cancelled"]
    assert types(app, "booking-flight-1") == ["Booked"]  # t1's, untouched
    # In the order they were sent: the two bookings, then the undos, newest first.
    assert [(s["command_type"], s["aggregate_id"], s["undo"]) for s in second.sent] == [
        ("Book", "hotel-t2", False),
        ("Book", "car-t2", False),
        ("Cancel", "car-t2", True),
        ("Cancel", "hotel-t2", True),
    ]
    log = [e for e in app.event_store.read_all() if e.event_type == "Cancelled"]
    assert [e.stream_id for e in log] == ["booking-car-t2", "booking-hotel-t2"]
    # The undo was computed from the booking's own event (its reference).
    assert {e.data["ref"] for e in log} == {"R-t2"}


class Wrecked(TripSaga):
    """Its car's undo names a reference the car never issued: refused."""

    name = "trip_saga"

    def react(self, state: Any, event: RecordedEvent) -> list[Action]:
        actions = super().react(state, event)
        if event.event_type == "TripRequested":
            hotel, car, flight = actions
            assert isinstance(car, Undoable)
            bad = Command("Cancel", car.command.aggregate_id, {"trip": "x", "ref": "nope"})
            return [hotel, Undoable(car.command, bad), flight]
        return actions


def test_a_refused_undo_fails_the_instance_with_both_errors(app: App) -> None:
    app.handlers = [Wrecked]
    book_trip(app, "t1")
    book_trip(app, "t2")  # flight refused; the car's undo is refused too
    catch_up(app)
    failed = app.process("trip_saga", "t2").get()
    assert failed.status == "failed" and failed.finished_at is not None
    assert failed.error is not None
    assert "Book for 'flight-1' was refused: Refused" in failed.error
    assert "then compensation Cancel for 'car-t2' was refused too" in failed.error
    # The undos stop at the refused one: the hotel keeps its booking, for someone to look at.
    assert types(app, "booking-car-t2") == ["Booked"]
    assert types(app, "booking-hotel-t2") == ["Booked"]


class Contended(TripSaga):
    """Its flight's stream is lost to other writers every time: retries exhausted."""

    name = "trip_saga"

    def react(self, state: Any, event: RecordedEvent) -> list[Action]:
        actions = super().react(state, event)
        if event.event_type == "TripRequested":
            hotel, car, flight = actions
            assert isinstance(flight, Undoable)
            contend = Command("Contend", flight.command.aggregate_id, {"trip": "x"})
            return [hotel, car, contend]
        return actions


def test_a_command_out_of_retries_undoes_like_a_refusal(app: App) -> None:
    app.handlers = [Contended]
    book_trip(app, "t1")
    catch_up(app)
    undone = app.process("trip_saga", "t1").get()
    assert undone.status == "compensated"
    assert "Contend for 'flight-1' was refused: ConcurrencyRetriesExhaustedError" in (
        undone.error or ""
    )
    assert types(app, "booking-car-t1") == ["Booked", "Cancelled"]
    assert types(app, "booking-hotel-t1") == ["Booked", "Cancelled"]


def test_compensate_stays_the_override(app: App) -> None:
    class Skipping(TripSaga):
        name = "trip_saga"

        def compensate(self, state: Any, command: Command, error: Exception) -> Any:
            return SKIP

    app.handlers = [Skipping]
    book_trip(app, "t1")
    book_trip(app, "t2")
    catch_up(app)
    kept = app.process("trip_saga", "t2").get()
    assert kept.status == "running" and kept.error is not None  # the error is kept
    assert types(app, "booking-car-t2") == ["Booked"]  # nothing undone

    class Explicit(TripSaga):
        name = "trip_saga"

        def compensate(self, state: Any, command: Command, error: Exception) -> Any:
            return [Command("Cancel", f"hotel-{state['trip']}", {"trip": "?", "ref": "R-t3"})]

    app.handlers = [Explicit]
    book_trip(app, "t3")
    catch_up(app)
    explicit = app.process("trip_saga", "t3").get()
    assert explicit.status == "running"  # the override's commands: the instance carries on
    assert types(app, "booking-hotel-t3") == ["Booked", "Cancelled"]
    assert types(app, "booking-car-t3") == ["Booked"]


def test_a_worker_killed_while_undoing_leaves_every_undo_done_once(db_url: str) -> None:
    """The undos run in the reaction's transaction: a worker killed half-way through them
    commits none, the next worker runs the whole reaction again, and each undo is in the log
    exactly once."""
    app = trip_app(db_url)
    try:
        app.dispatch(Command("AddSeats", "flight-1", {"n": 0}))
        trips = [f"k{n}" for n in range(4)]
        for trip in trips:
            book_trip(app, trip)  # k0 gets the seat; k1..k3 are undone
        env = {**os.environ, "TRIP_SLOW_CANCEL": "0.3"}
        first = subprocess.Popen(
            [sys.executable, "-m", "tests.sagas.trip", db_url],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: app.process("trip_saga", "k1").get().sent if _exists(app, "k1") else None,
                what="the first trip started",
            )
            # Inside the reaction of a refused trip: its bookings are uncommitted, a slow
            # cancel is running. Kill it there.
            wait_until(lambda: _in_flight(db_url), what="a worker inside a reaction", timeout=30)
            os.kill(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            first.kill()
        second = subprocess.Popen(
            [sys.executable, "-m", "tests.sagas.trip", db_url],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: all(
                    _exists(app, t) and app.process("trip_saga", t).get().status != "running"
                    for t in trips[1:]
                ),
                timeout=60,
                what="every refused trip compensated",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=20)
        for trip in trips[1:]:
            assert app.process("trip_saga", trip).get().status == "compensated"
            assert types(app, f"booking-hotel-{trip}") == ["Booked", "Cancelled"]
            assert types(app, f"booking-car-{trip}") == ["Booked", "Cancelled"]
    finally:
        app.close()


def _exists(app: App, trip: str) -> bool:
    try:
        app.process("trip_saga", trip).get()
    except ProcessNotFoundError:
        return False
    return True


def _in_flight(db_url: str) -> bool:
    """Whether the worker holds the trip saga's lease: it is in a batch."""
    probe = trip_app(db_url)
    try:
        return any(
            r.name == "trip_saga" and r.owner is not None
            for r in probe.handler_store.list_handlers()
        )
    finally:
        probe.close()


# --- routing ------------------------------------------------------------------------------------


class Pairs(ProcessManager):
    """Follows trips two by two: a TripRequested addresses the trip and its pair."""

    name = "pairs"
    event_types = ["TripRequested", "Booked"]
    starts_with = ["TripRequested"]
    stops_with = ["Booked"]

    def process_id(self, event: RecordedEvent) -> list[str]:
        trip = str(event.data["trip"])
        return [f"pair-{trip[:-1]}", f"solo-{trip}"] if event.event_type == "TripRequested" else []

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        return {"seen": [*state.get("seen", []), event.data["trip"]]}


def test_one_event_may_address_several_instances(db_url: str, clock: ManualClock) -> None:
    app = App(db_url, aggregates=[Booking, Trips], handlers=[Pairs], clock=clock)
    try:
        for trip in ("a1", "a2"):
            app.dispatch(Command("BookTrip", trip, {}))
        catch_up(app)
        assert app.process(Pairs, "pair-a").state == {"seen": ["a1", "a2"]}
        assert app.process(Pairs, "solo-a1").state == {"seen": ["a1"]}
        assert app.process(Pairs, "solo-a2").state == {"seen": ["a2"]}
    finally:
        app.close()


class Stays(ProcessManager):
    name = "stays"
    event_types = ["TripRequested", "SeatsAdded"]
    starts_with = ["TripRequested"]
    stops_with = ["SeatsAdded"]
    retention = 3600.0

    def process_id(self, event: RecordedEvent) -> str:
        return "hotel" if event.event_type == "SeatsAdded" else str(event.data["trip"])

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        return {"n": state.get("n", 0) + 1}


def test_stops_with_ends_an_instance_and_a_start_begins_a_new_one(
    db_url: str, clock: ManualClock
) -> None:
    app = App(db_url, aggregates=[Booking, Trips], handlers=[Stays], clock=clock)
    try:
        app.dispatch(Command("BookTrip", "hotel", {}))
        app.dispatch(Command("AddSeats", "x", {"n": 1}))
        app.dispatch(Command("AddSeats", "x", {"n": 1}))  # for an ended instance: ignored
        catch_up(app)
        ended = app.process(Stays, "hotel").get()
        assert (ended.status, ended.state, ended.version) == ("completed", {"n": 2}, 2)
        assert ended.finished_at == clock.now()

        clock.advance(60)
        app.dispatch(Command("BookTrip", "hotel", {}))  # the same id starts afresh
        catch_up(app)
        fresh = app.process(Stays, "hotel").get()
        assert (fresh.status, fresh.state, fresh.version) == ("running", {"n": 1}, 1)
        assert fresh.started_at == clock.now() and fresh.finished_at is None
        assert fresh.sent == []
    finally:
        app.close()


def test_ended_instances_are_pruned_after_the_retention(db_url: str, clock: ManualClock) -> None:
    app = App(db_url, aggregates=[Booking, Trips], handlers=[Stays], clock=clock)
    try:
        app.dispatch(Command("BookTrip", "hotel", {}))
        app.dispatch(Command("AddSeats", "x", {"n": 1}))
        catch_up(app)
        clock.advance(Stays.retention - 1)
        app.dispatch(Command("BookTrip", "b", {}))
        catch_up(app)
        assert app.process(Stays, "hotel").get().status == "completed"  # kept: within retention
        clock.advance(2)
        app.dispatch(Command("BookTrip", "c", {}))  # a new instance prunes what has expired
        catch_up(app)
        with pytest.raises(ProcessNotFoundError, match="tideflow sagas"):
            app.process(Stays, "hotel").get()
        assert app.process(Stays, "b").get().status == "running"
    finally:
        app.close()


# --- the instance API ---------------------------------------------------------------------------


class Configured(ProcessManager):
    name = "configured"
    event_types = ["TripRequested"]

    def process_id(self, event: RecordedEvent) -> str:
        return str(event.data["trip"])

    def initial_state(self, process_id: str, config: Any = None) -> Any:
        return {"id": process_id, "config": dict(config or {}), "n": 0}

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        return {**state, "n": state["n"] + 1}


def test_the_instance_api_starts_handles_reads_stops_and_waits(
    db_url: str, clock: ManualClock
) -> None:
    app = App(db_url, aggregates=[Booking, Trips], handlers=[Configured], clock=clock)
    try:
        app.dispatch(Command("BookTrip", "old", {}))  # before the start: not this instance's
        handle = app.process(Configured, "p1")
        with pytest.raises(ProcessNotFoundError):
            handle.get()
        started = handle.start({"limit": 3})
        assert (started.status, started.state) == (
            "running",
            {"id": "p1", "config": {"limit": 3}, "n": 0},
        )
        assert handle.start({"limit": 99}).state["config"] == {"limit": 3}  # returned, kept

        [old] = list(app.event_store.read_all())[-1:]
        assert handle.handle_event(old) is False  # older than the instance: skipped
        app.dispatch(Command("BookTrip", "p1", {}))
        [new] = list(app.event_store.read_all())[-1:]
        assert handle.handle_event(new) is True
        assert handle.state["n"] == 1
        catch_up(app)  # the log path sees the same event: already applied, skipped
        assert handle.state["n"] == 1

        with pytest.raises(ProcessWaitTimeoutError, match="completed"):
            handle.wait("completed", timeout=0.05)
        assert handle.stop().status == "completed"
        assert handle.wait(timeout=1).status == "completed"
        assert handle.start({"limit": 1}).state["config"] == {"limit": 1}  # a new one

        async def async_calls() -> None:
            aio = app.aio.process("configured", "p2")
            assert (await aio.start({"a": 1})).state["config"] == {"a": 1}
            waiting = asyncio.create_task(aio.wait("completed", timeout=5))
            await asyncio.sleep(0.05)
            await aio.stop()
            assert (await waiting).status == "completed"

        asyncio.run(async_calls())
        with pytest.raises(Exception, match="no process manager 'nope'"):
            app.process("nope", "x")
    finally:
        app.close()


def test_compensate_through_the_instance_api(app: App) -> None:
    book_trip(app, "t1")
    catch_up(app)
    handle = app.process(TripSaga, "t1")
    flight = Command("Book", "flight-9", {"trip": "t1"})
    undone = handle.compensate(flight, RuntimeError("the airline went bust"))
    assert [(c.command_type, c.aggregate_id) for c in undone] == [  # type: ignore[union-attr]
        ("Cancel", "flight-1"),
        ("Cancel", "car-t1"),
        ("Cancel", "hotel-t1"),
    ]
    done = handle.get()
    assert done.status == "compensated"
    assert "the airline went bust" in (done.error or "")
    assert types(app, "booking-hotel-t1") == ["Booked", "Cancelled"]
    assert handle.compensate(flight) is SKIP  # nothing left to undo


# --- defects ------------------------------------------------------------------------------------


def test_a_subclass_without_a_name_of_its_own_is_refused() -> None:
    with pytest.raises(HandlerDefinitionError, match="name = 'trip_saga'"):

        class Tweaked(TripSaga):
            batch_size = 5

    class Kept(TripSaga):
        name = "trip_saga"
        batch_size = 5

    assert Kept.name == "trip_saga"


def test_commands_carry_the_events_metadata(app: App) -> None:
    app.dispatch(
        Command(
            "BookTrip",
            "t1",
            {"hotel": "hotel-t1", "car": "car-t1", "flight": "flight-1"},
            metadata={"user": "ada", "ip": "10.0.0.1"},
        )
    )
    catch_up(app)
    booked = next(iter(app.event_store.read_stream("booking-hotel-t1")))
    assert booked.metadata["user"] == "ada" and booked.metadata["ip"] == "10.0.0.1"


def test_process_id_lists_are_checked(db_url: str) -> None:
    class Bad(ProcessManager):
        name = "bad_ids"
        event_types = ["TripRequested"]

        def process_id(self, event: RecordedEvent) -> Any:
            return ["ok", ""]

    app = App(db_url, aggregates=[Trips], handlers=[Bad])
    try:
        app.dispatch(Command("BookTrip", "x", {}))
        catch_up(app)
        record = next(r for r in app.handler_store.list_handlers() if r.name == "bad_ids")
        assert record.status == "stopped"
        assert "process_id() returned ['ok', '']" in (record.last_error or "")
    finally:
        app.close()


def test_tideflow_saga_shows_what_was_sent_and_undone(app: App, db_url: str) -> None:
    from typer.testing import CliRunner

    from tideflow.cli.main import cli

    book_trip(app, "t1")
    book_trip(app, "t2")
    catch_up(app)
    result = CliRunner().invoke(
        cli, ["saga", "trip_saga", "t2", "-d", db_url], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.output.splitlines()]
    assert "compensated" in lines[0]
    sent = [" ".join(line.split()) for line in lines if line.startswith(("sent", "undid"))]
    assert [line.split(" (")[0] for line in sent] == [
        "sent Book -> hotel-t2",
        "sent Book -> car-t2",
        "undid Cancel -> car-t2",
        "undid Cancel -> hotel-t2",
    ]
    listing = CliRunner().invoke(
        cli, ["sagas", "--status", "compensated", "-d", db_url], env={"COLUMNS": "200"}
    )
    assert listing.exit_code == 0 and "t2" in listing.output and "t1" not in listing.output


def test_the_runner_can_override_every_handlers_batch_size(app: App) -> None:
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        HandlerRunnerOptions(batch_size=0)
    for n in range(3):
        book_trip(app, f"t{n}", flight=f"flight-{n}")
    runner = app.handler_runner(options=HandlerRunnerOptions(batch_size=1, poll_interval=0.02))
    runner.run_until_idle()
    assert all(app.process("trip_saga", f"t{n}").get().state["booked"] == 3 for n in range(3))


def test_the_worker_command_takes_the_handler_batch_size() -> None:
    from typer.testing import CliRunner

    from tideflow.cli.main import cli

    result = CliRunner().invoke(cli, ["worker", "--help"], env={"COLUMNS": "200"})
    assert "--handler-batch-size" in result.output and "--handler-lease" in result.output
