-- tideflow schema for PostgreSQL, version 19: queue limits (issue 10 item 9).
--
-- A flow may limit how many of its tasks execute at once (in all, per step, per value of a key
-- read from the run input) and how many are claimed per period (tideflow/flows/limits.py says
-- what each counts). The limits are enforced by the claim, in the database, across all workers;
-- what it takes:
--
-- flow_limits: one row per limited flow, written by the workers that have its code
-- (FlowStore.ensure_flow: the latest worker's limits are kept, as its step options are) and
-- deleted when a worker's code declares none; `limits` is QueueLimits.to_json(), `recent_claims`
-- the claim times (epoch seconds) inside the rate window. Only a limited flow has a row, and the
-- row is what the claim consults: a worker of this release honours the limits whatever its own
-- code says.
--
-- tasks.limit_key: set by the limited claim on each task it claims - the task's key value as
-- JSON text ('' when the flow has no key) - and NULL by the plain claim. tasks_limited holds the
-- started tasks that carry one: what the limited claim counts. A task that stops executing
-- (completed, failed, requeued by the reaper because its worker died, released) leaves
-- status 'started' and so the index: a slot frees itself through the transitions that exist,
-- with no counter to keep in step. Tasks of unlimited flows never carry a key, so the index
-- costs them nothing; and its predicate names limit_key, which no completion, heartbeat or
-- stall finder mentions, so - the lesson of 0012 - their plans cannot be drawn to it.
--
-- claim_tasks_v1 in place (same signature and result; workers of the previous release get the
-- limits too): its first statement looks the worker's flows up in flow_limits - one probe of
-- an empty or small table, the whole cost of the feature for a flow without limits - then
-- claims limited flows' tasks through _claim_limited_v1, one flow at a time in slug order, and
-- the rest with 0018's statement. Still one call, one round trip.
--
-- _claim_limited_v1 locks the flow's flow_limits row first, so that limited claims of one flow
-- take turns: each of its later statements takes a new snapshot (READ COMMITTED, a PL/pgSQL
-- function) and so counts every claim committed before the lock was granted - two workers
-- cannot both see the last free slot. The lock is held to the end of the claiming transaction,
-- which commits at once (a claim, or the claim at the end of a completion batch). Limited
-- claims of other flows and every unlimited claim do not wait on it. Then: the allowance left
-- by the flow's concurrency and rate window; the started tasks per step and key (an index range
-- of tasks_limited, as long as the flow's tasks in flight); the next visible queued tasks of the
-- flow in visibility order (as many as the allowance without a key or step limit, else 1,000),
-- with their keys, ranked per key and per step; those whose rank fits their key's and step's
-- free slots, up to the allowance, claimed. A run blocked by a
-- limit stays queued, in its place, and is claimed when a slot frees. Known cost: the claim
-- looks at 1,000 queued tasks of the flow at most, so a key whose tasks wait behind more than
-- 1,000 tasks of keys at their limit waits until those drain below that.

CREATE TABLE tideflow.flow_limits (
    flow_slug     text        PRIMARY KEY,
    limits        jsonb       NOT NULL,
    recent_claims jsonb       NOT NULL,  -- epoch seconds of the claims in the rate window
    updated_at    timestamptz NOT NULL
);

ALTER TABLE tideflow.tasks ADD COLUMN limit_key text;
CREATE INDEX tasks_limited ON tideflow.tasks (flow_slug, step_slug, limit_key)
    WHERE status = 'started' AND limit_key IS NOT NULL;

-- Claim up to p_limit tasks of limited flow p_flow for p_worker, within its limits (see above).
-- Returns the rows claim_tasks_v1 returns.
CREATE FUNCTION tideflow._claim_limited_v1(p_worker text, p_flow text, p_limit integer,
                                           p_now timestamptz, p_margin double precision)
RETURNS TABLE (run_id text, step_slug text, task_index integer, flow_slug text,
               attempts integer, input jsonb, timeout double precision,
               lease_expires_at timestamptz, run_input jsonb, flow_version text,
               reports boolean, correlation_id text)
LANGUAGE plpgsql
-- enable_sort on: the ranking sorts the candidates, and claim_tasks_v1, the caller, turns sorts
-- off - a plan costed with disabled sorts looks expensive enough to be JIT-compiled, 600 ms a
-- call. jit off for the same reason.
SET enable_seqscan = off SET enable_bitmapscan = off SET enable_sort = on SET jit = off
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
        FROM tideflow.tasks q
        WHERE q.status = 'queued' AND q.visible_at <= p_now AND q.flow_slug = p_flow
        ORDER BY q.visible_at
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

-- claim_tasks_v1 (0018) in place: limited flows through _claim_limited_v1, the rest as before.
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
DECLARE
    v_limited text[];
    v_free text[] := p_flows;
    v_flow text;
    v_left integer := p_limit;
    v_n integer;
BEGIN
    SELECT array_agg(l.flow_slug ORDER BY l.flow_slug) INTO v_limited
    FROM tideflow.flow_limits l WHERE l.flow_slug = ANY(p_flows);
    IF v_limited IS NOT NULL THEN
        FOREACH v_flow IN ARRAY v_limited LOOP
            EXIT WHEN v_left <= 0;
            RETURN QUERY SELECT * FROM tideflow._claim_limited_v1(p_worker, v_flow, v_left, p_now,
                                                                  p_margin);
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_left := v_left - v_n;
        END LOOP;
        v_free := ARRAY(SELECT f FROM unnest(p_flows) AS f WHERE f <> ALL(v_limited));
        IF v_left <= 0 OR cardinality(v_free) = 0 THEN
            RETURN;
        END IF;
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE tideflow.tasks t
        SET status = 'started', attempts = t.attempts + 1, worker_id = p_worker,
            started_at = p_now,
            lease_expires_at = p_now + make_interval(secs => COALESCE(t.timeout, 0) + p_margin),
            limit_key = NULL
        FROM (
            SELECT q.ctid AS tid FROM tideflow.tasks q
            WHERE q.status = 'queued' AND q.visible_at <= p_now AND q.flow_slug = ANY(v_free)
            ORDER BY q.visible_at
            LIMIT v_left
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
