"""The process store, written once over a ``Database``: the instances of process managers
(migration 0005 of each backend).

``load`` and ``save`` run in the caller's transaction - the event store transaction of the
manager's batch. ``load`` locks the instance until that transaction ends (PostgreSQL: the row,
FOR UPDATE; SQLite: the transaction already holds the database's write lock), so that a worker
taking the handler over cannot apply an event to the instance before the batch in flight has
committed its state, and then reads the state that batch left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tideflow.clock import Clock
from tideflow.storage.database import PROCESSES_CHANNEL, Database, Tx
from tideflow.storage.process_contract import InstanceWrite, ProcessInstance, ProcessStatus


class SqlProcessStore:
    """``ProcessStore`` over a ``Database``. Safe to share between threads.

    ``owns_db``: ``close()`` closes the Database too (a store opened on its own)."""

    def __init__(self, db: Database, *, owns_db: bool = False) -> None:
        self.db = db
        self.url = db.url
        self.clock: Clock = db.clock
        self._owns_db = owns_db
        self._here: list[_Watch] = []
        """``on_change`` callbacks, woken by this store's own commits when they match."""
        self._here_lock = threading.Lock()

    def migrate(self) -> list[str]:
        return self.db.migrate()

    def close(self) -> None:
        if self._owns_db:
            self.db.close()

    def load(self, tx: Tx, manager: str, process_id: str) -> ProcessInstance | None:
        rows = tx.rows("load", manager=manager, process_id=process_id)
        return ProcessInstance(**rows[0]) if rows else None

    def load_many(
        self, tx: Tx, manager: str, process_ids: Sequence[str]
    ) -> dict[str, ProcessInstance]:
        if not process_ids:
            return {}
        rows = tx.rows("load_many", manager=manager, process_ids=sorted(set(process_ids)))
        return {r["process_id"]: ProcessInstance(**r) for r in rows}

    def save(
        self,
        tx: Tx,
        manager: str,
        process_id: str,
        *,
        status: ProcessStatus,
        state_json: str,
        version: int,
        last_position: int,
        error: str | None,
        undo_json: str = "[]",
        sent_json: str = "[]",
        finished: bool = False,
        fresh: bool = False,
    ) -> None:
        write = InstanceWrite(
            manager,
            process_id,
            status,
            state_json,
            version,
            last_position,
            error,
            undo_json,
            sent_json,
            finished,
            fresh,
        )
        tx.run("save", **self._save_params(write))
        tx.on_commit(lambda: self._wake({(manager, process_id): status}))

    def save_many(self, tx: Tx, writes: Sequence[InstanceWrite]) -> None:
        if writes:
            # With the batch's COMMIT (``Tx.defer_many``): the states are encoded and checked
            # already, so nothing but the database's weather can refuse them there.
            tx.defer_many("save", [self._save_params(w) for w in writes])
            saved = {(w.manager, w.process_id): w.status for w in writes}
            tx.on_commit(lambda: self._wake(saved))

    def _wake(self, saved: dict[tuple[str, str], ProcessStatus]) -> None:
        """This process's waits for the instances saved, at once - only those whose instance
        reached a status they wait for: a process manager's batch saves on every event, and a
        wait woken for nothing reads its row for nothing - and the other processes' through
        the database."""
        with self._here_lock:
            woken = [w.callback for w in self._here if w.matches(saved)]
        for callback in woken:
            callback()
        self.db.wake(PROCESSES_CHANNEL, here=False)

    def on_change(
        self,
        callback: Callable[[], None],
        key: tuple[str, str] | None = None,
        statuses: Collection[str] | None = None,
    ) -> Callable[[], None]:
        entry = _Watch(callback, key, None if statuses is None else frozenset(statuses))
        with self._here_lock:
            self._here.append(entry)
        stop_there = self.db.subscribe(PROCESSES_CHANNEL, callback)

        def stop() -> None:
            stop_there()
            with self._here_lock:
                if entry in self._here:
                    self._here.remove(entry)

        return stop

    def _save_params(self, w: InstanceWrite) -> dict[str, Any]:
        now = self.clock.now()
        return {
            "manager": w.manager,
            "process_id": w.process_id,
            "status": w.status,
            "state": w.state_json,
            "version": w.version,
            "last_position": w.last_position,
            "error": w.error,
            "now": now,
            "undo": w.undo_json,
            "sent": w.sent_json,
            "finished_at": now if w.finished else None,
            "fresh": w.fresh,
        }

    def prune_finished(self, tx: Tx, manager: str, retention: float, limit: int = 100) -> int:
        before = self.clock.now() - timedelta(seconds=retention)
        return tx.run("prune_finished", manager=manager, before=before, limit=limit)

    def prune_finished_later(
        self, tx: Tx, manager: str, retention: float, limit: int = 100
    ) -> None:
        before = self.clock.now() - timedelta(seconds=retention)
        tx.defer("prune_finished", manager=manager, before=before, limit=limit)

    def delete(self, tx: Tx, manager: str, process_id: str) -> bool:
        return tx.run("delete_instance", manager=manager, process_id=process_id) > 0

    def get(self, manager: str, process_id: str) -> ProcessInstance | None:
        rows = self.db.rows("get", manager=manager, process_id=process_id)
        return ProcessInstance(**rows[0]) if rows else None

    def list_instances(
        self, manager: str | None = None, status: ProcessStatus | None = None, limit: int = 100
    ) -> list[ProcessInstance]:
        return [
            ProcessInstance(**r)
            for r in self.db.rows("list_instances", manager=manager, status=status, limit=limit)
        ]

    def counts(self) -> dict[tuple[str, ProcessStatus], int]:
        return {(r["manager"], r["status"]): r["instances"] for r in self.db.rows("counts")}


@dataclass(frozen=True, eq=False)
class _Watch:
    """An ``on_change`` subscription, as this process's own saves are matched against it."""

    callback: Callable[[], None]
    key: tuple[str, str] | None
    statuses: frozenset[str] | None

    def matches(self, saved: dict[tuple[str, str], ProcessStatus]) -> bool:
        if self.key is None:
            return self.statuses is None or any(s in self.statuses for s in saved.values())
        status = saved.get(self.key)
        return status is not None and (self.statuses is None or status in self.statuses)
