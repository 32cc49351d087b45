-- tideflow schema for PostgreSQL, version 1.
--
-- Model: a flow version (flows) is a DAG of steps; a run instantiates it (runs), with one row
-- per step (run_steps) counting the dependencies and tasks it still waits for, and one row per
-- unit of work (tasks): one for a single step, one per array element for a map step.
-- Workers claim queued tasks with FOR UPDATE SKIP LOCKED and hold them under a lease
-- (lease_expires_at) that heartbeats extend; a task whose lease expired is retried by any worker.
--
-- Lock order, in every transaction that changes a run: runs row (by run_id) -> run_steps ->
-- tasks. The claim touches only queued tasks, skipping locked ones, so it never waits.

CREATE SCHEMA IF NOT EXISTS tideflow;

CREATE TABLE tideflow.flows (
    flow_slug   text        NOT NULL,
    version     text        NOT NULL,
    shape       jsonb       NOT NULL,
    created_at  timestamptz NOT NULL,
    PRIMARY KEY (flow_slug, version)
);

CREATE TABLE tideflow.runs (
    run_id          text        PRIMARY KEY,
    flow_slug       text        NOT NULL,
    flow_version    text        NOT NULL,
    status          text        NOT NULL
                    CHECK (status IN ('started', 'completed', 'failed', 'cancelled')),
    input           jsonb       NOT NULL,
    output          jsonb,
    error           text,
    remaining_steps integer     NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    FOREIGN KEY (flow_slug, flow_version) REFERENCES tideflow.flows (flow_slug, version)
);
CREATE INDEX runs_by_started ON tideflow.runs (started_at DESC);
CREATE INDEX runs_by_flow ON tideflow.runs (flow_slug, started_at DESC);

CREATE TABLE tideflow.run_steps (
    run_id          text        NOT NULL REFERENCES tideflow.runs (run_id) ON DELETE CASCADE,
    step_slug       text        NOT NULL,
    step_index      integer     NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('single', 'map')),
    depends_on      jsonb       NOT NULL,
    dependents      jsonb       NOT NULL, -- steps that depend on this one; '[]' for leaves
    status          text        NOT NULL
                    CHECK (status IN ('created', 'started', 'completed', 'failed', 'skipped')),
    remaining_deps  integer     NOT NULL,
    initial_tasks   integer,
    remaining_tasks integer,
    output          jsonb,
    error           text,
    max_attempts    integer     NOT NULL,
    base_delay      double precision NOT NULL,
    max_delay       double precision NOT NULL,
    timeout         double precision,
    start_delay     double precision NOT NULL,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    PRIMARY KEY (run_id, step_slug)
);

CREATE TABLE tideflow.tasks (
    run_id           text        NOT NULL,
    step_slug        text        NOT NULL,
    task_index       integer     NOT NULL,
    flow_slug        text        NOT NULL,
    status           text        NOT NULL
                     CHECK (status IN ('queued', 'started', 'completed', 'failed', 'cancelled')),
    attempts         integer     NOT NULL DEFAULT 0,
    input            jsonb       NOT NULL,
    output           jsonb,
    error            text,
    timeout          double precision,
    worker_id        text,
    queued_at        timestamptz NOT NULL,
    visible_at       timestamptz NOT NULL,
    started_at       timestamptz,
    lease_expires_at timestamptz,
    finished_at      timestamptz,
    PRIMARY KEY (run_id, step_slug, task_index),
    FOREIGN KEY (run_id, step_slug) REFERENCES tideflow.run_steps (run_id, step_slug)
        ON DELETE CASCADE
);
-- The claim reads only this partial index: queued tasks by visibility.
CREATE INDEX tasks_queued ON tideflow.tasks (visible_at) WHERE status = 'queued';
-- Stalled-task recovery reads only this one.
CREATE INDEX tasks_started ON tideflow.tasks (lease_expires_at) WHERE status = 'started';


