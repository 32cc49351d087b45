"""Helpers for tests that check who waits for whom: run a call in a thread, see it blocked."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg

from tests.polling import wait_until


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run ``fn`` in a thread; the dict gets its "value" or "error"."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def assert_blocked(thread: threading.Thread, url: str) -> None:
    """The thread waits for the lock or row another transaction holds.

    On PostgreSQL this is seen, not inferred from silence: one of the database's backends
    waits for a lock (a thread that is merely slow to start would not pass). SQLite's wait - its
    busy handler - cannot be seen from outside: there the thread must still be running 0.3 s on.
    """
    if url.startswith(("postgresql://", "postgres://")):
        wait_until(lambda: _lock_waiters(url), what="a backend waiting for a lock")
    else:
        thread.join(0.3)
    assert thread.is_alive(), "the second transaction should be waiting for the first"


def _lock_waiters(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = "
            "current_database() AND wait_event_type = 'Lock'"
        ).fetchone()
    return int(row[0]) if row else 0
