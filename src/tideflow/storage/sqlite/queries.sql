-- Named queries of the flow store (tideflow/storage/flow_store.py says when each runs) on SQLite.
--
-- Parameters are %(name)s (rewritten to :name at load). A `rows` parameter is a batch: a JSON
-- array of objects unpacked with json_each; an `*_ids`/`flow_slugs` parameter is a JSON array of
-- strings. Timestamps are REAL epoch seconds. Every statement runs inside BEGIN IMMEDIATE: SQLite
-- has one writer at a time, so no statement here needs row locks.

-- name: insert_flow
-- Starting a run: the version's row if it is missing (an existing row is left alone, unlocked).
INSERT INTO flows (flow_slug, version, shape, created_at)
VALUES (%(flow_slug)s, %(version)s, %(shape)s, %(created_at)s)
ON CONFLICT (flow_slug, version) DO NOTHING

-- name: record_flow
-- A worker starting: a version's shape (steps, wiring, conditions) is fixed by its hash, its
-- step options and `reports` are not - the latest worker's are kept: what a run started by
-- slug alone uses.
INSERT INTO flows (flow_slug, version, shape, created_at)
VALUES (%(flow_slug)s, %(version)s, %(shape)s, %(created_at)s)
ON CONFLICT (flow_slug, version) DO UPDATE SET shape = excluded.shape
WHERE flows.shape IS NOT excluded.shape

-- name: list_flows
SELECT flow_slug, version, shape, created_at FROM flows ORDER BY flow_slug, created_at DESC

-- name: get_flow
SELECT shape FROM flows WHERE flow_slug = %(flow_slug)s AND version = %(version)s

-- name: insert_run
INSERT INTO runs (run_id, flow_slug, flow_version, status, input, remaining_steps, started_at,
                  conditional)
VALUES (%(run_id)s, %(flow_slug)s, %(flow_version)s, 'started', %(input)s, %(remaining_steps)s,
        %(started_at)s, %(conditional)s)

-- name: insert_steps
INSERT INTO run_steps (run_id, step_slug, step_index, kind, depends_on, dependents, status,
                       remaining_deps, max_attempts, base_delay, max_delay, timeout, start_delay,
                       max_stalls, created_at)
SELECT value ->> 'run_id', value ->> 'step_slug', value ->> 'step_index', value ->> 'kind',
       value ->> 'depends_on', value ->> 'dependents', 'created', value ->> 'remaining_deps', value ->> 'max_attempts',
       value ->> 'base_delay', value ->> 'max_delay', value ->> 'timeout', value ->> 'start_delay',
       value ->> 'max_stalls', %(created_at)s
FROM json_each(%(rows)s)

-- name: get_steps
SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.depends_on, s.start_delay, s.timeout,
       r.flow_slug, r.flow_version
FROM run_steps s JOIN runs r ON r.run_id = s.run_id
WHERE (s.run_id, s.step_slug) IN (
    SELECT value ->> 'run_id', value ->> 'step_slug' FROM json_each(%(rows)s))

-- name: get_step_outputs
SELECT run_id, step_slug, status, output FROM run_steps
WHERE (run_id, step_slug) IN (
    SELECT value ->> 'run_id', value ->> 'step_slug' FROM json_each(%(rows)s))

-- name: start_steps
UPDATE run_steps
SET status = 'started', initial_tasks = b.n, remaining_tasks = b.n, started_at = %(started_at)s
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'n' AS n
      FROM json_each(%(rows)s)) AS b
WHERE run_steps.run_id = b.run_id AND run_steps.step_slug = b.step_slug

-- name: insert_tasks
INSERT INTO tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout, queued_at,
                   visible_at)
SELECT value ->> 'run_id', value ->> 'step_slug', value ->> 'task_index', value ->> 'flow_slug',
       'queued', value ->> 'input', value ->> 'timeout', %(now)s,
       %(now)s + (value ->> 'start_delay')
FROM json_each(%(rows)s)

