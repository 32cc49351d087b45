-- tideflow schema for PostgreSQL, version 21: a limited flow's queue, by flow (issue 13).
--
-- What was slow. _claim_limited_v1 (0019) looks for the next queued tasks of one limited flow:
-- `status = 'queued' AND flow_slug = p_flow AND visible_at <= now ORDER BY visible_at LIMIT n`.
-- The only index for it was tasks_queued (visible_at), holding every flow's queued tasks, so
-- the scan read them in visibility order and fetched each one's heap row to test its flow: when
-- the limited flow had few queued tasks and another flow a backlog, every claim of a worker
-- that serves both walked the whole backlog (32 ms a claim at 300,000 queued with the pages
-- cached, 147 ms without). claim_tasks_v1 calls it for each of the worker's limited flows on
-- every claim, also when they have nothing queued. Profiled with track_functions in the
-- benchmark's drain (bench_flows.py --large, whose worker serves two limited flows besides
-- the drained one): at a 50,000 backlog the limited claims took 92 us per run drained, 20 us at
-- 10,000, and the server's CPU per run doubled (59 -> 118 us) - the whole difference between the
-- small and the large database, far more than the history's deeper B-trees (+14 buffer reads a
-- run) or the dead entries a drain leaves in tasks_queued (measured: killed by the first scan
-- that passes them, 0.07 ms a claim at 25,000 of them).
--
-- The fix. tasks_queued_by_flow (flow_slug, visible_at) WHERE status = 'queued': the limited
-- claim's candidates are a range of it, read in order, as long as the claim takes - an empty
-- range for a flow with nothing queued. Its predicate is tasks_queued's, so it holds the same
-- rows (the queued tasks, few beside the history) and no statement that touches tasks of another
-- status can be planned through it. What it costs: one more index entry per task queued (a
-- claim's UPDATE adds none: the new row version is 'started', outside both predicates). The
-- plain claim keeps tasks_queued: across several flows it must take the earliest visible first,
-- which one ordered index gives and a per-flow one would only give through a sort or a merge.
-- _claim_limited_v1 is replaced in place (same signature, so workers of the previous release,
-- whose claim_tasks_v1 calls it, get the new plan too). Its candidates' statement alone changes:
-- with `flow_slug = p_flow` the planner was free to pick either index, and with statistics in
-- which the flow was common it chose tasks_queued - harmless while the flow fills the queue, a
-- walk again once another flow's backlog sits in front. Written as a range of (flow_slug,
-- visible_at) read in that order, only tasks_queued_by_flow serves it without a sort, and the
-- function now runs with sorts disabled (the ranking's sorts, which no plan avoids, are in every
-- plan alike; jit stays off): the same plan with no, stale or fresh statistics, custom or
-- generic (tests/test_plans.py). With sorts allowed, statistics taken while nothing was queued
-- made a sort of tasks_queued's rows look as cheap as the range. And it first probes the range
-- (one index descent) and returns at once when the flow has nothing visible queued: a worker
-- asks each of its limited flows on every claim, and locking the limits row and planning the
-- ranking cost ~0.5 ms a call for nothing (8-11 us per run drained in the benchmark's drain,
-- whose worker serves two limited flows with empty queues).
--
-- Upgrading a big database: CREATE INDEX (not CONCURRENTLY: the migration runs in one
-- transaction) reads the whole tasks table and blocks writes to it - starts, claims,
-- completions - while it builds. It reads the heap once and sorts only the queued rows: 0.11 s
-- for 1M tasks of history on the benchmark machine with the table in memory, as long as reading
-- the table takes when it is not. Deleting old tasks first (retention, `tideflow purge`)
-- shortens it. To upgrade without the pause, build it by hand first with the same name and
-- definition, `CREATE INDEX CONCURRENTLY tasks_queued_by_flow ...`: the migration then finds it
-- (IF NOT EXISTS) and only replaces the function.

CREATE INDEX IF NOT EXISTS tasks_queued_by_flow ON tideflow.tasks (flow_slug, visible_at)
    WHERE status = 'queued';

