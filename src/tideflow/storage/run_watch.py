"""Who in this process waits for which run, and waking only those whose run ended.

A wait for a run (``Client.wait_for_run``, ``AsyncClient.wait_for_run``) parks until its run may
have ended, then reads it. Waking every waiter whenever any run ends would make a thousand
waiters re-read a thousand rows per completion batch; instead the transaction that ends runs
says which (``Tx.run_ends``, ``RUNS_CHANNEL``), and this table wakes the waiters of those runs
only. Where a wake-up cannot say which runs ended - SQLite's watcher sees "another connection
committed", a PostgreSQL LISTEN that reconnected may have missed notifications, a payload that
was too long for a NOTIFY - the table asks the database which of its runs have ended, in one
query for all of them, and wakes those. Waiters still poll slowly in case
a wake-up is lost altogether (``runtime/waiting.py``).

A waiter is a callback, called from whichever thread learns of the end (the committing
thread, a LISTEN or watcher thread): a blocking wait sets a ``threading.Event``, an awaiting one
hands a future to its event loop - no thread is held per waiter.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from tideflow.errors import StorageError
from tideflow.storage.database import RUNS_CHANNEL, Database

log = logging.getLogger("tideflow.storage")

#: Run ids per ``get_ended_runs`` query when checking every watched run.
CHECK_BATCH = 1000


def _pending() -> None:
    """Stands for a subscription being made (``RunWatch.watch``)."""


class RunWatch:
    """The waiters of one Database's runs. Thread-safe."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._lock = threading.Lock()
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def watch(self, run_id: str, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` (from any thread) whenever run ``run_id`` may have ended, until the
        returned function is called. The caller reads the run after registering, so an end
        that committed before is seen by that read, and one after it wakes ``wake``.

        The table is subscribed to ``RUNS_CHANNEL`` only while it has waiters, so that a
        process that no longer waits costs the database's watcher nothing (SQLite's looks
        more often while someone waits)."""
        with self._lock:
            self._waiters.setdefault(run_id, []).append(wake)
            subscribe = self._unsubscribe is None
            if subscribe:
                self._unsubscribe = _pending
        if subscribe:
            unsubscribe = self._db.subscribe_with_payload(RUNS_CHANNEL, self._on_runs)
            with self._lock:
                self._unsubscribe = unsubscribe

        def stop() -> None:
            unsubscribe: Callable[[], None] | None = None
            with self._lock:
                waiters = self._waiters.get(run_id)
                if waiters is not None and wake in waiters:
                    waiters.remove(wake)
                    if not waiters:
                        del self._waiters[run_id]
                if not self._waiters and self._unsubscribe not in (None, _pending):
                    unsubscribe, self._unsubscribe = self._unsubscribe, None
            if unsubscribe is not None:
                unsubscribe()

        return stop

    def watching(self) -> int:
        """How many runs have waiters now."""
        return len(self._waiters)

    def _on_runs(self, payload: str | None) -> None:
        if not self._waiters:
            return
        if payload:
            try:
                ended = json.loads(payload)
            except ValueError:  # not ours: someone else's NOTIFY on the channel
                ended = None
            if isinstance(ended, list):
                self._wake([r for r in ended if isinstance(r, str)])
                return
        self._check_all()

    def _check_all(self) -> None:
        """Wake the waiters of every watched run that has ended, found with one query per
        ``CHECK_BATCH`` runs. If the database cannot say, wake them all: each then meets the
        outage in its own read and waits it out within its timeout."""
        with self._lock:
            run_ids = sorted(self._waiters)
        ended: list[str] = []
        try:
            for i in range(0, len(run_ids), CHECK_BATCH):
                rows = self._db.rows("get_ended_runs", run_ids=run_ids[i : i + CHECK_BATCH])
                ended += [r["run_id"] for r in rows]
        except StorageError as exc:
            log.debug("could not check which waited runs ended: %s", exc)
            ended = run_ids
        self._wake(ended)

    def _wake(self, run_ids: list[str]) -> None:
        with self._lock:
            callbacks = [w for r in run_ids for w in self._waiters.get(r, ())]
        for callback in callbacks:
            try:
                callback()
            except Exception:  # pragma: no cover - a waiter's wake is a set() or a call_soon
                log.exception("waking a wait for a run raised")
