-- Named queries of the flow store (tideflow/storage/flow_store.py says when each runs) on PostgreSQL.
--
-- Parameters are %(name)s. A `rows` parameter is a batch: a JSON array of objects unpacked with
-- jsonb_to_recordset; `*_ids`/`flow_slugs` parameters are text arrays. JSON values travel as text
-- and are cast to jsonb where stored.
--
-- Lock order in every transaction that changes a run: the runs rows first, in run_id order
-- (lock_runs), then run_steps, then tasks. The claim touches only queued tasks and skips locked
-- ones, so it never waits on a transaction that holds a run.

-- name: insert_flow
-- Starting a run: the version's row if it is missing (an existing row is left alone, unlocked).
INSERT INTO tideflow.flows (flow_slug, version, shape, created_at)
VALUES (%(flow_slug)s, %(version)s, %(shape)s, %(created_at)s)
ON CONFLICT (flow_slug, version) DO NOTHING

-- name: record_flow
-- A worker starting: a version's shape (steps, wiring, conditions) is fixed by its hash, its
-- step options and `reports` are not - the latest worker's are kept: what a run started by
-- slug alone uses.
INSERT INTO tideflow.flows (flow_slug, version, shape, created_at)
VALUES (%(flow_slug)s, %(version)s, %(shape)s, %(created_at)s)
ON CONFLICT (flow_slug, version) DO UPDATE SET shape = excluded.shape
WHERE tideflow.flows.shape IS DISTINCT FROM excluded.shape

-- name: list_flows
SELECT flow_slug, version, shape, created_at FROM tideflow.flows
ORDER BY flow_slug, created_at DESC

-- name: get_flow
SELECT shape FROM tideflow.flows WHERE flow_slug = %(flow_slug)s AND version = %(version)s

-- name: insert_run
INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, remaining_steps,
                           started_at, conditional)
VALUES (%(run_id)s, %(flow_slug)s, %(flow_version)s, 'started', %(input)s, %(remaining_steps)s,
        %(started_at)s, %(conditional)s)

-- name: insert_steps
INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, dependents,
                                status, remaining_deps, max_attempts, base_delay, max_delay,
                                timeout, start_delay, max_stalls, created_at)
SELECT b.run_id, b.step_slug, b.step_index, b.kind, b.depends_on::jsonb, b.dependents::jsonb,
       'created',
       b.remaining_deps, b.max_attempts, b.base_delay, b.max_delay, b.timeout, b.start_delay,
       b.max_stalls, %(created_at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(
    run_id text, step_slug text, step_index integer, kind text, depends_on text,
    dependents text, remaining_deps integer, max_attempts integer, base_delay double precision,
    max_delay double precision, timeout double precision, start_delay double precision,
    max_stalls integer)

-- name: get_steps
SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.depends_on, s.start_delay, s.timeout,
       r.flow_slug, r.flow_version
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text)
JOIN tideflow.run_steps s ON s.run_id = b.run_id AND s.step_slug = b.step_slug
JOIN tideflow.runs r ON r.run_id = s.run_id

-- name: get_step_outputs
SELECT s.run_id, s.step_slug, s.status, s.output
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text)
JOIN tideflow.run_steps s ON s.run_id = b.run_id AND s.step_slug = b.step_slug

-- name: start_steps
UPDATE tideflow.run_steps s
SET status = 'started', initial_tasks = b.n, remaining_tasks = b.n, started_at = %(started_at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, n integer)
WHERE s.run_id = b.run_id AND s.step_slug = b.step_slug

-- name: insert_tasks
INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout,
                            queued_at, visible_at)
SELECT b.run_id, b.step_slug, b.task_index, b.flow_slug, 'queued', b.input::jsonb, b.timeout,
       %(now)s, %(now)s + make_interval(secs => b.start_delay)
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(
    run_id text, step_slug text, task_index integer, flow_slug text, input text,
    timeout double precision, start_delay double precision)

