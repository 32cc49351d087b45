-- tideflow schema for PostgreSQL, version 17: many runs of one flow started in one call.
--
-- start_runs_v1 is start_run_v2 (0007) for a batch, written set-based: one INSERT for every
-- run, one for every step row (the runs crossed with the flow's steps, root single steps
-- inserted already started), one for the tasks of those root steps - instead of a loop of
-- start_run_v2 calls, whose per-run statements capped a bulk start at ~13,000 runs/s on the
-- benchmark machine (docs/benchmarks.md). Root map steps, which fan out per run, still go
-- through _queue_step_v1 one by one (an empty array completes them at once). The flow store
-- calls it for flows without conditions (runs.conditional keeps its default, false) and has
-- already refused a root map input that is not an array.
--
-- p_ids: the run ids; p_inputs: their inputs, a JSON array in the same order; p_steps: the step
-- rows as start_run_v2 takes them; p_report: every run's report, or NULL. Returns true when tasks
-- were queued.
CREATE FUNCTION tideflow.start_runs_v1(p_flow text, p_version text, p_ids text[],
                                       p_inputs jsonb, p_steps jsonb, p_report json,
                                       p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r tideflow.run_steps;
    v integer;
    v_notify boolean;
BEGIN
    INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, remaining_steps,
                               started_at, report)
    SELECT b.run_id, p_flow, p_version, 'started', b.input, jsonb_array_length(p_steps), p_now,
           p_report
    FROM ROWS FROM (unnest(p_ids), jsonb_array_elements(p_inputs)) AS b(run_id, input);
    INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, dependents,
                                    status, remaining_deps, initial_tasks, remaining_tasks,
                                    max_attempts, base_delay, max_delay, timeout, start_delay,
                                    max_stalls, created_at, started_at)
    SELECT b.run_id, s.step_slug, s.step_index, s.kind, s.depends_on::jsonb, s.dependents::jsonb,
           CASE WHEN s.root THEN 'started' ELSE 'created' END, s.remaining_deps,
           CASE WHEN s.root THEN 1 END, CASE WHEN s.root THEN 1 END, s.max_attempts,
           s.base_delay, s.max_delay, s.timeout, s.start_delay, s.max_stalls, p_now,
           CASE WHEN s.root THEN p_now END
    FROM unnest(p_ids) AS b(run_id)
    CROSS JOIN (
        SELECT x.*, x.remaining_deps = 0 AND x.kind = 'single' AS root
        FROM jsonb_to_recordset(p_steps) AS x(
            step_slug text, step_index integer, kind text, depends_on text, dependents text,
            remaining_deps integer, max_attempts integer, base_delay double precision,
            max_delay double precision, timeout double precision, start_delay double precision,
            max_stalls integer)) AS s;
    INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout,
                                queued_at, visible_at)
    SELECT b.run_id, s.step_slug, 0, p_flow, 'queued', b.input, s.timeout, p_now,
           p_now + make_interval(secs => s.start_delay)
    FROM ROWS FROM (unnest(p_ids), jsonb_array_elements(p_inputs)) AS b(run_id, input)
    CROSS JOIN jsonb_to_recordset(p_steps) AS s(
        step_slug text, remaining_deps integer, kind text, timeout double precision,
        start_delay double precision)
    WHERE s.remaining_deps = 0 AND s.kind = 'single';
    v_notify := FOUND;
    IF EXISTS (SELECT 1 FROM jsonb_to_recordset(p_steps) AS s(remaining_deps integer, kind text)
               WHERE s.remaining_deps = 0 AND s.kind = 'map') THEN
        FOR r IN
            SELECT st.* FROM unnest(p_ids) AS b(run_id)
            JOIN tideflow.run_steps st ON st.run_id = b.run_id
            WHERE st.remaining_deps = 0 AND st.kind = 'map'
            ORDER BY st.run_id, st.step_index
        LOOP
            v := tideflow._queue_step_v1(r.run_id, p_flow, r,
                                         (SELECT input FROM tideflow.runs WHERE run_id = r.run_id),
                                         p_now);
            v_notify := v_notify OR v > 0;
        END LOOP;
    END IF;
    RETURN v_notify;
END $$;
