"""PostgreSQL plans of the hot and growing queries, with and without statistics (issue 13).

The plans are what the server actually runs: the named queries through EXPLAIN, and the
statements inside the PL/pgSQL functions (complete_tasks_v1, claim_tasks_v1) through
auto_explain's log of nested statements, which reaches the client as LOG notices. Each test runs
on a database with history (finished runs), tasks in flight and a backlog, in three states of
statistics: none (never analyzed), stale (ANALYZE ran while nothing was in flight or queued - the
state in which the completion used to flip to the partial index) and fresh.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import psycopg.sql
import pytest

from tests.pgdb import empty_database
from tideflow.storage import open_store
from tideflow.storage.postgres.plans import KEYED_READS
from tideflow.storage.sqlfile import load_dialect

QUERIES = load_dialect("tideflow.storage.postgres")
HISTORY, IN_FLIGHT, QUEUED = 150_000, 3_000, 5_000
NOW = datetime(2026, 12, 7, tzinfo=UTC)

_FLOW = """
INSERT INTO tideflow.flows VALUES ('hist', 'v1', '{}', %(now)s)
"""
_RUNS = """
INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, output,
                           remaining_steps, started_at, finished_at)
SELECT %(prefix)s || i, 'hist', 'v1', %(run_status)s, '{}', NULL, %(remaining)s,
       %(now)s - make_interval(secs => i), CASE WHEN %(run_status)s = 'started' THEN NULL
       ELSE %(now)s - make_interval(secs => i) + interval '1 second' END
FROM generate_series(1, %(n)s) AS i
;;
INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, dependents,
                                status, remaining_deps, initial_tasks, remaining_tasks,
                                max_attempts, base_delay, max_delay, start_delay, created_at)
SELECT %(prefix)s || i, 'only', 0, 'single', '[]', '[]', %(step_status)s, 0, 1, %(remaining)s,
       3, 1, 60, 0, %(now)s
FROM generate_series(1, %(n)s) AS i
;;
INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, attempts, input,
                            queued_at, visible_at, started_at, worker_id, lease_expires_at,
                            finished_at)
SELECT %(prefix)s || i, 'only', 0, 'hist', %(task_status)s, 1, '{}', %(now)s,
       %(now)s - interval '1 hour' + make_interval(secs => i / 1000.0),
       %(now)s, 'w', CASE WHEN %(task_status)s = 'started' THEN %(now)s + interval '1 hour' END,
       CASE WHEN %(task_status)s = 'completed' THEN %(now)s END
FROM generate_series(1, %(n)s) AS i;
"""


# What retention deletes besides runs: idempotency keys (one a second, going back) and dead
# letters (every other one retried).
_KEPT = [
    """
INSERT INTO tideflow.idempotency_keys (key, stream_id, result, recorded_at)
SELECT 'k' || i, 's' || i, NULL, %(now)s - make_interval(secs => i)
FROM generate_series(1, %(n)s) AS i
""",
    """
INSERT INTO tideflow.dead_letters (handler, position, event_id, event_type, stream_id, error,
                                   attempts, created_at, retried_at)
SELECT 'h', i, gen_random_uuid(), 'Happened', 's' || i, 'boom', 3, %(now)s,
       CASE WHEN i %% 2 = 0 THEN %(now)s - make_interval(secs => i) END
