"""The app the restart test's worker process runs: ``tideflow worker --app
tests.restart.app:app -d URL``.

``Pipeline`` leaves one marker file per step execution (named after run, step and attempt), so
that the test can tell a step that ran twice in one attempt from one retried after its lease
expired. ``Tally`` counts events with a primary key on the position: a double delivery would
fail it (and show up as a dead letter or a stopped handler).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from tideflow import App, Flow, StepContext, step
from tideflow.events.handling import HandlerContext
from tideflow.events.model import RecordedEvent
from tideflow.events.projections import Projection


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


app = App("sqlite:///never-used.db", flows=[Pipeline], handlers=[Tally])
