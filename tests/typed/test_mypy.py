"""mypy checks the calls that start typed flows: a wrong input type, a misspelled field and a
wrong command payload fail type checking; the right ones pass. Runs mypy.api on snippets (no
database: this is about the signatures)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

HEADER = """
from dataclasses import dataclass
from tideflow import App, Flow, step
from tideflow.events import Command, as_payload


@dataclass
class CheckoutInput:
    order_id: str
    qty: int


@dataclass
class Other:
    name: str


class Checkout(Flow[CheckoutInput]):
    @step()
    def price(self, input: CheckoutInput) -> int:
        return input.qty


class Untyped(Flow):
    @step()
    def echo(self, input: object) -> object:
        return input


@dataclass
class AddStock:
    qty: int


app = App("sqlite:///:memory:")
"""


def check(tmp_path: Path, body: str) -> tuple[int, str]:
    source = tmp_path / "snippet.py"
    source.write_text(HEADER + textwrap.dedent(body))
    out, err, status = mypy_api.run(
        [
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "--hide-error-context",
            str(source),
        ]
    )
    return status, out + err


def test_the_right_calls_type_check(tmp_path: Path) -> None:
    status, out = check(
        tmp_path,
        """
        app.start_flow(Checkout, CheckoutInput(order_id="o-1", qty=2))
        app.start_flows(Checkout, [CheckoutInput("o-1", 1), CheckoutInput("o-2", 2)])
        app.start_flow(Untyped, {"anything": [1, 2]})
        app.start_flow("checkout", {"order_id": "o-1", "qty": 2})
        app.client.start_flow(Checkout, CheckoutInput("o-1", 2), run_id="r-1")
        add = Command("AddStock", "sku-1", as_payload(AddStock(qty=3)))
        qty: int = add.payload_as(AddStock).qty
        runs = app.list_runs(flow=Checkout, status="completed")
        """,
    )
    assert status == 0, out


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('app.start_flow(Checkout, Other(name="x"))', "start_flow"),
        ('app.start_flows(Checkout, [Other(name="x")])', "start_flows"),
        ('app.start_flow(Checkout, CheckoutInput(ordr_id="o-1", qty=2))', '"ordr_id"'),
        ('app.start_flow(Checkout, CheckoutInput(order_id="o-1", qty="2"))', '"qty"'),
        ("app.list_runs(statuss='failed')", '"statuss"'),
        ("app.run_worker(concurency=4)", '"concurency"'),
        ("as_payload(AddStock(qtty=3))", '"qtty"'),
        ('x: str = Command("A", "b").payload_as(AddStock)', "Incompatible types"),
    ],
)
def test_wrong_calls_fail_type_checking(tmp_path: Path, body: str, expected: str) -> None:
    status, out = check(tmp_path, body)
    assert status == 1, out
    assert expected in out, out
