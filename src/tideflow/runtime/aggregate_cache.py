"""Aggregate states a dispatcher keeps between commands, so that the next command to the same
aggregate decides without reading its stream (Commanded keeps aggregates alive in memory for the
same reason).

Safe without any coordination between processes because the append checks the version: an entry is
the state *at a version*, and a command decided on it is appended with that version expected. If
anyone else appended to the stream meanwhile, the append is refused (``WrongExpectedVersionError``)
and the dispatcher reads the stream and decides again, as it does for any conflict. Versions of a
stream only grow, so a stale entry can cost a retry, never a wrong decision. A command *refused* on
a kept state is decided again on the stream before the refusal stands: a stale state must not
refuse what the real one allows. (The one way a stream's version can go back is a hard delete -
``delete_stream(hard=True)``, for erasure - and re-creation: ``forget`` the stream, or clear the
cache, where that happens.)

An entry is taken out when a command uses it and put back only once that command's events have
committed (``Tx.on_commit`` inside a caller's transaction), so a state never includes events that
rolled back, and an aggregate whose ``apply`` changes its state in place cannot corrupt an entry
another command will read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

#: How many aggregates a dispatcher keeps by default: the least recently used go first.
DEFAULT_AGGREGATE_CACHE_SIZE = 10_000


class AggregateCache:
    """Stream id -> (state, version), least recently used first out. Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, stream_id: str) -> tuple[Any, int] | None:
        """The stream's state and version, removed from the cache (the caller owns it now)."""
        with self._lock:
            return self._entries.pop(stream_id, None)

    def put(self, stream_id: str, state: Any, version: int) -> None:
        """Keep ``state`` at ``version`` - unless an entry at a later version is there
        already (two commands committed out of order)."""
        if self.size <= 0:
            return
        with self._lock:
            held = self._entries.get(stream_id)
            if held is not None and held[1] > version:
                return
            self._entries[stream_id] = (state, version)
            self._entries.move_to_end(stream_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def forget(self, stream_id: str | None = None) -> None:
        """Drop one stream's entry, or every entry."""
        with self._lock:
            if stream_id is None:
                self._entries.clear()
            else:
                self._entries.pop(stream_id, None)

    def __len__(self) -> int:
        return len(self._entries)
