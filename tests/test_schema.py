"""storage/<backend>/schema.sql is what the migrations build, and both dialects hold the same data.

schema.sql is the schema written out for readers (tables with their final columns, current
functions); the migrations stay the source of truth. These tests keep the two in step: they apply
the migrations to one empty database and schema.sql to another, read both catalogs and require
them to be equal, object by object - so a migration without the matching edit of schema.sql
(or an edit of schema.sql that no migration makes) fails here, naming the object that differs.
The parity test then requires PostgreSQL and SQLite to have the same tables and columns, in
mapped types, up to an explicit list of allowed differences.

Not behavioural tests of the store, so they are not parametrized over ``backend``: each one is
about one dialect's catalog, or both at once.
"""

from __future__ import annotations

import difflib
import re
import sqlite3
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.pgdb import empty_database
from tideflow.storage import open_store
from tideflow.storage.sqlfile import load_migrations

#: One category of a catalog: object key -> its description (anything comparable and printable).
Category = dict[str, Any]
Catalog = dict[str, Category]


def schema_sql(dialect: str) -> str:
    return (
        resources.files(f"tideflow.storage.{dialect}")
        .joinpath("schema.sql")
        .read_text(encoding="utf-8")
    )


# --------------------------------------------------------------------------------------------
# Comparing catalogs
# --------------------------------------------------------------------------------------------


def _lines(value: Any) -> list[str]:
    return list(value) if isinstance(value, tuple) else [repr(value)]


def catalog_differences(migrated: Catalog, from_file: Catalog) -> list[str]:
    """Every difference between two catalogs, one readable line (or diff) per object."""
    out: list[str] = []
    for category in sorted(set(migrated) | set(from_file)):
        a, b = migrated.get(category, {}), from_file.get(category, {})
        for key in sorted(set(a) - set(b)):
            out.append(
                f"{category} {key}: made by the migrations, missing from schema.sql ({a[key]!r})"
            )
        for key in sorted(set(b) - set(a)):
            out.append(f"{category} {key}: in schema.sql, not made by the migrations ({b[key]!r})")
        for key in sorted(set(a) & set(b)):
            if a[key] == b[key]:
                continue
            if isinstance(a[key], tuple) and isinstance(b[key], tuple):
                diff = difflib.unified_diff(
                    _lines(a[key]), _lines(b[key]), "migrations", "schema.sql", n=1, lineterm=""
                )
                out.append(f"{category} {key} differs:\n    " + "\n    ".join(diff))
            else:
                out.append(
                    f"{category} {key} differs: the migrations give {a[key]!r}, "
                    f"schema.sql gives {b[key]!r}"
                )
    return out


def assert_same(migrated: Catalog, from_file: Catalog, dialect: str) -> None:
    diffs = catalog_differences(migrated, from_file)
    assert not diffs, (
        f"src/tideflow/storage/{dialect}/schema.sql does not build what the migrations build "
        f"({len(diffs)} difference(s)); the migrations are the source of truth, so edit "
        "schema.sql to match:\n  " + "\n  ".join(diffs)
    )


def _squash(text: str) -> str:
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# PostgreSQL catalog
# --------------------------------------------------------------------------------------------