-- The hot transitions as PL/pgSQL functions.
--
-- start_run and complete_tasks change up to a dozen rows each; issued from Python, each of those
-- statements costs a network round trip (~0.3 ms here), which capped a worker at ~1,400 runs/s
-- and added ~5 ms to every step of every run. Inside the server the same statements cost tens of
-- microseconds and use primary-key lookups only, whatever the tables' statistics say.
--
-- These functions implement exactly the transitions of tideflow/storage/engine.py (which SQLite
-- runs from Python); tests/flows/test_engine.py holds both backends to the same behaviour.
-- Names carry a version suffix (_v1) so that during an upgrade old and new workers can share a
-- database: a changed function gets a new name in a new migration.
--
-- Lock order (as everywhere): runs rows first, in run_id order; then run_steps; then tasks.

-- Fail a run because one of its steps failed: the step fails, every other unfinished step is
-- skipped and every queued or started task is cancelled, so no orphan runs on.
CREATE FUNCTION tideflow._fail_run_v1(p_run text, p_step text, p_error text, p_now timestamptz)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tideflow.run_steps SET status = 'failed', error = p_error, finished_at = p_now
    WHERE run_id = p_run AND step_slug = p_step;
    UPDATE tideflow.runs SET status = 'failed', error = p_error, finished_at = p_now
    WHERE run_id = p_run AND status = 'started';
    UPDATE tideflow.tasks SET status = 'cancelled', finished_at = p_now, lease_expires_at = NULL
    WHERE run_id = p_run AND status IN ('queued', 'started');
    UPDATE tideflow.run_steps SET status = 'skipped', finished_at = p_now
    WHERE run_id = p_run AND status IN ('created', 'started');
END $$;

