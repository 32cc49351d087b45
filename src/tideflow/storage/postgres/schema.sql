-- tideflow schema for PostgreSQL: the result of migrations 0001-0021, written
-- out for readers.
--
-- What this file is. The tables, indexes and functions that `tideflow migrate` (store.migrate())
-- leaves in schema `tideflow` once every migration in migrations/ has run, in one place, without
-- the history: columns added later (tasks.stalls, run_steps.max_stalls, streams.deleted_at,
-- events.deleted) sit in their table, the CHECK that migration 0006 replaced is written as it is
-- now, and functions that a later migration dropped (append_events_v1, event_horizon_v1) are gone.
--
-- What it is not. The migrations remain the source of truth: a database is created and upgraded
-- only by them (in order, recorded in schema_migrations, under an advisory lock), and their
-- headers explain the design - the run model and lock order (0001), the event store and why
-- readers never miss an event (0002, 0004), handler leases (0003), process managers (0005),
-- stalls (0007), process timers (0008), undo and retention of instances (0009), deleting
-- streams (0010), runs that report back (0011), flat cost as data grows (0012), skipped steps and
-- conditional runs (0016), bulk starts (0017), fewer writes per claim and completion (0018), queue
-- limits (0019), cron schedules (0020), a limited flow's queue by flow (0021). A schema change
-- is a new migration AND the matching edit here.
--
-- How it stays honest. tests/test_schema.py applies the migrations to one empty database and
-- this file to another, and compares their catalogs: tables, columns (name, type, nullability,
-- default, identity, order), constraints, indexes, storage parameters, sequences, functions (their
-- full definitions) and the rows of schema_migrations. A difference fails the test with the
-- object that differs. It also checks that the SQLite schema (../sqlite/schema.sql) has the same
-- tables and columns, in mapped types.
--
-- Using it. Run on an empty database (psql -v ON_ERROR_STOP=1 -f schema.sql), it gives a database
-- that tideflow treats as fully migrated: it records versions 1-21 in
-- schema_migrations as applied, so a later `tideflow migrate` applies only the migrations this
-- file lacks. Prefer `tideflow migrate`.
--
-- Conventions. Timestamps come from the workers' clocks (tideflow.clock), never from now(), so
-- tests can move time. JSON that tideflow queries inside (run and task data) is jsonb; JSON kept
-- as written (events, snapshots, process state) is json, stored byte for byte. fillfactor = 80
-- on rows rewritten by every append, batch or heartbeat leaves room for HOT updates.

BEGIN;

CREATE SCHEMA tideflow;

-- Which migrations this database has had (written by store.migrate(), which creates the table).
CREATE TABLE tideflow.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL
);