-- name: complete_tasks
-- Only the worker's own started attempt completes: a late answer from an attempt whose lease
-- expired (or from a run that failed or was cancelled meanwhile) changes nothing.
UPDATE tasks
SET status = 'completed', output = b.output, finished_at = %(finished_at)s,
    lease_expires_at = NULL
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'task_index' AS task_index, value ->> 'attempt' AS attempt,
             value ->> 'output' AS output
      FROM json_each(%(rows)s)) AS b
WHERE tasks.run_id = b.run_id AND tasks.step_slug = b.step_slug
  AND tasks.task_index = b.task_index AND tasks.attempts = b.attempt
  AND tasks.status = 'started' AND tasks.worker_id = %(worker_id)s
RETURNING run_id, step_slug, task_index

-- name: decrement_step_tasks
UPDATE run_steps SET remaining_tasks = remaining_tasks - b.n
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'n' AS n
      FROM json_each(%(rows)s)) AS b
WHERE run_steps.run_id = b.run_id AND run_steps.step_slug = b.step_slug
RETURNING run_id, step_slug, remaining_tasks, kind

-- name: get_map_outputs
SELECT run_id, step_slug, output FROM tasks
WHERE (run_id, step_slug) IN (
    SELECT value ->> 'run_id', value ->> 'step_slug' FROM json_each(%(rows)s))
ORDER BY run_id, step_slug, task_index

-- name: complete_steps
UPDATE run_steps
SET status = 'completed', output = b.output, remaining_tasks = 0, finished_at = %(finished_at)s
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'output' AS output
      FROM json_each(%(rows)s)) AS b
WHERE run_steps.run_id = b.run_id AND run_steps.step_slug = b.step_slug

-- name: decrement_run_steps
UPDATE runs SET remaining_steps = remaining_steps - b.n
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'n' AS n FROM json_each(%(rows)s)) AS b
WHERE runs.run_id = b.run_id
RETURNING run_id, remaining_steps, flow_slug, flow_version

-- name: decrement_deps
UPDATE run_steps SET remaining_deps = remaining_deps - b.n
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'n' AS n
      FROM json_each(%(rows)s)) AS b
WHERE run_steps.run_id = b.run_id AND run_steps.step_slug = b.step_slug
RETURNING run_id, step_slug, remaining_deps, status

-- name: complete_runs
UPDATE runs SET status = 'completed', output = b.output, finished_at = %(finished_at)s
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'output' AS output
      FROM json_each(%(rows)s)) AS b
WHERE runs.run_id = b.run_id AND runs.status = 'started'

-- name: fail_step
UPDATE run_steps SET status = 'failed', error = %(error)s, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: fail_run
UPDATE runs SET status = 'failed', error = %(error)s, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status = 'started'

-- name: cancel_run
UPDATE runs SET status = 'cancelled', error = 'cancelled', finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status = 'started'

-- name: cancel_run_tasks
UPDATE tasks SET status = 'cancelled', finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND status IN ('queued', 'started')

-- name: skip_run_steps
UPDATE run_steps SET status = 'skipped', finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status IN ('created', 'started')

-- name: get_run
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM runs WHERE run_id = %(run_id)s

