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
  a SQLite file, and saying so (``sqlite:///tideflow.db``) beats "unsupported scheme". It is not
  taken as one: a mistyped server name (``-d db-prod``) would quietly become a new, empty SQLite
  file, and ``App(url)``, ``$TIDEFLOW_DATABASE_URL`` and ``-d`` must all mean the same.

Every other malformed URL - a scheme with too few slashes (``sqlite:x.db``,
``postgresql:/host/db``), SQLAlchemy's driver suffix (``postgresql+psycopg://``), a port that is
not a number, an empty SQLite path - gets one sentence showing the form to write.
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
    if not url.strip():
        raise UnsupportedDatabaseURLError(
            f"{origin} is empty: write {POSTGRES_FORM} or sqlite:///path.db"
        )
    scheme, sep, rest = url.partition("://")
    if not sep:
        _refuse_without_scheme(url, origin)
    base = scheme.lower().partition("+")[0]
    if base != scheme and base in ("postgresql", "postgres", "sqlite"):
        fixed = f"{base}://{rest}"
        shown = redact_url(fixed) if base != "sqlite" else fixed
        raise UnsupportedDatabaseURLError(
            f"{origin} {redact_url(url)} names a driver ({scheme!r}, as SQLAlchemy writes "
            f"URLs): tideflow picks its own; write {shown}"
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
        if rest == "/":
            raise UnsupportedDatabaseURLError(
                f"{origin} {url!r} names no file: write {SQLITE_FORM}, or sqlite:// alone for "
                "a database in memory"
            )
        return url
    raise UnsupportedDatabaseURLError(
        f"unsupported {origin} {scheme!r} (in {redact_url(url)}): tideflow has backends for "
        f"PostgreSQL ({POSTGRES_FORM}) and SQLite ({DEFAULT_URL})"
    )


def _refuse_without_scheme(url: str, origin: str) -> None:
    """A value without ``://``: a known scheme with too few slashes, else a file path."""
    head, colon, tail = url.partition(":")
    if colon and head.lower() in ("sqlite", "postgresql", "postgres"):
        if head.lower() == "sqlite":
            path = tail.lstrip("/") if not tail.startswith("//") else tail[1:]
            raise UnsupportedDatabaseURLError(
                f"{origin} {url!r} is missing slashes after 'sqlite:': write "
                f"sqlite:///{path or 'tideflow.db'} (sqlite:/// then the path)"
            )
        raise UnsupportedDatabaseURLError(
            f"{origin} {redact_url(url)} is missing slashes after '{head}:': write {POSTGRES_FORM}"
        )
    # No scheme: a file path. Do not echo what could be a mangled URL with a password.
    if "@" in url:
        raise UnsupportedDatabaseURLError(
            f"{origin} (a value with '@' but no scheme) is not a URL: write {POSTGRES_FORM}"
        )
    raise UnsupportedDatabaseURLError(
        f"{origin} {url!r} is not a URL but a file path, which tideflow does not guess at: "
        f"for this SQLite file write sqlite:///{url}; for PostgreSQL write {POSTGRES_FORM}"
    )


def _check_postgres(url: str, origin: str) -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError as exc:
        raise UnsupportedDatabaseURLError(
            f"{origin} {redact_url(url)} is malformed ({exc}): write {POSTGRES_FORM}"
        ) from None
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
