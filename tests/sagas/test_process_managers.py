"""Process managers (sagas), held against both backends through the order saga example.

What is checked: the happy path and both compensation paths; a compensation that is refused
fails the instance; a reaction that fails after it dispatched commands leaves nothing behind and
is done again exactly once; a replay after a reset sends nothing twice; a flow started by a
reaction commits or rolls back with it; definition and output errors; and a worker killed with
SIGKILL in the middle of its batches is replaced without a command running twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest
from examples.order_saga import OrderFulfilment, ShipOrder, Stock, shop

from tests.polling import wait_until, wait_until_async
from tideflow import App, NonRetryableError
from tideflow.clock import ManualClock
from tideflow.events import Command, RecordedEvent
from tideflow.events.handling import HandlerDefinitionError
from tideflow.sagas import Action, ProcessManager, StartFlow
from tideflow.storage.process_contract import ProcessInstance
from tideflow.worker.handlers import HandlerRunnerOptions, reset_handler

ROOT = Path(__file__).resolve().parents[2]
FAST = HandlerRunnerOptions(poll_interval=0.02, acquire_interval=0.05)


@pytest.fixture
def open_shop(db_url: str) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def open_app(*handlers: type[ProcessManager]) -> App:
        app = shop(db_url)
        if handlers:
            app.handlers = list(handlers)
        apps.append(app)
        app.dispatch(Command("AddStock", "tea", {"qty": 4}))
        return app

    yield open_app
    for app in apps:
        app.close()


def place(app: App, order: str, qty: int = 1, amount: int = 100) -> Command:
    command = Command("PlaceOrder", order, {"sku": "tea", "qty": qty, "amount": amount})
    app.dispatch(command)
    return command


def catch_up(app: App) -> None:
    app.handler_runner(options=FAST).run_until_idle()


def instance(app: App, order: str) -> ProcessInstance:
    [found] = [
        i
        for i in app.process_store.list_instances("order_fulfilment")
        if i.state.get("order") == order
    ]
    return found


def stream(app: App, stream_id: str) -> list[str]:
    return [e.event_type for e in app.event_store.read_stream(stream_id)]


def on_hand(app: App) -> int:
    return int(app.dispatcher.load(Stock, "tea").state["on_hand"])


def handler_record(app: App, name: str = "order_fulfilment") -> Any:
    return next(r for r in app.handler_store.list_handlers() if r.name == name)


# --- the three paths ------------------------------------------------------------------------------


def test_a_paid_order_is_confirmed_and_its_shipment_flow_runs(
    open_shop: Callable[..., App],
) -> None:
    app = open_shop()
    placed = place(app, "o-1", qty=2, amount=120)
    app.run_worker(until_idle=True, poll_interval=0.02)

    done = instance(app, "o-1")
    assert (done.status, done.error, done.version) == ("completed", None, 4)
    assert handler_record(app).kind == "process_manager"
    assert done.process_id == placed.command_id  # the correlation id of the first command
    assert done.state["status"] == "confirmed"
    assert stream(app, "order-o-1") == ["OrderPlaced", "OrderConfirmed"]
    assert stream(app, "payment-o-1") == ["PaymentCharged"]
    assert on_hand(app) == 2
    [run] = app.list_runs(flow="ship_order")
    assert run.status == "completed"
    assert run.run_id.startswith(f"order_fulfilment-{done.process_id}-")
    assert app.get_run(run.run_id).output == {"label": "label for P-o-1"}

    # Every event of the process carries the first command's correlation id, and each event the
    # instance caused names the event it reacted to as the cause of its command.
    log = [
        e
        for e in app.event_store.read_all()
        if e.stream_id != "stock-tea" or e.event_type != "StockAdded"
    ]
    assert {str(e.correlation_id) for e in log} == {placed.command_id}
    by_id = {e.event_id: e for e in log}
    reserved = next(e for e in log if e.event_type == "StockReserved")
    assert by_id[_uuid(reserved.metadata["command_causation_id"])].event_type == "OrderPlaced"


def _uuid(text: str) -> Any:
    from uuid import UUID

    return UUID(text)


def test_a_declined_card_releases_the_stock_and_cancels_the_order(
    open_shop: Callable[..., App],
) -> None:
    app = open_shop()
    place(app, "o-2", qty=1, amount=900)
    catch_up(app)
    done = instance(app, "o-2")
    assert done.status == "completed" and done.state["status"] == "cancelled"
    assert done.error is not None and "ChargeCard for 'o-2' was refused: CardDeclined" in done.error
    assert stream(app, "stock-tea") == ["StockAdded", "StockReserved", "StockReleased"]
    assert on_hand(app) == 4
    assert stream(app, "payment-o-2") == []
    assert stream(app, "order-o-2") == ["OrderPlaced", "OrderCancelled"]
    assert app.list_runs(flow="ship_order") == []


def test_an_order_beyond_the_stock_is_cancelled_at_the_first_step(
    open_shop: Callable[..., App],
) -> None:
    app = open_shop()
    place(app, "o-3", qty=5)
    catch_up(app)
    done = instance(app, "o-3")
    assert done.state["status"] == "cancelled" and "OutOfStock" in str(done.error)
    assert stream(app, "stock-tea") == ["StockAdded"]  # nothing to release
    assert stream(app, "order-o-3") == ["OrderPlaced", "OrderCancelled"]


class StubbornCompensation(OrderFulfilment):
    """Compensates by confirming an order that was never placed: refused too."""

    name = "stubborn"

    def compensate(self, state: Any, command: Command, error: Exception) -> list[Command]:
        return [Command("ConfirmOrder", "ghost")]


def test_a_refused_compensation_fails_the_instance_which_then_ignores_its_events(
    open_shop: Callable[..., App],
) -> None:
    app = open_shop(StubbornCompensation)
    place(app, "o-2", amount=900)
    catch_up(app)
    [failed] = app.process_store.list_instances("stubborn")
    assert failed.status == "failed"
    assert (
        failed.error is not None
        and "compensation ConfirmOrder for 'ghost' was refused too" in failed.error
    )
    assert app.process_store.counts() == {("stubborn", "failed"): 1}
    # The order stays placed with its stock reserved: a person has to look at it.
    assert stream(app, "order-o-2") == ["OrderPlaced"]
    before = failed.version
    app.dispatch(
        Command("CancelOrder", "o-2", {"reason": "by hand"}, correlation_id=failed.process_id)
    )
    catch_up(app)
    assert app.process_store.get("stubborn", failed.process_id) == failed
    assert failed.version == before


# --- exactly once ---------------------------------------------------------------------------------


class FailsOnceAfterCharging(OrderFulfilment):
    """Its apply raises the first time it sees StockReserved - after react's ChargeCard was
    dispatched in the batch's transaction."""

    name = "fails_once"
    base_delay = 0.0
    max_attempts = 3
    failures: ClassVar[int] = 0

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        if event.event_type == "StockReserved" and type(self).failures == 0:
            type(self).failures += 1
            raise RuntimeError("crash after dispatching")
        return super().apply(state, event)


