-- tideflow schema for PostgreSQL, version 12: flat cost as data grows.
--
-- Measured with up to 1.3M runs of history and 300k queued tasks, four things grew with the data
-- (issue 13). This migration fixes the three that live in the schema; retention (deleting what
-- is old, in small batches: storage/*_store.py, `tideflow purge`) is the fourth.
--
-- 1. Completions and heartbeats stay primary-key lookups whatever the statistics say. Their
--    statements (complete_tasks_v1's per-task UPDATE, extend_leases, release_tasks, ...) name a
--    task by its key AND `status = 'started'`. That condition implied the predicate of the partial
--    index tasks_started (lease_expires_at) WHERE status = 'started', so the planner could read
--    that index and filter every task in flight instead of probing the key - and after an ANALYZE
--    taken while few tasks were in flight it did: 25 ms for a batch of 256 completions with 257
--    tasks in flight, 316 ms with 10,241. The stall finder's index now carries the predicate
--    `lease_expires_at IS NOT NULL` instead: the same rows (only a started task holds a lease),
--    still implied by the stall finder's `lease_expires_at < now`, and implied by nothing that
--    completions and heartbeats say, so no statistics can make the planner pick it for them.
--    complete_tasks_v1 itself is unchanged: workers of the previous release get the same plans.
--    The set-based statements of this release (complete_tasks_v2, extend_leases_v1) run with
--    enable_seqscan = off, for the other way a plan of theirs went wrong: see complete_tasks_v2.
--
-- 2. The claim's plan no longer depends on statistics. Without them the planner scanned and sorted
--    every queued task (37 ms at 50k queued, spilling to disk; 144 ms at 300k). claim_tasks_v1 is
--    the claim of queries.sql as a function whose planner settings leave one plan without a
--    disabled node: the index-ordered scan of tasks_queued under the LIMIT, which reads as many
--    entries as it claims (plus dead ones, see 3). enable_sort, enable_seqscan and
--    enable_bitmapscan apply inside the function only.
--
-- 3. High-churn tables get the storage parameters a queue table needs. Every run inserts, updates
--    and (with retention) deletes its tasks, steps and run row; each finished task leaves a dead
--    entry in tasks_queued and tasks_leased until VACUUM removes it, and the claim walks over the
--    dead entries at the low end of tasks_queued. The default autovacuum trigger (20% of the
--    table dead, plus 50 rows) lets a table of 1M rows collect 200k dead rows first; 1% plus 1,000
--    keeps a hot table vacuumed every minute or so under load, and ANALYZE at 2% keeps its
--    statistics current. fillfactor leaves room on each page for the new version of an updated row
--    (HOT updates where no indexed column changes: run_steps, and runs counting steps down).
--
-- 4. Indexes for reads that scanned a growing table: list_runs by status (272 ms at 1.3M runs),
--    finished runs by age (retention), idempotency keys by age (their expiry), retried dead
--    letters by age. runs_finished_by_status is partial (finished runs only) for the reason of 1:
--    the hot `WHERE run_id = ... AND status = 'started'` of every transition must not be able to
--    use it. runs_by_started and runs_by_flow gain run_id, list_runs' tie-breaker: without it a
--    page of runs that started in the same instant (a burst) was an incremental sort of the
--    whole burst (22 ms for 50,000 runs), with it every listing reads 50 index entries in order.
--    Building these indexes holds writes to runs for a few seconds per million runs.

DROP INDEX tideflow.tasks_started;
CREATE INDEX tasks_leased ON tideflow.tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;

ALTER TABLE tideflow.tasks SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000
);
ALTER TABLE tideflow.run_steps SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000
);
ALTER TABLE tideflow.runs SET (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000
);

DROP INDEX tideflow.runs_by_started;
CREATE INDEX runs_by_started ON tideflow.runs (started_at DESC, run_id);
DROP INDEX tideflow.runs_by_flow;
CREATE INDEX runs_by_flow ON tideflow.runs (flow_slug, started_at DESC, run_id);
CREATE INDEX runs_finished_by_status ON tideflow.runs (status, started_at DESC, run_id)
    WHERE status <> 'started';
CREATE INDEX runs_by_finished ON tideflow.runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX idempotency_keys_by_age ON tideflow.idempotency_keys (recorded_at);
CREATE INDEX dead_letters_retried ON tideflow.dead_letters (retried_at)
    WHERE retried_at IS NOT NULL;

-- Renew the leases of p_worker's started tasks among p_rows (run_id, step_slug, task_index): the
-- heartbeat. A function for the reason complete_tasks_v2 has its SET clause (below): a plain
-- statement, on a table without statistics, joined the batch against a scan of every task.
CREATE FUNCTION tideflow.extend_leases_v1(p_worker text, p_rows jsonb, p_now timestamptz,
                                          p_margin double precision)
RETURNS integer LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_n integer;
BEGIN
    UPDATE tideflow.tasks t
    SET lease_expires_at = p_now + make_interval(secs => COALESCE(t.timeout, 0) + p_margin)
    FROM jsonb_to_recordset(p_rows) AS b(run_id text, step_slug text, task_index integer)
    WHERE t.run_id = b.run_id AND t.step_slug = b.step_slug AND t.task_index = b.task_index
      AND t.worker_id = p_worker AND t.status = 'started';
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END $$;

-- Claim up to p_limit visible queued tasks of the given flows for p_worker: the claim of
-- queries.sql (0001's model: FOR UPDATE SKIP LOCKED, so concurrent claims pass over each other)
-- with each task's run input, flow version and report columns. See 2 above for the SET clauses.
CREATE FUNCTION tideflow.claim_tasks_v1(p_worker text, p_flows text[], p_limit integer,
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
            SELECT q.run_id, q.step_slug, q.task_index FROM tideflow.tasks q
            WHERE q.status = 'queued' AND q.visible_at <= p_now AND q.flow_slug = ANY(p_flows)
            ORDER BY q.visible_at
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) picked
        WHERE t.run_id = picked.run_id AND t.step_slug = picked.step_slug
          AND t.task_index = picked.task_index
        RETURNING t.run_id, t.step_slug, t.task_index, t.flow_slug, t.attempts, t.input,
                  t.timeout, t.lease_expires_at
    )
    SELECT c.run_id, c.step_slug, c.task_index, c.flow_slug, c.attempts, c.input, c.timeout,
           c.lease_expires_at, r.input, r.flow_version, r.report IS NOT NULL,
           r.report ->> 'correlation_id'
    FROM claimed c JOIN tideflow.runs r ON r.run_id = c.run_id;
END $$;

-- Start the dependents of a step of p_run that has just completed (p_dependents: their slugs):
-- count the dependency off each, mark a ready single step started, and queue the ready ones'
-- tasks. The second half of _step_completed_v1 (0001), for complete_tasks_v2, which counts the
-- steps off their runs itself, for the whole batch at once. Returns as _queue_step_v1 does.
CREATE FUNCTION tideflow._start_dependents_v1(p_run text, p_flow text, p_dependents jsonb,
                                              p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    r tideflow.run_steps;
    v integer;
    v_result integer := 0;
BEGIN
    FOR r IN
        UPDATE tideflow.run_steps
        SET remaining_deps = remaining_deps - 1,
            status = CASE WHEN remaining_deps = 1 AND kind = 'single' THEN 'started'
                          ELSE status END,
            initial_tasks = CASE WHEN remaining_deps = 1 AND kind = 'single' THEN 1
                                 ELSE initial_tasks END,
            remaining_tasks = CASE WHEN remaining_deps = 1 AND kind = 'single' THEN 1
                                   ELSE remaining_tasks END,
            started_at = CASE WHEN remaining_deps = 1 AND kind = 'single' THEN p_now
                              ELSE started_at END
        WHERE run_id = p_run
          AND step_slug IN (SELECT jsonb_array_elements_text(p_dependents))
        RETURNING *
    LOOP
        CONTINUE WHEN r.remaining_deps <> 0;
        v := tideflow._queue_step_v1(p_run, p_flow, r, NULL, p_now);
        IF v < 0 THEN
            RETURN -1;  -- the run failed; its other steps were skipped
        END IF;
        v_result := greatest(v_result, v);
    END LOOP;
    RETURN v_result;
END $$;

-- _step_completed_v1 (0001) as it was, its second half now _start_dependents_v1's: the same
-- behaviour (workers of the previous release call it through complete_tasks_v1 and the empty map
-- steps of _queue_step_v1), the code once.
CREATE OR REPLACE FUNCTION tideflow._step_completed_v1(p_run text, p_flow text, p_dependents jsonb,
                                            p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_remaining integer;
BEGIN
    UPDATE tideflow.runs
    SET remaining_steps = remaining_steps - 1,
        status = CASE WHEN remaining_steps = 1 THEN 'completed' ELSE status END,
        finished_at = CASE WHEN remaining_steps = 1 THEN p_now ELSE finished_at END,
        output = CASE WHEN remaining_steps = 1 THEN (
            SELECT jsonb_object_agg(l.step_slug, l.output) FROM tideflow.run_steps l
            WHERE l.run_id = p_run AND l.dependents = '[]'::jsonb) ELSE output END
    WHERE run_id = p_run AND status = 'started'
    RETURNING remaining_steps INTO v_remaining;
    IF v_remaining IS NULL OR v_remaining = 0 OR p_dependents = '[]'::jsonb THEN
        RETURN 0;
    END IF;
    RETURN tideflow._start_dependents_v1(p_run, p_flow, p_dependents, p_now);
END $$;

-- complete_tasks_v1 (0001) set by set instead of row by row: the same transitions, in a fixed
-- number of statements per batch - the tasks, then their steps, then the runs of the steps that
-- completed - so that a batch of 256 completions costs a few statements, not 768 (25 ms -> a
-- few ms, measured in docs/benchmarks.md), like the flow store's own path on SQLite. Only the
-- dependents of completed steps are started one step at a time, as before. A new name: workers
-- of the previous release keep calling complete_tasks_v1, which stays.
--
-- As in v1, a completion counts only for the worker's own started attempt, and the runs of the
-- batch are locked first, in run_id order. Set-based statements need one guard v1's did not: a
-- table without statistics makes the planner guess that one task matches `status = 'started'
-- AND worker_id = ...`, and join the whole batch against a scan of the table - 620 ms for 256
-- completions among 10,000 tasks. enable_seqscan = off leaves the key lookups as the only plan
-- without a disabled node; every statement here (and in the helpers it calls) has one. Where v1 met, in one batch, a completion of a run that
-- an earlier completion of the batch had just failed (a map step fed a non-list), it cancelled
-- that task; here every task of the batch is completed first, as on SQLite, and the failed run
-- stays failed.
CREATE FUNCTION tideflow.complete_tasks_v2(p_worker text, p_rows jsonb, p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    v_finished jsonb;
    v_next jsonb;
    f record;
    v integer;
    v_failed text;
    v_notify boolean := false;
BEGIN
    PERFORM 1 FROM tideflow.runs
    WHERE run_id IN (SELECT b.run_id FROM jsonb_to_recordset(p_rows) AS b(run_id text))
    ORDER BY run_id
    FOR UPDATE;
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
        RETURN false;
    END IF;
    UPDATE tideflow.run_steps s SET output = (
        SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM tideflow.tasks t
        WHERE t.run_id = s.run_id AND t.step_slug = s.step_slug)
    FROM jsonb_to_recordset(v_finished) AS m(run_id text, step_slug text, kind text)
    WHERE m.kind = 'map' AND s.run_id = m.run_id AND s.step_slug = m.step_slug;
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
    RETURN v_notify;
END $$;
