"""Database URLs: which one to use, and how to show one without its password."""

from __future__ import annotations

import os

DEFAULT_URL = "sqlite:///tideflow.db"
URL_ENV = "TIDEFLOW_DATABASE_URL"


def resolve_url(url: str | None) -> str:
    """The URL to use: the one given, else ``$TIDEFLOW_DATABASE_URL``, else a SQLite file
    ``tideflow.db`` in the working directory."""
    return url or os.environ.get(URL_ENV) or DEFAULT_URL


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for an error message or a log line."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"
