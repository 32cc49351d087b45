"""The one place tideflow asks what time it is.

Every timestamp the engine writes (visible-at of a retried task, lease expiry, run timings) comes
from a ``Clock`` handed to the storage backend, never from the database's ``now()``. Tests pass a
``ManualClock`` and move it, so backoff, start delays and lease expiry are tested without sleeping.
In production all workers use the wall clock; the lease margin absorbs ordinary clock skew between
machines (keep them NTP-synced, as for any lease-based system).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...


class SystemClock:
    """Wall-clock time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to; safe to share between threads."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2030, 1, 1, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += timedelta(seconds=seconds)