-- name: complete_tasks
-- Only the worker's own started attempt completes: a late answer from an attempt whose lease
-- expired (or from a run that failed or was cancelled meanwhile) changes nothing.
UPDATE tideflow.tasks t
SET status = 'completed', output = b.output::jsonb, finished_at = %(finished_at)s,
    lease_expires_at = NULL
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(
    run_id text, step_slug text, task_index integer, attempt integer, output text)
WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug AND t.task_index = b.task_index
  AND t.attempts = b.attempt AND t.status = 'started' AND t.worker_id = %(worker_id)s
RETURNING t.run_id, t.step_slug, t.task_index

-- name: decrement_step_tasks
UPDATE tideflow.run_steps s SET remaining_tasks = s.remaining_tasks - b.n
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, n integer)
WHERE s.run_id = b.run_id AND s.step_slug = b.step_slug
RETURNING s.run_id, s.step_slug, s.remaining_tasks, s.kind

-- name: get_map_outputs
SELECT t.run_id, t.step_slug, t.output
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text)
JOIN tideflow.tasks t ON t.run_id = b.run_id AND t.step_slug = b.step_slug
ORDER BY t.run_id, t.step_slug, t.task_index

-- name: complete_steps
UPDATE tideflow.run_steps s
SET status = 'completed', output = b.output::jsonb, remaining_tasks = 0,
    finished_at = %(finished_at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, output text)
WHERE s.run_id = b.run_id AND s.step_slug = b.step_slug

-- name: decrement_run_steps
UPDATE tideflow.runs r SET remaining_steps = r.remaining_steps - b.n
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, n integer)
WHERE r.run_id = b.run_id
RETURNING r.run_id, r.remaining_steps, r.flow_slug, r.flow_version

-- name: decrement_deps
UPDATE tideflow.run_steps s SET remaining_deps = s.remaining_deps - b.n
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, n integer)
WHERE s.run_id = b.run_id AND s.step_slug = b.step_slug
RETURNING s.run_id, s.step_slug, s.remaining_deps, s.status

-- name: complete_runs
UPDATE tideflow.runs r
SET status = 'completed', output = b.output::jsonb, finished_at = %(finished_at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, output text)
WHERE r.run_id = b.run_id AND r.status = 'started'

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
UPDATE tideflow.tasks
SET status = 'cancelled', finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND status IN ('queued', 'started')

-- name: skip_run_steps
UPDATE tideflow.run_steps SET status = 'skipped', finished_at = %(finished_at)s
WHERE run_id = %(run_id)s AND status IN ('created', 'started')

-- name: get_run
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM tideflow.runs WHERE run_id = %(run_id)s

-- name: run_ids_with_prefix
-- The ids of runs whose id starts with a prefix (the CLI's short ids), in id order.
SELECT run_id FROM tideflow.runs
-- starts_with, not LIKE: a prefix holding a wildcard means itself. No index serves it under a
-- non-C collation; the CLI asks only when no run has the exact id, and reads a few rows.
WHERE starts_with(run_id, %(prefix)s)
ORDER BY run_id COLLATE "C" LIMIT %(limit)s

-- name: get_run_steps
SELECT step_slug, step_index, kind, depends_on, status, output, error, initial_tasks,
       remaining_tasks, created_at, started_at, finished_at, skip_reason
FROM tideflow.run_steps WHERE run_id = %(run_id)s ORDER BY step_index

-- name: get_run_tasks
SELECT step_slug, task_index, status, attempts, stalls, error, output, queued_at, started_at,
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
-- PL/pgSQL (migration 0012): one statement picks and takes the batch, FOR UPDATE SKIP LOCKED so
-- that concurrent workers pass over rows another claim holds instead of queueing behind it (no
-- task attempt goes to two workers), and returns each task's run input and flow version, saving
-- the engine a round trip. A function so that its plan - the index-ordered scan of tasks_queued
-- under the LIMIT - does not depend on the table's statistics (0012's header).
SELECT run_id, step_slug, task_index, flow_slug, attempts, input, timeout, lease_expires_at,
       run_input, flow_version, reports, correlation_id