def test_a_reaction_that_fails_after_dispatching_is_done_again_exactly_once(
    open_shop: Callable[..., App],
) -> None:
    app = open_shop(FailsOnceAfterCharging)
    FailsOnceAfterCharging.failures = 0
    place(app, "o-1")
    catch_up(app)
    assert FailsOnceAfterCharging.failures == 1
    assert stream(app, "payment-o-1") == ["PaymentCharged"]  # charged once, not twice
    assert stream(app, "order-o-1") == ["OrderPlaced", "OrderConfirmed"]
    [done] = app.process_store.list_instances("fails_once")
    assert (done.status, done.version) == ("completed", 4)
    assert len(app.list_runs(flow="ship_order")) == 1


def test_replaying_the_log_after_a_reset_sends_no_command_twice(
    open_shop: Callable[..., App],
) -> None:
    app = open_shop()
    place(app, "o-1")
    place(app, "o-2", amount=900)
    catch_up(app)
    before = [(e.event_type, e.stream_id) for e in app.event_store.read_all()]
    instances = app.process_store.list_instances()
    reset_handler(app.event_store, app.handler_store, "order_fulfilment")
    assert app.event_store.get_checkpoint("order_fulfilment") == 0
    catch_up(app)
    assert [(e.event_type, e.stream_id) for e in app.event_store.read_all()] == before
    assert app.process_store.list_instances() == instances
    assert app.event_store.get_checkpoint("order_fulfilment") == app.event_store.head_position()