FROM generate_series(1, %(n)s / 10) AS i
""",
]


def _fill(conn: psycopg.Connection[Any], prefix: str, n: int, kind: str) -> None:
    run_status, step_status, task_status, remaining = {
        "history": ("completed", "completed", "completed", 0),
        "in_flight": ("started", "started", "started", 1),
        "queued": ("started", "started", "queued", 1),
    }[kind]
    for statement in _RUNS.split(";;"):
        conn.execute(
            statement,
            {
                "prefix": prefix,
                "n": n,
                "now": NOW,
                "run_status": run_status,
                "step_status": step_status,
                "task_status": task_status,
                "remaining": remaining,
            },
        )


def _database(pg_url: str, history: int, statistics: str) -> Iterator[psycopg.Connection[Any]]:
    with empty_database(pg_url, "tideflow_plans") as url:
        store = open_store(url)
        store.migrate()
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(_FLOW, {"now": NOW})
            if history:
                _fill(conn, "h", history, "history")
            if statistics == "stale statistics":
                conn.execute("ANALYZE")
            _fill(conn, "f", IN_FLIGHT, "in_flight")
            _fill(conn, "q", QUEUED, "queued")
            for statement in _KEPT:
                conn.execute(statement, {"n": history or 1000, "now": NOW})
            if statistics == "fresh statistics":
                conn.execute("ANALYZE")
            conn.execute("LOAD 'auto_explain'")
            conn.execute("SET auto_explain.log_min_duration = 0")
            conn.execute("SET auto_explain.log_nested_statements = on")
            yield conn


STATISTICS = ["no statistics", "stale statistics", "fresh statistics"]


@pytest.fixture(scope="module", params=STATISTICS)
def planned(request: pytest.FixtureRequest, pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """History, tasks in flight and a backlog."""
    yield from _database(pg_url, HISTORY, request.param)


@pytest.fixture(scope="module", params=[*((HISTORY, s) for s in STATISTICS), (0, "no statistics")])
def hot(request: pytest.FixtureRequest, pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """As ``planned``, and a young database too - no history, no statistics - where a plain
    statement's plan used to join the whole batch against a scan of the tasks: the hot paths'
    functions must hold in both."""
    history, statistics = request.param
    yield from _database(pg_url, history, statistics)


def _explain(conn: psycopg.Connection[Any], name: str, **params: Any) -> str:
    rows = conn.execute(f"EXPLAIN {QUERIES[name]}", params).fetchall()
    return "\n".join(r[0] for r in rows)


def _nested_plans(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> list[str]:
    """The plans of the statements ``sql`` runs inside functions (auto_explain), rolled back."""
    notices: list[str] = []

    def keep(diag: psycopg.errors.Diagnostic) -> None:
        notices.append(diag.message_primary or "")

    conn.add_notice_handler(keep)
    try:
        conn.execute("SET client_min_messages = log")
        with conn.transaction(force_rollback=True):
            conn.execute(sql, params)
    finally:
        conn.execute("RESET client_min_messages")
        conn.remove_notice_handler(keep)
    return [n for n in notices if "Query Text:" in n]


def _keys(prefix: str, n: int) -> str:
    return json.dumps(
        [{"run_id": f"{prefix}{i}", "step_slug": "only", "task_index": 0} for i in range(1, n + 1)]
    )


@pytest.mark.parametrize(
    "function", ["complete_tasks_v3", "complete_tasks_v2", "complete_tasks_v1"]
)
def test_completions_probe_the_primary_key(hot: psycopg.Connection[Any], function: str) -> None:
    """v3 is this release's (v2 handing conditional runs back, 0016); v2 and v1 are what
    workers of the previous releases call during an upgrade."""
    rows = json.dumps(
        [
            {"run_id": f"f{i}", "step_slug": "only", "task_index": 0, "attempt": 1, "output": "1"}
            for i in range(1, 257)
        ]
    )
    plans = _nested_plans(
        hot,
        f"SELECT tideflow.{function}('w', %(rows)s::jsonb, %(now)s)",
        {"rows": rows, "now": NOW},
    )
    task_updates = [p for p in plans if "UPDATE tideflow.tasks" in p]
    assert task_updates, plans
    for plan in task_updates:
        assert "Index Scan using tasks_pkey on tasks" in plan, plan
        assert "tasks_leased" not in plan, plan
    if function != "complete_tasks_v1":  # v2, v3 run with enable_seqscan = off: keys everywhere
        for plan in plans:
            for table in ("tasks", "run_steps", "runs"):
                assert f"Seq Scan on {table} " not in plan, plan


def test_heartbeats_probe_the_primary_key(hot: psycopg.Connection[Any]) -> None:
    plans = _nested_plans(
        hot,
        QUERIES["extend_leases"],
        {"rows": _keys("f", 256), "worker_id": "w", "now": NOW, "margin": 30.0},
    )
    (plan,) = [p for p in plans if "UPDATE tideflow.tasks" in p]
    assert "Index Scan using tasks_pkey on tasks" in plan, plan
    assert "tasks_leased" not in plan and "Seq Scan" not in plan, plan


@pytest.mark.parametrize("name", ["release_tasks", "complete_tasks"])
def test_releases_and_plain_completions_probe_the_primary_key(
    planned: psycopg.Connection[Any], name: str
) -> None:
    rows = json.loads(_keys("f", 256))
    for r in rows:
        r.update(attempt=1, output="1")
    plan = _explain(
        planned,
        name,
        rows=json.dumps(rows),
        worker_id="w",
        now=NOW,
        margin=30.0,
        finished_at=NOW,
    )
    assert "Index Scan using tasks_pkey on tasks" in plan, plan
    assert "tasks_leased" not in plan and "Seq Scan on tasks" not in plan, plan


def test_the_claim_reads_the_queue_index_in_order_without_sorting(
    hot: psycopg.Connection[Any],
) -> None:
    plans = _nested_plans(
        hot,
        "SELECT * FROM tideflow.claim_tasks_v1('w2', ARRAY['hist'], 256, %(now)s, 30)",
        {"now": NOW},
    )
    (plan,) = [p for p in plans if "UPDATE tideflow.tasks" in p]
    assert "Index Scan using tasks_queued on tasks q" in plan, plan
    assert "Sort" not in plan and "Seq Scan" not in plan, plan
    # The locked rows are found again by address, not by a second descent of the key (0018).
    assert "Tid Scan on tasks t" in plan and "tasks_pkey" not in plan, plan


@pytest.mark.parametrize(
    "limits",
    [
        {"concurrency": 50},
        {"concurrency": 50, "key": ["k"], "key_concurrency": 1, "steps": {"only": 9}},
    ],
)
def test_a_limited_claim_counts_through_its_index(
    hot: psycopg.Connection[Any], limits: dict[str, Any]
) -> None:
    """Queue limits (0019): the slots in use are a range of tasks_limited, and the candidates
    the queue index in order - no scan of the tasks, whatever the statistics."""
    hot.execute(
        "INSERT INTO tideflow.flow_limits VALUES ('hist', %(limits)s, '[]', %(now)s)",
        {"limits": json.dumps(limits), "now": NOW},
    )
    try:
        plans = _nested_plans(
            hot,
            "SELECT * FROM tideflow.claim_tasks_v1('w2', ARRAY['hist'], 256, %(now)s, 30)",
            {"now": NOW},
        )
    finally:
        hot.execute("DELETE FROM tideflow.flow_limits")
    (plan,) = [p for p in plans if "UPDATE tideflow.tasks" in p]
    # The flow's own queue (0021): a range of tasks_queued_by_flow, not the queue of every flow.
    assert "Index Scan using tasks_queued_by_flow on tasks q" in plan, plan
    assert "tasks_limited" in plan and "Tid Scan on tasks t" in plan, plan
    for each in plans:
        assert "Seq Scan on tasks" not in each and "Seq Scan on runs" not in each, each


def test_a_limited_flow_with_nothing_queued_does_not_walk_another_flows_backlog(
    hot: psycopg.Connection[Any],
) -> None:
    """0021: a worker serving a limited flow beside another flow's backlog. Every claim asks
    the limited flow first; through tasks_queued it read the whole backlog to find none of its
    tasks (32-147 ms a claim at 300,000 queued). It must look at an index range of its own
    flow only, whatever the statistics, and the plain claim of the rest still read the queue
    index in order."""
    hot.execute(
        "INSERT INTO tideflow.flow_limits VALUES ('quiet', %(limits)s, '[]', %(now)s)",
        {"limits": json.dumps({"concurrency": 5}), "now": NOW},
    )
    hot.execute("LOAD 'auto_explain'")
    hot.execute("SET auto_explain.log_analyze = on")
    try:
        plans = _nested_plans(
            hot,
            "SELECT * FROM tideflow.claim_tasks_v1('w2', ARRAY['hist', 'quiet'], 256, %(now)s, 30)",
            {"now": NOW},
        )
    finally:
        hot.execute("RESET auto_explain.log_analyze")
        hot.execute("DELETE FROM tideflow.flow_limits")
    # Nothing of 'quiet' queued: the probe (one range of its index, nothing read and dropped)
    # ends its limited claim before the ranking statement runs.
    (probe,) = [p for p in plans if "SELECT FROM tideflow.tasks q" in p]
    assert "tasks_queued_by_flow" in probe and "Rows Removed by Filter" not in probe, probe
    assert not [p for p in plans if "limit_key = p.k" in p], plans
    (plain,) = [p for p in plans if "UPDATE tideflow.tasks" in p]
    assert "Index Scan using tasks_queued on tasks q" in plain, plain
    assert "Sort" not in plain and "Seq Scan" not in plain, plain


@pytest.mark.parametrize(
    "name",
    [
        "notify_ended_runs",
        "get_ended_runs",
        "get_finished_runs",
        "finished_reports",
        "look_runs",
        "look_run_steps",
        "look_run_tasks",
        "look_run_failures",
    ],
)
def test_which_runs_ended_probes_the_primary_key(hot: psycopg.Connection[Any], name: str) -> None:
    """Every transaction that may end runs asks which did (notify_ended_runs), and waiters ask
    the same. `status <> 'started'` beside the ids is runs_finished_by_status's predicate: the
    generic plan a worker's prepared statement gets on a young database, planned while few runs
    had finished and kept while they grow, read that whole index (20-70 ms a completion batch
    in a 20,000-run drain at concurrency 10). Held to the primary key in the generic plan as in
    the custom one."""
    sql = QUERIES[name].replace("%(run_ids)s", "$1")
    ids = [f"h{i}" for i in range(1, 11)] + [f"f{i}" for i in range(1, 11)]
    # A connection of its own, which prepares nothing by itself: psycopg deallocates its
    # prepared statements on a ROLLBACK, and with them this test's.
    with psycopg.connect(hot.info.dsn, autocommit=True, prepare_threshold=None) as conn:
        conn.execute(f"PREPARE ended_probe(text[]) AS {sql}")
        if name.startswith("look_"):  # read in Database.read_together's transaction
            conn.execute("BEGIN")
            conn.execute(KEYED_READS)
        for mode in ("force_generic_plan", "force_custom_plan"):
            conn.execute(f"SET plan_cache_mode = {mode}")
            explain = psycopg.sql.SQL("EXPLAIN EXECUTE ended_probe({})").format(
                psycopg.sql.Literal(ids)
            )
            plan = "\n".join(r[0] for r in conn.execute(explain).fetchall())
            assert "runs_pkey" in plan, plan
            assert "runs_finished_by_status" not in plan and "Seq Scan" not in plan, plan


def test_stalled_tasks_are_found_through_the_lease_index(
    planned: psycopg.Connection[Any],
) -> None:
    plan = _explain(planned, "find_stalled_tasks", now=NOW + timedelta(hours=2))
    assert "tasks_leased" in plan, plan


@pytest.mark.parametrize(
    ("flow_slug", "status"),
    [(None, None), ("hist", None), (None, "completed"), (None, "failed"), (None, "cancelled")],
)
def test_list_runs_reads_an_index_in_order(
    planned: psycopg.Connection[Any], flow_slug: str | None, status: str | None
) -> None:
    """A page of runs is 50 index entries read in order, whatever the filter: never a sort (not
    even an incremental one, which a burst of runs started in the same instant made slow)."""
    plan = _explain(planned, "list_runs", flow_slug=flow_slug, status=status, limit=50, offset=0)
    assert "Seq Scan" not in plan and "Sort" not in plan, plan
    if status in ("failed", "cancelled"):  # rare: the index by status, not a filtered scan
        assert "runs_finished_by_status" in plan, plan


def test_transitions_of_a_started_run_probe_its_primary_key(
    planned: psycopg.Connection[Any],
) -> None:
    plan = "\n".join(
        r[0]
        for r in planned.execute(
            "EXPLAIN UPDATE tideflow.runs SET remaining_steps = remaining_steps - 1 "
            "WHERE run_id = 'f1' AND status = 'started'"
        ).fetchall()
    )
    assert "Index Scan using runs_pkey on runs" in plan, plan


def test_retention_finds_old_runs_through_their_age(planned: psycopg.Connection[Any]) -> None:
    """Oldest first through the index of runs by start (0018 dropped the one by finished_at,
    which every run's end paid an entry for): never a scan of the table, never a sort."""
    plan = _explain(planned, "finished_runs_before", before=NOW - timedelta(hours=5), limit=500)
    assert "runs_by_started" in plan, plan
    assert "Seq Scan" not in plan and "Sort" not in plan, plan


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("expire_idempotency_keys", "idempotency_keys_by_age"),
        ("purge_retried_dead_letters", "dead_letters_retried"),
    ],
)
def test_retention_finds_old_keys_and_dead_letters_through_their_age(
    planned: psycopg.Connection[Any], name: str, index: str
) -> None:
    plan = _explain(planned, name, before=NOW - timedelta(hours=5), limit=500)
    assert index in plan, plan