FROM tideflow.claim_tasks_v1(%(worker_id)s, %(flow_slugs)s::text[], %(limit)s::integer,
                             %(now)s::timestamptz, %(margin)s::double precision)

-- name: count_queued
SELECT count(*) AS n FROM tideflow.tasks
WHERE status = 'queued' AND flow_slug = ANY(%(flow_slugs)s)

-- name: lock_runs
-- Taken first by every transaction that changes a run, in run_id order (see header).
SELECT run_id, status FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s)
ORDER BY run_id
FOR UPDATE

-- name: get_started_task
SELECT t.run_id, t.step_slug, t.task_index, t.attempts, s.max_attempts, s.base_delay,
       s.max_delay, s.kind, r.flow_slug, r.flow_version
FROM tideflow.tasks t
JOIN tideflow.run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
JOIN tideflow.runs r ON r.run_id = t.run_id
WHERE t.run_id = %(run_id)s AND t.step_slug = %(step_slug)s AND t.task_index = %(task_index)s
  AND t.status = 'started' AND t.attempts = %(attempt)s AND t.worker_id = %(worker_id)s

-- name: find_stalled_tasks
-- Read without locks; each candidate is re-read under its run's lock (get_stalled_task).
SELECT run_id, step_slug, task_index FROM tideflow.tasks
WHERE status = 'started' AND lease_expires_at < %(now)s
ORDER BY lease_expires_at
LIMIT 100

-- name: get_stalled_tasks
-- The candidates re-read under their runs' locks: one may have completed, or failed with its
-- run, since find_stalled_tasks read it.
SELECT t.run_id, t.step_slug, t.task_index, t.stalls, s.max_stalls, s.kind, r.flow_slug,
       r.flow_version
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, task_index integer)
JOIN tideflow.tasks t
  ON t.run_id = b.run_id AND t.step_slug = b.step_slug AND t.task_index = b.task_index
JOIN tideflow.run_steps s ON s.run_id = t.run_id AND s.step_slug = t.step_slug
JOIN tideflow.runs r ON r.run_id = t.run_id
WHERE t.status = 'started' AND t.lease_expires_at < %(now)s
ORDER BY t.run_id, t.step_slug, t.task_index

-- name: requeue_stalled_tasks
-- A stall is not an attempt: undo the claim's count (as release_tasks does) and count a stall.
-- Guarded like the read above: a heartbeat (extend_leases, which takes no run lock) that
-- committed meanwhile keeps the task with its worker.
UPDATE tideflow.tasks t
SET status = 'queued', attempts = t.attempts - 1, stalls = t.stalls + 1, error = b.error,
    worker_id = NULL, lease_expires_at = NULL, started_at = NULL, visible_at = %(now)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(
    run_id text, step_slug text, task_index integer, error text)
WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug AND t.task_index = b.task_index
  AND t.status = 'started' AND t.lease_expires_at < %(now)s

-- name: fail_stalled_task
-- The stall over the cap: counted as a stall too (not an attempt), and final.
UPDATE tideflow.tasks t
SET status = 'failed', attempts = t.attempts - 1, stalls = t.stalls + 1, error = %(error)s,
    finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s
  AND status = 'started' AND lease_expires_at < %(finished_at)s

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
-- PL/pgSQL (migration 0012): the statement as before, planned by primary key whatever the
-- table's statistics.
SELECT tideflow.extend_leases_v1(%(worker_id)s, %(rows)s::jsonb, %(now)s::timestamptz,
                                 %(margin)s::double precision) AS renewed

-- name: release_tasks
UPDATE tideflow.tasks t
SET status = 'queued', attempts = t.attempts - 1, worker_id = NULL, lease_expires_at = NULL,
    started_at = NULL, visible_at = %(now)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, task_index integer)
WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug AND t.task_index = b.task_index
  AND t.worker_id = %(worker_id)s AND t.status = 'started'