CREATE FUNCTION tideflow._json_type_v1(p jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE jsonb_typeof(p) WHEN 'object' THEN 'an object' WHEN 'string' THEN 'a string'
           WHEN 'number' THEN 'a number' WHEN 'boolean' THEN 'a boolean' ELSE 'null' END
$$;

-- Queue the tasks of a step whose dependencies have all completed. Returns true when tasks were
-- queued (the caller sends NOTIFY). Mutually recursive with _step_completed_v1: an empty map step
-- completes at once, which may start its dependents.
CREATE FUNCTION tideflow._start_step_v1(p_run text, p_step text, p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v record;
    v_deps text[];
    v_source jsonb;
    v_origin text;
    v_input jsonb;
    v_n integer;
BEGIN
    SELECT s.kind, s.depends_on, s.dependents, s.start_delay, s.timeout, r.flow_slug, r.input
    INTO v
    FROM tideflow.run_steps s JOIN tideflow.runs r ON r.run_id = s.run_id
    WHERE s.run_id = p_run AND s.step_slug = p_step;
    v_deps := ARRAY(SELECT jsonb_array_elements_text(v.depends_on));

    IF v.kind = 'map' THEN
        IF cardinality(v_deps) = 0 THEN
            v_source := v.input;
            v_origin := 'the run input';
        ELSE
            SELECT output INTO v_source FROM tideflow.run_steps
            WHERE run_id = p_run AND step_slug = v_deps[1];
            v_origin := format('step %L', v_deps[1]);
        END IF;
        IF jsonb_typeof(v_source) IS DISTINCT FROM 'array' THEN
            PERFORM tideflow._fail_run_v1(p_run, p_step, format(
                'map step %L needs a list from %s, got %s; make %s a JSON array',
                p_step, v_origin, tideflow._json_type_v1(v_source), v_origin), p_now);
            RETURN false;
        END IF;
        v_n := jsonb_array_length(v_source);
        IF v_n = 0 THEN
            UPDATE tideflow.run_steps
            SET status = 'completed', initial_tasks = 0, remaining_tasks = 0, output = '[]',
                started_at = p_now, finished_at = p_now
            WHERE run_id = p_run AND step_slug = p_step;
            RETURN tideflow._step_completed_v1(p_run, v.dependents, p_now);
        END IF;
        UPDATE tideflow.run_steps
        SET status = 'started', initial_tasks = v_n, remaining_tasks = v_n, started_at = p_now
        WHERE run_id = p_run AND step_slug = p_step;
        INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input,
                                    timeout, queued_at, visible_at)
        SELECT p_run, p_step, (e.ord - 1)::integer, v.flow_slug, 'queued', e.value, v.timeout,
               p_now, p_now + make_interval(secs => v.start_delay)
        FROM jsonb_array_elements(v_source) WITH ORDINALITY AS e(value, ord);
        RETURN true;
    END IF;

    IF cardinality(v_deps) = 0 THEN
        v_input := v.input;
    ELSE
        SELECT jsonb_object_agg(step_slug, output) INTO v_input FROM tideflow.run_steps
        WHERE run_id = p_run AND step_slug = ANY (v_deps);
    END IF;
    UPDATE tideflow.run_steps
    SET status = 'started', initial_tasks = 1, remaining_tasks = 1, started_at = p_now
    WHERE run_id = p_run AND step_slug = p_step;
    INSERT INTO tideflow.tasks (run_id, step_slug, task_index, flow_slug, status, input, timeout,
                                queued_at, visible_at)
    VALUES (p_run, p_step, 0, v.flow_slug, 'queued', v_input, v.timeout, p_now,
            p_now + make_interval(secs => v.start_delay));
    RETURN true;
END $$;

-- A step of the run has just been marked completed (its row already holds its output): count
-- it off the run - completing the run with its leaf steps' outputs after the last step - and
-- start the dependents it was the last dependency of. One UPDATE of the runs row does both the
-- count and the completion; the leaves' outputs are only gathered when it is the last step.
CREATE FUNCTION tideflow._step_completed_v1(p_run text, p_dependents jsonb, p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_remaining integer;
    v_ready text[];
    v_next text;
    v_notify boolean := false;
BEGIN
    UPDATE tideflow.runs
    SET remaining_steps = remaining_steps - 1,
        status = CASE WHEN remaining_steps = 1 THEN 'completed' ELSE status END,
        finished_at = CASE WHEN remaining_steps = 1 THEN p_now ELSE finished_at END,
        output = CASE WHEN remaining_steps = 1 THEN (
            SELECT jsonb_object_agg(s.step_slug, s.output) FROM tideflow.run_steps s
            WHERE s.run_id = p_run AND s.dependents = '[]'::jsonb) ELSE output END
    WHERE run_id = p_run AND status = 'started'
    RETURNING remaining_steps INTO v_remaining;
    IF v_remaining IS NULL OR v_remaining = 0 OR p_dependents = '[]'::jsonb THEN
        RETURN false;
    END IF;

    WITH counted AS (
        UPDATE tideflow.run_steps SET remaining_deps = remaining_deps - 1
        WHERE run_id = p_run
          AND step_slug IN (SELECT jsonb_array_elements_text(p_dependents))
        RETURNING step_slug, step_index, remaining_deps
    )
    SELECT array_agg(step_slug ORDER BY step_index) INTO v_ready
    FROM counted WHERE remaining_deps = 0;

    FOREACH v_next IN ARRAY coalesce(v_ready, '{}') LOOP
        v_notify := tideflow._start_step_v1(p_run, v_next, p_now) OR v_notify;
        EXIT WHEN (SELECT status FROM tideflow.runs WHERE run_id = p_run) <> 'started';
    END LOOP;
    RETURN v_notify;
END $$;

-- Start a run: the run row, one row per step (p_steps: a JSON array of step rows, as built by
-- the engine), and the tasks of its root steps. Returns true when tasks were queued.
CREATE FUNCTION tideflow.start_run_v1(p_run text, p_flow text, p_version text, p_input jsonb,
                                      p_steps jsonb, p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_root text;
    v_notify boolean := false;
BEGIN
    INSERT INTO tideflow.runs (run_id, flow_slug, flow_version, status, input, remaining_steps,
                               started_at)
    VALUES (p_run, p_flow, p_version, 'started', p_input, jsonb_array_length(p_steps), p_now);
    INSERT INTO tideflow.run_steps (run_id, step_slug, step_index, kind, depends_on, dependents,
                                    status, remaining_deps, max_attempts, base_delay, max_delay,
                                    timeout, start_delay, created_at)
    SELECT p_run, b.step_slug, b.step_index, b.kind, b.depends_on::jsonb, b.dependents::jsonb,
           'created', b.remaining_deps, b.max_attempts, b.base_delay, b.max_delay, b.timeout,
           b.start_delay, p_now
    FROM jsonb_to_recordset(p_steps) AS b(
        step_slug text, step_index integer, kind text, depends_on text, dependents text,
        remaining_deps integer,
        max_attempts integer, base_delay double precision, max_delay double precision,
        timeout double precision, start_delay double precision);
    FOR v_root IN
        SELECT b.step_slug FROM jsonb_to_recordset(p_steps)
            AS b(step_slug text, step_index integer, remaining_deps integer)
        WHERE b.remaining_deps = 0 ORDER BY b.step_index
    LOOP
        v_notify := tideflow._start_step_v1(p_run, v_root, p_now) OR v_notify;
        EXIT WHEN (SELECT status FROM tideflow.runs WHERE run_id = p_run) <> 'started';
    END LOOP;
    RETURN v_notify;
END $$;

-- Record a batch of completions (p_rows: run_id, step_slug, task_index, attempt, output) in one
-- transaction. A completion counts only for the worker's own started attempt; stale ones (lease
-- lost, run failed or cancelled meanwhile) are ignored. Returns true when tasks were queued.
CREATE FUNCTION tideflow.complete_tasks_v1(p_worker text, p_rows jsonb, p_now timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    c record;
    v_left integer;
    v_kind text;
    v_dependents jsonb;
    v_notify boolean := false;
BEGIN
    PERFORM 1 FROM tideflow.runs
    WHERE run_id IN (SELECT b.run_id FROM jsonb_to_recordset(p_rows) AS b(run_id text))
    ORDER BY run_id
    FOR UPDATE;
    FOR c IN
        SELECT * FROM jsonb_to_recordset(p_rows) AS b(
            run_id text, step_slug text, task_index integer, attempt integer, output text)
    LOOP
        UPDATE tideflow.tasks
        SET status = 'completed', output = c.output::jsonb, finished_at = p_now,
            lease_expires_at = NULL
        WHERE run_id = c.run_id AND step_slug = c.step_slug AND task_index = c.task_index
          AND attempts = c.attempt AND status = 'started' AND worker_id = p_worker;
        CONTINUE WHEN NOT FOUND;
        -- Count the task off its step and, when it was the last one, complete the step in the
        -- same UPDATE (a single step's output is this task's; a map's is gathered below).
        UPDATE tideflow.run_steps
        SET remaining_tasks = remaining_tasks - 1,
            status = CASE WHEN remaining_tasks = 1 THEN 'completed' ELSE status END,
            finished_at = CASE WHEN remaining_tasks = 1 THEN p_now ELSE finished_at END,
            output = CASE WHEN remaining_tasks = 1 AND kind = 'single' THEN c.output::jsonb
                          ELSE output END
        WHERE run_id = c.run_id AND step_slug = c.step_slug
        RETURNING remaining_tasks, kind, dependents INTO v_left, v_kind, v_dependents;
        CONTINUE WHEN v_left <> 0;
        IF v_kind = 'map' THEN
            UPDATE tideflow.run_steps SET output = (
                SELECT jsonb_agg(t.output ORDER BY t.task_index) FROM tideflow.tasks t
                WHERE t.run_id = c.run_id AND t.step_slug = c.step_slug)
            WHERE run_id = c.run_id AND step_slug = c.step_slug;
        END IF;
        v_notify := tideflow._step_completed_v1(c.run_id, v_dependents, p_now) OR v_notify;
    END LOOP;
    RETURN v_notify;
END $$;
