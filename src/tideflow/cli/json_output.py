"""``--json``: the records of every list and show command as JSON, for scripts.

One shape per record, documented in docs/concepts/operations.md ("The command line") and kept
stable: keys are only ever added. Times are ISO 8601 with their UTC offset, durations are
seconds, ids are whole (never the tables' short ids), absent values are ``null``. A list command
prints one JSON array; a show command one object; ``events`` and ``stream`` print one object per
line (JSON Lines), because ``events --follow`` never ends. Nothing else goes to stdout:
messages such as "no runs yet" are left out (the array is empty) and errors go to stderr.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import typer

from tideflow.storage.flow_contract import (
    AttemptFailure,
    FlowVersionRecord,
    RunRecord,
    StepRecord,
    TaskRecord,
)
from tideflow.storage.handler_contract import DeadLetter, HandlerRecord
from tideflow.storage.process_contract import ProcessInstance
from tideflow.storage.schedule_contract import ScheduleRecord, TickRecord
from tideflow.storage.timer_contract import TimerRecord


def emit(value: Any) -> None:
    """``value`` as JSON on stdout, one document and a newline."""
    typer.echo(json.dumps(value, ensure_ascii=False))


def when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def run_json(run: RunRecord, *, with_steps: bool = False) -> dict[str, Any]:
    """A run; with its steps (and their tasks) and its attempt failures for ``tideflow run``."""
    out: dict[str, Any] = {
        "run_id": run.run_id,
        "flow": run.flow_slug,
        "version": run.flow_version,
        "status": run.status,
        "started_at": when(run.started_at),
        "finished_at": when(run.finished_at),
        "duration": run.duration,
        "input": run.input,
        "output": run.output,
        "error": run.error,
    }
    if with_steps:
        out["steps"] = [step_json(s) for s in run.steps]
        out["failures"] = [failure_json(f) for f in run.failures]
    return out


def step_json(step: StepRecord) -> dict[str, Any]:
    return {
        "step": step.step_slug,
        "kind": step.kind,
        "depends_on": list(step.depends_on),
        "status": step.status,
        "skip_reason": step.skip_reason,
        "attempts": step.attempts,
        "tasks_total": step.initial_tasks,
        "tasks_done": sum(1 for t in step.tasks if t.status == "completed"),
        "started_at": when(step.started_at),
        "finished_at": when(step.finished_at),
        "output": step.output,
        "error": step.error,
        "tasks": [task_json(t) for t in step.tasks],
    }


def task_json(task: TaskRecord) -> dict[str, Any]:
    return {
        "index": task.task_index,
        "status": task.status,
        "attempts": task.attempts,
        "stalls": task.stalls,
        "queued_at": when(task.queued_at),
        "started_at": when(task.started_at),
        "finished_at": when(task.finished_at),
        "output": task.output,
        "error": task.error,
    }


def failure_json(failure: AttemptFailure) -> dict[str, Any]:
    return {
        "step": failure.step_slug,
        "task_index": failure.task_index,
        "attempt": failure.attempt,
        "error": failure.error,
        "error_type": failure.error_type,
        "traceback": failure.traceback,
        "retried": failure.retried,
        "worker_id": failure.worker_id,
        "started_at": when(failure.started_at),
        "failed_at": when(failure.failed_at),
    }


def flow_version_json(record: FlowVersionRecord, code: str | None) -> dict[str, Any]:
    """A stored flow version; ``code`` is "current", "older" or "not registered" with
    ``--app``, else None."""
    return {
        "flow": record.flow_slug,
        "version": record.version,
        "steps": [str(s.get("slug")) for s in record.shape.get("steps", [])],
        "recorded_at": when(record.created_at),
        "code": code,
    }


def handler_json(
    name: str,
    kind: str | None,
    status: str,
    head: int,
    record: HandlerRecord | None,
    owner: str | None,
) -> dict[str, Any]:
    """A handler as ``tideflow handlers`` lists it: ``record`` None for one of ``--app`` that
    never ran on this database; ``head`` the log's head position (lag = head - position)."""
    position = record.position if record is not None else 0
    return {
        "name": name,
        "kind": kind,
        "status": status,
        "position": position,
        "lag": max(0, head - position),
        "owner": owner,
        "dead_letters": record.dead_letters if record is not None else 0,
        "stopped_reason": record.stopped_reason if record is not None else None,
        "failing_position": record.failing_position if record is not None else None,
        "attempts": record.attempts if record is not None else 0,
        "last_error": record.last_error if record is not None else None,
    }


def dead_letter_json(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.id,
        "handler": d.handler,
        "position": d.position,
        "event_id": str(d.event_id),
        "event_type": d.event_type,
        "stream_id": d.stream_id,
        "attempts": d.attempts,
        "error": d.error,
        "created_at": when(d.created_at),
        "retried_at": when(d.retried_at),
    }


def instance_json(
    i: ProcessInstance, *, timers: Sequence[TimerRecord] | None = None
) -> dict[str, Any]:
    """A process manager instance; with its timers (and undo log) for ``tideflow saga``."""
    out: dict[str, Any] = {
        "manager": i.manager,
        "process_id": i.process_id,
        "status": i.status,
        "events": i.version,
        "last_position": i.last_position,
        "error": i.error,
        "started_at": when(i.started_at),
        "updated_at": when(i.updated_at),
        "finished_at": when(i.finished_at),
        "state": i.state,
    }
    if timers is not None:
        out["sent"] = [dict(s) for s in i.sent]
        out["pending_undos"] = len(json.loads(i.undo_json))
        out["timers"] = [
            {"name": t.name, "event_type": t.event_type, "fire_at": when(t.fire_at)} for t in timers
        ]
    return out


def counts_json(counts: Mapping[tuple[str, Any], int]) -> list[dict[str, Any]]:
    return [{"manager": m, "status": s, "count": n} for (m, s), n in sorted(counts.items())]


def schedule_json(r: ScheduleRecord) -> dict[str, Any]:
    """A stored cron schedule; its ticks as UTC times (``tideflow schedules`` shows them in
    the schedule's timezone)."""
    return {
        "name": r.name,
        "flow": r.flow_slug,
        "cron": r.cron,
        "timezone": r.timezone,
        "input": r.input,
        "catch_up": r.catch_up,
        "grace": r.grace,
        "last_tick_at": when(r.last_tick_at),
        "next_tick_at": when(r.next_tick_at),
        "created_at": when(r.created_at),
        "updated_at": when(r.updated_at),
    }


def tick_json(t: TickRecord) -> dict[str, Any]:
    return {
        "tick_at": when(t.tick_at),
        "run_id": t.run_id,
        "fired_at": when(t.fired_at),
        "late": (t.fired_at - t.tick_at).total_seconds(),
    }
