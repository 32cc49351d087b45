-- Named queries of the SQLite backend. See tideflow/storage/engine.py for when each runs.
-- Parameters are %(name)s (rewritten to :name at load); list parameters arrive as JSON arrays
-- and are read with json_each; timestamps are REAL epoch seconds.

-- name: insert_flow
INSERT INTO flows (flow_slug, version, shape, created_at)
VALUES (%(flow_slug)s, %(version)s, %(shape)s, %(created_at)s)
ON CONFLICT (flow_slug, version) DO NOTHING

-- name: list_flows
SELECT flow_slug, version, shape, created_at FROM flows ORDER BY flow_slug, created_at DESC

-- name: get_flow
SELECT shape FROM flows WHERE flow_slug = %(flow_slug)s AND version = %(version)s

-- name: insert_run
INSERT INTO runs (run_id, flow_slug, flow_version, status, input, remaining_steps, started_at)
VALUES (%(run_id)s, %(flow_slug)s, %(flow_version)s, 'started', %(input)s, %(remaining_steps)s,
        %(started_at)s)

-- name: insert_step
INSERT INTO run_steps (run_id, step_slug, step_index, kind, depends_on, status, remaining_deps,
                       max_attempts, base_delay, max_delay, timeout, start_delay, created_at)
VALUES (%(run_id)s, %(step_slug)s, %(step_index)s, %(kind)s, %(depends_on)s, 'created',
        %(remaining_deps)s, %(max_attempts)s, %(base_delay)s, %(max_delay)s, %(timeout)s,
        %(start_delay)s, %(created_at)s)

-- name: get_run_status
SELECT status FROM runs WHERE run_id = %(run_id)s

-- name: get_run_input
SELECT input FROM runs WHERE run_id = %(run_id)s

-- name: get_step
SELECT depends_on, kind, start_delay, timeout FROM run_steps
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: get_step_outputs
SELECT step_slug, output FROM run_steps
WHERE run_id = %(run_id)s AND step_slug IN (SELECT value FROM json_each(%(step_slugs)s))

-- name: start_step
UPDATE run_steps
SET status = 'started', initial_tasks = %(initial_tasks)s, remaining_tasks = %(initial_tasks)s,
    started_at = %(started_at)s
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: insert_tasks
INSERT INTO tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout, queued_at,
                   visible_at)
SELECT %(run_id)s, %(step_slug)s, CAST(j.key AS INTEGER), %(flow_slug)s, 'queued', j.value,
       %(timeout)s, %(queued_at)s, %(visible_at)s
FROM json_each(%(inputs)s) AS j

-- name: complete_step
UPDATE run_steps
SET status = 'completed', output = %(output)s, remaining_tasks = 0, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: decrement_run_steps
UPDATE runs SET remaining_steps = remaining_steps - 1
WHERE run_id = %(run_id)s
RETURNING remaining_steps, flow_version, input

-- name: decrement_deps
UPDATE run_steps SET remaining_deps = remaining_deps - 1
WHERE run_id = %(run_id)s AND step_slug IN (SELECT value FROM json_each(%(step_slugs)s))
RETURNING step_slug, step_index, remaining_deps

-- name: complete_run
UPDATE runs SET status = 'completed', output = %(output)s, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status = 'started'

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

-- name: get_run_steps
SELECT step_slug, step_index, kind, depends_on, status, output, error, initial_tasks,
       remaining_tasks, created_at, started_at, finished_at
FROM run_steps WHERE run_id = %(run_id)s ORDER BY step_index

-- name: get_run_tasks
SELECT step_slug, task_index, status, attempts, error, output, queued_at, started_at,
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
-- Runs inside BEGIN IMMEDIATE: SQLite has one writer at a time, so selecting and updating in
-- one statement is enough to hand each task attempt to exactly one worker.
UPDATE tasks
SET status = 'started', attempts = attempts + 1, worker_id = %(worker_id)s,
    started_at = %(now)s, lease_expires_at = %(now)s + COALESCE(timeout, 0) + %(margin)s
WHERE rowid IN (
    SELECT rowid FROM tasks
    WHERE status = 'queued' AND visible_at <= %(now)s
      AND flow_slug IN (SELECT value FROM json_each(%(flow_slugs)s))
    ORDER BY visible_at
    LIMIT %(limit)s
)
RETURNING run_id, step_slug, task_index, flow_slug, attempts, input, timeout, lease_expires_at

-- name: count_queued
SELECT count(*) AS n FROM tasks WHERE status = 'queued' AND flow_slug IN (SELECT value FROM json_each(%(flow_slugs)s))

-- name: get_runs_context
SELECT run_id, input, flow_version FROM runs
WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

-- name: complete_task
UPDATE tasks
SET status = 'completed', output = %(output)s, finished_at = %(finished_at)s,
    lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s
  AND status = 'started' AND attempts = %(attempt)s AND worker_id = %(worker_id)s
RETURNING flow_slug

-- name: decrement_step_tasks
UPDATE run_steps SET remaining_tasks = remaining_tasks - 1
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s
RETURNING remaining_tasks, kind

-- name: get_task_outputs
SELECT output FROM tasks
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s
ORDER BY task_index

-- name: get_started_task
SELECT t.run_id, t.step_slug, t.task_index, t.attempts, s.max_attempts, s.base_delay,
       s.max_delay, s.kind
FROM tasks t JOIN run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
WHERE t.run_id = %(run_id)s AND t.step_slug = %(step_slug)s AND t.task_index = %(task_index)s
  AND t.status = 'started' AND t.attempts = %(attempt)s AND t.worker_id = %(worker_id)s

-- name: find_stalled_tasks
SELECT run_id, step_slug, task_index FROM tasks
WHERE status = 'started' AND lease_expires_at < %(now)s
ORDER BY lease_expires_at
LIMIT 100

-- name: get_stalled_task
SELECT t.run_id, t.step_slug, t.task_index, t.attempts, s.max_attempts, s.base_delay,
       s.max_delay, s.kind
FROM tasks t JOIN run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
WHERE t.run_id = %(run_id)s AND t.step_slug = %(step_slug)s AND t.task_index = %(task_index)s
  AND t.status = 'started' AND t.lease_expires_at < %(now)s

-- name: lock_runs
-- SQLite has one writer at a time (BEGIN IMMEDIATE), so there is nothing to lock row by row.
SELECT run_id, status FROM runs WHERE run_id IN (SELECT value FROM json_each(%(run_ids)s))

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
      SELECT r.value, s.value, i.value
      FROM json_each(%(run_ids)s) r
      JOIN json_each(%(step_slugs)s) s ON s.key = r.key
      JOIN json_each(%(task_indexes)s) i ON i.key = r.key)

-- name: release_tasks
UPDATE tasks
SET status = 'queued', attempts = attempts - 1, worker_id = NULL, lease_expires_at = NULL,
    started_at = NULL, visible_at = %(now)s
WHERE worker_id = %(worker_id)s AND status = 'started'
  AND (run_id, step_slug, task_index) IN (
      SELECT r.value, s.value, i.value
      FROM json_each(%(run_ids)s) r
      JOIN json_each(%(step_slugs)s) s ON s.key = r.key
      JOIN json_each(%(task_indexes)s) i ON i.key = r.key)