class ShipsThenCrashes(OrderFulfilment):
    """Starts the shipment, then fails for good on the same event."""

    name = "ships_then_crashes"

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        if event.event_type == "PaymentCharged":
            raise NonRetryableError("the warehouse system is gone")
        return super().apply(state, event)


def test_a_flow_started_by_a_reaction_rolls_back_with_it(open_shop: Callable[..., App]) -> None:
    app = open_shop(ShipsThenCrashes)
    place(app, "o-1")
    catch_up(app)
    record = handler_record(app, "ships_then_crashes")
    assert record.status == "stopped" and "warehouse system is gone" in record.stopped_reason
    assert app.list_runs(flow="ship_order") == []  # started in the rolled-back reaction
    assert stream(app, "order-o-1") == ["OrderPlaced"]  # ConfirmOrder rolled back as well
    [stuck] = app.process_store.list_instances("ships_then_crashes")
    assert stuck.state["status"] == "reserved" and stuck.status == "running"


# --- definitions and outputs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"handle": lambda self, event, ctx: None}, "defines handle()"),
        ({"transactional": False}, "sets transactional = False"),
        ({"event_types": None}, "has no event_types"),
        ({"event_types": ["A"], "starts_with": ["B"]}, r"starts_with names \['B'\]"),
        ({"event_types": ["A"], "starts_with": "A"}, "starts_with must be a list"),
    ],
)
def test_definitions_are_checked_when_the_class_is_defined(
    body: dict[str, Any], message: str
) -> None:
    attrs = {"name": "bad", "event_types": ["A"], **body}
    with pytest.raises(HandlerDefinitionError, match=message):
        type("Bad", (ProcessManager,), attrs)


class SaysOops(OrderFulfilment):
    name = "says_oops"

    def react(self, state: Any, event: RecordedEvent) -> Any:
        return "oops"


class KeepsADate(OrderFulfilment):
    name = "keeps_a_date"

    def apply(self, state: Any, event: RecordedEvent) -> Any:
        return {"when": {2026: datetime(2026, 1, 1)}}


@pytest.mark.parametrize(
    ("manager", "reason"),
    [
        (SaysOops, "react() returned str; return a list of Command and StartFlow"),
        (KeepsADate, "cannot be stored: a dict key of type int"),
    ],
)
def test_bad_outputs_stop_the_manager_with_a_reason_and_write_nothing(
    open_shop: Callable[..., App], manager: type[ProcessManager], reason: str
) -> None:
    app = open_shop(manager)
    place(app, "o-1")
    catch_up(app)
    record = handler_record(app, manager.name)
    assert record.status == "stopped" and reason in record.stopped_reason
    assert manager.name in record.stopped_reason
    assert app.process_store.list_instances() == []
    assert stream(app, "stock-tea") == ["StockAdded"]


async def test_a_manager_run_without_an_app_says_how_to_bind_it(
    open_shop: Callable[..., App], clock: ManualClock
) -> None:
    app = open_shop()
    place(app, "o-1")
    from tideflow.worker.handlers import HandlerRunner

    # Three attempts, with 1 s and 2 s of backoff between them: on the test's clock, moved past
    # each backoff as soon as the failure is recorded, instead of waited out.
    runner = HandlerRunner(
        app.event_store, app.handler_store, [OrderFulfilment()], clock=clock, options=FAST
    )
    task = asyncio.create_task(runner.run(until_idle=True))
    for attempt in (1, 2):
        await wait_until_async(
            lambda attempt=attempt: [
                r
                for r in app.handler_store.list_handlers()
                if r.name == "order_fulfilment" and r.attempts == attempt
            ],
            what=f"failed attempt {attempt} recorded",
        )
        clock.advance(60)
        runner.wake()
    await asyncio.wait_for(task, timeout=20)
    reason = handler_record(app).stopped_reason
    assert "has no dispatcher to send commands with" in reason and "app.process_manager" in reason


def test_start_flow_actions_are_plain_data() -> None:
    action: Action = StartFlow(ShipOrder, {"order": "o-1", "qty": 1})
    assert action.run_id is None and action.input == {"order": "o-1", "qty": 1}


