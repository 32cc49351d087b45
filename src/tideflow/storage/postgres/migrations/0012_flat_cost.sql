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
--    use it.

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

CREATE INDEX runs_finished_by_status ON tideflow.runs (status, started_at DESC, run_id)
    WHERE status <> 'started';
CREATE INDEX runs_by_finished ON tideflow.runs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX idempotency_keys_by_age ON tideflow.idempotency_keys (recorded_at);
CREATE INDEX dead_letters_retried ON tideflow.dead_letters (retried_at)
    WHERE retried_at IS NOT NULL;

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
