-- tideflow schema for PostgreSQL, version 18: fewer writes per claim and per completion.
--
-- Issue 13 left two targets open on PostgreSQL: a batch of 256 completions under 10 ms with
-- 10,000 tasks in flight, and a claim of 256 under 2 ms at 300k queued. Profiled inside the
-- functions (auto_explain with buffers, and the backend's own CPU time per batch), both cost per
-- row written, not per statement: a completion that ends its run rewrites the task (one index
-- entry: the primary key - the partial indexes do not hold a completed task), the step (a HOT
-- update: no index) and the run (not HOT - its status and finished_at are indexed - so an entry
-- in each of its five indexes); a claim locks each task, finds it again, rewrites it (two index
-- entries: the key and tasks_leased) and reads its run. This migration removes what is not
-- needed of that:
--
-- 1. runs_by_finished goes: one index entry fewer for every run that ends (completed, failed or
--    cancelled). Retention, its only reader, reads runs_by_started from its old end instead: a
--    run that finished before the cut-off started before it, so `started_at < cut-off` is the
--    index range and `finished_at < cut-off` keeps the result exact, oldest first as before.
-- 2. claim_tasks_v1 (0012) in place, same signature and result: the claimed rows are found again
--    by their physical address (ctid, a Tid Scan) instead of a second descent of the primary key
--    per task. The address comes from the row the inner scan has just locked FOR UPDATE, so it
--    is the row's current version and cannot move before the UPDATE, which runs in the same
--    statement. A task whose row another transaction changed between this statement's snapshot
--    and the lock (requeued by the reaper at that instant) is simply not claimed this time: it
--    stays queued for the next claim.
-- 3. complete_tasks_v3 (0016) in place, same contract: the statement that gathers a map step's
--    output runs only when a map step completed in the batch.
--
-- What stays, and why: the lock of the runs first (the lock order every transition keeps,
-- 0001), the run's other four indexes (listing by start, by flow, by status; the key), and the
-- join of each claimed task to its run (its input, flow version and report, which the claim
-- returns so that a task is one round trip).

DROP INDEX tideflow.runs_by_finished;

-- 2.
CREATE OR REPLACE FUNCTION tideflow.claim_tasks_v1(p_worker text, p_flows text[], p_limit integer,
                                        p_now timestamptz, p_margin double precision)
RETURNS TABLE (run_id text, step_slug text, task_index integer, flow_slug text,
               attempts integer, input jsonb, timeout double precision,
               lease_expires_at timestamptz, run_input jsonb, flow_version text,
               reports boolean, correlation_id text)
LANGUAGE plpgsql
SET enable_sort = off SET enable_seqscan = off SET enable_bitmapscan = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH claimed AS (
        UPDATE tideflow.tasks t
        SET status = 'started', attempts = t.attempts + 1, worker_id = p_worker,
            started_at = p_now,
            lease_expires_at = p_now + make_interval(secs => COALESCE(t.timeout, 0) + p_margin)
        FROM (
            SELECT q.ctid AS tid FROM tideflow.tasks q
            WHERE q.status = 'queued' AND q.visible_at <= p_now AND q.flow_slug = ANY(p_flows)
            ORDER BY q.visible_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) picked
        WHERE t.ctid = picked.tid
        RETURNING t.run_id, t.step_slug, t.task_index, t.flow_slug, t.attempts, t.input,
                  t.timeout, t.lease_expires_at
    )
    SELECT c.run_id, c.step_slug, c.task_index, c.flow_slug, c.attempts, c.input, c.timeout,
           c.lease_expires_at, r.input, r.flow_version, r.report IS NOT NULL,
           r.report ->> 'correlation_id'
    FROM claimed c JOIN tideflow.runs r ON r.run_id = c.run_id;
END $$;

-- 3.
CREATE OR REPLACE FUNCTION tideflow.complete_tasks_v3(p_worker text, p_rows jsonb, p_now timestamptz,
                                           OUT notify boolean, OUT deferred jsonb)
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_finished jsonb;
    v_next jsonb;
    f record;
    v integer;
    v_failed text;
    v_notify boolean := false;
    v_conditional jsonb;
BEGIN
    notify := false;
    -- The runs first, in run_id order, as v2; and which of them are conditional (0016): their
    -- completions are left to the flow store, their positions in p_rows returned in deferred.
    SELECT coalesce(jsonb_agg(l.run_id) FILTER (WHERE l.conditional), '[]'::jsonb)
    INTO v_conditional
    FROM (SELECT run_id, conditional FROM tideflow.runs
          WHERE run_id IN (SELECT b.run_id FROM jsonb_to_recordset(p_rows) AS b(run_id text))
          ORDER BY run_id
          FOR UPDATE) AS l;
    deferred := '[]'::jsonb;
    IF v_conditional <> '[]'::jsonb THEN
        SELECT coalesce(jsonb_agg(e.ord - 1), '[]'::jsonb) INTO deferred
        FROM jsonb_array_elements(p_rows) WITH ORDINALITY AS e(value, ord)
        WHERE v_conditional ? (e.value ->> 'run_id');
    END IF;
    -- The tasks, by primary key; then their steps, counted down by the tasks completed, and
    -- completed when none is left (a single step's output is its task's; a map's is gathered
    -- below). v_finished: the steps that completed.
    WITH done AS (
        UPDATE tideflow.tasks t
        SET status = 'completed', output = b.output::jsonb, finished_at = p_now,
            lease_expires_at = NULL
        FROM jsonb_to_recordset(p_rows) AS b(
            run_id text, step_slug text, task_index integer, attempt integer, output text)
        WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug AND t.task_index = b.task_index
          AND t.attempts = b.attempt AND t.status = 'started' AND t.worker_id = p_worker
          AND NOT v_conditional ? b.run_id
        RETURNING t.run_id, t.step_slug, t.flow_slug, b.output
    ), per_step AS (
        SELECT d.run_id, d.step_slug, min(d.flow_slug) AS flow_slug, count(*)::integer AS n,
               min(d.output) AS output
        FROM done d GROUP BY d.run_id, d.step_slug
    ), steps AS (
        UPDATE tideflow.run_steps s
        SET remaining_tasks = s.remaining_tasks - p.n,
            status = CASE WHEN s.remaining_tasks = p.n THEN 'completed' ELSE s.status END,
            finished_at = CASE WHEN s.remaining_tasks = p.n THEN p_now ELSE s.finished_at END,
            output = CASE WHEN s.remaining_tasks = p.n AND s.kind = 'single'
                          THEN p.output::jsonb ELSE s.output END
        FROM per_step p
        WHERE s.run_id = p.run_id AND s.step_slug = p.step_slug
        RETURNING s.run_id, s.step_slug, s.kind, s.dependents, s.remaining_tasks, p.flow_slug
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'run_id', run_id, 'step_slug', step_slug, 'kind', kind,
               'dependents', dependents, 'flow_slug', flow_slug)), '[]'::jsonb)
    INTO v_finished
    FROM steps WHERE remaining_tasks = 0;
    IF v_finished = '[]'::jsonb THEN
        RETURN;
    END IF;
    IF v_finished @? '$[*] ? (@.kind == "map")' THEN
    UPDATE tideflow.run_steps s SET output = (
        SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM tideflow.tasks t
        WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug)
    FROM jsonb_to_recordset(v_finished) AS m(run_id text, step_slug text, kind text)
    WHERE m.kind = 'map' AND s.run_id = m.run_id AND s.step_slug = m.step_slug;
    END IF;
    -- Count the completed steps off their runs, completing a run after its last step with its
    -- leaf steps' outputs; v_next: the completed steps with dependents, of runs going on.
    WITH counted AS (
        UPDATE tideflow.runs u
        SET remaining_steps = u.remaining_steps - c.n,
            status = CASE WHEN u.remaining_steps = c.n THEN 'completed' ELSE u.status END,
            finished_at = CASE WHEN u.remaining_steps = c.n THEN p_now ELSE u.finished_at END,
            output = CASE WHEN u.remaining_steps = c.n THEN (
                SELECT jsonb_object_agg(l.step_slug, l.output) FROM tideflow.run_steps l
                WHERE l.run_id = u.run_id AND l.dependents = '[]'::jsonb) ELSE u.output END
        FROM (SELECT x.run_id, count(*)::integer AS n
              FROM jsonb_to_recordset(v_finished) AS x(run_id text) GROUP BY x.run_id) c
        WHERE u.run_id = c.run_id AND u.status = 'started'
        RETURNING u.run_id, u.remaining_steps
    )
    SELECT jsonb_agg(x.* ORDER BY x.run_id) INTO v_next
    FROM counted
    JOIN jsonb_to_recordset(v_finished) AS x(run_id text, flow_slug text, dependents jsonb)
      ON x.run_id = counted.run_id
    WHERE counted.remaining_steps > 0 AND x.dependents <> '[]'::jsonb;
    -- Then start their dependents, one completed step at a time.
    FOR f IN
        SELECT * FROM jsonb_to_recordset(v_next) AS x(run_id text, flow_slug text, dependents jsonb)
    LOOP
        CONTINUE WHEN f.run_id = v_failed;  -- the run failed: its other steps were skipped
        v := tideflow._start_dependents_v1(f.run_id, f.flow_slug, f.dependents, p_now);
        IF v < 0 THEN
            v_failed := f.run_id;
        END IF;
        v_notify := v_notify OR v > 0;
    END LOOP;
    notify := v_notify;
END $$;
