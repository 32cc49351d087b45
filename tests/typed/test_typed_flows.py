"""Declared input and output types of flows, and the codec's types through runs: on both
backends."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest

from tideflow import App
from tideflow.errors import InputNotSerializableError, InvalidDataError
from tideflow.typed import InputTypeError

from .flows_typed import (
    SEEN,
    Checkout,
    CheckoutInput,
    Fanout,
    GoldOnly,
    Item,
    Line,
    Priority,
    Receipt,
    RetriedTyped,
    Tier,
    Untyped,
    WrongOutput,
)

ORDER = UUID("7f0c2a64-55a3-4c1e-9e43-6f1f1b7e2a10")
PLACED = datetime(2026, 12, 7, 21, 7, 0, 123456, tzinfo=ZoneInfo("Europe/Paris"))


def checkout_input() -> CheckoutInput:
    return CheckoutInput(
        ORDER,
        PLACED,
        [Line("tea", 2, Decimal("3.10")), Line("cup", 1, Decimal("12.00"))],
        Tier.GOLD,
    )


def drain(app: App) -> None:
    app.run_worker(until_idle=True, poll_interval=0.02)


def test_a_typed_flow_hands_steps_instances_and_stores_exact_values(app: App) -> None:
    app.register(Checkout)
    run_id = app.start_flow(Checkout, checkout_input())
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.step("price").output == {"total": Decimal("18.20"), "count": 2}
    receipt = run.output["confirm"]["receipt"]
    # Stored as the object of its fields; every value comes back as its own type, exactly.
    assert receipt == {
        "order_id": ORDER,
        "total": Decimal("18.20"),
        "due": date(2026, 12, 7),
        "tier": Tier.GOLD,
        "seen": ["CheckoutInput"],
    }
    assert str(receipt["total"]) == "18.20"  # the digits, not just the value
    assert run.input["placed_at"] == PLACED and run.input["placed_at"].tzinfo == PLACED.tzinfo
    assert run.output["confirm"]["kind"] == "Receipt"


def test_a_dict_of_the_fields_is_checked_and_accepted(app: App) -> None:
    app.register(Checkout)
    fields = {
        "order_id": ORDER,
        "placed_at": PLACED,
        "lines": [{"sku": "tea", "qty": 1, "price": Decimal("1.5")}],
    }
    run_id = app.start_flow("typed_checkout", fields)  # by slug: the registered class checks
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.input["tier"] == Tier.SILVER  # the default was filled in at start


@pytest.mark.parametrize(
    ("value", "field", "message"),
    [
        (
            {"order_id": ORDER, "placed_at": PLACED, "lnes": []},
            "$.lnes",
            r"has no field 'lnes' \(did you mean 'lines'\?\)",
        ),
        ({"order_id": ORDER, "placed_at": PLACED}, "$.lines", r"missing field\(s\) lines"),
        (
            {
                "order_id": ORDER,
                "placed_at": PLACED,
                "lines": [{"sku": "a", "qty": "2", "price": 1}],
            },
            "$.lines[0].qty",
            r"expected int, got str '2'",
        ),
        (
            {"order_id": str(ORDER), "placed_at": PLACED, "lines": []},
            "$.order_id",
            r"expected UUID, got str",
        ),
        (
            {"order_id": ORDER, "placed_at": PLACED, "lines": [], "tier": "platinum"},
            "$.tier",
            r"expected a Tier \(one of \['gold', 'silver'\]\)",
        ),
        (Receipt(ORDER, Decimal(1), date.today(), Tier.GOLD), "$", r"expected a CheckoutInput"),
        (None, "$", r"expected a CheckoutInput or a dict of its fields, got NoneType"),
    ],
)
def test_an_input_that_does_not_fit_is_refused_naming_the_field_and_nothing_is_written(
    app: App, value: Any, field: str, message: str
) -> None:
    app.register(Checkout)
    for flow in (Checkout, "typed_checkout"):
        with pytest.raises(InputTypeError, match=message) as caught:
            app.start_flow(flow, value)  # type: ignore[call-overload]
        assert caught.value.field == field
        assert "flow 'typed_checkout'" in str(caught.value)
        assert isinstance(caught.value, InvalidDataError)
    with pytest.raises(InputTypeError):
        app.start_flows(Checkout, [checkout_input(), value])
    assert app.list_runs() == []


def test_an_output_that_does_not_fit_its_declared_type_fails_the_step_without_retry(
    app: App,
) -> None:
    app.register(WrongOutput)
    run_id = app.start_flow(WrongOutput, checkout_input())
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "failed"
    failure = run.last_failure
    assert failure is not None and "output of step 'bad'" in failure.error
    assert "missing field(s)" in failure.error
    assert failure.attempt == 1 and not failure.retried
    assert failure.error_type == "tideflow.typed.InputTypeError"


def test_map_steps_get_typed_items_and_their_list(app: App) -> None:
    app.register(Fanout)
    run_id = app.start_flow(Fanout, [Item(1, Priority.LOW), Item(2, Priority.HIGH)])
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.output == {"total": 6}
    assert run.step("each").output == [
        {"n": 2, "tag": Priority.HIGH},
        {"n": 4, "tag": Priority.HIGH},
    ]


EXACT = {
    "naive": datetime(2026, 1, 2, 3, 4, 5, 6),
    "utc": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    "offset": datetime(2026, 1, 2, tzinfo=timezone(timedelta(hours=-3, minutes=-30))),
    "zoned_fold": datetime(2026, 11, 1, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
    "day": date(2026, 2, 28),
    "decimal": Decimal("-0.000100"),
    "big_decimal": Decimal("1E+400"),
    "uuid": uuid4(),
    "enum": Tier.GOLD,
    "int_enum": Priority.HIGH,
    "nested": {"when": [date(2020, 1, 1), {"$not_a_tag": 1, "x": 2}]},
    "dollar_key_with_siblings": {"$date": "2020", "other": 1},
}


def test_codec_types_round_trip_exactly_through_an_untyped_run(app: App) -> None:
    app.register(Untyped)
    run_id = app.start_flow(Untyped, EXACT)
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.input == EXACT
    back = run.output["echo"]["in"]
    assert back == EXACT
    for key, value in EXACT.items():
        assert type(back[key]) is type(value), key
        if isinstance(value, datetime):
            assert back[key].tzinfo == value.tzinfo and back[key].fold == value.fold
        if isinstance(value, Decimal):
            assert str(back[key]) == str(value)
    assert "Tier" in run.output["echo"]["types"] and "Priority" in run.output["echo"]["types"]


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({1: "a"}, InputNotSerializableError, r"dict key of type int.*\(the key 1\)"),
        ({"a": {None: 1}}, InputNotSerializableError, r"dict key of type NoneType"),
        ({"x": float("nan")}, InputNotSerializableError, r"NaN or infinity.* at \$\['x'\]"),
        ({"x": [1, float("-inf")]}, InputNotSerializableError, r"infinity.* at \$\['x'\]\[1\]"),
        ({"x": Decimal("Infinity")}, InputNotSerializableError, r"Decimal Infinity"),
        ({"x": "a\x00b"}, InvalidDataError, r"NUL"),
        ({"when": {"$date": "2026-01-01"}}, InputNotSerializableError, r"only key is '\$date'"),
        ({"x": {1, 2}}, InputNotSerializableError, r"a set"),
        ({"x": b"\x00"}, InputNotSerializableError, r"base64"),
    ],
)
def test_poison_is_refused_before_anything_is_written(
    app: App, value: Any, error: type[Exception], message: str
) -> None:
    app.register(Untyped)
    with pytest.raises(error, match=message):
        app.start_flow(Untyped, value)
    assert app.list_runs() == []


def test_every_attempt_gets_the_same_types(app: App) -> None:
    SEEN.clear()
    app.register(RetriedTyped)
    run_id = app.start_flow(RetriedTyped, checkout_input())
    drain(app)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert [(n, "datetime", "CheckoutInput") for n in (1, 2, 3)] == SEEN
    receipt = run.step("flaky").output_as(Receipt)
    assert receipt == Receipt(ORDER, Decimal("3.10"), date(2026, 12, 7), Tier.GOLD)
    assert run.output_as(dict[str, Receipt]) == {"flaky": receipt}
    with pytest.raises(InputTypeError, match=r"output of run .*\$\['flaky'\]"):
        run.output_as(dict[str, Line])


def test_conditions_match_typed_values(app: App) -> None:
    app.register(GoldOnly)
    gold = app.start_flow(GoldOnly, {"tier": Tier.GOLD, "day": date(2026, 12, 7), "n": 1})
    silver = app.start_flow(GoldOnly, {"tier": Tier.SILVER, "day": date(2026, 12, 7)})
    drain(app)
    assert app.get_run(gold).output == {"perk": "perk", "always": "always"}
    assert app.get_run(silver).output == {"always": "always"}
    assert app.get_run(silver).step("perk").status == "skipped"
    # The stored shape keeps the pattern's types (a worker without the code reads it back).
    [stored] = [f for f in app.store.list_flows() if f.flow_slug == "typed_gold_only"]
    [perk] = [s for s in stored.shape["steps"] if s["slug"] == "perk"]
    assert perk["if"] == {"tier": Tier.GOLD, "day": date(2026, 12, 7)}