# --- a worker killed in the middle ----------------------------------------------------------------


def test_a_sigkilled_saga_worker_is_replaced_and_no_command_runs_twice(
    open_shop: Callable[..., App], db_url: str
) -> None:
    app = open_shop()
    orders = 24
    app.dispatch(Command("AddStock", "tea", {"qty": orders}))
    for n in range(orders):
        place(app, f"k-{n}")
    first = spawn(db_url)
    try:
        wait_until(lambda: _completed(app) >= 3, what="three orders fulfilled")
        os.kill(first.pid, signal.SIGKILL)  # in the middle of a batch, most likely
        first.wait(timeout=10)
    finally:
        first.kill()
    assert _completed(app) < orders, "the first worker must not have finished"
    second = spawn(db_url)
    try:
        wait_until(
            lambda: _completed(app) == orders, timeout=60, what=f"all {orders} orders fulfilled"
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=20)
    assert second.returncode == 0
    types = [e.event_type for e in app.event_store.read_stream("stock-tea")]
    assert types.count("StockReserved") == orders and "StockReleased" not in types
    for n in range(orders):
        assert stream(app, f"payment-k-{n}") == ["PaymentCharged"]
        assert stream(app, f"order-k-{n}") == ["OrderPlaced", "OrderConfirmed"]
    assert len(app.list_runs(flow="ship_order", limit=1000)) == orders
    assert app.process_store.counts() == {("order_fulfilment", "completed"): orders}


def _completed(app: App) -> int:
    return app.process_store.counts().get(("order_fulfilment", "completed"), 0)


def spawn(db_url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sagas.saga_worker", db_url],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- the CLI --------------------------------------------------------------------------------------


def test_the_cli_lists_instances_and_shows_one(open_shop: Callable[..., App], db_url: str) -> None:
    from typer.testing import CliRunner

    from tests.test_cli import assert_one_line_error
    from tideflow.cli.main import cli

    app = open_shop(StubbornCompensation)
    place(app, "o-2", amount=900)
    catch_up(app)
    [failed] = app.process_store.list_instances()
    env = {"COLUMNS": "250", "TIDEFLOW_DATABASE_URL": db_url}

    listed = CliRunner().invoke(cli, ["sagas"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "stubborn" in listed.output and failed.process_id in listed.output
    assert "CardDeclined" in listed.output and "stubborn failed: 1" in listed.output
    none = CliRunner().invoke(cli, ["sagas", "--status", "completed"], env=env)
    assert none.exit_code == 0 and "no process manager instances match" in none.output

    shown = CliRunner().invoke(cli, ["saga", "stubborn", failed.process_id], env=env)
    assert shown.exit_code == 0, shown.output
    assert '"order": "o-2"' in shown.output and "events applied 2" in shown.output
    assert "compensation ConfirmOrder for 'ghost' was refused too" in shown.output

    assert_one_line_error(
        CliRunner().invoke(cli, ["sagas", "--status", "lost"], env=env),
        2,
        "--status 'lost' is not a process status",
    )
    assert_one_line_error(
        CliRunner().invoke(cli, ["saga", "stubborn", "nope"], env=env),
        1,
        "process manager 'stubborn' has no instance 'nope'",
    )


def test_the_worker_command_runs_an_apps_process_managers_on_another_database(db_url: str) -> None:
    """``tideflow worker --app examples.order_saga -d URL``: the URL overrides the App's, and
    the App's aggregates and process managers come along with its flows."""
    from typer.testing import CliRunner

    from tideflow.cli.main import cli

    with shop(db_url) as app:
        app.dispatch(Command("AddStock", "tea", {"qty": 4}))
        place(app, "o-1")
    result = CliRunner().invoke(
        cli,
        [
            "worker",
            "--app",
            "examples.order_saga",
            "-d",
            db_url,
            "--until-idle",
            "--poll-interval",
            "0.05",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "worker for ship_order, order_fulfilment" in result.output
    with shop(db_url) as app:
        assert instance(app, "o-1").state["status"] == "confirmed"
        assert [r.status for r in app.list_runs(flow="ship_order")] == ["completed"]
