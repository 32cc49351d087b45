"""Payments against a flaky gateway: retries with backoff, and failures not worth retrying.

    authorize ──▶ capture ──▶ receipt

Any exception a step raises fails that attempt; tideflow tries again after an exponential
backoff, ``min(max_delay, base_delay * 2 ** (attempt - 1))`` less up to 25% jitter, until
``max_attempts`` is used up - then the step and the run fail. Raising ``NonRetryableError`` (or a
subclass, like ``CardDeclined`` below) fails the run at once: a declined card stays declined.

The gateway's flakiness is simulated from the input: it "times out" on the first
``gateway_failures`` attempts, so the example behaves the same every time.

Run it:                  python examples/flaky_payment.py [DATABASE_URL]
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tideflow import App, Flow, NonRetryableError, RunRecord, StepContext, step


class GatewayTimeout(ConnectionError):
    """A transient failure: worth retrying."""


class CardDeclined(NonRetryableError):
    """A permanent failure: retrying would only decline the card again."""


DECLINED_CARDS = frozenset({"4000000000000002"})


# Retry settings apply to every step unless a step overrides them in @step(...). The delays are
# tiny so the example finishes at once; real gateways deserve seconds.
class FlakyPayment(Flow, slug="flaky_payment", max_attempts=4, base_delay=0.05, max_delay=1.0):
    @step()
    def authorize(self, input: dict[str, Any], ctx: StepContext) -> dict[str, Any]:
        time.sleep(0.05)
        if input["card"] in DECLINED_CARDS:
            raise CardDeclined(f"card ending in {input['card'][-4:]} was declined")
        if ctx.attempt <= input.get("gateway_failures", 0):
            raise GatewayTimeout(f"payment gateway did not answer (attempt {ctx.attempt})")
        return {
            "authorization": f"AUTH-{input['order_id']}",
            "amount_cents": input["amount_cents"],
            "attempts_needed": ctx.attempt,
        }

    @step(depends_on=["authorize"])
    def capture(self, authorize: dict[str, Any]) -> dict[str, Any]:
        time.sleep(0.05)
        return {
            "captured_cents": authorize["amount_cents"],
            "authorization": authorize["authorization"],
        }

    @step(depends_on=["capture"])
    def receipt(self, capture: dict[str, Any], ctx: StepContext) -> str:
        return (
            f"order {ctx.run_input['order_id']}: paid "
            f"{capture['captured_cents'] / 100:.2f} ({capture['authorization']})"
        )


PAYMENT = {
    "order_id": 1001,
    "amount_cents": 2595,
    "card": "4242424242424242",
    "gateway_failures": 2,
}
DECLINED = {"order_id": 1002, "amount_cents": 1299, "card": "4000000000000002"}


def main(database_url: str | None = None) -> list[RunRecord]:
    with App(database_url, flows=[FlakyPayment]) as app:
        ok = app.start_flow(FlakyPayment, PAYMENT)
        declined = app.start_flow(FlakyPayment, DECLINED)
        # A short poll interval: the worker notices retries whose backoff has passed this often.
        app.run_worker(until_idle=True, poll_interval=0.05)
        runs = [app.get_run(ok), app.get_run(declined)]
    for run in runs:
        authorize = run.step("authorize")
        print(f"run {run.run_id}: {run.status}; authorize took {authorize.attempts} attempt(s)")
        print(f"  {run.output if run.status == 'completed' else run.error}")
    return runs


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
