"""Loading SQL that a reader can find: migrations and named queries live in ``.sql`` files.

A queries file is a list of blocks, each opened by ``-- name: <query_name>``; comments inside a
block stay with it. Parameters are written ``%(name)s`` in every dialect (psycopg's style); the
SQLite backend rewrites them to ``:name`` once, at load time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_(\w+)\.sql$")


def load_queries(package: str, filename: str = "queries.sql") -> dict[str, str]:
    text = resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:  # pragma: no cover - caught by the test that loads every file
            raise ValueError(f"{package}/{filename}: query {name!r} is defined twice")
        queries[name] = body.strip().rstrip(";")
    return queries


def load_dialect(package: str) -> dict[str, str]:
    """Every named query of a backend: ``queries.sql`` and each ``*_queries.sql`` beside it (one
    file per store), in one namespace - a name may be defined once per backend."""
    queries: dict[str, str] = {}
    for entry in sorted(resources.files(package).iterdir(), key=lambda e: e.name):
        if entry.name.endswith("queries.sql"):
            for name, sql in load_queries(package, entry.name).items():
                if name in queries:  # pragma: no cover - caught by the test that loads them
                    raise ValueError(f"{package}: query {name!r} is defined in two files")
                queries[name] = sql
    return queries


def pending(package: str, done: set[int]) -> list[str]:
    """The names of ``package``'s migrations whose versions are not in ``done``."""
    return [f"{m.version:04d}_{m.name}" for m in load_migrations(package) if m.version not in done]


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(package: str) -> list[Migration]:
    """Migrations in ``<package>/migrations``, named ``0001_initial.sql``, in version order."""
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    # 0001.. without gaps: a gap is a migration missing from the package (the numbers reserved
    # for work in progress must all have landed before a release), and a database migrated past
    # it would never get it.
    if versions != list(range(1, len(found) + 1)):  # pragma: no cover - packaging error
        raise ValueError(f"{package}: migrations must be numbered 0001.. without gaps: {versions}")
    return found
