"""The schedule store, written once over a ``Database`` (migration 0020 of each backend explains
the design; ``schedule_contract`` says what each operation does).

Firing a schedule is one transaction: lock its row (``lock_due_schedule``: FOR UPDATE SKIP
LOCKED on PostgreSQL, SQLite's write lock taken by BEGIN IMMEDIATE), compute the due ticks from
the locked cursor (``tideflow.flows.schedules.due_ticks``), insert a tick row and start a run per
fired tick (``SqlFlowStore.start_run`` in this transaction, under a savepoint), move the cursor.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from tideflow.clock import Clock
from tideflow.errors import RunAlreadyExistsError
from tideflow.flows.schedules import Schedule, due_ticks, next_tick, tick_run_id
from tideflow.storage.database import Database, Row
from tideflow.storage.flow_store import SqlFlowStore
from tideflow.storage.schedule_contract import DefinitionFor, ScheduleRecord, TickRecord

log = logging.getLogger("tideflow.worker")


class SqlScheduleStore:
    """``ScheduleStore`` over a ``Database``; starts runs through ``flows``, a flow store on the
    same Database (its transactions are the Database's). Safe to share between threads."""

    def __init__(self, db: Database, flows: SqlFlowStore) -> None:
        self.db = db
        self.clock: Clock = db.clock
        self.flows = flows

    def sync(self, schedules: Sequence[Schedule]) -> None:
        if not schedules:
            return
        now = self.clock.now()
        stored = {r.name: r for r in self.list_schedules()}
        changes = [s for s in schedules if _differs(stored.get(s.key), s)]
        if not changes:
            return  # every worker start after the first writes nothing
        with self.db.transaction() as tx:
            for schedule in changes:
                row = schedule.stored()
                old = stored.get(schedule.key)
                if old is None:
                    cursor = now  # no tick before the schedule existed fires
                elif (old.cron, old.timezone) == (schedule.cron, schedule.timezone):
                    cursor = old.last_tick_at  # same series: its ticks go on from where they were
                else:
                    cursor = max(old.last_tick_at, now)  # a new series starts here
                row.update(
                    last_tick_at=cursor,
                    next_tick_at=next_tick(schedule.cron, schedule.timezone, cursor),
                    now=now,
                )
                tx.run("upsert_schedule", **row)

    def due(self, names: Sequence[str]) -> list[str]:
        if not names:
            return []
        rows = self.db.rows("due_schedules", names=list(names), now=self.clock.now())
        return [r["name"] for r in rows]

    def fire(self, name: str, definition_for: DefinitionFor) -> list[str]:
        now = self.clock.now()
        started: list[str] = []
        with self.db.transaction() as tx:
            found = tx.rows("lock_due_schedule", name=name, now=now)
            if not found:
                return []  # not due after all, or another worker is firing it right now
            s = _record(found[0])
            due = due_ticks(s.cron, s.timezone, s.catch_up, s.grace, s.last_tick_at, now)
            if due is None:  # next_tick_at was stale (the row was synced meanwhile)
                tx.run(
                    "move_schedule_cursor",
                    name=name,
                    last_tick_at=s.last_tick_at,
                    next_tick_at=next_tick(s.cron, s.timezone, s.last_tick_at),
                )
                return []
            definition = definition_for(s.flow_slug) if due.fire else None
            input_json = json.dumps(s.input)
            for tick in due.fire:
                run_id = tick_run_id(name, tick)
                inserted = tx.run(
                    "insert_tick", schedule=name, tick_at=tick, run_id=run_id, fired_at=now
                )
                if not inserted:
                    continue  # fired already (the cursor makes this unreachable; the key holds)
                assert definition is not None
                try:
                    self.flows.start_run(definition, run_id, input_json, tx=tx)
                except RunAlreadyExistsError:
                    continue  # a run of this tick exists already: the tick has its run
                started.append(run_id)
            tx.run(
                "move_schedule_cursor",
                name=name,
                last_tick_at=due.cursor,
                next_tick_at=next_tick(s.cron, s.timezone, due.cursor),
            )
            if started:
                tx.run("prune_ticks", schedule=name)
        if not due.fire:
            log.info(
                "schedule %s: tick %s is %.0fs late, past its grace of %gs: passed over "
                "(catch_up='none')",
                name,
                due.cursor.isoformat(),
                (now - due.cursor).total_seconds(),
                s.grace,
            )
        return started

    def list_schedules(self) -> list[ScheduleRecord]:
        return [_record(r) for r in self.db.rows("list_schedules")]

    def ticks(self, name: str, limit: int = 20) -> list[TickRecord]:
        return [
            TickRecord(r["schedule"], r["tick_at"], r["run_id"], r["fired_at"])
            for r in self.db.rows("list_ticks", schedule=name, limit=limit)
        ]


def _differs(old: ScheduleRecord | None, new: Schedule) -> bool:
    if old is None:
        return True
    row = new.stored()
    return (
        old.flow_slug,
        old.cron,
        old.timezone,
        old.input,
        old.catch_up,
        old.grace,
    ) != (
        row["flow_slug"],
        row["cron"],
        row["timezone"],
        json.loads(row["input"]),
        row["catch_up"],
        row["grace"],
    )


def _record(r: Row) -> ScheduleRecord:
    raw: Any = r["input"]
    return ScheduleRecord(
        name=r["name"],
        flow_slug=r["flow_slug"],
        cron=r["cron"],
        timezone=r["timezone"],
        input=json.loads(raw) if isinstance(raw, str) else raw,
        catch_up=r["catch_up"],
        grace=float(r["grace"]),
        last_tick_at=r["last_tick_at"],
        next_tick_at=r["next_tick_at"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )
