"""Helpers for tests that check who waits for whom: run a call in a thread, see it blocked."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


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


def assert_blocked(thread: threading.Thread) -> None:
    """The thread is still waiting 0.3 s on: for the lock or row another transaction holds."""
    thread.join(0.3)
    assert thread.is_alive(), "the second transaction should be waiting for the first"
