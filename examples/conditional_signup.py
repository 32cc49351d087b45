"""Sign-ups that take different paths: conditional steps, and a step allowed to fail.

    validate ──┬──▶ provision_team   (if the plan is "team")
               ├──▶ start_trial      (unless the plan is "team")
               └──▶ enrich_profile   (when_failed="skip": a lookup that may fail)
                          all three ──▶ welcome

A step with ``if_=`` runs only when its input contains that JSON pattern (``if_not=``: does not):
a root step's input is the run input, a dependent step's is ``{dependency: output}``. Unmet, the
step is skipped (``when_unmet="skip"``, the default), skipped with every step after it
(``"skip_cascade"``) or fails the run (``"fail"``). ``when_failed="skip"`` does the same for a step
whose task failed for good: the run goes on without it. A skipped step has no output: ``welcome``
gets the outputs of the steps that ran, so it takes them as ``**deps``.

Run it:                  python examples/conditional_signup.py [DATABASE_URL]
"""

from __future__ import annotations

import sys
from typing import Any

from tideflow import App, Flow, RunRecord, step

KNOWN_DOMAINS = {"example.com": "Example Corp"}


class LookupFailed(Exception):
    """The profile service knows nothing about this address."""


class Signup(Flow, slug="signup", max_attempts=2, base_delay=0.01):
    @step()
    def validate(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"email": input["email"].strip().lower(), "plan": input["plan"]}

    @step(depends_on=["validate"], if_={"validate": {"plan": "team"}})
    def provision_team(self, validate: dict[str, Any]) -> dict[str, Any]:
        return {"seats": 5}

    @step(depends_on=["validate"], if_not={"validate": {"plan": "team"}})
    def start_trial(self, validate: dict[str, Any]) -> dict[str, Any]:
        return {"trial_days": 14}

    @step(depends_on=["validate"], when_failed="skip")
    def enrich_profile(self, validate: dict[str, Any]) -> dict[str, Any]:
        domain = validate["email"].split("@")[1]
        if domain not in KNOWN_DOMAINS:
            raise LookupFailed(f"no company known for {domain}")
        return {"company": KNOWN_DOMAINS[domain]}

    @step(depends_on=["provision_team", "start_trial", "enrich_profile"])
    def welcome(self, **deps: dict[str, Any]) -> str:
        # Only the steps that ran are here: a skipped step passes no output.
        parts = []
        if "provision_team" in deps:
            parts.append(f"{deps['provision_team']['seats']} seats")
        if "start_trial" in deps:
            parts.append(f"a {deps['start_trial']['trial_days']}-day trial")
        if "enrich_profile" in deps:
            parts.append(f"at {deps['enrich_profile']['company']}")
        return "welcome: " + ", ".join(parts)


TEAM = {"email": " Ada@Example.com", "plan": "team"}
FREE = {"email": "bob@unknown.test", "plan": "free"}


def main(database_url: str | None = None) -> list[RunRecord]:
    with App(database_url, flows=[Signup]) as app:
        ids = [app.start_flow(Signup, TEAM), app.start_flow(Signup, FREE)]
        app.run_worker(until_idle=True, poll_interval=0.02)
        runs = [app.get_run(run_id) for run_id in ids]
    for run in runs:
        print(f"run {run.run_id}: {run.status}: {run.output['welcome']}")
        for s in run.steps:
            if s.status == "skipped":
                print(f"  skipped {s.step_slug} ({s.skip_reason})")
    return runs


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
