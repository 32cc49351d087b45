-- tideflow schema for PostgreSQL, version 7: a killed worker no longer costs its task an attempt.
--
-- A task whose lease expired (its worker was SIGKILLed, ran out of memory, lost the network or
-- was stopped by a forced deploy) used to count as a failed attempt, so a step with
-- max_attempts=1 failed its run on any such kill. Now the reaper undoes the attempt its claim
-- counted and counts a stall instead (tasks.stalls); a task fails only after more than
-- run_steps.max_stalls stalls (tideflow/storage/flow_store.py, requeue_stalled). max_stalls is copied
-- onto each run's step rows like max_attempts, so a run keeps the cap it started with.
--
-- Existing rows take the defaults: no stall so far, a cap of 3 (the DSL's default).

ALTER TABLE tideflow.tasks
    ADD COLUMN stalls integer NOT NULL DEFAULT 0 CHECK (stalls >= 0);
ALTER TABLE tideflow.run_steps
    ADD COLUMN max_stalls integer NOT NULL DEFAULT 3 CHECK (max_stalls >= 0);

-- start_run_v1 (migration 0001) as it was, but storing each step's max_stalls. A new name rather
-- than a replaced body: during a rolling upgrade, workers of the previous release still call
-- start_run_v1, whose runs then get the column default (3). Only the steps' INSERT differs.
CREATE FUNCTION tideflow.start_run_v2(p_run text, p_flow text, p_version text, p_input jsonb,
                                      p_steps jsonb, p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    r tideflow.run_steps;
    v integer;
    v_notify boolean := false;
BEGIN
    INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, remaining_steps,
                               started_at)
    VALUES (p_run, p_flow, p_version, 'started', p_input, jsonb_array_length(p_steps), p_now);
    INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, dependents,
                                    status, remaining_deps, max_attempts, base_delay, max_delay,
                                    timeout, start_delay, max_stalls, created_at)
    SELECT p_run, b.step_slug, b.step_index, b.kind, b.depends_on::jsonb, b.dependents::jsonb,
           'created', b.remaining_deps, b.max_attempts, b.base_delay, b.max_delay, b.timeout,
           b.start_delay, b.max_stalls, p_now
    FROM jsonb_to_recordset(p_steps) AS b(
        step_slug text, step_index integer, kind text, depends_on text, dependents text,
        remaining_deps integer, max_attempts integer, base_delay double precision,
        max_delay double precision, timeout double precision, start_delay double precision,
        max_stalls integer);
    FOR r IN
        SELECT * FROM tideflow.run_steps
        WHERE run_id = p_run AND remaining_deps = 0 ORDER BY step_index
    LOOP
        v := tideflow._queue_step_v1(p_run, p_flow, r, p_input, p_now);
        EXIT WHEN v < 0;
        v_notify := v_notify OR v > 0;
    END LOOP;
    RETURN v_notify;
END $$;
