"""The runnable examples work, and the flow examples say the same thing as the demo's copies.

``examples/`` is not installed with the package, so ``tideflow demo`` carries its own copies of
the flow examples (``tideflow.cli.demo_flows``). These tests keep the two honest: same shape and
settings, same inputs, same results. Examples the demo has no copy of are listed in
``WITHOUT_DEMO``; every example, listed in either, has a ``test_<name>_main`` here.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tideflow import App, Flow, RunRecord
from tideflow.cli import demo_flows

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# example file -> (flow class name, [(module constant holding an input, demo input)])
PAIRS: dict[str, tuple[str, list[tuple[str, dict[str, Any]]]]] = {
    "order_pipeline": ("OrderPipeline", [("ORDER", demo_flows.ORDER_INPUT)]),
    "image_thumbnails": ("ImageThumbnails", [("IMAGES", demo_flows.IMAGES_INPUT)]),
    "flaky_payment": (
        "FlakyPayment",
        [("PAYMENT", demo_flows.PAYMENT_INPUT), ("DECLINED", demo_flows.DECLINED_INPUT)],
    ),
}

# example file -> what its script prints when it worked; for examples the demo has no copy of
# (those that are not flows - the demo runs flows - and the conditional flow)
WITHOUT_DEMO: dict[str, str] = {
    "conditional_signup": "skipped enrich_profile (handler_failed)",
    "fastapi_service": "20 quotes completed; the largest: 6000 cents",
    "inventory": "low-stock alerts:\n  tea: 2 left",
    "order_saga": "tea on hand: 2; shipments: order_fulfilment-",
    "welcome_jobs": "remind remind:remind-bob: completed: reminded bob@mail.test",
    "nightly_report": "3 heartbeats ran: alive (cron)",
}
SCRIPT_SAYS = {**{name: "completed" for name in PAIRS}, **WITHOUT_DEMO}


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"tideflow_example_{name}", EXAMPLES / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_example_is_covered() -> None:
    assert not PAIRS.keys() & WITHOUT_DEMO.keys()
    examples = sorted(p.stem for p in EXAMPLES.glob("*.py"))
    assert examples == sorted(SCRIPT_SAYS)
    assert [name for name in examples if f"test_{name}_main" not in globals()] == []


def test_order_pipeline_main(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    [run] = load_example("order_pipeline").main(db_url)
    assert run.status == "completed"
    assert run.output == {"send_confirmation": "mailed ada@example.com: parcel TRK-1001"}
    assert run.step("price_order").output == {
        "subtotal_cents": 2100,
        "shipping_cents": 0,
        "total_cents": 2100,
    }
    # the fork really ran in parallel: price_order started before reserve_stock finished
    reserve, price = run.step("reserve_stock"), run.step("price_order")
    assert price.started_at is not None and reserve.finished_at is not None
    assert price.started_at < reserve.finished_at
    assert "completed" in capsys.readouterr().out


def test_image_thumbnails_main(db_url: str) -> None:
    [run] = load_example("image_thumbnails").main(db_url)
    assert run.status == "completed"
    thumbnails = run.step("thumbnail")
    assert thumbnails.kind == "map"
    assert len(thumbnails.tasks) == 5  # notes.txt is not an image
    assert thumbnails.output[0] == {"name": "beach.thumb.jpg", "width": 160, "height": 120}
    assert run.output["publish_gallery"]["count"] == 5


def test_flaky_payment_main(db_url: str) -> None:
    ok, declined = load_example("flaky_payment").main(db_url)
    assert ok.status == "completed"
    assert ok.step("authorize").attempts == 3  # two gateway timeouts, then success
    assert ok.output == {"receipt": "order 1001: paid 25.95 (AUTH-1001)"}
    assert declined.status == "failed"
    assert declined.step("authorize").attempts == 1  # NonRetryableError: no second attempt
    assert "CardDeclined: card ending in 0002 was declined" in (declined.error or "")
    assert [s.status for s in declined.steps] == ["failed", "skipped", "skipped"]


def test_conditional_signup_main(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    team, free = load_example("conditional_signup").main(db_url)
    assert team.status == "completed" and free.status == "completed"
    assert team.output == {"welcome": "welcome: 5 seats, at Example Corp"}
    assert free.output == {"welcome": "welcome: a 14-day trial"}
    assert [(s.step_slug, s.status, s.skip_reason) for s in team.steps] == [
        ("validate", "completed", None),
        ("provision_team", "completed", None),
        ("start_trial", "skipped", "condition_unmet"),
        ("enrich_profile", "completed", None),
        ("welcome", "completed", None),
    ]
    enrich = free.step("enrich_profile")
    assert (enrich.status, enrich.skip_reason, enrich.attempts) == ("skipped", "handler_failed", 2)
    assert "LookupFailed: no company known for unknown.test" in (enrich.error or "")
    assert free.step("provision_team").skip_reason == "condition_unmet"
    assert "skipped provision_team (condition_unmet)" in capsys.readouterr().out


def test_inventory_main(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("inventory")
    assert example.main(db_url) == {"mug": 3, "tea": 2}  # the read model
    out = capsys.readouterr().out
    assert "AddStock     tea   10  already recorded (key delivery-1001): nothing written" in out
    assert "RemoveStock  mug    9  refused: cannot remove 9 mug: only 4 on hand" in out
    with App(db_url, aggregates=[example.Inventory]) as app:
        events = app.event_store

        def history(stream_id: str) -> list[tuple[str, dict[str, Any]]]:
            return [(e.event_type, e.data) for e in events.read_stream(stream_id)]

        # the repeated delivery and the refused removal wrote nothing
        assert history("inventory-tea") == [
            ("StockAdded", {"sku": "tea", "qty": 10}),
            ("StockRemoved", {"sku": "tea", "qty": 3, "left": 7}),
            ("StockRemoved", {"sku": "tea", "qty": 5, "left": 2}),
        ]
        assert history("inventory-mug") == [
            ("StockAdded", {"sku": "mug", "qty": 4}),
            ("StockRemoved", {"sku": "mug", "qty": 1, "left": 3}),
        ]
        # one alert (mug stopped at 3, not below), caused by the removal that crossed the line
        [alert] = events.read_stream("low_stock_alerts")
        removal = list(events.read_stream("inventory-tea"))[-1]
        assert (alert.event_type, alert.data) == ("LowStockAlerted", {"sku": "tea", "left": 2})
        assert alert.causation_id == removal.event_id
        assert alert.correlation_id == removal.correlation_id
        # three events: tea was snapshotted, and loads without replaying any
        tea = app.dispatcher.load(example.Inventory, "tea")
        assert (tea.state, tea.snapshot_version, tea.events_replayed) == ({"on_hand": 2}, 3, 0)
        assert app.dispatcher.load(example.Inventory, "mug").state == {"on_hand": 3}
        # both handlers caught up with the whole log
        head = events.head_position()
        assert [events.get_checkpoint(name) for name in ("stock_levels", "low_stock_alerts")] == [
            head,
            head,
        ]


def test_order_saga_main(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("order_saga")
    assert example.main(db_url) == {"o-1": "confirmed", "o-2": "cancelled", "o-3": "cancelled"}
    out = capsys.readouterr().out
    assert "ChargeCard for 'o-2' was refused: CardDeclined" in out
    assert "ReserveStock for 'tea' was refused: OutOfStock: 5 x tea wanted, 1 left" in out
    # Run again on the same database: the orders are replayed by their keys, same fates.
    assert example.main(db_url) == {"o-1": "confirmed", "o-2": "cancelled", "o-3": "cancelled"}
    assert "tea on hand: 2;" in capsys.readouterr().out
    # tests/sagas/test_process_managers.py holds the saga to everything else


def test_welcome_jobs_main(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    ada, bob, reminder, once = load_example("welcome_jobs").main(db_url)
    assert [r.status for r in (ada, bob, reminder, once)] == ["completed"] * 4
    assert ada.output == {"send_welcome": "mailed Ada <ada@example.com> (attempt 1)"}
    assert bob.output == {"send_welcome": "mailed Bob <bob@mail.test> (attempt 2)"}
    assert bob.step("send_welcome").tasks[0].attempts == 2  # retried after the first failure
    task = reminder.step("remind").tasks[0]
    assert task.started_at is not None and task.started_at >= reminder.started_at + timedelta(
        seconds=0.5
    )  # not claimed before its delay
    assert once.run_id == "remind:remind-bob"
    with App(db_url) as app:
        assert len(app.list_runs()) == 4  # the second enqueue with the key wrote nothing
    assert "mailed Bob" in capsys.readouterr().out


def test_nightly_report_main(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    example = load_example("nightly_report")
    beats = example.main(db_url)
    assert len(beats) >= 3 and all(b.startswith("schedule:heartbeat@") for b in beats)
    with App(db_url) as app:
        schedules = {s.name: s for s in app.list_schedules()}
        assert set(schedules) == {"heartbeat", "nightly_report"}
        nightly = schedules["nightly_report"]
        assert nightly.next_tick_at is not None
        assert nightly.next_tick_at.astimezone(ZoneInfo("Europe/Berlin")).hour == 3
        ticks = {t.run_id for t in app.schedule_ticks("heartbeat", 1000)}
        assert set(beats) <= ticks  # each run is a tick's
    out = capsys.readouterr().out
    assert "schedule nightly_report: 0 3 * * * in Europe/Berlin, next tick" in out


async def test_fastapi_service_main(db_url: str) -> None:
    """The service answers twenty requests that each start a run and await it, with its worker
    in the lifespan - in pytest-asyncio's running loop, where ``run_worker()`` could not run."""
    example = load_example("fastapi_service")
    assert await example.main(db_url) == [qty * 250 * 120 // 100 for qty in range(1, 21)]
    with App(db_url) as app:
        runs = app.list_runs(flow="quote", limit=100)
    assert len(runs) == 20 and {r.status for r in runs} == {"completed"}


@pytest.mark.parametrize("name", sorted(SCRIPT_SAYS))
def test_example_runs_as_a_script(name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py"), f"sqlite:///{tmp_path / 'ex.db'}"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert SCRIPT_SAYS[name] in result.stdout


def _outcome(run: RunRecord) -> dict[str, Any]:
    """What a run did, without what differs between any two runs (ids, times)."""
    return {
        "status": run.status,
        "output": run.output,
        "error": run.error,
        "steps": [
            (s.step_slug, s.kind, s.status, s.attempts, s.output, s.error) for s in run.steps
        ],
    }


def _run_all(flow: type[Flow], inputs: list[dict[str, Any]], url: str) -> list[dict[str, Any]]:
    with App(url, flows=[flow]) as app:
        ids = [app.start_flow(flow, value) for value in inputs]
        app.run_worker(until_idle=True, poll_interval=0.02)
        return [_outcome(app.get_run(i)) for i in ids]


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_demo_flows_match_the_examples(name: str, tmp_path: Path) -> None:
    class_name, inputs = PAIRS[name]
    example = getattr(load_example(name), class_name)
    demo = getattr(demo_flows, class_name)
    assert example.slug == demo.slug
    assert example.definition.version == demo.definition.version
    assert [
        (s.slug, s.retry, s.timeout, s.start_delay, s.wants_ctx) for s in example.definition.steps
    ] == [(s.slug, s.retry, s.timeout, s.start_delay, s.wants_ctx) for s in demo.definition.steps]
    module = load_example(name)
    for constant, demo_input in inputs:
        assert getattr(module, constant) == demo_input
    values = [v for _, v in inputs]
    assert values == [v for flow, v, _, _ in demo_flows.DEMO_RUNS if flow is demo]
    outcomes = _run_all(demo, values, f"sqlite:///{tmp_path / 'demo.db'}")
    assert _run_all(example, values, f"sqlite:///{tmp_path / 'example.db'}") == outcomes
    expected = [status for flow, _, _, status in demo_flows.DEMO_RUNS if flow is demo]
    assert [o["status"] for o in outcomes] == expected
