"""A trip saga for the tests of automatic undo, routing and the instance API.

A ``BookTrip`` books a hotel, then a car, then a flight, each an ``Undoable`` whose undo cancels
it. A flight with no seats left is refused, and the car and the hotel are cancelled, newest
first. Run as a worker (``python -m tests.sagas.trip URL``) it slows the cancellations down so
that a test can kill it in the middle of undoing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any

from tideflow import App
from tideflow.events import Aggregate, Command, DomainError, RecordedEvent, applies, handles
from tideflow.events.commands import ConcurrencyRetriesExhaustedError
from tideflow.sagas import Action, ProcessManager, Undoable
from tideflow.worker.handlers import HandlerRunnerOptions

Data = dict[str, Any]
#: Seconds each cancellation takes in the worker process (the SIGKILL test sets it).
SLOW_CANCEL = float(os.environ.get("TRIP_SLOW_CANCEL", "0"))


class Refused(DomainError):
    pass


class Booking(Aggregate):
    """One aggregate type for hotels, cars and flights: ``<kind>-<id>`` has ``seats``."""

    def initial_state(self, aggregate_id: str) -> Data:
        return {"seats": 1, "booked": []}

    @handles("AddSeats")
    def add(self, state: Data, command: Command) -> tuple[str, Data]:
        return ("SeatsAdded", {"n": command.payload["n"]})

    @handles("Book")
    def book(self, state: Data, command: Command) -> tuple[str, Data]:
        if state["seats"] <= 0:
            raise Refused(f"{command.aggregate_id} is full")
        return ("Booked", {"trip": command.payload["trip"], "ref": f"R-{command.payload['trip']}"})

    @handles("Contend")
    def contend(self, state: Data, command: Command) -> tuple[str, Data]:
        """Stands for a stream other writers win every time: out of retries."""
        raise ConcurrencyRetriesExhaustedError(command, f"booking-{command.aggregate_id}", 4)

    @handles("Cancel")
    def cancel(self, state: Data, command: Command) -> tuple[str, Data]:
        if SLOW_CANCEL:
            time.sleep(SLOW_CANCEL)
        if command.payload["ref"] not in state["booked"]:
            raise Refused(f"{command.aggregate_id} has no booking {command.payload['ref']}")
        return ("Cancelled", {"trip": command.payload["trip"], "ref": command.payload["ref"]})

    @applies("SeatsAdded")
    def added(self, state: Data, event: RecordedEvent) -> Data:
        return {**state, "seats": state["seats"] + event.data["n"]}

    @applies("Booked")
    def booked(self, state: Data, event: RecordedEvent) -> Data:
        return {"seats": state["seats"] - 1, "booked": [*state["booked"], event.data["ref"]]}

    @applies("Cancelled")
    def cancelled(self, state: Data, event: RecordedEvent) -> Data:
        left = [r for r in state["booked"] if r != event.data["ref"]]
        return {"seats": state["seats"] + 1, "booked": left}


class Trips(Aggregate):
    @handles("BookTrip")
    def start(self, state: Any, command: Command) -> tuple[str, Data]:
        return ("TripRequested", {"trip": command.aggregate_id, **command.payload})


def cancel_of(kind_id: str, trip: str) -> Any:
    """The undo of booking ``kind_id``: a function of the events the booking recorded."""

    def undo(events: Sequence[RecordedEvent]) -> Command:
        return Command("Cancel", kind_id, {"trip": trip, "ref": events[0].data["ref"]})

    return undo


class TripSaga(ProcessManager):
    name = "trip_saga"
    event_types = ["TripRequested", "Booked", "Cancelled"]
    starts_with = ["TripRequested"]

    def process_id(self, event: RecordedEvent) -> str:
        return str(event.data["trip"])

    def react(self, state: Data, event: RecordedEvent) -> list[Action]:
        if event.event_type == "TripRequested":
            trip, data = event.data["trip"], event.data
            return [
                Undoable(
                    Command("Book", data["hotel"], {"trip": trip}),
                    cancel_of(data["hotel"], trip),
                ),
                Undoable(
                    Command("Book", data["car"], {"trip": trip}),
                    cancel_of(data["car"], trip),
                ),
                Undoable(
                    Command("Book", data["flight"], {"trip": trip}),
                    Command("Cancel", data["flight"], {"trip": trip, "ref": f"R-{trip}"}),
                ),
            ]
        return []

    def apply(self, state: Data, event: RecordedEvent) -> Data:
        if event.event_type == "TripRequested":
            return {"trip": event.data["trip"], "booked": 0}
        if event.event_type == "Booked":
            return {**state, "booked": state["booked"] + 1}
        return state


def trip_app(url: str | None, **options: Any) -> App:
    return App(url, aggregates=[Booking, Trips], handlers=[TripSaga], **options)


def book_trip(app: App, trip: str, flight: str = "flight-1") -> None:
    payload = {"hotel": f"hotel-{trip}", "car": f"car-{trip}", "flight": flight}
    app.dispatch(Command("BookTrip", trip, payload))


async def main(url: str) -> None:
    app = trip_app(url)
    runner = app.handler_runner(
        f"trip-worker-{os.getpid()}",
        HandlerRunnerOptions(poll_interval=0.05, lease_ttl=1.0, acquire_interval=0.1),
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, runner.stop)
    try:
        await runner.run()
    finally:
        app.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