def pg_catalog(url: str) -> Catalog:
    """Everything in schema ``tideflow`` that a migration can make, keyed by name."""
    cat: Catalog = {}
    with psycopg.connect(url, autocommit=True) as conn:

        def rows(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql).fetchall()

        cat["relation"] = {
            name: {"kind": kind, "options": sorted(options or []), "persistence": persistence}
            for name, kind, options, persistence in rows(
                "SELECT c.relname, c.relkind::text, c.reloptions, c.relpersistence::text "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'tideflow'"
            )
        }
        columns: Category = {}
        order: dict[str, list[str]] = {}
        for table, column, type_, not_null, default, identity, generated in rows(
            "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
            "a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text, "
            "a.attgenerated::text "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "WHERE n.nspname = 'tideflow' AND c.relkind IN ('r', 'p', 'v', 'm', 'f') "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.relname, a.attnum"
        ):
            order.setdefault(table, []).append(column)
            columns[f"{table}.{column}"] = {
                "type": type_,
                "not_null": not_null,
                "default": default,
                "identity": identity,
                "generated": generated,
            }
        cat["column"] = columns
        # Order matters too (SELECT *, row types such as the run_steps of _queue_step_v1).
        cat["column order of"] = {table: tuple(names) for table, names in order.items()}
        cat["constraint"] = {
            f"{table}.{name}": f"{kind}: {definition}"
            for table, name, kind, definition in rows(
                "SELECT c.relname, co.conname, co.contype::text, pg_get_constraintdef(co.oid) "
                "FROM pg_constraint co JOIN pg_namespace n ON n.oid = co.connamespace "
                "LEFT JOIN pg_class c ON c.oid = co.conrelid WHERE n.nspname = 'tideflow'"
            )
        }
        cat["index"] = {
            name: _squash(definition)
            for name, definition in rows(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'tideflow'"
            )
        }
        cat["sequence"] = {
            name: rest
            for name, *rest in rows(
                "SELECT sequencename, data_type::text, start_value, min_value, max_value, "
                "increment_by, cycle, cache_size FROM pg_sequences "
                "WHERE schemaname = 'tideflow'"
            )
        }
        # Whole definitions, line by line with spacing squashed: a difference shows as a diff.
        cat["function"] = {
            f"{name}({args})": (
                kind
                if kind not in ("f", "p")
                else tuple(line for line in map(_squash, definition.splitlines()) if line)
            )
            for name, args, kind, definition in rows(
                "SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prokind::text, "
                "CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END "
                "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'tideflow'"
            )
        }
        cat["trigger"] = {
            f"{table}.{name}": definition
            for table, name, definition in rows(
                "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'tideflow' AND NOT t.tgisinternal"
            )
        }
        # Types of their own (row types of tables and array types come with the tables).
        cat["type"] = {
            name: kind
            for name, kind in rows(
                "SELECT t.typname, t.typtype::text FROM pg_type t "
                "JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'tideflow' AND t.typrelid = 0 AND t.typelem = 0"
            )
        }
        if cat["relation"].get("schema_migrations"):
            cat["schema_migrations row"] = {
                f"{version:04d}": name
                for version, name in rows("SELECT version, name FROM tideflow.schema_migrations")
            }
    return cat


@pytest.fixture(scope="module")
def pg_server(request: pytest.FixtureRequest) -> str:
    """A URL on the test server (skips without one, fails under CI=true, as conftest does)."""
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(scope="module")
def pg_migrated(pg_server: str) -> Iterator[tuple[str, Catalog]]:
    with empty_database(pg_server, "tideflow_schema_mig") as url:
        store = open_store(url)
        try:
            store.migrate()
        finally:
            store.close()
        yield url, pg_catalog(url)


def pg_from_script(server: str, script: str) -> Catalog:
    with empty_database(server, "tideflow_schema_sql") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(script.encode())  # several statements, no parameters
        store = open_store(url)
        try:
            # A database made by schema.sql counts as fully migrated: nothing left to apply.
            assert store.db.pending_migrations() == [], (
                "a database created from postgres/schema.sql still lacks migrations "
                f"{store.db.pending_migrations()}: add them to its INSERT INTO schema_migrations"
            )
        finally:
            store.close()
        return pg_catalog(url)


def test_postgres_schema_sql_builds_what_the_migrations_build(
    pg_server: str, pg_migrated: tuple[str, Catalog]
) -> None:
    _, migrated = pg_migrated
    # The catalog reads what it should: a vacuous comparison would pass anything.
    assert {"runs", "tasks", "events", "process_instances"} <= set(migrated["relation"])
    assert (
        "start_run_v2(p_run text, p_flow text, p_version text, p_input jsonb, p_steps jsonb, "
        "p_now timestamp with time zone)" in migrated["function"]
    )
    assert len(migrated["schema_migrations row"]) == len(
        load_migrations("tideflow.storage.postgres")
    )
    assert_same(migrated, pg_from_script(pg_server, schema_sql("postgres")), "postgres")


