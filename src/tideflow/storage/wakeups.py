"""The callbacks a Database wakes, per channel: the bookkeeping both backends share.

How a wake-up travels between processes is each backend's (LISTEN/NOTIFY on PostgreSQL, a
``PRAGMA data_version`` watcher on SQLite); who in this process gets called is this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Subscribers:
    """Callbacks by channel. Adding and waking may happen from any thread."""

    def __init__(self) -> None:
        self._by_channel: dict[str, list[Callable[[], None]]] = {}

    def channels(self) -> list[str]:
        return list(self._by_channel)

    def has(self, channel: str) -> bool:
        return bool(self._by_channel.get(channel))

    def add(self, channel: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Subscribe ``callback``; returns the function that unsubscribes it."""
        callbacks = self._by_channel.setdefault(channel, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def wake(self, channel: str | None = None) -> None:
        """Call the callbacks of ``channel``, or of every channel."""
        for name, callbacks in list(self._by_channel.items()):
            if channel is None or name == channel:
                for callback in list(callbacks):
                    callback()


class TxCallbacks:
    """What a backend's ``Tx`` keeps for after it ends: ``on_end`` callbacks (always) and
    ``on_commit`` callbacks (after a commit; those a rolled-back savepoint registered are
    dropped - what it did will never commit)."""

    def __init__(self) -> None:
        self._on_end: list[Callable[[], None]] = []
        self._on_commit: list[Callable[[], None]] = []

    def on_end(self, callback: Callable[[], None]) -> None:
        self._on_end.append(callback)

    def on_commit(self, callback: Callable[[], None]) -> None:
        self._on_commit.append(callback)

    @contextmanager
    def _savepoint_callbacks(self) -> Iterator[None]:
        mark = len(self._on_commit)
        try:
            yield
        except BaseException:
            del self._on_commit[mark:]
            raise
