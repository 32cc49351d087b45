"""``enqueue(job, input)`` is type-checked against the job function's input (issue 10 item 7):
mypy accepts the right input and refuses a wrong one. A static check, so not per backend."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

CHECKED = textwrap.dedent(
    """
    from datetime import timedelta
    from typing import TypedDict

    from tideflow import App, StepContext, job


    class Welcome(TypedDict):
        user: int


    @job(max_attempts=2)
    def send_welcome(input: Welcome, ctx: StepContext) -> str:
        return str(input["user"])


    @job
    async def square(input: int) -> int:
        return input * input


    app = App("sqlite:///:memory:", jobs=[send_welcome, square])
    app.enqueue(send_welcome, Welcome(user=1), delay=timedelta(seconds=5))
    greeting: Welcome = {"user": 2}
    app.enqueue(send_welcome, greeting, key="two")
    app.enqueue(square, 3)


    async def later() -> str:
        return await app.aio.enqueue(square, 4, delay=1.5)


    app.enqueue(send_welcome, Welcome(user="x"))  # BAD typeddict-item
    app.enqueue(square, "3")  # BAD misc
    app.enqueue(square, 3, delay="soon")  # BAD arg-type
    app.enqueue(square, 3, at=1.0)  # BAD arg-type
    """
)


def test_mypy_checks_the_input_of_enqueue(tmp_path: Path) -> None:
    source = tmp_path / "uses_jobs.py"
    source.write_text(CHECKED, encoding="utf-8")
    out, _, _ = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache"), str(source)]
    )
    flagged = {int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line}
    bad = {n for n, line in enumerate(CHECKED.splitlines(), 1) if "# BAD" in line}
    assert flagged == bad, out