# --------------------------------------------------------------------------------------------
# SQLite catalog
# --------------------------------------------------------------------------------------------


def _sql_items(sql: str) -> tuple[str, ...]:
    """A CREATE statement without comments, quotes or spacing differences, split at the commas
    of its outer parentheses: one item per column or constraint, so a diff shows the one that
    differs. (ALTER TABLE ADD COLUMN and RENAME edit the stored text; this compares its meaning
    as written, not its layout.)"""
    text = _squash(re.sub(r"--[^\n]*", "", sql)).replace('"', "")
    text = re.sub(r"\)(\w)", r") \1", re.sub(r"\s*([(),])\s*", r"\1", text))
    start = text.find("(")
    if start < 0 or not text.startswith("CREATE TABLE"):
        return (text,)
    items, depth, current = [text[:start]], 0, ""
    for i, ch in enumerate(text[start + 1 :], start + 1):
        if ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                items += [current, text[i + 1 :]]
                return tuple(item for item in items if item)
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(current)
            current = ""
            continue
        current += ch
    return (text,)  # pragma: no cover - unbalanced: compared whole


def sqlite_catalog(path: Path) -> Catalog:
    cat: Catalog = {
        "object": {},
        "sql": {},
        "column": {},
        "column order of": {},
        "index": {},
        "foreign key": {},
    }
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name"
        ).fetchall()
        for type_, name, table, sql in objects:
            cat["object"][name] = f"{type_} on {table}"
            if sql is not None:
                cat["sql"][name] = _sql_items(sql)
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            names = []
            for _, name, type_, not_null, default, pk, hidden in conn.execute(
                f"PRAGMA table_xinfo('{table}')"
            ):
                names.append(name)
                cat["column"][f"{table}.{name}"] = {
                    "type": type_,
                    "not_null": bool(not_null),
                    "default": default,
                    "pk": pk,
                    "hidden": hidden,
                }
            cat["column order of"][table] = tuple(names)
            for _, index, unique, origin, partial in conn.execute(f"PRAGMA index_list('{table}')"):
                keys = [
                    (name, "DESC" if desc else "ASC", coll)
                    for _, _, name, desc, coll, key in conn.execute(
                        f"PRAGMA index_xinfo('{index}')"
                    )
                    if key
                ]
                cat["index"][f"{table}.{index}"] = {
                    "unique": bool(unique),
                    "origin": origin,
                    "partial": bool(partial),
                    "keys": keys,
                }
            fks: dict[int, list[Any]] = {}
            for id_, _, parent, from_, to, on_update, on_delete, match in conn.execute(
                f"PRAGMA foreign_key_list('{table}')"
            ):
                fks.setdefault(id_, [parent, [], [], on_update, on_delete, match])
                fks[id_][1].append(from_)
                fks[id_][2].append(to)
            for parent, from_cols, to_cols, on_update, on_delete, match in fks.values():
                cat["foreign key"][f"{table}({', '.join(from_cols)})"] = (
                    f"REFERENCES {parent}({', '.join(to_cols)}) ON UPDATE {on_update} "
                    f"ON DELETE {on_delete} MATCH {match}"
                )
        if "schema_migrations" in cat["object"]:
            cat["schema_migrations row"] = {
                f"{version:04d}": name
                for version, name in conn.execute("SELECT version, name FROM schema_migrations")
            }
    finally:
        conn.close()
    return cat


