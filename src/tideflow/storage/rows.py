"""What crosses between the flow store and a backend's SQL: batch parameters, and the mapping of
result rows to the contract's records."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tideflow import jsonutil
from tideflow.storage.database import Row
from tideflow.storage.flow_contract import AttemptFailure, RunRecord, StepRecord, TaskRecord


def batch(rows: Iterable[dict[str, Any]]) -> str:
    """A batch parameter: a JSON array of objects, one per row. Every dialect unpacks it into a
    relation (``json_each`` on SQLite, ``jsonb_to_recordset`` on PostgreSQL), so one statement
    handles a whole batch whatever its size."""
    return json.dumps(list(rows), separators=(",", ":"))


def loads(text: str | None) -> Any:
    return jsonutil.loads(text)


def task_record(t: Row) -> TaskRecord:
    return TaskRecord(
        step_slug=t["step_slug"],
        task_index=t["task_index"],
        status=t["status"],
        attempts=t["attempts"],
        error=t["error"],
        output=loads(t["output"]),
        queued_at=t["queued_at"],
        started_at=t["started_at"],
        finished_at=t["finished_at"],
        visible_at=t["visible_at"],
        stalls=t["stalls"],
    )


def step_record(s: Row, tasks: list[TaskRecord]) -> StepRecord:
    return StepRecord(
        step_slug=s["step_slug"],
        step_index=s["step_index"],
        kind=s["kind"],
        depends_on=json.loads(s["depends_on"]),
        status=s["status"],
        output=loads(s["output"]),
        error=s["error"],
        initial_tasks=s["initial_tasks"],
        remaining_tasks=s["remaining_tasks"],
        created_at=s["created_at"],
        started_at=s["started_at"],
        finished_at=s["finished_at"],
        tasks=tasks,
        skip_reason=s["skip_reason"],
    )


def failure_record(f: Row) -> AttemptFailure:
    return AttemptFailure(
        step_slug=f["step_slug"],
        task_index=f["task_index"],
        attempt=f["attempt"],
        error=f["error"],
        error_type=f["error_type"],
        traceback=f["traceback"],
        retried=bool(f["retried"]),
        worker_id=f["worker_id"],
        started_at=f["started_at"],
        failed_at=f["failed_at"],
    )


def run_record(
    r: Row, steps: list[StepRecord], failures: list[AttemptFailure] | None = None
) -> RunRecord:
    return RunRecord(
        run_id=str(r["run_id"]),
        flow_slug=r["flow_slug"],
        flow_version=r["flow_version"],
        status=r["status"],
        input=loads(r["input"]),
        output=loads(r["output"]),
        error=r["error"],
        started_at=r["started_at"],
        finished_at=r["finished_at"],
        steps=steps,
        failures=failures or [],
    )
