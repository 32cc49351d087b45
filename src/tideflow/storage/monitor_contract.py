"""The monitor store contract: read-only views across runs, tasks and leases, for the dashboard
and the Prometheus collector - and the one thing it writes, workers' heartbeats.

Kept apart from ``FlowStore`` because nothing here changes state or sits on the hot path: these
are the aggregate reads an operator needs (how deep is each queue, which workers hold what, how
many runs in each status) and that no worker needs. One implementation,
``storage/monitor_store.py``, over ``*monitor_queries.sql`` of each backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from tideflow.storage.flow_contract import RunRecord


@dataclass(frozen=True)
class RunCount:
    flow_slug: str
    status: str
    runs: int


@dataclass(frozen=True)
class QueueStat:
    """Queued tasks of one flow: all of them, those claimable now, and when the oldest was
    queued (None when none is)."""

    flow_slug: str
    queued: int
    visible: int
    oldest_queued_at: datetime | None


@dataclass(frozen=True)
class WorkerLease:
    """What one worker holds now: started tasks (with the latest lease expiry, which its
    heartbeat pushes forward) and event handlers (with theirs)."""

    worker_id: str
    tasks: int
    handlers: tuple[str, ...]
    oldest_task_started_at: datetime | None
    lease_expires_at: datetime | None


@dataclass(frozen=True)
class VersionCount:
    flow_slug: str
    version: str
    runs: int


@dataclass(frozen=True)
class Heartbeat:
    """What a worker says about itself at each heartbeat."""

    worker_id: str
    hostname: str
    pid: int
    flows: tuple[str, ...]
    concurrency: int
    running: int
    """Tasks it was running at its last heartbeat."""
    heartbeat_interval: float


@dataclass(frozen=True)
class WorkerRecord(Heartbeat):
    """A flow worker as its heartbeats describe it."""

    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None

    def alive(self, now: datetime) -> bool:
        """Not stopped, and heard from within three heartbeat intervals."""
        silent = (now - self.heartbeat_at).total_seconds()
        return self.stopped_at is None and silent <= 3 * self.heartbeat_interval


class MonitorStore(Protocol):
    def run_counts(self) -> list[RunCount]:
        """Runs per flow and status."""
        ...

    def queue_stats(self) -> list[QueueStat]:
        """Queued tasks per flow."""
        ...

    def workers(self) -> list[WorkerLease]:
        """Workers holding task or handler leases, busiest first."""
        ...

    def record_heartbeat(self, beat: Heartbeat) -> None:
        """A worker is alive (one upsert of its own row); rows silent for a day go."""
        ...

    def record_worker_stopped(self, worker_id: str) -> None: ...

    def list_workers(self) -> list[WorkerRecord]:
        """Workers that sent a heartbeat in the last day, running ones first."""
        ...

    def version_counts(self) -> list[VersionCount]:
        """Runs pinned to each stored flow version."""
        ...

    def find_runs(
        self,
        *,
        flow_slug: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Runs newest first, filtered by flow, status and start time, without steps."""
        ...