-- name: run_ids_with_prefix
-- The ids of runs whose id starts with a prefix (the CLI's short ids), in id order.
SELECT run_id FROM runs
-- The range lets the primary key (BINARY collation) find the rows; substr keeps it exact.
WHERE run_id >= %(prefix)s AND run_id < %(prefix)s || char(1114111)
  AND substr(run_id, 1, length(%(prefix)s)) = %(prefix)s
ORDER BY run_id LIMIT %(limit)s

-- name: get_run_steps
SELECT step_slug, step_index, kind, depends_on, status, output, error, initial_tasks,
       remaining_tasks, created_at, started_at, finished_at, skip_reason
FROM run_steps WHERE run_id = %(run_id)s ORDER BY step_index

-- name: get_run_tasks
SELECT step_slug, task_index, status, attempts, stalls, error, output, queued_at, started_at,
       finished_at, visible_at
FROM tasks WHERE run_id = %(run_id)s ORDER BY step_slug, task_index

-- name: list_runs
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM runs
WHERE (%(flow_slug)s IS NULL OR flow_slug = %(flow_slug)s)
  AND (%(status)s IS NULL OR status = %(status)s)
ORDER BY started_at DESC, run_id
LIMIT %(limit)s OFFSET %(offset)s

-- name: claim_tasks
-- Flows with queue limits (flow_limits, 0019) are left out: the store claims their tasks with
-- claim_limited_tasks first (storage/queue_limits.py).
UPDATE tasks
SET status = 'started', attempts = attempts + 1, worker_id = %(worker_id)s,
    started_at = %(now)s, lease_expires_at = %(now)s + COALESCE(timeout, 0) + %(margin)s,
    limit_key = NULL
WHERE rowid IN (
    SELECT rowid FROM tasks
    WHERE status = 'queued' AND visible_at <= %(now)s
      AND flow_slug IN (SELECT value FROM json_each(%(flow_slugs)s))
      AND flow_slug NOT IN (SELECT flow_slug FROM flow_limits)
    ORDER BY visible_at
    LIMIT %(limit)s
)
RETURNING run_id, step_slug, task_index, flow_slug, attempts, input, timeout, lease_expires_at,
          (SELECT r.input FROM runs r WHERE r.run_id = tasks.run_id) AS run_input,
          (SELECT r.flow_version FROM runs r WHERE r.run_id = tasks.run_id) AS flow_version,
          (SELECT r.report IS NOT NULL FROM runs r WHERE r.run_id = tasks.run_id) AS reports,
          (SELECT json_extract(r.report, '$.correlation_id') FROM runs r
           WHERE r.run_id = tasks.run_id) AS correlation_id

-- name: count_queued
SELECT count(*) AS n FROM tasks
WHERE status = 'queued' AND flow_slug IN (SELECT value FROM json_each(%(flow_slugs)s))

-- name: lock_runs
-- Nothing to lock row by row under SQLite's single writer; the rows tell the caller which runs
-- exist.
SELECT run_id, status FROM runs WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: get_started_task
SELECT t.run_id, t.step_slug, t.task_index, t.attempts, s.max_attempts, s.base_delay,
       s.max_delay, s.kind, r.flow_slug, r.flow_version
FROM tasks t JOIN run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
JOIN runs r ON r.run_id = t.run_id
WHERE t.run_id = %(run_id)s AND t.step_slug = %(step_slug)s AND t.task_index = %(task_index)s
  AND t.status = 'started' AND t.attempts = %(attempt)s AND t.worker_id = %(worker_id)s

-- name: find_stalled_tasks
SELECT run_id, step_slug, task_index FROM tasks
WHERE status = 'started' AND lease_expires_at < %(now)s
ORDER BY lease_expires_at
LIMIT 100

-- name: get_stalled_tasks
SELECT t.run_id, t.step_slug, t.task_index, t.stalls, s.max_stalls, s.kind, r.flow_slug,
       r.flow_version
FROM tasks t JOIN run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
JOIN runs r ON r.run_id = t.run_id
WHERE (t.run_id, t.step_slug, t.task_index) IN (
    SELECT value ->> 'run_id', value ->> 'step_slug', value ->> 'task_index'
    FROM json_each(%(rows)s))
  AND t.status = 'started' AND t.lease_expires_at < %(now)s
ORDER BY t.run_id, t.step_slug, t.task_index

-- name: requeue_stalled_tasks
-- A stall is not an attempt: undo the claim's count (as release_tasks does) and count a stall.
UPDATE tasks
SET status = 'queued', attempts = attempts - 1, stalls = stalls + 1, error = b.error,
    worker_id = NULL, lease_expires_at = NULL, started_at = NULL, visible_at = %(now)s
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'task_index' AS task_index, value ->> 'error' AS error
      FROM json_each(%(rows)s)) AS b
WHERE tasks.run_id = b.run_id AND tasks.step_slug = b.step_slug
  AND tasks.task_index = b.task_index
  AND tasks.status = 'started' AND tasks.lease_expires_at < %(now)s

