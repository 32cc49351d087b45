"""Flows for the observability tests: one that fails in a helper function (its traceback must
show it), one whose second step fails until a marker file exists (then a retried run
completes), and a chain for traces."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tideflow import Flow, NonRetryableError, step


def _lookup(order: dict[str, Any]) -> Any:
    return order["items"]  # the KeyError of the issue


class Broken(Flow, slug="obs_broken", max_attempts=2, base_delay=0.01, max_delay=0.02):
    @step()
    def load(self, input: Any) -> dict[str, Any]:
        return {"id": 7}

    @step(depends_on=["load"])
    def total(self, load: dict[str, Any]) -> Any:
        return _lookup(load)


class Fixable(Flow, slug="obs_fixable", max_attempts=1):
    """``check`` fails (not retryable) until the file named by the input exists."""

    @step()
    def fetch(self, input: dict[str, str]) -> dict[str, str]:
        return {"marker": input["marker"]}

    @step(depends_on=["fetch"])
    def check(self, fetch: dict[str, str]) -> str:
        if not Path(fetch["marker"]).exists():
            raise NonRetryableError(f"marker {fetch['marker']} is missing")
        return "ok"

    @step(depends_on=["check"])
    def report(self, check: str) -> dict[str, str]:
        return {"result": check}


class Traced(Flow, slug="obs_traced"):
    """Three steps; the last one waits (start_delay) so that a second worker runs it."""

    @step()
    def first(self, input: Any) -> int:
        return 1

    @step(depends_on=["first"])
    def second(self, first: int) -> int:
        return first + 1

    @step(depends_on=["second"], start_delay=2.0)
    def third(self, second: int) -> int:
        from opentelemetry import trace

        with trace.get_tracer("tests").start_as_current_span("inside third"):
            time.sleep(0.01)  # the step's own span nests under the attempt's
        return second + 1


ALL = [Broken, Fixable, Traced]
