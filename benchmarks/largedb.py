"""Large databases for the benchmarks' ``--large`` modes (issue 13), built in bulk with SQL.

Running a million flows to get a million runs of history would take the benchmark an hour; the
rows a finished run leaves (its run, one step, one task) are inserted with generate_series
instead, under a flow of their own. A backlog is started with ``start_run_v2`` inside the server,
the very function ``start_flow`` calls, so its runs are real runs a worker can drain.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg

from tideflow.flows.definition import FlowDefinition
from tideflow.storage.flow_store import step_rows

_HISTORY_FLOW = """
INSERT INTO tideflow.flows VALUES ('bench_history', 'v1', '{}', now()) ON CONFLICT DO NOTHING
"""
# One finished run: its row, its step, its task. 1% failed, so that a status filter has both a
# common and a rare value to find. %(status)s 'started' with a task %(task)s: in flight or queued.
_ROWS = [
    """
INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, output, error,
                           remaining_steps, started_at, finished_at)
SELECT %(prefix)s || i, 'bench_history', 'v1',
       CASE WHEN %(status)s <> 'finished' THEN 'started'
            WHEN i %% 100 = 0 THEN 'failed' ELSE 'completed' END,
       '{"n": 1}', CASE WHEN %(status)s = 'finished' THEN '{"only": 1}'::jsonb END, NULL,
       CASE WHEN %(status)s = 'finished' THEN 0 ELSE 1 END,
       now() - make_interval(secs => i * %(spacing)s),
       CASE WHEN %(status)s = 'finished' THEN now() - make_interval(secs => i * %(spacing)s) END
FROM generate_series(1, %(n)s) AS i
""",
    """
INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, dependents,
                                status, remaining_deps, initial_tasks, remaining_tasks, output,
                                max_attempts, base_delay, max_delay, start_delay, created_at,
                                started_at, finished_at)
SELECT %(prefix)s || i, 'only', 0, 'single', '[]', '[]',
       CASE WHEN %(status)s = 'finished' THEN 'completed' ELSE 'started' END, 0, 1,
       CASE WHEN %(status)s = 'finished' THEN 0 ELSE 1 END,
       CASE WHEN %(status)s = 'finished' THEN '1'::jsonb END, 3, 1, 60, 0, now(), now(),
       CASE WHEN %(status)s = 'finished' THEN now() END
FROM generate_series(1, %(n)s) AS i
""",
    """
INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, attempts, input,
                            output, queued_at, visible_at, started_at, worker_id,
                            lease_expires_at, finished_at)
SELECT %(prefix)s || i, 'only', 0, 'bench_history',
       CASE WHEN %(status)s = 'finished' THEN 'completed' ELSE %(status)s END,
       CASE WHEN %(status)s = 'queued' THEN 0 ELSE 1 END, '{"n": 1}',
       CASE WHEN %(status)s = 'finished' THEN '1'::jsonb END, now(),
       now() - interval '1 hour' + make_interval(secs => i / 1000.0),
       CASE WHEN %(status)s <> 'queued' THEN now() END,
       CASE WHEN %(status)s <> 'queued' THEN 'bench-worker' END,
       CASE WHEN %(status)s = 'started' THEN now() + interval '1 hour' END,
       CASE WHEN %(status)s = 'finished' THEN now() END
FROM generate_series(1, %(n)s) AS i
""",
]


def insert_runs(url: str, n: int, *, status: str = "finished", prefix: str = "h") -> float:
    """``n`` runs of flow ``bench_history`` in bulk: ``finished`` history (one a second, going
    back), or unfinished ones whose task is ``started`` (by worker ``bench-worker``) or
    ``queued``. Seconds it took."""
    t0 = time.perf_counter()
    params: dict[str, Any] = {"n": n, "status": status, "prefix": prefix, "spacing": 1.0}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_HISTORY_FLOW)
        with conn.transaction():
            for statement in _ROWS:
                conn.execute(statement, params)
    return time.perf_counter() - t0


def start_backlog(url: str, definition: FlowDefinition, n: int, prefix: str = "b") -> float:
    """``n`` runs of ``definition`` started by ``start_run_v2`` in the server (the flow version
    must be recorded already: App.store.ensure_flow), 10 microseconds apart, as if started
    one after the other. Seconds it took."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT count(tideflow.start_run_v2(%(prefix)s || i, %(slug)s, %(version)s, "
            "'{\"x\": 1}'::jsonb, %(steps)s::jsonb, "
            "now() - make_interval(secs => (%(n)s - i) / 100000.0))) "
            "FROM generate_series(1, %(n)s) i",
            {
                "prefix": prefix,
                "slug": definition.slug,
                "version": definition.version,
                "steps": step_rows(definition),
                "n": n,
            },
        )
    return time.perf_counter() - t0


def analyze(url: str) -> None:
    """ANALYZE, then CHECKPOINT, so that what follows is not measured while the server flushes
    the bulk insert."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
        conn.execute("CHECKPOINT")


def timed(url: str, sql: str, params: dict[str, Any], repeat: int = 50) -> float:
    """Median milliseconds the server spends executing ``sql`` (EXPLAIN ANALYZE's execution
    time, without per-node timing), each run in a transaction that is rolled back (so a claim or
    completion measured leaves the data as it was), after three runs not counted (the session's
    first call plans and compiles; the first reads of fresh rows set their hint bits). Server
    time rather than the client's clock: on a machine shared with other work, a round trip's
    wait for a CPU adds milliseconds that have nothing to do with the statement."""
    samples = []
    with psycopg.connect(url, autocommit=True) as conn:
        # Bulk inserts and dropped databases leave the server flushing: measure after it.
        conn.execute("CHECKPOINT")
    with psycopg.connect(url) as conn:
        for i in range(repeat + 3):
            with conn.transaction(force_rollback=True):
                plan = conn.execute(f"EXPLAIN (ANALYZE, TIMING OFF) {sql}", params).fetchall()
            if i >= 3:
                line = next(r[0] for r in plan if r[0].startswith("Execution Time"))
                samples.append(float(line.split()[2]))
    samples.sort()
    return samples[len(samples) // 2]
