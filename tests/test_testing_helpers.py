"""tideflow.testing: flows run to the end in memory on a manual clock, and process manager
scenarios. They run on an in-memory SQLite database by design (a test's own, gone with it), so
these tests have no PostgreSQL variant; what they drive is the same runtime the conformance
suites hold to both backends."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from examples.order_saga import OrderFulfilment, Stock

from tideflow import Flow, NonRetryableError, StepContext, step
from tideflow.events import Command, RecordedEvent
from tideflow.sagas import Action, ProcessManager, ScheduleTimer, Undoable
from tideflow.testing import FlowTestbed, run_flow, saga


class Flaky(Flow, slug="flaky", max_attempts=5, base_delay=60, max_delay=600):
    @step()
    def fetch(self, input: Any, ctx: StepContext) -> dict[str, Any]:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt}: the server is away")
        return {"items": input["items"]}

    @step(depends_on=["fetch"])
    def items(self, fetch: dict[str, Any]) -> list[int]:
        return list(fetch["items"])

    @step(depends_on=["items"], map=True)
    def double(self, item: int) -> int:
        return item * 2


class Refused(Flow, slug="refused"):
    @step()
    def check(self, input: Any) -> None:
        raise NonRetryableError("no such customer")


def test_run_flow_moves_the_clock_through_the_backoffs_and_reports_every_attempt() -> None:
    run = run_flow(Flaky, {"items": [1, 2, 3]})
    assert run.status == "completed"
    assert run.output == {"double": [2, 4, 6]}
    fetch = run.step("fetch")
    assert fetch.attempts == 3 and fetch.tasks[0].status == "completed"
    assert run.step("double").output == [2, 4, 6]
    # Two backoffs (a minute, then two, with jitter) went by on the clock, not in real time.
    assert run.duration is not None and run.duration >= 60


def test_a_failed_run_comes_back_with_its_error() -> None:
    run = run_flow(Refused, {})
    assert (run.status, run.step("check").attempts) == ("failed", 1)
    assert "no such customer" in (run.error or "")


def test_a_testbed_runs_several_flows_with_their_aggregates() -> None:
    class Restock(Flow, slug="restock"):
        @step()
        def add(self, input: Any, ctx: StepContext) -> int:
            result = ctx.dispatch(Command("AddStock", input["sku"], {"qty": input["qty"]}))
            return result.version

    with FlowTestbed([Restock, Flaky], aggregates=[Stock]) as bed:
        assert bed.run(Restock, {"sku": "tea", "qty": 3}).output == {"add": 1}
        assert bed.run(Restock, {"sku": "tea", "qty": 2}).output == {"add": 2}
        assert bed.run(Flaky, {"items": []}).status == "completed"
        assert bed.app.dispatcher.load(Stock, "tea").state == {"on_hand": 5}


def test_a_testbed_that_waits_too_long_fails_the_test_naming_the_run() -> None:
    with FlowTestbed([Flaky]) as bed:
        run_id = bed.app.start_flow(Flaky, {"items": [1]})
        with pytest.raises(AssertionError, match=f"run {run_id!r}"):
            bed.finish(run_id, timeout=0)


# --- sagas ----------------------------------------------------------------------------------------

PLACED = ("OrderPlaced", {"order": "o-1", "sku": "tea", "qty": 2, "amount": 120})


def test_a_saga_scenario_checks_the_commands_an_event_causes_and_the_state() -> None:
    (
        saga(OrderFulfilment)
        .given(PLACED)
        .when(("StockReserved", {"sku": "tea", "order": "o-1", "qty": 2}))
        .then_commands(("ChargeCard", "o-1", {"amount": 120}))
        .then_state({**PLACED[1], "status": "reserved"})
        .then_status("running")
    )


def test_a_refused_command_shows_the_compensation_it_caused() -> None:
    (
        saga(OrderFulfilment, refusing={"ChargeCard": "card declined"})
        .given(PLACED)
        .when(("StockReserved", {"sku": "tea", "order": "o-1", "qty": 2}))
        .then_commands(
            ("ChargeCard", "o-1"),
            ("ReleaseStock", "tea", {"order": "o-1", "qty": 2}),
            ("CancelOrder", "o-1"),
        )
        .then_status("running")
    )


class Trip(ProcessManager):
    """Books a flight and a hotel (each undoable), then pays; pays within an hour or undoes."""

    name = "trip"
    event_types: ClassVar[list[str]] = ["TripRequested", "Booked", "PayBy"]
    starts_with: ClassVar[list[str]] = ["TripRequested"]

    def react(self, state: Any, event: RecordedEvent) -> list[Action]:
        if event.event_type == "TripRequested":
            return [
                Undoable(Command("BookFlight", "f-1"), undo=Command("CancelFlight", "f-1")),
                Undoable(Command("BookHotel", "h-1"), undo=Command("CancelHotel", "h-1")),
                ScheduleTimer("pay", after=3600, event_type="PayBy"),
            ]
        return [Command("Pay", "card-1")]


def test_undos_run_newest_first_and_timers_are_listed() -> None:
    scenario = saga(Trip, refusing={"Pay": "insufficient funds"})
    scenario.given(("TripRequested", {})).when(("Booked", {})).then_commands(
        ("Pay", "card-1"), ("CancelHotel", "h-1"), ("CancelFlight", "f-1")
    ).then_undone(("CancelHotel", "h-1"), ("CancelFlight", "f-1")).then_status(
        "compensated"
    ).then_timers()  # an instance that ended keeps no timers
    saga(Trip).when(("TripRequested", {})).then_timers("pay").then_status("running")


def test_a_failed_expectation_says_what_was_sent() -> None:
    outcome = saga(OrderFulfilment).when(PLACED)
    with pytest.raises(AssertionError, match=r"(?s)expected:.*ChargeCard.*actual:.*ReserveStock"):
        outcome.then_commands(("ChargeCard", "o-1"))
    with pytest.raises(AssertionError, match="the status differs"):
        outcome.then_status("completed")