-- name: start_run
-- PL/pgSQL (migration 0007; v1 of 0001 did not store max_stalls): the whole start in one round
-- trip.
SELECT tideflow.start_run_v2(%(run_id)s, %(flow_slug)s, %(flow_version)s, %(input)s::jsonb,
                             %(steps)s::jsonb, %(now)s) AS notify

-- name: start_runs
-- PL/pgSQL (migration 0017): a bulk start in one round trip.
SELECT tideflow.start_runs_v1(%(flow_slug)s, %(flow_version)s, %(run_ids)s::text[],
                              %(inputs)s::jsonb, %(steps)s::jsonb, %(report)s::json,
                              %(now)s) AS notify

-- name: complete_tasks_batch
-- PL/pgSQL (migration 0016): a whole batch of completions in one round trip; `deferred` lists
-- those of conditional runs, for the flow store to complete in Python.
SELECT notify, deferred::text AS deferred
FROM tideflow.complete_tasks_v3(%(worker_id)s, %(rows)s::jsonb, %(now)s)

-- name: set_report
UPDATE tideflow.runs SET report = %(report)s::json WHERE run_id = %(run_id)s

-- name: finished_reports
-- Runs among these that ended and have not reported yet: the caller appends their events and
-- clears the reports in the same transaction (clear_reports), which holds the runs' locks.
-- (The ids first, behind OFFSET 0, then the status: see get_ended_runs.)
SELECT run_id, flow_slug, status, output::text AS output, error, report::text AS report
FROM (SELECT * FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s) OFFSET 0) AS r
WHERE report IS NOT NULL AND status <> 'started'
ORDER BY run_id

-- name: clear_reports
UPDATE tideflow.runs SET report = NULL WHERE run_id = ANY(%(run_ids)s)

-- name: skip_steps
-- Skipped steps (0016): why, and for a step whose task failed for good, that failure.
UPDATE tideflow.run_steps s
SET status = 'skipped', skip_reason = b.reason, error = b.error, finished_at = %(finished_at)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(
    run_id text, step_slug text, reason text, error text)
WHERE s.run_id = b.run_id AND s.step_slug = b.step_slug

-- name: cancel_step_tasks
-- The other tasks of a map step skipped because one of its tasks failed for good.
UPDATE tideflow.tasks
SET status = 'cancelled', finished_at = %(finished_at)s, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND status IN ('queued', 'started')

-- name: delete_step_tasks
-- retry_run: the tasks of the steps it starts again go, so their attempts count from 1.
DELETE FROM tideflow.tasks t
USING jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text)
WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug

-- name: reset_steps
UPDATE tideflow.run_steps s
SET status = 'created', remaining_deps = b.remaining_deps, initial_tasks = NULL,
    remaining_tasks = NULL, output = NULL, error = NULL, skip_reason = NULL, started_at = NULL,
    finished_at = NULL
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, step_slug text, remaining_deps integer)
WHERE s.run_id = b.run_id AND s.step_slug = b.step_slug

-- name: restart_run
UPDATE tideflow.runs
SET status = 'started', remaining_steps = %(remaining_steps)s, output = NULL, error = NULL,
    finished_at = NULL
WHERE run_id = %(run_id)s AND status = 'failed'

-- name: insert_runs
-- start_runs: many runs of one flow version in one statement (rows: run_id, input, report).
INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, remaining_steps,
                           started_at, conditional, report)
SELECT b.run_id, %(flow_slug)s, %(flow_version)s, 'started', b.input::jsonb,
       %(remaining_steps)s, %(started_at)s, %(conditional)s, b.report::json
FROM jsonb_to_recordset(%(rows)s::jsonb) AS b(run_id text, input text, report text)