-- _claim_limited_v1 (0019) in place, same signature and result: only its candidates' scan
-- changed (see above). Claims up to p_limit tasks of limited flow p_flow for p_worker, within its
-- limits (0019's header).
CREATE OR REPLACE FUNCTION tideflow._claim_limited_v1(p_worker text, p_flow text, p_limit integer,
                                           p_now timestamptz, p_margin double precision)
RETURNS TABLE (run_id text, step_slug text, task_index integer, flow_slug text,
               attempts integer, input jsonb, timeout double precision,
               lease_expires_at timestamptz, run_input jsonb, flow_version text,
               reports boolean, correlation_id text)
LANGUAGE plpgsql
-- enable_sort off (0021; on in 0019): the candidates' scan must not sort, so that only
-- tasks_queued_by_flow can serve it; the ranking's sorts, which no plan avoids, stay in every
-- plan alike. jit off: a plan costed with disabled sorts looks expensive enough to be
-- JIT-compiled, 600 ms a call.
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = off SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_limits jsonb;
    v_recent jsonb;
    v_allow integer := p_limit;
    v_busy integer;
    v_now double precision := extract(epoch FROM p_now);
    v_path text[];
    v_n integer;
BEGIN
    -- Nothing of the flow visible in the queue (0021): nothing to claim, and no need to lock its
    -- limits row or to plan the ranking below - most of such a call's cost (~0.5 ms). A task
    -- committed after this probe is one that arrived after the claim: the next claim takes it.
    -- (The first in order, not EXISTS: the order is what only tasks_queued_by_flow gives.)
    PERFORM FROM tideflow.tasks q
    WHERE q.status = 'queued'
      AND (q.flow_slug, q.visible_at) >= (p_flow, '-infinity'::timestamptz)
      AND (q.flow_slug, q.visible_at) <= (p_flow, p_now)
    ORDER BY q.flow_slug, q.visible_at
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    SELECT l.limits, l.recent_claims INTO v_limits, v_recent
    FROM tideflow.flow_limits l WHERE l.flow_slug = p_flow
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- its limits were removed meanwhile: the next claim takes it plainly
    END IF;
    IF v_limits ? 'rate' THEN  -- the claims of the last `per` seconds
        SELECT coalesce(jsonb_agg(e.value), '[]'::jsonb) INTO v_recent
        FROM jsonb_array_elements(v_recent) AS e(value)
        WHERE (e.value #>> '{}')::double precision > v_now - (v_limits ->> 'per')::double precision;
        v_allow := least(v_allow, (v_limits ->> 'rate')::integer - jsonb_array_length(v_recent));
    END IF;
    IF v_limits ? 'concurrency' THEN
        SELECT count(*) INTO v_busy FROM tideflow.tasks s
        WHERE s.flow_slug = p_flow AND s.status = 'started' AND s.limit_key IS NOT NULL;
        v_allow := least(v_allow, (v_limits ->> 'concurrency')::integer - v_busy);
    END IF;
    IF v_allow <= 0 THEN
        RETURN;
    END IF;
    v_path := ARRAY(SELECT jsonb_array_elements_text(coalesce(v_limits -> 'key', '[]')));
    RETURN QUERY
    WITH busy AS (
        SELECT s.step_slug, s.limit_key, count(*)::integer AS n FROM tideflow.tasks s
        WHERE s.flow_slug = p_flow AND s.status = 'started' AND s.limit_key IS NOT NULL
        GROUP BY s.step_slug, s.limit_key
    ), candidates AS (
        -- Not locked: the flow's limited claims take turns (the lock above), and the UPDATE
        -- below finds each row by the address this snapshot saw - a row another transaction
        -- changed since (cancelled, say) has another address by then and is passed over.
        -- Without a key or a step limit the first v_allow are the ones to take; with one,
        -- up to 1,000 are ranked.
        SELECT q.ctid AS tid, q.step_slug, q.visible_at,
               CASE WHEN cardinality(v_path) = 0 THEN ''
                    ELSE coalesce((SELECT (r.input #> v_path)::text FROM tideflow.runs r
                                   WHERE r.run_id = q.run_id), 'null') END AS k
        -- The flow's range of tasks_queued_by_flow (0021), written as row comparisons, not
        -- `flow_slug = p_flow`: the order asked, (flow_slug, visible_at), is then one that only
        -- that index gives without a sort, so no statistics can plan the scan through
        -- tasks_queued - every flow's queue, each row's flow tested.
        FROM tideflow.tasks q
        WHERE q.status = 'queued'
          AND (q.flow_slug, q.visible_at) >= (p_flow, '-infinity'::timestamptz)
          AND (q.flow_slug, q.visible_at) <= (p_flow, p_now)
        ORDER BY q.flow_slug, q.visible_at
        LIMIT CASE WHEN cardinality(v_path) = 0 AND NOT v_limits ? 'steps' THEN v_allow
                   ELSE 1000 END
    ), ranked AS (
        SELECT c.*,
               row_number() OVER (PARTITION BY c.k ORDER BY c.visible_at, c.tid) AS key_rank,
               row_number() OVER (PARTITION BY c.step_slug ORDER BY c.visible_at, c.tid)
                   AS step_rank
        FROM candidates c
    ), picked AS (
        SELECT x.tid, x.k FROM ranked x
        WHERE (cardinality(v_path) = 0
               OR x.key_rank <= (v_limits ->> 'key_concurrency')::integer
                   - coalesce((SELECT sum(b.n) FROM busy b WHERE b.limit_key = x.k), 0))
          AND (v_limits -> 'steps' -> x.step_slug IS NULL
               OR x.step_rank <= (v_limits -> 'steps' ->> x.step_slug)::integer
                   - coalesce((SELECT sum(b.n) FROM busy b WHERE b.step_slug = x.step_slug), 0))
        ORDER BY x.visible_at, x.tid
        LIMIT v_allow
    ), claimed AS (
        UPDATE tideflow.tasks t
        SET status = 'started', attempts = t.attempts + 1, worker_id = p_worker,
            started_at = p_now,
            lease_expires_at = p_now + make_interval(secs => COALESCE(t.timeout, 0) + p_margin),
            limit_key = p.k
        FROM picked p
        WHERE t.ctid = p.tid
        RETURNING t.run_id, t.step_slug, t.task_index, t.flow_slug, t.attempts, t.input,
                  t.timeout, t.lease_expires_at
    )
    SELECT c.run_id, c.step_slug, c.task_index, c.flow_slug, c.attempts, c.input, c.timeout,
           c.lease_expires_at, r.input, r.flow_version, r.report IS NOT NULL,
           r.report ->> 'correlation_id'
    FROM claimed c JOIN tideflow.runs r ON r.run_id = c.run_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_limits ? 'rate' THEN
        UPDATE tideflow.flow_limits
        SET recent_claims = v_recent || (SELECT coalesce(jsonb_agg(to_jsonb(v_now)), '[]'::jsonb)
                                         FROM generate_series(1, v_n))
        WHERE flow_slug = p_flow;
    END IF;
END $$;
