-- Named queries of the PostgreSQL backend. See tideflow/storage/engine.py for when each runs.
-- Parameters are %(name)s; list parameters arrive as arrays; timestamps are timestamptz.
-- Lock order in every transaction that changes a run: runs -> run_steps -> tasks (lock_runs).

-- name: insert_flow
INSERT INTO tideflow.flows (flow_slug, version, shape, created_at)
VALUES (%(flow_slug)s, %(version)s, %(shape)s, %(created_at)s)
ON CONFLICT (flow_slug, version) DO NOTHING

-- name: list_flows
SELECT flow_slug, version, shape, created_at FROM tideflow.flows ORDER BY flow_slug, created_at DESC

-- name: get_flow
SELECT shape FROM tideflow.flows WHERE flow_slug = %(flow_slug)s AND version = %(version)s

-- name: insert_run
INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, remaining_steps, started_at)
VALUES (%(run_id)s, %(flow_slug)s, %(flow_version)s, 'started', %(input)s, %(remaining_steps)s,
        %(started_at)s)

-- name: insert_step
INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, status, remaining_deps,
                       max_attempts, base_delay, max_delay, timeout, start_delay, created_at)
VALUES (%(run_id)s, %(step_slug)s, %(step_index)s, %(kind)s, %(depends_on)s, 'created',
        %(remaining_deps)s, %(max_attempts)s, %(base_delay)s, %(max_delay)s, %(timeout)s,
        %(start_delay)s, %(created_at)s)

-- name: get_run_status
SELECT status FROM tideflow.runs WHERE run_id = %(run_id)s

-- name: get_run_input
SELECT input FROM tideflow.runs WHERE run_id = %(run_id)s

-- name: get_step
SELECT depends_on, kind, start_delay, timeout FROM tideflow.run_steps
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: get_step_outputs
SELECT step_slug, output FROM tideflow.run_steps
WHERE run_id = %(run_id)s AND step_slug = ANY(%(step_slugs)s)

-- name: start_step
UPDATE tideflow.run_steps
SET status = 'started', initial_tasks = %(initial_tasks)s, remaining_tasks = %(initial_tasks)s,
    started_at = %(started_at)s
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: insert_tasks
INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout,
                            queued_at, visible_at)
SELECT %(run_id)s, %(step_slug)s, (u.ordinality - 1)::integer, %(flow_slug)s, 'queued',
       u.input::jsonb, %(timeout)s, %(queued_at)s, %(visible_at)s
FROM unnest(%(inputs)s::text[]) WITH ORDINALITY AS u(input, ordinality)

-- name: complete_step
UPDATE tideflow.run_steps
SET status = 'completed', output = %(output)s, remaining_tasks = 0, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: decrement_run_steps
UPDATE tideflow.runs SET remaining_steps = remaining_steps - 1
WHERE run_id = %(run_id)s
RETURNING remaining_steps, flow_version, input

-- name: decrement_deps
UPDATE tideflow.run_steps SET remaining_deps = remaining_deps - 1
WHERE run_id = %(run_id)s AND step_slug = ANY(%(step_slugs)s)
RETURNING step_slug, step_index, remaining_deps

-- name: complete_run
UPDATE tideflow.runs SET status = 'completed', output = %(output)s, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status = 'started'

-- name: fail_step
UPDATE tideflow.run_steps SET status = 'failed', error = %(error)s, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s

-- name: fail_run
UPDATE tideflow.runs SET status = 'failed', error = %(error)s, finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status = 'started'

-- name: cancel_run
UPDATE tideflow.runs SET status = 'cancelled', error = 'cancelled', finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status = 'started'

-- name: cancel_run_tasks
UPDATE tideflow.tasks SET status = 'cancelled', finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND status IN ('queued', 'started')

-- name: skip_run_steps
UPDATE tideflow.run_steps SET status = 'skipped', finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status IN ('created', 'started')

-- name: get_run
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM tideflow.runs WHERE run_id = %(run_id)s

-- name: get_run_steps
SELECT step_slug, step_index, kind, depends_on, status, output, error, initial_tasks,
       remaining_tasks, created_at, started_at, finished_at
FROM tideflow.run_steps WHERE run_id = %(run_id)s ORDER BY step_index

-- name: get_run_tasks
SELECT step_slug, task_index, status, attempts, error, output, queued_at, started_at,
       finished_at, visible_at
FROM tideflow.tasks WHERE run_id = %(run_id)s ORDER BY step_slug, task_index