-- name: finished_runs_before
-- Retention, one batch: the runs that ended before the cut-off, oldest first, through
-- runs_by_started read from its old end (0018 dropped the index by finished_at, which cost every
-- run's end an index entry): a run that finished before the cut-off started before it, so the
-- bound on started_at is the index range and the one on finished_at keeps the result exact. A
-- run still going that started before the cut-off is read and passed over by each batch. A run
-- still owed its report (none should be: the transaction that ends a run clears it) is kept;
-- the store skips it. Tested in the select list, not the filter, so that it does not sway the
-- planner away from the index when the table has no statistics.
SELECT run_id, report IS NOT NULL AS owed FROM tideflow.runs
WHERE started_at < %(before)s AND finished_at < %(before)s AND status <> 'started'
ORDER BY started_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: delete_run_tasks
DELETE FROM tideflow.tasks WHERE run_id = ANY(%(run_ids)s)

-- name: delete_run_steps
DELETE FROM tideflow.run_steps WHERE run_id = ANY(%(run_ids)s)

-- name: delete_runs
DELETE FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s)

-- name: insert_task_failure
-- A failed attempt, from the task row before it moves on (its attempt, worker and start).
INSERT INTO tideflow.task_failures (run_id, step_slug, task_index, attempt, worker_id, error_type,
                           error, traceback, retried, started_at, failed_at)
SELECT run_id, step_slug, task_index, attempts, worker_id, %(error_type)s, %(error)s,
       %(traceback)s, %(retried)s, started_at, %(failed_at)s
FROM tideflow.tasks
WHERE run_id = %(run_id)s AND step_slug = %(step_slug)s AND task_index = %(task_index)s

-- name: get_run_failures
SELECT step_slug, task_index, attempt, worker_id, error_type, error, traceback, retried,
       started_at, failed_at
FROM tideflow.task_failures WHERE run_id = %(run_id)s ORDER BY id

-- name: set_trace_context
UPDATE tideflow.runs SET trace_context = %(trace_context)s WHERE run_id = %(run_id)s

-- name: get_trace_contexts
SELECT run_id, trace_context FROM tideflow.runs
WHERE run_id = ANY(%(run_ids)s) AND trace_context IS NOT NULL

-- name: get_finished_runs
-- (The ids first, behind OFFSET 0, then the status: see get_ended_runs.)
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM (SELECT * FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s) OFFSET 0) AS r
WHERE status <> 'started'

-- name: get_flow_limits
-- Queue limits (0019): the claim (claim_tasks_v1) reads flow_limits itself; these keep the row
-- in step with the workers' code.
SELECT limits FROM tideflow.flow_limits WHERE flow_slug = %(flow_slug)s

-- name: set_flow_limits
-- A worker starting with limits in its code: they replace the stored ones (the rate window
-- carries over).
INSERT INTO tideflow.flow_limits (flow_slug, limits, recent_claims, updated_at)
VALUES (%(flow_slug)s, %(limits)s, '[]', %(now)s)
ON CONFLICT (flow_slug) DO UPDATE SET limits = excluded.limits, updated_at = excluded.updated_at

-- name: delete_flow_limits
DELETE FROM tideflow.flow_limits WHERE flow_slug = %(flow_slug)s

-- name: notify_ended_runs
-- Sent just before the COMMIT of a transaction that may have ended these runs (the flow store
-- lists them in Tx.run_ends): NOTIFY tideflow_runs with the ids of those that have ended, a
-- JSON array, delivered with the commit - so that of a thousand clients waiting for runs, only
-- those whose run ended read it again. A payload past PostgreSQL's limit (8000 bytes) goes out
-- empty: waiters then check all of theirs, with one query (get_ended_runs). No row, and no
-- NOTIFY - which serialises commits - when none of them ended. Returns the payload.
SELECT e.ended, pg_notify('tideflow_runs',
                          CASE WHEN octet_length(e.ended) > 7900 THEN '' ELSE e.ended END)
FROM (SELECT json_agg(r.run_id)::text AS ended
      FROM (SELECT run_id, status FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s)
            OFFSET 0) AS r
      WHERE r.status <> 'started') AS e
WHERE e.ended IS NOT NULL

