"""Driving the flow store by hand in tests: claim everything ready, complete or fail a task."""

from __future__ import annotations

import json

from tideflow.storage.flow_contract import ClaimedTask, FlowStore, TaskCompletion, TaskFailure

W = "worker-a"


def claim(store: FlowStore, flow: str) -> dict[tuple[str, int], ClaimedTask]:
    """Every ready task of ``flow``, by (step slug, task index)."""
    return {(t.key.step_slug, t.key.task_index): t for t in store.claim_tasks(W, [flow], 100, 30)}


def done(store: FlowStore, task: ClaimedTask, output: object) -> None:
    store.complete_tasks(W, [TaskCompletion(task.key, task.attempt, json.dumps(output))])


def fail(store: FlowStore, task: ClaimedTask) -> None:
    """Fail the task for good (not retryable)."""
    store.fail_task(W, TaskFailure(task.key, task.attempt, "boom", retryable=False))
