"""Every named query is run by some code, every query the code names exists, and both dialects
name the same queries.

A static check over the ``.sql`` files and the Python that runs them: a query left behind when
its caller went is dead SQL that nobody reads carefully any more; a name the code asks for that
its dialect lacks would only fail at run time, on the one backend. A name counts as referenced
when it appears as a string literal in a module that runs queries: the stores, written once
(``storage/*_store.py``), and each backend's own hooks (``<backend>/database.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tideflow.storage.sqlfile import load_dialect

STORAGE = Path(__file__).resolve().parent.parent / "src" / "tideflow" / "storage"
STORES = (
    "flow_store.py",
    "event_store.py",
    "handler_store.py",
    "process_store.py",
    "timer_store.py",
    "monitor_store.py",
    "queue_limits.py",
    "schedule_store.py",
    "run_watch.py",
)
DIALECTS = ("postgres", "sqlite")

#: Queries only one dialect has, and why: each is a backend hook's, run by its own code.
ONLY_IN = {
    # PostgreSQL's fast paths (Database.fast_paths): one PL/pgSQL call for a whole transition.
    # And a handler's page, which reads the horizon kept for its transaction by set_horizon
    # (records_below_horizon; SQLite's passes it to read_all's queries). And the NOTIFY of the
    # runs a transaction ended, sent with its COMMIT (SQLite wakes this process's waits).
    "postgres": {
        "start_run",
        "start_runs",
        "complete_tasks_batch",
        "set_horizon",
        "read_page",
        "read_page_of_types",
        "notify_ended_runs",
        "notify_ended_run",
    },
    # SQLite's append by statements (SQLiteDatabase.append_events); PostgreSQL's is a function.
    "sqlite": {
        # The limited claim by statements (storage/queue_limits.py); PostgreSQL's is in
        # claim_tasks_v1.
        "limited_flows",
        "count_limited_started",
        "claim_limited_tasks",
        "record_rate_claims",
        "insert_idempotency_key",
        "insert_event",
        "set_stream_version",
        "forget_idempotency_key",
        "forget_event",
        "bump_stream_version",
        "unbump_stream_version",
    },
}


def _literals(*modules: str) -> set[str]:
    text = "".join((STORAGE / m).read_text(encoding="utf-8") for m in modules)
    return set(re.findall(r"""["']([a-z][a-z0-9_]*)["']""", text))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_named_query_is_run_by_some_code(dialect: str) -> None:
    queries = set(load_dialect(f"tideflow.storage.{dialect}"))
    unused = queries - _literals(*STORES, f"{dialect}/database.py")
    assert not unused, f"{dialect}: no code runs {sorted(unused)}; delete them"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_query_the_stores_name_exists(dialect: str) -> None:
    """The names the stores pass to a Tx (``rows``, ``run``, ``records``) or to their helpers
    that do (``_one``, ``_rows``, ``_records``)."""
    queries = set(load_dialect(f"tideflow.storage.{dialect}"))
    source = "".join((STORAGE / m).read_text(encoding="utf-8") for m in STORES)
    named = set(
        re.findall(
            r"""\.(?:rows|run|records|_one|_rows)\(\s*["']([a-z0-9_]+)["']"""
            r"""|_records\(\s*[^,]+,\s*["']([a-z0-9_]+)["']""",
            source,
        )
    )
    names = {a or b for a, b in named}
    assert len(names) > 60  # the pattern still finds the stores' calls
    missing = names - queries - ONLY_IN["postgres"] - ONLY_IN["sqlite"]
    assert not missing, f"{dialect} lacks {sorted(missing)}"


def test_both_dialects_name_the_same_queries() -> None:
    postgres, sqlite = (set(load_dialect(f"tideflow.storage.{d}")) for d in DIALECTS)
    assert postgres - sqlite == ONLY_IN["postgres"]
    assert sqlite - postgres == ONLY_IN["sqlite"]