-- name: fail_stalled_task
-- The stall over the cap: counted as a stall too (not an attempt), and final.
UPDATE tasks
SET status = 'failed', attempts = attempts - 1, stalls = stalls + 1, error = %(error)s,
    finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s
  AND status = 'started' AND lease_expires_at < %(finished_at)s

-- name: retry_task
UPDATE tasks
SET status = 'queued', error = %(error)s, visible_at = %(visible_at)s, worker_id = NULL,
    lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s

-- name: fail_task
UPDATE tasks
SET status = 'failed', error = %(error)s, finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s

-- name: extend_leases
UPDATE tasks SET lease_expires_at = %(now)s + COALESCE(timeout, 0) + %(margin)s
WHERE worker_id = %(worker_id)s AND status = 'started'
  AND (run_id, step_slug, task_index) IN (
      SELECT value ->> 'run_id', value ->> 'step_slug', value ->> 'task_index'
      FROM json_each(%(rows)s))

-- name: release_tasks
UPDATE tasks
SET status = 'queued', attempts = attempts - 1, worker_id = NULL, lease_expires_at = NULL,
    started_at = NULL, visible_at = %(now)s
WHERE worker_id = %(worker_id)s AND status = 'started'
  AND (run_id, step_slug, task_index) IN (
      SELECT value ->> 'run_id', value ->> 'step_slug', value ->> 'task_index'
      FROM json_each(%(rows)s))

-- name: set_report
UPDATE runs SET report = %(report)s WHERE run_id = %(run_id)s

-- name: finished_reports
-- Runs among these that ended and have not reported yet: the caller appends their events and
-- clears the reports in the same transaction (clear_reports).
SELECT run_id, flow_slug, status, output, error, report
FROM runs
WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s)) AND report IS NOT NULL
  AND status <> 'started'
ORDER BY run_id

-- name: clear_reports
UPDATE runs SET report = NULL WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: skip_steps
-- Skipped steps (0016): why, and for a step whose task failed for good, that failure.
UPDATE run_steps
SET status = 'skipped', skip_reason = b.reason, error = b.error, finished_at = %(finished_at)s
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'reason' AS reason, value ->> 'error' AS error
      FROM json_each(%(rows)s)) AS b
WHERE run_steps.run_id = b.run_id AND run_steps.step_slug = b.step_slug

-- name: cancel_step_tasks
-- The other tasks of a map step skipped because one of its tasks failed for good.
UPDATE tasks SET status = 'cancelled', finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND status IN ('queued', 'started')

-- name: delete_step_tasks
-- retry_run: the tasks of the steps it starts again go, so their attempts count from 1.
DELETE FROM tasks
WHERE (run_id, step_slug) IN (
    SELECT value ->> 'run_id', value ->> 'step_slug' FROM json_each(%(rows)s))

-- name: reset_steps
UPDATE run_steps
SET status = 'created', remaining_deps = b.remaining_deps, initial_tasks = NULL,
    remaining_tasks = NULL, output = NULL, error = NULL, skip_reason = NULL, started_at = NULL,
    finished_at = NULL
FROM (SELECT value ->> 'run_id' AS run_id, value ->> 'step_slug' AS step_slug,
             value ->> 'remaining_deps' AS remaining_deps
      FROM json_each(%(rows)s)) AS b
WHERE run_steps.run_id = b.run_id AND run_steps.step_slug = b.step_slug

-- name: restart_run
UPDATE runs
SET status = 'started', remaining_steps = %(remaining_steps)s, output = NULL, error = NULL,
    finished_at = NULL
WHERE run_id = %(run_id)s AND status = 'failed'

-- name: insert_runs
-- start_runs: many runs of one flow version in one statement (rows: run_id, input, report).
INSERT INTO runs (run_id, flow_slug, flow_version, status, input, remaining_steps, started_at,
                  conditional, report)
SELECT value ->> 'run_id', %(flow_slug)s, %(flow_version)s, 'started', value ->> 'input',
       %(remaining_steps)s, %(started_at)s, %(conditional)s, value ->> 'report'
FROM json_each(%(rows)s)

