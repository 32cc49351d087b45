"""Every named query is run by some code, and every query the code names exists.

A static check over the ``.sql`` files and the Python that runs them: a query left behind when
its caller went (or one only a fast path's replaced twin used to need) is dead SQL that nobody
reads carefully any more; a name the code asks for that its dialect's file lacks would only
fail at run time, on the one backend. A name counts as referenced when it appears as a string
literal in one of the modules that run that file's queries.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tideflow.storage.postgres import PostgresStore
from tideflow.storage.sqlfile import load_queries
from tideflow.storage.sqlite import SQLiteStore

STORAGE = Path(__file__).resolve().parent.parent / "src" / "tideflow" / "storage"

#: (dialect, queries file) -> the modules (relative to storage/) that run its queries.
RUNNERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("postgres", "queries.sql"): ("flow_engine.py", "postgres/backend.py"),
    ("sqlite", "queries.sql"): ("flow_engine.py", "sqlite/backend.py"),
    ("postgres", "events_queries.sql"): ("postgres/event_store.py",),
    ("sqlite", "events_queries.sql"): ("sqlite/event_store.py",),
    ("postgres", "handlers_queries.sql"): ("postgres/handler_store.py",),
    ("sqlite", "handlers_queries.sql"): ("sqlite/handler_store.py",),
    ("postgres", "process_queries.sql"): ("postgres/process_store.py",),
    ("sqlite", "process_queries.sql"): ("sqlite/process_store.py",),
}

#: Queries of the shared engine that a dialect does without, and the hook that says so.
SKIPPED_BY_HOOK = {
    "postgres": {"get_runs_context"} if PostgresStore.claim_returns_run_context else set(),
    "sqlite": {"get_runs_context"} if SQLiteStore.claim_returns_run_context else set(),
}


def _literals(module: str) -> set[str]:
    text = (STORAGE / module).read_text(encoding="utf-8")
    return set(re.findall(r"""["']([a-z][a-z0-9_]*)["']""", text))


def test_every_queries_file_is_checked() -> None:
    found = {(p.parent.name, p.name) for p in STORAGE.glob("*/*queries.sql")}
    assert found == set(RUNNERS)


@pytest.mark.parametrize(("dialect", "filename"), sorted(RUNNERS))
def test_every_named_query_is_run_by_some_code(dialect: str, filename: str) -> None:
    queries = set(load_queries(f"tideflow.storage.{dialect}", filename))
    literals = set().union(*(_literals(m) for m in RUNNERS[(dialect, filename)]))
    unused = queries - literals
    assert not unused, f"{dialect}/{filename}: no code runs {sorted(unused)}; delete them"
    if filename == "queries.sql":
        skipped = SKIPPED_BY_HOOK[dialect] & queries
        assert not skipped, f"{dialect}/{filename}: a backend hook skips {sorted(skipped)}"


@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_every_query_the_flow_store_names_exists(dialect: str) -> None:
    """The flow store's names are the ones its engine and backend pass to ``tx.rows`` /
    ``tx.run``."""
    queries = set(load_queries(f"tideflow.storage.{dialect}"))
    source = "".join(
        (STORAGE / m).read_text(encoding="utf-8") for m in RUNNERS[(dialect, "queries.sql")]
    )
    named = set(re.findall(r"""tx\.(?:rows|run)\(\s*["']([a-z0-9_]+)["']""", source))
    assert len(named) > 20  # the pattern still finds the engine's calls
    missing = named - queries - SKIPPED_BY_HOOK[dialect]
    assert not missing, f"{dialect}/queries.sql lacks {sorted(missing)}"
