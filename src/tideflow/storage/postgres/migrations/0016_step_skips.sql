-- tideflow schema for PostgreSQL, version 16: skipped steps, conditional runs, and map sources
-- blamed on the step that produced them.
--
-- run_steps.skip_reason says why a skipped step was skipped: 'condition_unmet' (its if_/if_not
-- pattern did not hold), 'handler_failed' (its task failed for good and the step says
-- when_failed='skip' or 'skip_cascade'), 'dependency_skipped' (a step it depends on was skipped
-- with 'skip_cascade'). NULL on a step skipped because its run failed or was cancelled first:
-- the steps retry_run starts again.
--
-- runs.conditional: the run's flow version has conditions or when_failed skips. Such a run moves
-- on in the flow store's Python (tideflow/storage/flow_store.py), on both backends: conditions
-- are JSON containment checked once, in Python, identically for both dialects. So the run is
-- started statement by statement, and complete_tasks_v3 (0012's complete_tasks_v2 with this
-- hand-back) returns its completions ("deferred") for the store to complete in the same
-- transaction; every other run keeps the one-round-trip path. Runs started before this
-- migration are not conditional (default false).

ALTER TABLE tideflow.run_steps
    ADD COLUMN skip_reason text
    CHECK (skip_reason IN ('condition_unmet', 'handler_failed', 'dependency_skipped'));
ALTER TABLE tideflow.runs ADD COLUMN conditional boolean NOT NULL DEFAULT false;

-- _queue_step_v1 (0001) in place, same signature and return contract: a dependent map step fed
-- something other than an array now fails the run by marking the step that produced it failed,
-- with an error naming the map step (the producer is at fault, and retry_run reruns it). A root
-- map's input is refused by start_run before anything is written; the root branch stays for
-- runs of older clients. Replaced rather than renamed: a worker of the previous release that
-- calls it only gets the better error.
CREATE OR REPLACE FUNCTION tideflow._queue_step_v1(p_run text, p_flow text, s tideflow.run_steps,
                                        p_run_input jsonb, p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_source jsonb;
    v_origin text;
    v_n integer;
BEGIN
    IF s.kind = 'map' THEN
        IF s.depends_on = '[]'::jsonb THEN
            v_source := p_run_input;
            v_origin := 'the run input';
        ELSE
            SELECT output INTO v_source FROM tideflow.run_steps
            WHERE run_id = p_run AND step_slug = s.depends_on ->> 0;
            v_origin := format('step %L', s.depends_on ->> 0);
        END IF;
        IF jsonb_typeof(v_source) IS DISTINCT FROM 'array' AND s.depends_on = '[]'::jsonb THEN
            PERFORM tideflow._fail_run_v1(p_run, s.step_slug, format(
                'map step %L needs a list from %s, got %s; make %s a JSON array',
                s.step_slug, v_origin, tideflow._json_type_v1(v_source), v_origin), p_now);
            RETURN -1;
        END IF;
        IF jsonb_typeof(v_source) IS DISTINCT FROM 'array' THEN  -- 0016: blame the producer
            PERFORM tideflow._fail_run_v1(p_run, s.depends_on ->> 0, format(
                'step %L returned %s, but map step %L maps over its output and needs a JSON '
                'array; make step %L return a list', s.depends_on ->> 0,
                tideflow._json_type_v1(v_source), s.step_slug, s.depends_on ->> 0), p_now);
            RETURN -1;
        END IF;
        v_n := jsonb_array_length(v_source);
        IF v_n = 0 THEN
            UPDATE tideflow.run_steps
            SET status = 'completed', initial_tasks = 0, remaining_tasks = 0, output = '[]',
                started_at = p_now, finished_at = p_now
            WHERE run_id = p_run AND step_slug = s.step_slug;
            RETURN tideflow._step_completed_v1(p_run, p_flow, s.dependents, p_now);
        END IF;
        UPDATE tideflow.run_steps
        SET status = 'started', initial_tasks = v_n, remaining_tasks = v_n, started_at = p_now
        WHERE run_id = p_run AND step_slug = s.step_slug;
        INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input,
                                    timeout, queued_at, visible_at)
        SELECT p_run, s.step_slug, (e.ord - 1)::integer, p_flow, 'queued', e.value, s.timeout,
               p_now, p_now + make_interval(secs => s.start_delay)
        FROM jsonb_array_elements(v_source) WITH ORDINALITY AS e(value, ord);
        RETURN 1;
    END IF;

    IF s.status <> 'started' THEN  -- roots; a dependent was marked by _step_completed_v1
        UPDATE tideflow.run_steps
        SET status = 'started', initial_tasks = 1, remaining_tasks = 1, started_at = p_now
        WHERE run_id = p_run AND step_slug = s.step_slug;
    END IF;
    INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout,
                                queued_at, visible_at)
    VALUES (p_run, s.step_slug, 0, p_flow, 'queued',
            CASE WHEN s.depends_on = '[]'::jsonb THEN p_run_input ELSE (
                SELECT jsonb_object_agg(d.step_slug, d.output) FROM tideflow.run_steps d
                WHERE d.run_id = p_run
                  AND d.step_slug IN (SELECT jsonb_array_elements_text(s.depends_on))) END,
            s.timeout, p_now, p_now + make_interval(secs => s.start_delay));
    RETURN 1;
END $$;

-- complete_tasks_v2 (0012: set by set, its planner guard) plus one thing: completions of
-- conditional runs (runs.conditional) are not recorded here but returned in `deferred` (their
-- 0-based positions in p_rows), for the flow store to complete in Python in the same
-- transaction, after these; the runs rows are locked here for all of them, first, in run_id
-- order, as before. A new name because its result changed; complete_tasks_v2 and v1 stay for
-- workers of the previous releases.
CREATE FUNCTION tideflow.complete_tasks_v3(p_worker text, p_rows jsonb, p_now timestamptz,
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
    notify := v_notify;
END $$;
