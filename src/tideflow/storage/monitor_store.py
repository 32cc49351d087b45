"""``MonitorStore`` over a ``Database``, for every backend: each method one named query of
``<backend>/monitor_queries.sql``, as a statement of its own (reads, and workers' heartbeats)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from tideflow.storage.database import Database, Row
from tideflow.storage.flow_contract import RunRecord
from tideflow.storage.monitor_contract import (
    Heartbeat,
    QueueStat,
    RunCount,
    VersionCount,
    WorkerLease,
    WorkerRecord,
)
from tideflow.storage.rows import run_record

#: A worker silent this long is forgotten (its row deleted) by the next heartbeat of any worker.
FORGET_AFTER = timedelta(days=1)


class SqlMonitorStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def run_counts(self) -> list[RunCount]:
        return [
            RunCount(r["flow_slug"], r["status"], int(r["n"])) for r in self.db.rows("run_counts")
        ]

    def queue_stats(self) -> list[QueueStat]:
        now = self.db.clock.now()
        return [
            QueueStat(r["flow_slug"], int(r["queued"]), int(r["visible"] or 0), r["oldest_at"])
            for r in self.db.rows("queue_stats", now=now)
        ]

    def workers(self) -> list[WorkerLease]:
        now = self.db.clock.now()
        tasks = {r["worker_id"]: r for r in self.db.rows("task_leases", now=now)}
        handlers: dict[str, list[Row]] = {}
        for r in self.db.rows("handler_leases", now=now):
            handlers.setdefault(r["owner"], []).append(r)
        leases = []
        for worker_id in tasks.keys() | handlers.keys():
            t = tasks.get(worker_id)
            held = handlers.get(worker_id, [])
            expiries = [h["lease_expires_at"] for h in held]
            if t is not None:
                expiries.append(t["lease_expires_at"])
            leases.append(
                WorkerLease(
                    worker_id,
                    int(t["tasks"]) if t is not None else 0,
                    tuple(sorted(h["name"] for h in held)),
                    t["oldest_started_at"] if t is not None else None,
                    max(expiries) if expiries else None,
                )
            )
        return sorted(leases, key=lambda w: (-w.tasks, -len(w.handlers), w.worker_id))

    def record_heartbeat(self, beat: Heartbeat) -> None:
        now = self.db.clock.now()
        with self.db.transaction() as tx:
            tx.run(
                "record_heartbeat",
                worker_id=beat.worker_id,
                hostname=beat.hostname,
                pid=beat.pid,
                flows=json.dumps(list(beat.flows)),
                concurrency=beat.concurrency,
                running=beat.running,
                heartbeat_interval=beat.heartbeat_interval,
                now=now,
            )
            tx.run("forget_silent_workers", before=now - FORGET_AFTER)

    def record_worker_stopped(self, worker_id: str) -> None:
        with self.db.transaction() as tx:
            tx.run("record_worker_stopped", worker_id=worker_id, now=self.db.clock.now())

    def list_workers(self) -> list[WorkerRecord]:
        return [
            WorkerRecord(
                r["worker_id"],
                r["hostname"],
                int(r["pid"]),
                tuple(json.loads(r["flows"])),
                int(r["concurrency"]),
                int(r["running"]),
                float(r["heartbeat_interval"]),
                r["started_at"],
                r["heartbeat_at"],
                r["stopped_at"],
            )
            for r in self.db.rows("list_workers")
        ]

    def version_counts(self) -> list[VersionCount]:
        return [
            VersionCount(r["flow_slug"], r["flow_version"], int(r["n"]))
            for r in self.db.rows("version_counts")
        ]

    def find_runs(
        self,
        *,
        flow_slug: str | None = None,
        status: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        rows = self.db.rows(
            "find_runs", flow_slug=flow_slug, status=status, since=since, until=until, limit=limit
        )
        return [run_record(r, []) for r in rows]
