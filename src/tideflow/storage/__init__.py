"""Storage: the contract (``contract``), the shared run state machine (``engine``) and one
package per backend. ``open_store`` picks the backend from a database URL."""

from __future__ import annotations

from tideflow.clock import Clock
from tideflow.errors import UnsupportedDatabaseURLError
from tideflow.storage.contract import FlowStore
from tideflow.storage.urls import DEFAULT_URL, URL_ENV, redact_url, resolve_url


def open_store(url: str | None = None, *, clock: Clock | None = None) -> FlowStore:
    url = resolve_url(url)
    if url.startswith(("postgresql://", "postgres://")):
        from tideflow.storage.postgres import PostgresStore

        return PostgresStore(url, clock)
    if url.startswith("sqlite://"):
        from tideflow.storage.sqlite import SQLiteStore

        path = url.removeprefix("sqlite://").removeprefix("/") or ":memory:"
        return SQLiteStore(path, clock)
    raise UnsupportedDatabaseURLError(
        f"unsupported database URL {url.split('://')[0]!r}://...: use postgresql://user@host/db "
        "or sqlite:///path/to/file.db"
    )


__all__ = ["DEFAULT_URL", "URL_ENV", "FlowStore", "open_store", "redact_url", "resolve_url"]