-- name: finished_runs_before
-- Retention, one batch: the runs that ended before the cut-off, oldest first, through
-- runs_by_started read from its old end (0018 dropped the index by finished_at, which cost every
-- run's end an index entry): a run that finished before the cut-off started before it, so the
-- bound on started_at is the index range and the one on finished_at keeps the result exact. A
-- run still going that started before the cut-off is read and passed over by each batch. A run
-- still owed its report (none should be: the transaction that ends a run clears it) is kept;
-- the store skips it. Tested in the select list, not the filter, so that it does not sway the
-- planner away from the index when the table has no statistics.
SELECT run_id, report IS NOT NULL AS owed FROM runs
WHERE started_at < %(before)s AND finished_at < %(before)s AND status <> 'started'
ORDER BY started_at
LIMIT %(limit)s

-- name: delete_run_tasks
DELETE FROM tasks WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: delete_run_steps
DELETE FROM run_steps WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: delete_runs
DELETE FROM runs WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: insert_task_failure
-- A failed attempt, from the task row before it moves on (its attempt, worker and start).
INSERT INTO task_failures (run_id, step_slug, task_index, attempt, worker_id, error_type,
                           error, traceback, retried, started_at, failed_at)
SELECT run_id, step_slug, task_index, attempts, worker_id, %(error_type)s, %(error)s,
       %(traceback)s, %(retried)s, started_at, %(failed_at)s
FROM tasks
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s

-- name: get_run_failures
SELECT step_slug, task_index, attempt, worker_id, error_type, error, traceback, retried,
       started_at, failed_at
FROM task_failures WHERE run_id = %(run_id)s ORDER BY id

-- name: set_trace_context
UPDATE runs SET trace_context = %(trace_context)s WHERE run_id = %(run_id)s

-- name: get_trace_contexts
SELECT run_id, trace_context FROM runs
WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s)) AND trace_context IS NOT NULL

-- name: get_finished_runs
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM runs WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s)) AND status <> 'started'

-- name: limited_flows
-- Queue limits (0019): which of a worker's flows have limits, with their rate window.
SELECT flow_slug, limits, recent_claims FROM flow_limits
WHERE flow_slug IN (SELECT value FROM json_each(%(flow_slugs)s))
ORDER BY flow_slug

-- name: count_limited_started
SELECT count(*) AS n FROM tasks
WHERE flow_slug = %(flow_slug)s AND status = 'started' AND limit_key IS NOT NULL

-- name: claim_limited_tasks
-- Up to %(allow)s of the next 1,000 visible queued tasks of one limited flow, those whose rank
-- per key and per step fits the free slots of their key and step (PostgreSQL's
-- _claim_limited_v1, 0019, is the same statement). %(key_path)s: '$.a.b', or NULL without a
-- key; %(steps)s: {step slug: concurrency}.
WITH busy AS (
    SELECT step_slug, limit_key, count(*) AS n FROM tasks
    WHERE flow_slug = %(flow_slug)s AND status = 'started' AND limit_key IS NOT NULL
    GROUP BY step_slug, limit_key
), candidates AS (
    SELECT t.rowid AS rid, t.step_slug, t.visible_at,
           CASE WHEN %(key_path)s IS NULL THEN ''
                ELSE coalesce((SELECT r.input -> %(key_path)s FROM runs r
                               WHERE r.run_id = t.run_id), 'null') END AS k
    FROM tasks t
    WHERE t.status = 'queued' AND t.visible_at <= %(now)s AND t.flow_slug = %(flow_slug)s
    ORDER BY t.visible_at
    LIMIT CASE WHEN %(key_path)s IS NULL AND %(steps)s = '{}' THEN %(allow)s ELSE 1000 END
), ranked AS (
    SELECT c.*,
           row_number() OVER (PARTITION BY c.k ORDER BY c.visible_at, c.rid) AS key_rank,
           row_number() OVER (PARTITION BY c.step_slug ORDER BY c.visible_at, c.rid) AS step_rank
    FROM candidates c
), picked AS MATERIALIZED (
    SELECT x.rid, x.k FROM ranked x
    WHERE (%(key_path)s IS NULL
           OR x.key_rank <= %(key_concurrency)s
               - coalesce((SELECT sum(b.n) FROM busy b WHERE b.limit_key = x.k), 0))
      AND (json_extract(%(steps)s, '$.' || x.step_slug) IS NULL
           OR x.step_rank <= json_extract(%(steps)s, '$.' || x.step_slug)
               - coalesce((SELECT sum(b.n) FROM busy b WHERE b.step_slug = x.step_slug), 0))
    ORDER BY x.visible_at, x.rid
    LIMIT %(allow)s
)
UPDATE tasks
SET status = 'started', attempts = attempts + 1, worker_id = %(worker_id)s,
    started_at = %(now)s, lease_expires_at = %(now)s + COALESCE(timeout, 0) + %(margin)s,
    limit_key = picked.k
