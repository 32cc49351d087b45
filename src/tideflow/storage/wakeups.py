"""The callbacks a Database wakes, per channel: the bookkeeping both backends share.

How a wake-up travels between processes is each backend's (LISTEN/NOTIFY on PostgreSQL, a
``PRAGMA data_version`` watcher on SQLite); who in this process gets called is this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


class Subscribers:
    """Callbacks by channel. Adding and waking may happen from any thread.

    Most callbacks take nothing: a wake-up only says "look again". Those added with
    ``add_with_payload`` also get what the notification carried (``RUNS_CHANNEL``: which runs
    ended), or None when that is unknown - a commit seen by SQLite's watcher, a LISTEN that
    reconnected - and then must look at everything they watch."""

    def __init__(self) -> None:
        self._by_channel: dict[str, list[Callable[[], None]]] = {}
        self._with_payload: dict[str, list[Callable[[str | None], None]]] = {}

    def channels(self) -> list[str]:
        return list({*self._by_channel, *self._with_payload})

    def has(self, channel: str) -> bool:
        return bool(self._by_channel.get(channel)) or bool(self._with_payload.get(channel))

    def has_payload_subscribers(self) -> bool:
        return any(self._with_payload.values())

    def add_with_payload(
        self, channel: str, callback: Callable[[str | None], None]
    ) -> Callable[[], None]:
        """Subscribe ``callback`` to ``channel``'s payloads; returns the function that
        unsubscribes it."""
        callbacks = self._with_payload.setdefault(channel, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def add(self, channel: str, callback: Callable[[], None]) -> Callable[[], None]:
        """Subscribe ``callback``; returns the function that unsubscribes it."""
        callbacks = self._by_channel.setdefault(channel, [])
        callbacks.append(callback)

        def unsubscribe() -> None:
            if callback in callbacks:
                callbacks.remove(callback)

        return unsubscribe

    def wake(self, channel: str | None = None, payload: str | None = None) -> None:
        """Call the callbacks of ``channel``, or of every channel (then without a payload)."""
        for name, callbacks in list(self._by_channel.items()):
            if channel is None or name == channel:
                for callback in list(callbacks):
                    callback()
        for name, payload_callbacks in list(self._with_payload.items()):
            if channel is None or name == channel:
                for payload_callback in list(payload_callbacks):
                    payload_callback(payload if channel is not None else None)


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
