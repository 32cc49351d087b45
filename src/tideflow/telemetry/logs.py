"""The worker's lines about runs and attempts, with ``run_id``, ``step`` and ``attempt`` as
structured fields (logging ``extra=``), so that a JSON formatter (python-json-logger,
structlog's stdlib bridge) puts them in fields of their own instead of in the text only."""

from __future__ import annotations

import logging
from datetime import datetime

from tideflow.storage.flow_contract import RunRecord, TaskFailure

log = logging.getLogger("tideflow.worker")


def failed_attempt(
    flow_slug: str,
    failure: TaskFailure,
    max_attempts: int | None,
    retry_at: datetime | None,
    now: datetime,
) -> None:
    """One line per failed attempt (run, step, attempt n of max, the error): INFO when a retry
    follows, WARNING when it failed the task; its traceback at DEBUG."""
    key = failure.key
    step = key.step_slug if key.task_index == 0 else f"{key.step_slug}[{key.task_index}]"
    of = f" of {max_attempts}" if max_attempts else ""
    if retry_at is not None:
        then = f"; retrying in {max(0.0, (retry_at - now).total_seconds()):.1f}s"
    elif failure.retryable:
        then = "; no attempts left"
    else:
        then = "; not retryable"
    fields = {
        "run_id": key.run_id,
        "flow": flow_slug,
        "step": key.step_slug,
        "task_index": key.task_index,
        "attempt": failure.attempt,
        "error_type": failure.error_type,
    }
    # A failure that will be retried is routine (INFO); one that fails the task is not.
    log.log(
        logging.INFO if retry_at is not None else logging.WARNING,
        "run %s step %s attempt %d%s failed: %s%s",
        key.run_id,
        step,
        failure.attempt,
        of,
        failure.error,
        then,
        extra=fields,
    )
    if failure.traceback and log.isEnabledFor(logging.DEBUG):
        log.debug(
            "traceback of run %s step %s attempt %d:\n%s",
            key.run_id,
            step,
            failure.attempt,
            failure.traceback.rstrip(),
            extra=fields,
        )


def finished_run(run: RunRecord) -> None:
    """One INFO line per run that ended: flow, run id, status, duration."""
    duration = run.duration
    took = f" in {duration:.3f}s" if duration is not None else ""
    error = f": {run.error}" if run.status == "failed" and run.error else ""
    log.info(
        "run %s of flow %s %s%s%s",
        run.run_id,
        run.flow_slug,
        run.status,
        took,
        error,
        extra={
            "run_id": run.run_id,
            "flow": run.flow_slug,
            "status": run.status,
            "duration": duration,
        },
    )