@pytest.fixture(scope="module")
def sqlite_migrated(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    path = tmp_path_factory.mktemp("schema") / "migrated.db"
    store = open_store(f"sqlite:///{path}")
    try:
        store.migrate()
    finally:
        store.close()
    return sqlite_catalog(path)


def sqlite_from_script(path: Path, script: str) -> Catalog:
    conn = sqlite3.connect(path)
    try:
        conn.executescript(script)
    finally:
        conn.close()
    store = open_store(f"sqlite:///{path}", create=False)
    try:
        assert store.db.pending_migrations() == [], (
            "a database created from sqlite/schema.sql still lacks migrations "
            f"{store.db.pending_migrations()}: add them to its INSERT INTO schema_migrations"
        )
    finally:
        store.close()
    return sqlite_catalog(path)


def test_sqlite_schema_sql_builds_what_the_migrations_build(
    sqlite_migrated: Catalog, tmp_path: Path
) -> None:
    assert {"runs.run_id", "tasks.stalls", "events.position"} <= set(sqlite_migrated["column"])
    assert len(sqlite_migrated["schema_migrations row"]) == len(
        load_migrations("tideflow.storage.sqlite")
    )
    from_file = sqlite_from_script(tmp_path / "from_schema_sql.db", schema_sql("sqlite"))
    assert_same(sqlite_migrated, from_file, "sqlite")


# --------------------------------------------------------------------------------------------
# The comparisons can fail: an edited schema.sql is caught, naming what differs
# --------------------------------------------------------------------------------------------


def _without_line(script: str, line: str) -> str:
    assert script.count(line) == 1, f"expected exactly one {line!r} in schema.sql"
    return script.replace(line, "")


def test_a_column_missing_from_sqlite_schema_sql_is_caught(
    sqlite_migrated: Catalog, tmp_path: Path
) -> None:
    script = _without_line(schema_sql("sqlite"), "    error            TEXT,\n")
    diffs = catalog_differences(sqlite_migrated, sqlite_from_script(tmp_path / "t.db", script))
    assert any(d.startswith("column tasks.error: made by the migrations, missing") for d in diffs)
    assert any(d.startswith("sql tasks differs") and "-error TEXT" in d for d in diffs), diffs


def test_a_changed_check_in_sqlite_schema_sql_is_caught(
    sqlite_migrated: Catalog, tmp_path: Path
) -> None:
    script = schema_sql("sqlite").replace("'projection', 'process_manager'", "'projection'")
    diffs = catalog_differences(sqlite_migrated, sqlite_from_script(tmp_path / "t.db", script))
    assert [d.split("\n")[0] for d in diffs] == ["sql event_handlers differs:"], diffs


def test_a_column_missing_from_postgres_schema_sql_is_caught(
    pg_server: str, pg_migrated: tuple[str, Catalog]
) -> None:
    _, migrated = pg_migrated
    script = _without_line(schema_sql("postgres"), "    error            text,\n")
    diffs = catalog_differences(migrated, pg_from_script(pg_server, script))
    assert [d.split("\n")[0] for d in diffs] == [
        "column tasks.error: made by the migrations, missing from schema.sql "
        f"({migrated['column']['tasks.error']!r})",
        "column order of tasks differs:",
    ], diffs
    assert "\n    -error\n" in diffs[1], diffs


def test_a_changed_function_in_postgres_schema_sql_is_caught(
    pg_server: str, pg_migrated: tuple[str, Catalog]
) -> None:
    _, migrated = pg_migrated
    script = schema_sql("postgres")
    assert script.count("b.start_delay, b.max_stalls, p_now") == 1
    script = script.replace("b.start_delay, b.max_stalls, p_now", "b.start_delay, 3, p_now")
    diffs = catalog_differences(migrated, pg_from_script(pg_server, script))
    assert (
        len(diffs) == 1
        and diffs[0].startswith("function start_run_v2(")
        and (
            "-'created', b.remaining_deps, b.max_attempts, b.base_delay, b.max_delay, b.timeout,"
            not in diffs[0]
        )
        and "+b.start_delay, 3, p_now" in diffs[0]
    ), diffs


# --------------------------------------------------------------------------------------------
# Parity: both dialects hold the same tables and columns
# --------------------------------------------------------------------------------------------

#: How each PostgreSQL type is stored on SQLite (see sqlite/migrations/0001 and 0002).
PG_TO_SQLITE = {
    "text": "TEXT",
    "json": "TEXT",  # checked with json_valid
    "jsonb": "TEXT",  # checked with json_valid
    "uuid": "TEXT",  # the 36-character form
    "timestamp with time zone": "REAL",  # seconds since the Unix epoch
    "double precision": "REAL",
    "integer": "INTEGER",
    "bigint": "INTEGER",
    "smallint": "INTEGER",
    "boolean": "INTEGER",  # 0 / 1
}

#: Tables only one dialect has, each with the reason. Anything else missing on one side fails.
#: (PostgreSQL's event-horizon machinery of migrations 0002/0004 is a sequence, advisory locks and
#: functions, not tables, and SQLite needs none of it: it has one writer at a time.)
ONLY_ON_POSTGRES: dict[str, str] = {}
ONLY_ON_SQLITE: dict[str, str] = {
    "sqlite_sequence": "SQLite's own AUTOINCREMENT counters (events.position, dead_letters.id,"
    " task_failures.id);"
    " PostgreSQL draws those from event_position_seq and an identity column",
}

#: Column properties allowed to differ, "table.column" -> the reason. Keep it short.
ALLOWED_COLUMN_DIFFERENCES: dict[str, str] = {
    "runs.conditional": "a boolean's default: false on PostgreSQL is 0 on SQLite",
}


def _pg_columns(cat: Catalog) -> dict[str, dict[str, Any]]:
    tables = {name for name, rel in cat["relation"].items() if rel["kind"] == "r"}
    return {key: col for key, col in cat["column"].items() if key.split(".")[0] in tables}


def _sqlite_columns(cat: Catalog) -> dict[str, dict[str, Any]]:
    return {
        key: col
        for key, col in cat["column"].items()
        if cat["object"][key.split(".")[0]].startswith("table")
    }


def parity_differences(pg: Catalog, lite: Catalog) -> list[str]:
    """Tables, columns (mapped type, nullability, default, order) and named indexes that
    differ between the dialects, beyond the allowed differences above."""
    out: list[str] = []
    pg_cols, lite_cols = _pg_columns(pg), _sqlite_columns(lite)
    pg_tables = {key.split(".")[0] for key in pg_cols}
    lite_tables = {key.split(".")[0] for key in lite_cols}
    for table in sorted(pg_tables - lite_tables - set(ONLY_ON_POSTGRES)):
        out.append(f"table {table}: on PostgreSQL only")
    for table in sorted(lite_tables - pg_tables - set(ONLY_ON_SQLITE)):
        out.append(f"table {table}: on SQLite only")
    for table in sorted(set(ONLY_ON_POSTGRES) & lite_tables):
        out.append(f"table {table}: listed in ONLY_ON_POSTGRES but SQLite has it too")
    for table in sorted(set(ONLY_ON_SQLITE) & pg_tables):
        out.append(f"table {table}: listed in ONLY_ON_SQLITE but PostgreSQL has it too")
    shared = pg_tables & lite_tables
    for key in sorted(k for k in set(pg_cols) | set(lite_cols) if k.split(".")[0] in shared):
        if key in ALLOWED_COLUMN_DIFFERENCES:
            continue
        p, s = pg_cols.get(key), lite_cols.get(key)
        if p is None or s is None:
            out.append(f"column {key}: on {'SQLite' if p is None else 'PostgreSQL'} only")
            continue
        mapped = PG_TO_SQLITE.get(p["type"])
        if mapped is None:
            out.append(
                f"column {key}: PostgreSQL type {p['type']!r} has no SQLite mapping; "
                "add it to PG_TO_SQLITE in tests/test_schema.py"
            )
        elif mapped != s["type"]:
            out.append(
                f"column {key}: PostgreSQL {p['type']} maps to {mapped}, SQLite has {s['type']}"
            )
        # A PRIMARY KEY column is NOT NULL on PostgreSQL; SQLite reports it nullable unless
        # declared NOT NULL (tideflow never writes NULL there), so the key counts as NOT NULL.
        lite_not_null = s["not_null"] or s["pk"] > 0
        if p["not_null"] != lite_not_null:
            out.append(
                f"column {key}: NOT NULL on {'PostgreSQL' if p['not_null'] else 'SQLite'} only"
            )
        if p["default"] != s["default"]:
            out.append(
                f"column {key}: default {p['default']!r} on PostgreSQL, {s['default']!r} on SQLite"
            )
    for table in sorted(shared):
        p_order = [c for c in pg["column order of"][table] if f"{table}.{c}" in lite_cols]
        s_order = [c for c in lite["column order of"][table] if f"{table}.{c}" in pg_cols]
        if p_order != s_order:
            out.append(
                f"table {table}: columns in another order; PostgreSQL {p_order}, SQLite {s_order}"
            )
    for key in sorted(set(ALLOWED_COLUMN_DIFFERENCES) - set(pg_cols) - set(lite_cols)):
        out.append(f"column {key}: listed in ALLOWED_COLUMN_DIFFERENCES but on neither side")
    # Indexes made by CREATE INDEX (not those backing a key): same names on the same tables.
    backing = {
        c.split(".", 1)[1] for c, d in pg["constraint"].items() if d.startswith(("p:", "u:", "x:"))
    }
    pg_indexes = {
        name: _squash(d).split(" ON ")[1].split(" ")[0].removeprefix("tideflow.")
        for name, d in pg["index"].items()
        if name not in backing
    }
    lite_indexes = {
        key.split(".")[1]: key.split(".")[0]
        for key, i in lite["index"].items()
        if i["origin"] == "c"
    }
    for name in sorted(set(pg_indexes) | set(lite_indexes)):
        if pg_indexes.get(name) != lite_indexes.get(name):
            out.append(
                f"index {name}: on table {pg_indexes.get(name)} on PostgreSQL, "
                f"{lite_indexes.get(name)} on SQLite"
            )
    return out


def test_both_dialects_have_the_same_tables_and_columns(
    pg_migrated: tuple[str, Catalog], sqlite_migrated: Catalog
) -> None:
    _, pg = pg_migrated
    assert len(_pg_columns(pg)) > 100 and len(_sqlite_columns(sqlite_migrated)) > 100
    diffs = parity_differences(pg, sqlite_migrated)
    assert not diffs, (
        "the PostgreSQL and SQLite migrations build different tables: make them match, or list "
        "the difference with its reason in ONLY_ON_POSTGRES / ONLY_ON_SQLITE / "
        "ALLOWED_COLUMN_DIFFERENCES in tests/test_schema.py:\n  " + "\n  ".join(diffs)
    )


def test_parity_names_what_differs(
    pg_migrated: tuple[str, Catalog], sqlite_migrated: Catalog
) -> None:
    _, pg = pg_migrated
    lite = {**sqlite_migrated, "column": dict(sqlite_migrated["column"])}
    lite["column"]["tasks.stalls"] = dict(
        lite["column"]["tasks.stalls"], type="TEXT", not_null=False
    )
    del lite["column"]["events.metadata"]
    lite["column order of"] = dict(
        sqlite_migrated["column order of"],
        events=tuple(c for c in sqlite_migrated["column order of"]["events"] if c != "metadata"),
        flows=("version", "flow_slug", "shape", "created_at"),
    )
    assert parity_differences(pg, lite) == [
        "column events.metadata: on PostgreSQL only",
        "column tasks.stalls: PostgreSQL integer maps to INTEGER, SQLite has TEXT",
        "column tasks.stalls: NOT NULL on PostgreSQL only",
        "table flows: columns in another order; PostgreSQL ['flow_slug', 'version', 'shape', "
        "'created_at'], SQLite ['version', 'flow_slug', 'shape', 'created_at']",
    ]