-- name: notify_ended_run
-- notify_ended_runs for a transaction that may have ended one run (a worker's completion
-- batch of one task: an idle worker's usual case), by run_id equal to a parameter - on the path
-- between the run's finished_at and its waiter's wake-up. Not timed on its own: the reads of a
-- run (look_reads) took ~0.15 ms more per statement by = ANY of a one-element array.
SELECT e.ended, pg_notify('tideflow_runs', e.ended)
FROM (SELECT json_build_array(run_id)::text AS ended FROM tideflow.runs
      WHERE run_id = %(run_id)s AND status <> 'started') AS e

-- name: get_ended_runs
-- Which of these runs have ended: how a process's waiters learn whose run ended when a
-- notification could not say (run_watch.py).
-- The ids are looked up first, behind OFFSET 0, and the status tested after: `status <>
-- 'started'` beside them is the predicate of runs_finished_by_status, and on a young database
-- (no statistics) the generic plan read that whole index for the ids (a bitmap scan with run_id
-- as its third column: 20-70 ms per completion batch in a 20,000-run drain at concurrency 10,
-- growing with every finished run). This statement and notify_ended_runs, finished_reports and
-- get_finished_runs probe the primary key whatever the statistics (tests/test_plans.py).
SELECT run_id FROM (SELECT run_id, status FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s)
                    OFFSET 0) AS r
WHERE status <> 'started'

-- name: look_runs
-- A batch of waits' looks at their runs (runtime/waiting.py): each run's row; the three reads
-- below add the steps, tasks and failures of those that have ended - what their waits return -
-- in the same pipeline and snapshot. One round trip for a hundred woken waits instead of a
-- hundred. Each table is read by the ids themselves (its index on run_id) and its run's status
-- tested per row, the run found by its key behind OFFSET 0 (as in get_ended_runs: `status <>
-- 'started'` beside it would let the planner probe runs_finished_by_status by its third column).
-- With a join from runs, a prepared statement's generic plan hashed the ids' runs against a
-- whole run_steps or tasks; read_together's settings (KEYED_READS) keep every plan to index
-- lookups (tests/test_plans.py).
SELECT run_id, flow_slug, flow_version, status, input, output, error, started_at, finished_at
FROM tideflow.runs WHERE run_id = ANY(%(run_ids)s)

-- name: look_run_steps
SELECT s.run_id, s.step_slug, s.step_index, s.kind, s.depends_on, s.status, s.output, s.error,
       s.initial_tasks, s.remaining_tasks, s.created_at, s.started_at, s.finished_at,
       s.skip_reason
FROM tideflow.run_steps s
WHERE s.run_id = ANY(%(run_ids)s)
  AND EXISTS (SELECT FROM (SELECT status FROM tideflow.runs WHERE run_id = s.run_id OFFSET 0) r
              WHERE r.status <> 'started')
ORDER BY s.run_id, s.step_index

-- name: look_run_tasks
SELECT t.run_id, t.step_slug, t.task_index, t.status, t.attempts, t.stalls, t.error, t.output,
       t.queued_at, t.started_at, t.finished_at, t.visible_at
FROM tideflow.tasks t
WHERE t.run_id = ANY(%(run_ids)s)
  AND EXISTS (SELECT FROM (SELECT status FROM tideflow.runs WHERE run_id = t.run_id OFFSET 0) r
              WHERE r.status <> 'started')
ORDER BY t.run_id, t.step_slug, t.task_index

-- name: look_run_failures
SELECT f.run_id, f.step_slug, f.task_index, f.attempt, f.worker_id, f.error_type, f.error,
       f.traceback, f.retried, f.started_at, f.failed_at
FROM tideflow.task_failures f
WHERE f.run_id = ANY(%(run_ids)s)
  AND EXISTS (SELECT FROM (SELECT status FROM tideflow.runs WHERE run_id = f.run_id OFFSET 0) r
              WHERE r.status <> 'started')
ORDER BY f.run_id, f.id