FROM picked
WHERE tasks.rowid = picked.rid
RETURNING run_id, step_slug, task_index, flow_slug, attempts, input, timeout, lease_expires_at,
          (SELECT r.input FROM runs r WHERE r.run_id = tasks.run_id) AS run_input,
          (SELECT r.flow_version FROM runs r WHERE r.run_id = tasks.run_id) AS flow_version,
          (SELECT r.report IS NOT NULL FROM runs r WHERE r.run_id = tasks.run_id) AS reports,
          (SELECT json_extract(r.report, '$.correlation_id') FROM runs r
           WHERE r.run_id = tasks.run_id) AS correlation_id

-- name: record_rate_claims
UPDATE flow_limits SET recent_claims = %(recent_claims)s WHERE flow_slug = %(flow_slug)s

-- name: get_flow_limits
SELECT limits FROM flow_limits WHERE flow_slug = %(flow_slug)s

-- name: set_flow_limits
-- A worker starting with limits in its code: they replace the stored ones (the rate window
-- carries over).
INSERT INTO flow_limits (flow_slug, limits, recent_claims, updated_at)
VALUES (%(flow_slug)s, %(limits)s, '[]', %(now)s)
ON CONFLICT (flow_slug) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at

-- name: delete_flow_limits
DELETE FROM flow_limits WHERE flow_slug = %(flow_slug)s

-- name: get_ended_runs
-- Which of these runs have ended: how a process's waiters learn whose run ended when a wake-up
-- could not say (run_watch.py) - after another process's commit, which the watcher only sees
-- as "something changed".
SELECT run_id FROM runs WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))
  AND status <> 'started'

-- name: look_runs
-- A batch of waits' looks at their runs (runtime/waiting.py): each run's row; the three reads
-- below add the steps, tasks and failures of those that have ended - what their waits return -
-- in the same transaction. One call for a hundred woken waits instead of a hundred.
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM runs WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: look_run_steps
SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.depends_on, s.status, s.output, s.error,
       s.initial_tasks, s.remaining_tasks, s.created_at, s.started_at, s.finished_at,
       s.skip_reason
FROM runs r JOIN run_steps s ON s.run_id = r.run_id
WHERE r.run_id IN (SELECT value FROM json_each(%(run_ids)s)) AND r.status <> 'started'
ORDER BY s.run_id, s.step_index

-- name: look_run_tasks
SELECT t.run_id, t.step_slug, t.task_index, t.status, t.attempts, t.stalls, t.error, t.output,
       t.queued_at, t.started_at, t.finished_at, t.visible_at
FROM runs r JOIN tasks t ON t.run_id = r.run_id
WHERE r.run_id IN (SELECT value FROM json_each(%(run_ids)s)) AND r.status <> 'started'
ORDER BY t.run_id, t.step_slug, t.task_index

-- name: look_run_failures
SELECT f.run_id, f.step_slug, f.task_index, f.attempt, f.worker_id, f.error_type, f.error,
       f.traceback, f.retried, f.started_at, f.failed_at
FROM runs r JOIN task_failures f ON f.run_id = r.run_id
WHERE r.run_id IN (SELECT value FROM json_each(%(run_ids)s)) AND r.status <> 'started'
ORDER BY f.run_id, f.id
