"""pydantic models as declared types (pydantic is a test-only dependency), and tideflow never
importing pydantic for other types: both backends."""

from __future__ import annotations

import subprocess
import sys
from datetime import date
from decimal import Decimal

import pytest

from tideflow import App
from tideflow.typed import InputTypeError

pytest.importorskip("pydantic")

from .flows_typed import Onboard, Signup


def test_a_pydantic_input_is_validated_at_start_and_built_for_steps(app: App) -> None:
    app.register(Onboard)
    signup = Signup(
        email="ann@example.com", seats=2, joined=date(2026, 1, 5), amount=Decimal("9.90")
    )
    run_id = app.start_flow(Onboard, signup)
    # A dict goes through the model's own validation, coercion included ("3" -> 3).
    other = app.start_flow(
        "typed_onboard",
        {"email": "bob@example.com", "seats": "3", "joined": date(2026, 1, 6), "amount": 1},
    )
    app.run_worker(until_idle=True, poll_interval=0.02)
    run = app.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.output == {"done": "ann@example.com:4"}
    assert run.input == {
        "email": "ann@example.com",
        "seats": 2,
        "joined": date(2026, 1, 5),
        "amount": Decimal("9.90"),
    }
    assert app.get_run(other).output == {"done": "bob@example.com:6"}
    with pytest.raises(InputTypeError, match=r"typed_onboard.*seats") as caught:
        app.start_flow(
            "typed_onboard", {"email": "x@y", "seats": 0, "joined": date.today(), "amount": 1}
        )
    assert caught.value.field == "$"
    with pytest.raises(InputTypeError, match=r"email"):
        app.start_flow(
            "typed_onboard", {"email": "nope", "seats": 1, "joined": date.today(), "amount": 1}
        )
    assert len(app.list_runs()) == 2


def test_tideflow_does_not_import_pydantic_for_other_types() -> None:
    code = """
import sys
from dataclasses import dataclass
from tideflow import App, Flow, step
from tideflow.jsonutil import dumps, loads
from tideflow.typed import coerce

@dataclass
class In:
    n: int

assert coerce({"n": 1}, In, what="x") == In(1)
assert loads(dumps(In(2), what="x")) == {"n": 2}
assert "pydantic" not in sys.modules, "pydantic was imported"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "ok", out.stderr
