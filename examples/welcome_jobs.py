"""Jobs: plain functions run as durable one-step tasks - now, later, or once per key.

    @job(max_attempts=3)            a function becomes a job (a one-step flow, generated)
    app.enqueue(job, input)         one run of it; delay= / at= for later; key= for once

A job is retried with backoff, timed out, recovered when its worker is killed, listed by
``tideflow runs`` and shown by ``tideflow run`` like any flow run: it is one. Its input is typed
by the function's annotation, so ``enqueue`` is checked by mypy.

Run it:                  python examples/welcome_jobs.py [DATABASE_URL]
"""

from __future__ import annotations

import sys
from typing import TypedDict

from tideflow import App, RunRecord, StepContext, job


class Welcome(TypedDict):
    email: str
    name: str


@job(max_attempts=3, base_delay=0.05, timeout=30)
def send_welcome(input: Welcome, ctx: StepContext) -> str:
    if ctx.attempt == 1 and input["email"].endswith(".test"):
        raise ConnectionError("mail server busy")  # retried, after a short backoff
    return f"mailed {input['name']} <{input['email']}> (attempt {ctx.attempt})"


@job
def remind(input: str) -> str:
    return f"reminded {input}"


def main(database_url: str | None = None) -> list[RunRecord]:
    with App(database_url, jobs=[send_welcome, remind]) as app:
        ids = [
            app.enqueue(send_welcome, Welcome(email="ada@example.com", name="Ada")),
            app.enqueue(send_welcome, Welcome(email="bob@mail.test", name="Bob")),
            # Claimable in half a second, not before (the worker waits for it).
            app.enqueue(remind, "ada@example.com", delay=0.5),
        ]
        # The same key is the same work: the second enqueue returns the first run's id.
        once = app.enqueue(remind, "bob@mail.test", key="remind-bob")
        assert app.enqueue(remind, "bob@mail.test", key="remind-bob") == once
        ids.append(once)
        app.run_worker(until_idle=True, poll_interval=0.05)
        runs = [app.get_run(run_id) for run_id in ids]
    for run in runs:
        [result] = run.output.values()
        print(f"{run.flow_slug} {run.run_id}: {run.status}: {result}")
    return runs


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
