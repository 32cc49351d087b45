"""Jobs and flows the schedule tests fire (importable by their worker processes)."""

from __future__ import annotations

from typing import Any

from tideflow import Flow, job, step


@job
def heartbeat(input: Any) -> Any:
    return input


class Report(Flow, slug="report"):
    @step()
    def build(self, input: Any) -> Any:
        return {"report": input}
