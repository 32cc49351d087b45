"""Prometheus metrics a process counts itself: attempts, durations, retries, stalls, runs it saw
end, runs it started. Counted per process; Prometheus sums them over workers. Counted only once
the process says they are scraped (``mark_exported``: ``serve_metrics`` and the dashboard do):
counting costs a few microseconds per attempt, which nobody should pay for numbers nobody reads.

What the database knows for every process at once - runs per status, queue depth, handler lag,
dead letters, process instances - is read at scrape time instead (``collector``). Without
``prometheus-client`` installed every function here does nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

try:  # an extra: pip install 'tideflow[dashboard]' (or [otel]) brings it
    import prometheus_client as prom
except ImportError:  # pragma: no cover - the dev extra installs it
    prom = None  # type: ignore[assignment]

#: Task durations from 5 ms to 10 min: steps are anything from a lookup to a batch job.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@dataclass(frozen=True)
class _Metrics:
    attempts: Any
    durations: Any
    retries: Any
    stalls: Any
    runs_finished: Any
    runs_started: Any


_lock = threading.Lock()
_metrics: _Metrics | None = None


def _get() -> _Metrics | None:
    """The process's metrics, registered once in prometheus-client's default registry."""
    global _metrics
    if prom is None:
        return None
    with _lock:
        if _metrics is None:
            _metrics = _Metrics(
                attempts=prom.Counter(
                    "tideflow_task_attempts",
                    "Task attempts that ended, by outcome (completed, failed, retried).",
                    ["flow", "step", "outcome"],
                ),
                durations=prom.Histogram(
                    "tideflow_task_duration_seconds",
                    "How long task attempts ran, completed or failed.",
                    ["flow", "step"],
                    buckets=DURATION_BUCKETS,
                ),
                retries=prom.Counter(
                    "tideflow_task_retries",
                    "Failed attempts that will be retried.",
                    ["flow", "step"],
                ),
                stalls=prom.Counter(
                    "tideflow_task_stalls",
                    "Tasks requeued or failed because their worker stopped heartbeating.",
                ),
                runs_finished=prom.Counter(
                    "tideflow_runs_finished",
                    "Runs this process saw end, by flow and status (completed, failed).",
                    ["flow", "status"],
                ),
                runs_started=prom.Counter(
                    "tideflow_runs_started", "Runs started by this process, by flow.", ["flow"]
                ),
            )
        return _metrics


_exported = False

#: (flow, step, outcome) -> the labelled children an attempt updates: looking labels up costs
#: more than counting (a few microseconds per attempt, on the worker's hot path).
_children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}


def task_attempt(flow: str, step: str, seconds: float, outcome: str) -> None:
    """An attempt ended: ``completed``, ``retried`` (failed, will run again) or ``failed``."""
    if not _exported:
        return
    key = (flow, step, outcome)
    children = _children.get(key)
    if children is None:
        m = _get()
        if m is None:
            return
        retries = m.retries.labels(flow, step) if outcome == "retried" else None
        children = _children[key] = (
            m.attempts.labels(flow, step, outcome),
            m.durations.labels(flow, step),
            retries,
        )
    attempts, durations, retries = children
    attempts.inc()
    durations.observe(seconds)
    if retries is not None:
        retries.inc()


def stalls(n: int) -> None:
    m = _get() if _exported else None
    if m is not None and n:
        m.stalls.inc(n)


def run_finished(flow: str, status: str) -> None:
    m = _get() if _exported else None
    if m is not None:
        m.runs_finished.labels(flow, status).inc()


def run_started(flow: str) -> None:
    m = _get() if _exported else None
    if m is not None:
        m.runs_started.labels(flow).inc()


def available() -> bool:
    return prom is not None


def mark_exported() -> None:
    """Say that this process's metrics are scraped (``serve_metrics`` and the dashboard do; an
    application serving prometheus-client's default registry itself calls it too, before its
    workers start). Only then are they counted, and does a worker read which runs its
    completions ended for ``tideflow_runs_finished_total`` (also done when its INFO log lines
    are wanted): a read per batch that nobody would see is not made."""
    global _exported
    _exported = prom is not None


def exported() -> bool:
    return _exported
