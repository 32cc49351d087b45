"""Database URLs: which one to use, whether tideflow can use it, and how to show one without its
password.

Every way a URL reaches tideflow - ``App(url)``, ``open_store``, ``--database-url``,
``$TIDEFLOW_DATABASE_URL`` - goes through ``resolve_url``, which refuses a URL before anything
connects or touches a file. Two refusals matter most:

* a PostgreSQL URL without a host or a database name (``postgresql:///db``, ``postgresql://``,
  ``postgresql://host``): libpq would fill the gap from its defaults - a Unix socket,
  ``$PGHOST``, a database named after the user - and tideflow would work on a database nobody
  named;
* a bare file name (``tideflow.db``, ``./x.db``, ``/tmp/x.db``): it is almost certainly meant as
  a SQLite file, and saying so (``sqlite:///tideflow.db``) beats "unsupported scheme".
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from tideflow.errors import SchemaMissingError, SchemaNotReadyError, UnsupportedDatabaseURLError

DEFAULT_URL = "sqlite:///tideflow.db"
URL_ENV = "TIDEFLOW_DATABASE_URL"

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
POSTGRES_FORM = "postgresql://user@host:5432/dbname"
SQLITE_FORM = (
    "sqlite:///tideflow.db (relative path), sqlite:////var/lib/app/tideflow.db (absolute path)"
)


def resolve_url(url: str | None) -> str:
    """The URL to use - the one given, else ``$TIDEFLOW_DATABASE_URL``, else a SQLite file
    ``tideflow.db`` in the working directory - once ``check_url`` accepts it."""
    if url:
        return check_url(url)
    env = os.environ.get(URL_ENV)
    if env:
        return check_url(env, origin=f"${URL_ENV}")
    return DEFAULT_URL


def check_url(url: str, *, origin: str = "database URL") -> str:
    """``url`` itself if tideflow has a backend for it and it names its database completely;
    else ``UnsupportedDatabaseURLError`` showing the form to write. ``origin`` says where the
    URL came from, for the message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        # No scheme: a file path. Do not echo what could be a mangled URL with a password.
        shown = repr(url) if "@" not in url else "(a value without a scheme)"
        suggestion = f"sqlite:///{url}" if "@" not in url and url.strip() else DEFAULT_URL
        raise UnsupportedDatabaseURLError(
            f"{origin} {shown} is not a URL: for a SQLite file write {suggestion} "
            f"(sqlite:/// then the path, e.g. {DEFAULT_URL}); for PostgreSQL write "
            f"{POSTGRES_FORM}"
        )
    if url.startswith(POSTGRES_SCHEMES):
        _check_postgres(url, origin)
        return url
    if scheme == "sqlite":
        if rest and not rest.startswith("/"):
            raise UnsupportedDatabaseURLError(
                f"{origin} {url!r} has two slashes after 'sqlite:', so its path would be read "
                f"as a host: write sqlite:///{rest} ({SQLITE_FORM})"
            )
        return url
    raise UnsupportedDatabaseURLError(
        f"unsupported {origin} {scheme!r}://...: tideflow has backends for PostgreSQL "
        f"({POSTGRES_FORM}) and SQLite ({DEFAULT_URL})"
    )


def _check_postgres(url: str, origin: str) -> None:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.netloc.rpartition("@")[2]
    missing = []
    if (not host or host.startswith(":")) and not query.get("host") and not query.get("hostaddr"):
        missing.append("a host")
    if not parts.path.lstrip("/") and not query.get("dbname"):
        missing.append("a database name")
    if missing:
        raise UnsupportedDatabaseURLError(
            f"{origin} {redact_url(url)} names no {' and no '.join(m[2:] for m in missing)}: "
            f"write {POSTGRES_FORM} (tideflow does not let libpq pick a Unix socket, $PGHOST "
            "or a default database for it)"
        )


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite://`` URL: ``sqlite:///x.db`` is ``x.db`` (relative),
    ``sqlite:////tmp/x.db`` is ``/tmp/x.db``, ``sqlite://`` alone an in-memory database."""
    return url.removeprefix("sqlite://").removeprefix("/") or ":memory:"


def redact_url(url: str) -> str:
    """The URL with any password replaced, fit for an error message or a log line."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return f"{scheme}{sep}{userinfo.split(':', 1)[0]}:***@{host}"


def schema_error(where: str, url: str, pending: list[str] | None) -> SchemaNotReadyError:
    """The error a read raises instead of migrating: ``pending`` None means no tideflow schema
    at all (``SchemaMissingError``), else the migrations the database lacks. ``where`` names the
    database (a redacted URL or a file path), ``url`` goes into the command to run."""
    command = f"`tideflow migrate -d {redact_url(url)}`"
    if pending is None:
        return SchemaMissingError(f"no tideflow schema in {where}: run {command}")
    return SchemaNotReadyError(
        f"the tideflow schema in {where} is older than this tideflow (pending migrations: "
        f"{', '.join(pending)}); reads do not migrate: run {command}"
    )


def require_current(pending: list[str] | None, where: str, url: str) -> None:
    """``schema_error`` unless the schema is there with no migration ``pending``."""
    if pending is None or pending:
        raise schema_error(where, url, pending)