-- name: list_runs
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM tideflow.runs
WHERE (%(flow_slug)s::text IS NULL OR flow_slug = %(flow_slug)s::text)
  AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY started_at DESC, run_id
LIMIT %(limit)s OFFSET %(offset)s

-- name: claim_tasks
-- One statement picks and takes the batch. SKIP LOCKED lets concurrent workers pass over rows
-- another claim holds instead of queueing behind it, so no task attempt goes to two workers.
UPDATE tideflow.tasks t
SET status = 'started', attempts = t.attempts + 1, worker_id = %(worker_id)s,
    started_at = %(now)s,
    lease_expires_at = %(now)s + make_interval(secs => COALESCE(t.timeout, 0) + %(margin)s)
FROM (
    SELECT run_id, step_slug, task_index FROM tideflow.tasks
    WHERE status = 'queued' AND visible_at <= %(now)s AND flow_slug = ANY(%(flow_slugs)s)
    ORDER BY visible_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) picked
WHERE t.run_id = picked.run_id AND t.step_slug = picked.step_slug
  AND t.task_index = picked.task_index
RETURNING t.run_id, t.step_slug, t.task_index, t.flow_slug, t.attempts, t.input, t.timeout,
          t.lease_expires_at

-- name: count_queued
SELECT count(*) AS n FROM tideflow.tasks WHERE status = 'queued' AND flow_slug = ANY(%(flow_slugs)s)

-- name: get_runs_context
SELECT run_id, input, flow_version FROM tideflow.runs
WHERE run_id = ANY(%(run_ids)s)

-- name: complete_task
UPDATE tideflow.tasks
SET status = 'completed', output = %(output)s, finished_at = %(finished_at)s,
    lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s
  AND status = 'started' AND attempts = %(attempt)s AND worker_id = %(worker_id)s
RETURNING flow_slug

-- name: decrement_step_tasks
UPDATE tideflow.run_steps SET remaining_tasks = remaining_tasks - 1
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s
RETURNING remaining_tasks, kind

-- name: get_task_outputs
SELECT output FROM tideflow.tasks
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s
ORDER BY task_index

-- name: get_started_task
SELECT t.run_id, t.step_slug, t.task_index, t.attempts, s.max_attempts, s.base_delay,
       s.max_delay, s.kind
FROM tideflow.tasks t JOIN tideflow.run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
WHERE t.run_id = %(run_id)s AND t.step_slug = %(step_slug)s AND t.task_index = %(task_index)s
  AND t.status = 'started' AND t.attempts = %(attempt)s AND t.worker_id = %(worker_id)s

-- name: find_stalled_tasks
-- Read without locks; each candidate is re-read under its run's lock (get_stalled_task).
SELECT run_id, step_slug, task_index FROM tideflow.tasks
WHERE status = 'started' AND lease_expires_at < %(now)s
ORDER BY lease_expires_at
LIMIT 100

-- name: get_stalled_task
SELECT t.run_id, t.step_slug, t.task_index, t.attempts, s.max_attempts, s.base_delay,
       s.max_delay, s.kind
FROM tideflow.tasks t JOIN tideflow.run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
WHERE t.run_id = %(run_id)s AND t.step_slug = %(step_slug)s AND t.task_index = %(task_index)s
  AND t.status = 'started' AND t.lease_expires_at < %(now)s

-- name: lock_runs
-- Taken first by every transaction that changes a run, in run_id order (see header).
SELECT run_id, status FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s)
ORDER BY run_id
FOR UPDATE

-- name: retry_task
UPDATE tideflow.tasks
SET status = 'queued', error = %(error)s, visible_at = %(visible_at)s, worker_id = NULL,
    lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s

-- name: fail_task
UPDATE tideflow.tasks
SET status = 'failed', error = %(error)s, finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s

-- name: extend_leases
UPDATE tideflow.tasks SET lease_expires_at = %(now)s + make_interval(secs => COALESCE(timeout, 0) + %(margin)s)
WHERE worker_id = %(worker_id)s AND status = 'started'
  AND (run_id, step_slug, task_index) IN (
      SELECT * FROM unnest(%(run_ids)s::text[], %(step_slugs)s::text[], %(task_indexes)s::int[]))

-- name: release_tasks
UPDATE tideflow.tasks
SET status = 'queued', attempts = attempts - 1, worker_id = NULL, lease_expires_at = NULL,
    started_at = NULL, visible_at = %(now)s
WHERE worker_id = %(worker_id)s AND status = 'started'
  AND (run_id, step_slug, task_index) IN (
      SELECT * FROM unnest(%(run_ids)s::text[], %(step_slugs)s::text[], %(task_indexes)s::int[]))
