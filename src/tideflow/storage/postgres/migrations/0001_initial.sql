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
-- These functions implement exactly the transitions of tideflow/storage/flow_store.py (which SQLite
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

-- Queue the tasks of a ready step (s: its run_steps row). p_run_input is the run input for a
-- root step, NULL otherwise (the input is then built from the dependencies' outputs). Returns 1
-- when tasks were queued (the caller sends NOTIFY), 0 when none were (an empty map step, which
-- completes at once), -1 when the run failed (a map source that is not an array).
CREATE FUNCTION tideflow._queue_step_v1(p_run text, p_flow text, s tideflow.run_steps,
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
        IF jsonb_typeof(v_source) IS DISTINCT FROM 'array' THEN
            PERFORM tideflow._fail_run_v1(p_run, s.step_slug, format(
                'map step %L needs a list from %s, got %s; make %s a JSON array',
                s.step_slug, v_origin, tideflow._json_type_v1(v_source), v_origin), p_now);
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

-- A step of the run has just been marked completed (its row already holds its output): count
-- it off the run - completing the run with its leaf steps' outputs after the last step - and
-- start the dependents it was the last dependency of. One UPDATE of the runs row does both the
-- count and the completion (the leaves' outputs are only gathered for the last step); one
-- UPDATE of the dependents both counts the dependency off and marks a ready single step
-- started. Returns as _queue_step_v1 does.
CREATE FUNCTION tideflow._step_completed_v1(p_run text, p_flow text, p_dependents jsonb,
                                            p_now timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_remaining integer;
    r tideflow.run_steps;
    v integer;
    v_result integer := 0;
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

-- Start a run: the run row, one row per step (p_steps: a JSON array of step rows, as built by
-- the engine), and the tasks of its root steps. Returns true when tasks were queued.
CREATE FUNCTION tideflow.start_run_v1(p_run text, p_flow text, p_version text, p_input jsonb,
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
                                    timeout, start_delay, created_at)
    SELECT p_run, b.step_slug, b.step_index, b.kind, b.depends_on::jsonb, b.dependents::jsonb,
           'created', b.remaining_deps, b.max_attempts, b.base_delay, b.max_delay, b.timeout,
           b.start_delay, p_now
    FROM jsonb_to_recordset(p_steps) AS b(
        step_slug text, step_index integer, kind text, depends_on text, dependents text,
        remaining_deps integer, max_attempts integer, base_delay double precision,
        max_delay double precision, timeout double precision, start_delay double precision);
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
    v_flow text;
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
          AND attempts = c.attempt AND status = 'started' AND worker_id = p_worker
        RETURNING flow_slug INTO v_flow;
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
        v_notify := tideflow._step_completed_v1(c.run_id, v_flow, v_dependents, p_now) > 0
                    OR v_notify;
    END LOOP;
    RETURN v_notify;
END $$;
