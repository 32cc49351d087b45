"""The app the restart test's worker process runs: ``tideflow worker --app
tests.restart.app:app -d URL``.

``Pipeline`` leaves one marker file per step execution (named after run, step and attempt), so
that the test can tell a step that ran twice in one attempt from one retried after its lease
expired. ``Tally`` counts events with a primary key on the position: a double delivery would
fail it (and show up as a dead letter or a stopped handler). ``Booking`` is a process manager
that uses what a saga has - an undoable command, a durable timer, a flow that reports back, and
the automatic undo when a later command is refused - so that the restarts hit all of them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from tideflow import App, Flow, StepContext, step
from tideflow.events import Aggregate, Command, DomainError, handles
from tideflow.events.handling import HandlerContext
from tideflow.events.model import RecordedEvent
from tideflow.events.projections import Projection
from tideflow.sagas import Action, ProcessManager, ScheduleTimer, StartFlow, Undoable


def _mark(ctx: StepContext, name: str) -> None:
    marks = Path(os.environ["TIDEFLOW_RESTART_MARKS"])
    (marks / f"{ctx.run_id}~{name}~{ctx.attempt}~{uuid.uuid4().hex[:8]}").write_text("x")


class Pipeline(Flow, slug="pipeline", max_attempts=10, base_delay=0.05, max_delay=0.5):
    @step()
    def first(self, input: Any, ctx: StepContext) -> int:
        _mark(ctx, "first")
        return int(input["n"]) + 1

    @step(depends_on=["first"])
    async def second(self, first: int, ctx: StepContext) -> int:
        _mark(ctx, "second")
        return first * 2


class Tally(Projection):
    name = "tally"
    event_types = ("Tick",)  # the load's appends, not the sagas' events
    batch_size = 50
    tables = ("tally_seen", "tally_totals")
    schema = """
        CREATE TABLE IF NOT EXISTS tally_seen (position BIGINT PRIMARY KEY);
        CREATE TABLE IF NOT EXISTS tally_totals (stream TEXT PRIMARY KEY, n BIGINT NOT NULL);
    """

    def handle(self, event: RecordedEvent, ctx: HandlerContext) -> None:
        ctx.execute("INSERT INTO tally_seen (position) VALUES (%(p)s)", {"p": event.position})
        ctx.execute(
            "INSERT INTO tally_totals (stream, n) VALUES (%(s)s, 1) ON CONFLICT (stream) "
            "DO UPDATE SET n = tally_totals.n + 1",
            {"s": event.stream_id},
        )


class Venue(Aggregate):
    """Seats and payments of bookings: one stream per booking and kind (``seat-``, ``pay-``)."""

    aggregate_type = "venue"

    @handles("Book")
    def book(self, state: Any, command: Command) -> Any:
        return ("Booked", {"booking": command.aggregate_id, **command.payload})

    @handles("Hold")
    def hold(self, state: Any, command: Command) -> Any:
        return ("Held", dict(command.payload))

    @handles("Release")
    def release(self, state: Any, command: Command) -> Any:
        return ("Released", dict(command.payload))

    @handles("Charge")
    def charge(self, state: Any, command: Command) -> Any:
        if command.payload["refuse"]:
            raise DomainError(f"card of {command.payload['booking']} declined")
        return ("Charged", {"booking": command.payload["booking"]})


class Ticket(Flow, slug="ticket", max_attempts=10, base_delay=0.05, max_delay=0.5):
    @step()
    def issue(self, input: Any) -> dict[str, Any]:
        return {"ticket": f"T-{input['booking']}"}


class Booking(ProcessManager):
    """Booked -> hold a seat (undo: release it) and wait 0.2 s (a timer) -> charge and issue
    the ticket (a flow) -> completed when the flow reports back; a refused charge undoes the
    hold (compensated)."""

    name = "booking"
    event_types = ["Booked", "Waited", "FlowRunCompleted"]
    starts_with = ["Booked"]

    def process_id(self, event: RecordedEvent) -> str | None:
        booking = event.data.get("booking")
        return None if booking is None else str(booking)

    def initial_state(self, process_id: str) -> Any:
        return {"booking": process_id, "refuse": False, "ticket": None}

    def react(self, state: Any, event: RecordedEvent) -> list[Action]:
        b = state["booking"]
        if event.event_type == "Booked":
            return [
                Undoable(
                    Command("Hold", f"seat-{b}", {"booking": b}),
                    undo=Command("Release", f"seat-{b}", {"booking": b}),
                ),
                ScheduleTimer("wait", after=0.2, event_type="Waited", data={"booking": b}),
            ]
        if event.event_type == "Waited":
            return [
                Command("Charge", f"pay-{b}", {"booking": b, "refuse": state["refuse"]}),
                StartFlow(Ticket, {"booking": b}),
            ]
        return []

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        if event.event_type == "Booked":
            return {**state, "refuse": bool(event.data.get("refuse"))}
        if event.event_type == "FlowRunCompleted":
            return {**state, "ticket": event.data["output"]["issue"]["ticket"]}  # leaves by slug
        return state

    def is_done(self, state: Any) -> bool:
        return state["ticket"] is not None


app = App(
    "sqlite:///never-used.db",
    flows=[Pipeline, Ticket],
    handlers=[Tally, Booking],
    aggregates=[Venue],
)