-- =================================================================================================
-- Flows: versions, runs, steps, tasks (0001, 0007)
-- =================================================================================================
--
-- A flow version (flows) is a DAG of steps; a run instantiates it (runs), with one row per step
-- (run_steps) counting the dependencies and tasks it still waits for, and one row per unit of
-- work (tasks): one for a single step, one per array element for a map step. Workers claim
-- queued tasks with FOR UPDATE SKIP LOCKED and hold them under a lease that heartbeats extend.
-- Lock order in every transaction that changes a run: runs -> run_steps -> tasks.

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
    remaining_steps integer     NOT NULL,           -- steps not yet completed
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz,
    report          json,                           -- its end goes to the event log (0011)
    trace_context   text,                           -- W3C trace context, JSON (0014)
    -- 0016: conditions or when_failed skips: the run moves on in the flow store's Python.
    conditional     boolean     NOT NULL DEFAULT false,
    FOREIGN KEY (flow_slug, flow_version) REFERENCES tideflow.flows (flow_slug, version)
) WITH (fillfactor = 90, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000);  -- 0012
-- list_runs; run_id is its tie-breaker, so that no listing sorts a burst of runs (0012).
CREATE INDEX runs_by_started ON tideflow.runs (started_at DESC, run_id);
CREATE INDEX runs_by_flow ON tideflow.runs (flow_slug, started_at DESC, run_id);
-- list_runs by status; finished runs only, so the transitions' `run_id = ... AND status =
-- 'started'` cannot be planned through it, whatever the statistics (0012).
CREATE INDEX runs_finished_by_status ON tideflow.runs (status, started_at DESC, run_id)
    WHERE status <> 'started';

CREATE TABLE tideflow.run_steps (
    run_id          text        NOT NULL REFERENCES tideflow.runs (run_id) ON DELETE CASCADE,
    step_slug       text        NOT NULL,
    step_index      integer     NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('single', 'map')),
    depends_on      jsonb       NOT NULL,
    dependents      jsonb       NOT NULL,  -- steps that depend on this one; '[]' for leaves
    status          text        NOT NULL
                    CHECK (status IN ('created', 'started', 'completed', 'failed', 'skipped')),
    remaining_deps  integer     NOT NULL,
    initial_tasks   integer,
    remaining_tasks integer,
    output          jsonb,
    error           text,
    max_attempts    integer     NOT NULL,
    base_delay      double precision NOT NULL,      -- retry backoff, seconds
    max_delay       double precision NOT NULL,
    timeout         double precision,
    start_delay     double precision NOT NULL,
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz,
    -- 0007: lease expiries a task of this step may have before it fails (copied from the flow
    -- when the run starts, like max_attempts).
    max_stalls      integer     NOT NULL DEFAULT 3 CHECK (max_stalls >= 0),
    -- 0016: why a skipped step was skipped; NULL when its run failed or was cancelled first.
    skip_reason     text
                    CHECK (skip_reason IN ('condition_unmet', 'handler_failed',
                                           'dependency_skipped')),
    PRIMARY KEY (run_id, step_slug)
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000);  -- 0012

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
    visible_at       timestamptz NOT NULL,           -- not claimable before (retry backoff)
    started_at       timestamptz,
    lease_expires_at timestamptz,
    finished_at      timestamptz,
    -- 0007: lease expiries that requeued the task without counting an attempt.
    stalls           integer     NOT NULL DEFAULT 0 CHECK (stalls >= 0),
    -- 0019: the task's queue-limit key (JSON text; '' without a key) while a limited claim
    -- holds it; NULL for tasks of flows without limits.
    limit_key        text,
    PRIMARY KEY (run_id, step_slug, task_index),
    FOREIGN KEY (run_id, step_slug) REFERENCES tideflow.run_steps (run_id, step_slug)
        ON DELETE CASCADE
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
        autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000);  -- 0012
-- The claim (claim_tasks_v1) reads only this partial index: queued tasks by visibility.
CREATE INDEX tasks_queued ON tideflow.tasks (visible_at) WHERE status = 'queued';
-- The limited claim (_claim_limited_v1) reads one flow's queued tasks: a range of this one, not
-- a walk of every flow's queue (0021).
CREATE INDEX tasks_queued_by_flow ON tideflow.tasks (flow_slug, visible_at) WHERE status = 'queued';
-- Stalled-task recovery reads only this one: keyed on leases, not on the 'started' status, so
-- that completions and heartbeats (by key and status) are never planned through it (0012).
CREATE INDEX tasks_leased ON tideflow.tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
-- What the limited claim counts: started tasks of limited flows, by step and key (0019).
CREATE INDEX tasks_limited ON tideflow.tasks (flow_slug, step_slug, limit_key)
    WHERE status = 'started' AND limit_key IS NOT NULL;

-- Queue limits of the flows that have them, and their rate window (0019).
CREATE TABLE tideflow.flow_limits (
    flow_slug     text        PRIMARY KEY,
    limits        jsonb       NOT NULL,
    recent_claims jsonb       NOT NULL,  -- epoch seconds of the claims in the rate window
    updated_at    timestamptz NOT NULL
);

-- Failed attempts with their exception type, message and traceback (0014).
CREATE TABLE tideflow.task_failures (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id      text        NOT NULL REFERENCES tideflow.runs (run_id) ON DELETE CASCADE,
    step_slug   text        NOT NULL,
    task_index  integer     NOT NULL,
    attempt     integer     NOT NULL,
    worker_id   text,
    error_type  text,
    error       text        NOT NULL,
    traceback   text,
    retried     boolean     NOT NULL,
    started_at  timestamptz,
    failed_at   timestamptz NOT NULL
);
CREATE INDEX task_failures_by_run ON tideflow.task_failures (run_id, id);

-- Flow workers' heartbeats, for the dashboard (0015).
CREATE TABLE tideflow.workers (
    worker_id          text        PRIMARY KEY,
    hostname           text        NOT NULL,
    pid                integer     NOT NULL,
    flows              jsonb       NOT NULL,
    concurrency        integer     NOT NULL,
    running            integer     NOT NULL,
    heartbeat_interval double precision NOT NULL,
    started_at         timestamptz NOT NULL,
    heartbeat_at       timestamptz NOT NULL,
    stopped_at         timestamptz
);


-- =================================================================================================
-- Event store: streams, events, snapshots, idempotency keys, checkpoints (0002, 0004, 0010)
-- =================================================================================================
--
-- A stream's events are numbered version 1, 2, 3... without gaps; every event also gets a
-- store-wide position from event_position_seq, drawn only inside append_events_v3 (below), which
-- is why events.position has no default. The sequence has CACHE 1 on purpose: see 0004's header
-- for the floor-lock protocol that lets readers never miss an event while writers run in parallel.

CREATE SEQUENCE tideflow.event_position_seq AS bigint MINVALUE 1 START 1 CACHE 1 NO CYCLE;

CREATE TABLE tideflow.streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version >= 1), -- the stream's last event
    deleted_at timestamptz                         -- 0010: soft-deleted then (events marked)
) WITH (fillfactor = 80);

CREATE TABLE tideflow.events (
    position       bigint      PRIMARY KEY,         -- no default: drawn only by append_events_v3
    version        bigint      NOT NULL CHECK (version >= 1),
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    stream_id      text        NOT NULL,
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    causation_id   uuid,
    correlation_id uuid,
    recorded_at    timestamptz NOT NULL,
    data           json        NOT NULL,
    metadata       json        NOT NULL,
    deleted        boolean     NOT NULL DEFAULT false, -- 0010: in a soft-deleted stream: unread
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_event_id UNIQUE (event_id)
);

-- The latest snapshot per stream.
CREATE TABLE tideflow.snapshots (
    stream_id      text        PRIMARY KEY,
    version        bigint      NOT NULL CHECK (version >= 1),
    snapshot_type  text        NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    state          json        NOT NULL,
    taken_at       timestamptz NOT NULL
);

-- One row per idempotent append, written in the append's own transaction: the key exists if and
-- only if the events do. recorded_at lets old keys be pruned.
CREATE TABLE tideflow.idempotency_keys (
    key         text        PRIMARY KEY,
    stream_id   text        NOT NULL,
    result      json,
    recorded_at timestamptz NOT NULL
);
-- Their expiry: keys by age (0012).
CREATE INDEX idempotency_keys_by_age ON tideflow.idempotency_keys (recorded_at);

-- How far each handler has processed the log: the position of the last event it handled,
-- advanced in the handler's own transaction, next to its writes.
CREATE TABLE tideflow.handler_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL
);


-- =================================================================================================
-- Event handlers and process managers (0003, 0005, 0006, 0008)
-- =================================================================================================

-- One row per handler: whether it should run, which worker holds it (owner) and until when, the
-- event it keeps failing on and why it was stopped. A batch commits only while its worker still
-- owns the row (0003's header: lease, hold, lock order).
CREATE TABLE tideflow.event_handlers (
    name             text        PRIMARY KEY,
    kind             text        NOT NULL
                     CHECK (kind IN ('handler', 'projection', 'process_manager')),  -- 0006
    status           text        NOT NULL CHECK (status IN ('running', 'stopped')),
    owner            text,
    lease_expires_at timestamptz,
    failing_position bigint,     -- the event the handler failed on and is retrying
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    stopped_reason   text,
    updated_at       timestamptz NOT NULL
) WITH (fillfactor = 80);

-- Events a handler gave up on after its retries. One row per (handler, event): reprocessing
-- after a reset updates the row instead of adding one.
CREATE TABLE tideflow.dead_letters (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    handler    text        NOT NULL,
    position   bigint      NOT NULL,
    event_id   uuid        NOT NULL,
    event_type text        NOT NULL,
    stream_id  text        NOT NULL,
    error      text        NOT NULL,
    attempts   integer     NOT NULL CHECK (attempts >= 1),
    created_at timestamptz NOT NULL,
    retried_at timestamptz,
    CONSTRAINT dead_letters_event UNIQUE (handler, position)
);
CREATE INDEX dead_letters_pending ON tideflow.dead_letters (handler, id) WHERE retried_at IS NULL;
-- Retention: retried dead letters by age (0012).
CREATE INDEX dead_letters_retried ON tideflow.dead_letters (retried_at)
    WHERE retried_at IS NOT NULL;

-- The instances of process managers (sagas), one per (manager, process id), read FOR UPDATE and
-- written in the handler's batch transaction. Events at or below last_position were applied
-- already, so a replay after a reset skips them.
CREATE TABLE tideflow.process_instances (
    manager       text        NOT NULL,
    process_id    text        NOT NULL,
    status        text        NOT NULL,
    state         json        NOT NULL,
    version       bigint      NOT NULL CHECK (version >= 0),   -- events applied
    last_position bigint      NOT NULL CHECK (last_position >= 0),
    error         text,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    undo          json        NOT NULL,  -- undo commands, oldest first (0009)
    sent          json        NOT NULL,  -- what it sent and undid, in order (0009)
    finished_at   timestamptz,                        -- when it ended; pruned after retention
    PRIMARY KEY (manager, process_id),
    CONSTRAINT process_instances_status_check
        CHECK (status IN ('running', 'completed', 'compensated', 'failed'))
) WITH (fillfactor = 80);

-- `tideflow processes` lists the instances of a manager in a status, most recently updated first.
CREATE INDEX process_instances_listing
    ON tideflow.process_instances (manager, status, updated_at DESC);

-- Pruning finished instances once the manager's retention has passed (0009).
CREATE INDEX process_instances_finished
    ON tideflow.process_instances (manager, finished_at) WHERE finished_at IS NOT NULL;

-- Durable timers of process manager instances (0008): a row per timer, written and deleted in the
-- reactions' transactions; firing marks the due rows fired (FOR UPDATE SKIP LOCKED) and appends
-- their events in one transaction, so each fires exactly once; the instance takes its fired row
-- when the event reaches it, and ignores an event whose row is gone (0013).
CREATE TABLE tideflow.process_timers (
    manager      text        NOT NULL,
    process_id   text        NOT NULL,
    name         text        NOT NULL,
    fire_at      timestamptz NOT NULL,
    event_type   text        NOT NULL,
    data         json        NOT NULL,
    scheduled_at timestamptz NOT NULL,
    token        text,
    fired_at     timestamptz,
    PRIMARY KEY (manager, process_id, name)
);

-- Due soonest first: the firing query and the worker's look at when to wake next (0013: fired
-- rows wait for their instance to take them, and are not due again).
CREATE INDEX process_timers_due ON tideflow.process_timers (fire_at) WHERE fired_at IS NULL;


-- =================================================================================================
-- Functions
-- =================================================================================================
--
-- The hot transitions run inside the server, one round trip per call (0001's header says why).
-- Names carry a version suffix: a changed function gets a new name in a new migration, so that
-- during a rolling upgrade old and new workers can share a database.
--
-- Called by this release (storage/postgres/queries.sql, events_queries.sql):
--     start_run_v2         start a run: its row, its steps, the tasks of its root steps (0007)
--     start_runs_v1        start_run_v2 for many runs of one flow, set-based (0017)
--     complete_tasks_v3    record a batch of task completions and move runs on, set by set,
--                          handing those of conditional runs back to the flow store (0016)
--     claim_tasks_v1       claim queued tasks, planned alike with or without statistics (0012)
--     extend_leases_v1     renew a worker's leases (the heartbeat), by primary key (0012)
--     append_events_v3     append events to one stream under an expectation, refusing a
--                          deleted stream (0010)
--     event_horizon_v2     the highest position readers may read now (0004)
-- Helpers of the flow functions: _fail_run_v1, _json_type_v1, _queue_step_v1 (replaced in 0016),
-- _step_completed_v1, _start_dependents_v1.
-- Kept for workers of the previous release during an upgrade, not called by this one:
--     start_run_v1         as start_run_v2, without max_stalls (runs get the default, 3)
--     complete_tasks_v2    as complete_tasks_v3, for runs of every kind (0012)
--     complete_tasks_v1    as complete_tasks_v2, one completion at a time (0001)
--     append_events_v2     as append_events_v3, without the deleted-stream check (0004)
-- Dropped by 0004, so absent: append_events_v1 and event_horizon_v1 (the gate protocol of 0002).
--
-- The bodies below are copied verbatim from the migrations that created them; the test compares
-- them with pg_get_functiondef.

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

-- A step of the run has just been marked completed (its row already holds its output): count
-- it off the run - completing the run with its leaf steps' outputs after the last step - and
-- start the dependents it was the last dependency of (_start_dependents_v1; 0012 moved that half
-- there, so this body is 0012's). Returns as _queue_step_v1 does.
CREATE FUNCTION tideflow._step_completed_v1(p_run text, p_flow text, p_dependents jsonb,
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

-- CURRENT. Start a run: the run row, one row per step (p_steps: a JSON array of step rows, as
-- built by the engine, each with its max_stalls), and the tasks of its root steps. Returns true
-- when tasks were queued.
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

-- KEPT for the previous release's workers: start_run_v2 without max_stalls.
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

-- CURRENT. start_run_v2 for a batch of runs of one flow, set-based: one INSERT each for the
-- runs, their step rows (root single steps inserted started) and their root tasks; root map
-- steps one by one through _queue_step_v1. p_ids: the run ids; p_inputs: their inputs, a JSON
-- array in the same order; p_steps as start_run_v2's; p_report: every run's report or NULL.
-- Returns true when tasks were queued.
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

-- PREVIOUS RELEASES. Record a batch of completions (p_rows: run_id, step_slug, task_index, attempt,
-- output) in one transaction. A completion counts only for the worker's own started attempt;
-- stale ones (lease lost, run failed or cancelled meanwhile) are ignored. Returns true when tasks
-- were queued.
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

-- PREVIOUS RELEASE (kept for its workers during an upgrade; append_events_v3 below is current).
-- Append events to one stream if it is in the expected state ('any', 'no_stream',
-- 'exists', or 'exact' with p_expected the stream's version). p_events holds one object per event
-- ({"event_id", "event_type", "schema_version", "causation_id", "correlation_id"}), p_data and
-- p_metadata the events' data and metadata, in the same order. Returns the version of the first
-- event and the positions of all of them. Raises SQLSTATE TF001 (DETAIL = the stream's actual
-- version) when the expectation fails, TF002 when p_idempotency_key is already recorded, having
-- written nothing. Announces a floor lock before drawing positions (0004's header).
CREATE FUNCTION tideflow.append_events_v2(
    p_stream_id        text,
    p_expected_kind    text,
    p_expected         bigint,
    p_events           json,
    p_data             json,
    p_metadata         json,
    p_recorded_at      timestamptz,
    p_idempotency_key  text,
    p_result           text,
    OUT first_version  bigint,
    OUT positions      bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_count   integer := json_array_length(p_events);
    v_current bigint;
    v_exists  boolean;
BEGIN
    -- The key first: a command retried while its first attempt is still committing waits here
    -- and is reported as a duplicate, rather than as a version conflict it would then "fix".
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO tideflow.idempotency_keys (key, stream_id, result, recorded_at)
        VALUES (p_idempotency_key, p_stream_id, p_result::json, p_recorded_at)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency key % is already recorded', p_idempotency_key
                USING ERRCODE = 'TF002';
        END IF;
    END IF;

    -- The stream row is the per-stream lock: appenders to one stream queue here, so versions
    -- commit in order and readers of one stream never see a gap. The common case - events for
    -- a stream that exists and is where the caller expects - is this one UPDATE: it locks the
    -- row, checks the expectation (re-checked on the newest row version if it had to wait for
    -- another appender) and moves the version. Anything else takes the loop below.
    IF v_count > 0 AND (p_expected_kind IN ('any', 'exists')
                        OR (p_expected_kind = 'exact' AND p_expected > 0)) THEN
        UPDATE tideflow.streams AS s SET version = s.version + v_count
        WHERE s.stream_id = p_stream_id AND (p_expected_kind <> 'exact' OR s.version = p_expected)
        RETURNING s.version - v_count INTO v_current;
    END IF;
    IF v_current IS NULL THEN
        LOOP
            SELECT s.version INTO v_current FROM tideflow.streams AS s
            WHERE s.stream_id = p_stream_id FOR UPDATE;
            v_exists := FOUND;
            IF NOT v_exists THEN
                v_current := 0;
            END IF;
            IF (p_expected_kind = 'no_stream' AND v_exists)
               OR (p_expected_kind = 'exists' AND NOT v_exists)
               OR (p_expected_kind = 'exact' AND v_current <> p_expected) THEN
                RAISE EXCEPTION 'stream % is at version %', p_stream_id, v_current
                    USING ERRCODE = 'TF001', DETAIL = v_current::text;
            END IF;
            IF v_count = 0 THEN
                first_version := v_current + 1;
                positions := '{}';
                RETURN;
            END IF;
            IF v_exists THEN
                UPDATE tideflow.streams SET version = v_current + v_count
                WHERE stream_id = p_stream_id;
                EXIT;
            END IF;
            INSERT INTO tideflow.streams (stream_id, version) VALUES (p_stream_id, v_count)
            ON CONFLICT (stream_id) DO NOTHING;
            EXIT WHEN FOUND;
            -- A concurrent append created the stream after our SELECT (ON CONFLICT waited for
            -- it to commit): look again, now finding and locking its row.
        END LOOP;
    END IF;
    first_version := v_current + 1;

    -- Announce, then draw (the header says why in this order): the floor lock's key is one
    -- above the last position drawn by anyone so far, which every position drawn below is at
    -- least. Drawing in a loop of plain assignments, not a query, keeps the function free of
    -- statements planned anew on every call.
    PERFORM pg_advisory_xact_lock_shared((x'7466'::bigint << 48)
        | (coalesce(pg_sequence_last_value('tideflow.event_position_seq'), 0) + 1));
    positions := ARRAY[nextval('tideflow.event_position_seq')];
    FOR i IN 2..v_count LOOP
        positions[i] := nextval('tideflow.event_position_seq');
    END LOOP;

    INSERT INTO tideflow.events (position, version, schema_version, stream_id, event_id,
                                 event_type, causation_id, correlation_id, recorded_at, data,
                                 metadata)
    SELECT positions[e.ord], v_current + e.ord, e.schema_version, p_stream_id, e.event_id,
           e.event_type, e.causation_id, e.correlation_id, p_recorded_at, e.data, e.metadata
    FROM ROWS FROM (json_to_recordset(p_events) AS (event_id uuid, event_type text,
                                                    schema_version integer, causation_id uuid,
                                                    correlation_id uuid),
                    json_array_elements(p_data), json_array_elements(p_metadata))
         WITH ORDINALITY AS e(event_id, event_type, schema_version, causation_id,
                              correlation_id, data, metadata, ord);
END
$$;

-- CURRENT. append_events_v2 above, refusing a deleted stream (0010): SQLSTATE TF003, having
-- written nothing.
CREATE FUNCTION tideflow.append_events_v3(
    p_stream_id        text,
    p_expected_kind    text,
    p_expected         bigint,
    p_events           json,
    p_data             json,
    p_metadata         json,
    p_recorded_at      timestamptz,
    p_idempotency_key  text,
    p_result           text,
    OUT first_version  bigint,
    OUT positions      bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_count   integer := json_array_length(p_events);
    v_current bigint;
    v_exists  boolean;
    v_deleted boolean;
BEGIN
    -- The key first: a command retried while its first attempt is still committing waits here
    -- and is reported as a duplicate, rather than as a version conflict it would then "fix".
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO tideflow.idempotency_keys (key, stream_id, result, recorded_at)
        VALUES (p_idempotency_key, p_stream_id, p_result::json, p_recorded_at)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency key % is already recorded', p_idempotency_key
                USING ERRCODE = 'TF002';
        END IF;
    END IF;

    -- The stream row is the per-stream lock: appenders to one stream queue here, so versions
    -- commit in order and readers of one stream never see a gap. The common case - events for
    -- a stream that exists and is where the caller expects - is this one UPDATE: it locks the
    -- row, checks the expectation (re-checked on the newest row version if it had to wait for
    -- another appender) and moves the version. Anything else takes the loop below.
    IF v_count > 0 AND (p_expected_kind IN ('any', 'exists')
                        OR (p_expected_kind = 'exact' AND p_expected > 0)) THEN
        UPDATE tideflow.streams AS s SET version = s.version + v_count
        WHERE s.stream_id = p_stream_id AND (p_expected_kind <> 'exact' OR s.version = p_expected)
          AND s.deleted_at IS NULL
        RETURNING s.version - v_count INTO v_current;
    END IF;
    IF v_current IS NULL THEN
        LOOP
            SELECT s.version, s.deleted_at IS NOT NULL INTO v_current, v_deleted
            FROM tideflow.streams AS s
            WHERE s.stream_id = p_stream_id FOR UPDATE;
            v_exists := FOUND;
            IF NOT v_exists THEN
                v_current := 0;
            ELSIF v_deleted THEN
                RAISE EXCEPTION 'stream % is deleted', p_stream_id USING ERRCODE = 'TF003';
            END IF;
            IF (p_expected_kind = 'no_stream' AND v_exists)
               OR (p_expected_kind = 'exists' AND NOT v_exists)
               OR (p_expected_kind = 'exact' AND v_current <> p_expected) THEN
                RAISE EXCEPTION 'stream % is at version %', p_stream_id, v_current
                    USING ERRCODE = 'TF001', DETAIL = v_current::text;
            END IF;
            IF v_count = 0 THEN
                first_version := v_current + 1;
                positions := '{}';
                RETURN;
            END IF;
            IF v_exists THEN
                UPDATE tideflow.streams SET version = v_current + v_count
                WHERE stream_id = p_stream_id;
                EXIT;
            END IF;
            INSERT INTO tideflow.streams (stream_id, version) VALUES (p_stream_id, v_count)
            ON CONFLICT (stream_id) DO NOTHING;
            EXIT WHEN FOUND;
            -- A concurrent append created the stream after our SELECT (ON CONFLICT waited for
            -- it to commit): look again, now finding and locking its row.
        END LOOP;
    END IF;
    first_version := v_current + 1;

    -- Announce, then draw (the header says why in this order): the floor lock's key is one
    -- above the last position drawn by anyone so far, which every position drawn below is at
    -- least. Drawing in a loop of plain assignments, not a query, keeps the function free of
    -- statements planned anew on every call.
    PERFORM pg_advisory_xact_lock_shared((x'7466'::bigint << 48)
        | (coalesce(pg_sequence_last_value('tideflow.event_position_seq'), 0) + 1));
    positions := ARRAY[nextval('tideflow.event_position_seq')];
    FOR i IN 2..v_count LOOP
        positions[i] := nextval('tideflow.event_position_seq');
    END LOOP;

    INSERT INTO tideflow.events (position, version, schema_version, stream_id, event_id,
                                 event_type, causation_id, correlation_id, recorded_at, data,
                                 metadata)
    SELECT positions[e.ord], v_current + e.ord, e.schema_version, p_stream_id, e.event_id,
           e.event_type, e.causation_id, e.correlation_id, p_recorded_at, e.data, e.metadata
    FROM ROWS FROM (json_to_recordset(p_events) AS (event_id uuid, event_type text,
                                                    schema_version integer, causation_id uuid,
                                                    correlation_id uuid),
                    json_array_elements(p_data), json_array_elements(p_metadata))
         WITH ORDINALITY AS e(event_id, event_type, schema_version, causation_id,
                              correlation_id, data, metadata, ord);
END
$$;

-- CURRENT. The highest position a reader may read now without ever missing an event below it.
-- Call it in its own statement, before the query that reads events, in READ COMMITTED; it takes
-- no lock and never waits for appenders.
CREATE FUNCTION tideflow.event_horizon_v2() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_drawn     bigint;
    v_in_flight bigint;
BEGIN
    -- First the last drawn position, THEN the floors of the appends in flight: the other order
    -- would miss an append that announces itself and draws in between.
    v_drawn := coalesce(pg_sequence_last_value('tideflow.event_position_seq'), 0);
    SELECT min(((l.classid::bigint << 32) | l.objid::bigint) - (x'7466'::bigint << 48))
    INTO v_in_flight
    FROM pg_catalog.pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                        WHERE d.datname = current_database())
      AND l.classid::bigint >= (x'7466'::bigint << 16)
      AND l.classid::bigint < (x'7467'::bigint << 16);
    IF v_in_flight IS NULL THEN
        RETURN v_drawn;
    END IF;
    RETURN least(v_drawn, v_in_flight - 1);
END
$$;


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
-- Claim up to p_limit tasks of limited flow p_flow for p_worker, within its limits (see above).
-- Returns the rows claim_tasks_v1 returns.
CREATE FUNCTION tideflow._claim_limited_v1(p_worker text, p_flow text, p_limit integer,
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

-- CURRENT. complete_tasks_v2 (0012: set by set, its planner guard) plus one thing: completions of
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

-- Cron schedules of flows and jobs (0020): one row per declared schedule, its cursor
-- (last_tick_at) and next tick; one tick row per fired tick, keyed (schedule, tick_at), written
-- with its run in the transaction that moves the cursor under the schedule row's lock.
CREATE TABLE tideflow.schedules (
    name         text             PRIMARY KEY,
    flow_slug    text             NOT NULL,
    cron         text             NOT NULL,
    timezone     text             NOT NULL,
    input        jsonb            NOT NULL,
    catch_up     text             NOT NULL CHECK (catch_up IN ('none', 'latest', 'all')),
    grace        double precision NOT NULL,
    last_tick_at timestamptz      NOT NULL,
    next_tick_at timestamptz,
    created_at   timestamptz      NOT NULL,
    updated_at   timestamptz      NOT NULL
);

CREATE TABLE tideflow.schedule_ticks (
    schedule text        NOT NULL,
    tick_at  timestamptz NOT NULL,
    run_id   text        NOT NULL,
    fired_at timestamptz NOT NULL,
    PRIMARY KEY (schedule, tick_at)
);

-- A database created from this file has every migration up to 0021: record them, so that
-- `tideflow migrate` applies only later ones. applied_at is when this file ran.
INSERT INTO tideflow.schema_migrations (version, name, applied_at) VALUES
    (1, 'initial', now()),
    (2, 'events', now()),
    (3, 'handlers', now()),
    (4, 'event_floor_locks', now()),
    (5, 'process_managers', now()),
    (6, 'process_manager_kind', now()),
    (7, 'task_stalls', now()),
    (8, 'process_timers', now()),
    (9, 'process_undo', now()),
    (10, 'stream_deletion', now()),
    (11, 'run_reports', now()),
    (12, 'flat_cost', now()),
    (13, 'timer_tokens', now()),
    (14, 'observability', now()),
    (15, 'worker_heartbeats', now()),
    (16, 'step_skips', now()),
    (17, 'bulk_start', now()),
    (18, 'fewer_writes', now()),
    (19, 'queue_limits', now()),
    (20, 'schedules', now()),
    (21, 'queued_by_flow', now());

COMMIT;
