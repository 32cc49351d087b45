-- tideflow schema for SQLite: the result of migrations 0001-0021, written out
-- for readers.
--
-- What this file is. The tables and indexes that `tideflow migrate` (store.migrate()) leaves in the
-- database file once every migration in migrations/ has run, in one place, without the history:
-- columns added later (tasks.stalls, run_steps.max_stalls, streams.deleted_at, events.deleted) sit
-- in their table and the event_handlers table that migration 0006 rebuilt is written as it is now.
--
-- What it is not. The migrations remain the source of truth: a database is created and upgraded
-- only by them (in order, recorded in schema_migrations, in one exclusive transaction). The
-- PostgreSQL migrations' headers explain the model (../postgres/migrations/); the SQLite ones say
-- what differs here. A schema change is a new migration AND the matching edit here.
--
-- How it stays honest. tests/test_schema.py applies the migrations to one empty file and this
-- script to another, and compares them: tables, columns (PRAGMA table_xinfo), indexes
-- (index_list, index_xinfo, partial-index conditions), foreign keys (foreign_key_list), each
-- CREATE statement with comments and spacing normalised (so CHECK constraints, WITHOUT ROWID and
-- AUTOINCREMENT count too) and the rows of schema_migrations. It also checks that these tables
-- and columns are PostgreSQL's (../postgres/schema.sql) in mapped types.
--
-- Types. The same tables as PostgreSQL, in SQLite's types: JSON is TEXT (checked with
-- json_valid), UUIDs are TEXT in their 36-character form, timestamps are REAL seconds since the
-- Unix epoch (read them with datetime(col, 'unixepoch')), booleans and big integers are INTEGER.
-- No stored functions: the transitions that PostgreSQL runs as functions run from Python
-- (tideflow/storage/flow_store.py), and none of PostgreSQL's event-horizon machinery is needed, since
-- SQLite has one writer at a time and so hands out event positions in commit order.
--
-- Using it. Run on an empty file (sqlite3 tideflow.db < schema.sql), it gives a database that
-- tideflow treats as fully migrated: it records versions 1-21 in schema_migrations as
-- applied, so a later `tideflow migrate` applies only the migrations this file lacks. A writer (a
-- worker, `tideflow migrate`) switches the file to WAL mode when it opens it. Prefer `tideflow
-- migrate`.

BEGIN;

-- Which migrations this database has had (written by store.migrate(), which creates the table).
CREATE TABLE schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at REAL NOT NULL
);


-- =================================================================================================
-- Flows: versions, runs, steps, tasks (0001, 0007)
-- =================================================================================================

CREATE TABLE flows (
    flow_slug   TEXT NOT NULL,
    version     TEXT NOT NULL,
    shape       TEXT NOT NULL CHECK (json_valid(shape)),
    created_at  REAL NOT NULL,
    PRIMARY KEY (flow_slug, version)
);

CREATE TABLE runs (
    run_id          TEXT PRIMARY KEY,
    flow_slug       TEXT NOT NULL,
    flow_version    TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('started', 'completed', 'failed', 'cancelled')),
    input           TEXT NOT NULL CHECK (json_valid(input)),
    output          TEXT CHECK (output IS NULL OR json_valid(output)),
    error           TEXT,
    remaining_steps INTEGER NOT NULL,                -- steps not yet completed
    started_at      REAL NOT NULL,
    finished_at     REAL,
    report          TEXT CHECK (report IS NULL OR json_valid(report)),  -- to the event log (0011)
    trace_context   TEXT,                            -- W3C trace context, JSON (0014)
    -- 0016: conditions or when_failed skips (kept for parity: SQLite always runs in Python).
    conditional     INTEGER NOT NULL DEFAULT 0 CHECK (conditional IN (0, 1)),
    FOREIGN KEY (flow_slug, flow_version) REFERENCES flows (flow_slug, version)
);
-- list_runs; run_id is its tie-breaker (0012).
CREATE INDEX runs_by_started ON runs (started_at DESC, run_id);
CREATE INDEX runs_by_flow ON runs (flow_slug, started_at DESC, run_id);
-- list_runs by status; finished runs only, so the transitions' `run_id = ? AND status =
-- 'started'` cannot use it (0012).
CREATE INDEX runs_finished_by_status ON runs (status, started_at DESC, run_id)
    WHERE status <> 'started';

CREATE TABLE run_steps (
    run_id          TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    step_slug       TEXT NOT NULL,
    step_index      INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('single', 'map')),
    depends_on      TEXT NOT NULL,
    dependents      TEXT NOT NULL,         -- steps that depend on this one; '[]' for leaves
    status          TEXT NOT NULL
                    CHECK (status IN ('created', 'started', 'completed', 'failed', 'skipped')),
    remaining_deps  INTEGER NOT NULL,
    initial_tasks   INTEGER,
    remaining_tasks INTEGER,
    output          TEXT,
    error           TEXT,
    max_attempts    INTEGER NOT NULL,
    base_delay      REAL NOT NULL,                   -- retry backoff, seconds
    max_delay       REAL NOT NULL,
    timeout         REAL,
    start_delay     REAL NOT NULL,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    -- 0007: lease expiries a task of this step may have before it fails.
    max_stalls      INTEGER NOT NULL DEFAULT 3 CHECK (max_stalls >= 0),
    -- 0016: why a skipped step was skipped; NULL when its run ended first.
    skip_reason     TEXT
                    CHECK (skip_reason IN ('condition_unmet', 'handler_failed',
                                           'dependency_skipped')),
    PRIMARY KEY (run_id, step_slug)
);

CREATE TABLE tasks (
    run_id           TEXT NOT NULL,
    step_slug        TEXT NOT NULL,
    task_index       INTEGER NOT NULL,
    flow_slug        TEXT NOT NULL,
    status           TEXT NOT NULL
                     CHECK (status IN ('queued', 'started', 'completed', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    timeout          REAL,
    worker_id        TEXT,
    queued_at        REAL NOT NULL,
    visible_at       REAL NOT NULL,                  -- not claimable before (retry backoff)
    started_at       REAL,
    lease_expires_at REAL,
    finished_at      REAL,
    -- 0007: lease expiries that requeued the task without counting an attempt.
    stalls           INTEGER NOT NULL DEFAULT 0 CHECK (stalls >= 0),
    limit_key        TEXT,                          -- 0019: queue-limit key while claimed
    PRIMARY KEY (run_id, step_slug, task_index),
    FOREIGN KEY (run_id, step_slug) REFERENCES run_steps (run_id, step_slug) ON DELETE CASCADE
);
-- The claim query reads only this index: queued tasks by visibility.
CREATE INDEX tasks_queued ON tasks (visible_at) WHERE status = 'queued';
-- The limited claim reads one flow's queued tasks: a range of this one (0021).
CREATE INDEX tasks_queued_by_flow ON tasks (flow_slug, visible_at) WHERE status = 'queued';
-- Stalled-task recovery reads only this one: keyed on leases, not on the 'started' status, so
-- that completions and heartbeats (by key and status) are never planned through it (0012).
CREATE INDEX tasks_leased ON tasks (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
CREATE INDEX tasks_limited ON tasks (flow_slug, step_slug, limit_key)
    WHERE status = 'started' AND limit_key IS NOT NULL;                -- 0019

-- Queue limits of the flows that have them, and their rate window (0019).
CREATE TABLE flow_limits (
    flow_slug     TEXT PRIMARY KEY,
    limits        TEXT NOT NULL CHECK (json_valid(limits)),
    recent_claims TEXT NOT NULL CHECK (json_valid(recent_claims)),
    updated_at    REAL NOT NULL
);

-- Failed attempts with their exception type, message and traceback (0014).
CREATE TABLE task_failures (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT    NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    step_slug   TEXT    NOT NULL,
    task_index  INTEGER NOT NULL,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT,
    error_type  TEXT,
    error       TEXT    NOT NULL,
    traceback   TEXT,
    retried     INTEGER NOT NULL CHECK (retried IN (0, 1)),
    started_at  REAL,
    failed_at   REAL    NOT NULL
);
CREATE INDEX task_failures_by_run ON task_failures (run_id, id);

-- Flow workers' heartbeats, for the dashboard (0015).
CREATE TABLE workers (
    worker_id          TEXT    PRIMARY KEY,
    hostname           TEXT    NOT NULL,
    pid                INTEGER NOT NULL,
    flows              TEXT    NOT NULL CHECK (json_valid(flows)),
    concurrency        INTEGER NOT NULL,
    running            INTEGER NOT NULL,
    heartbeat_interval REAL    NOT NULL,
    started_at         REAL    NOT NULL,
    heartbeat_at       REAL    NOT NULL,
    stopped_at         REAL
) WITHOUT ROWID;


-- =================================================================================================
-- Event store: streams, events, snapshots, idempotency keys, checkpoints (0002)
-- =================================================================================================
--
-- Positions come from AUTOINCREMENT, so one is never handed out twice, even if the newest events
-- were deleted; a rolled-back append gives its positions back (they were never visible).

CREATE TABLE streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL CHECK (version >= 1), -- the stream's last event
    -- 0010: set when the stream was soft-deleted (its events are marked deleted).
    deleted_at REAL
) WITHOUT ROWID;

CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    version        INTEGER NOT NULL CHECK (version >= 1),
    schema_version INTEGER NOT NULL CHECK (schema_version >= 1),
    stream_id      TEXT    NOT NULL,
    event_id       TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    causation_id   TEXT,
    correlation_id TEXT,
    recorded_at    REAL    NOT NULL,
    data           TEXT    NOT NULL CHECK (json_valid(data)),
    metadata       TEXT    NOT NULL CHECK (json_valid(metadata)),
    -- 0010: 1 in a soft-deleted stream; every read leaves such events out.
    deleted        INTEGER NOT NULL DEFAULT false CHECK (deleted IN (0, 1)),
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_event_id UNIQUE (event_id)
);

-- The latest snapshot per stream.
CREATE TABLE snapshots (
    stream_id      TEXT    PRIMARY KEY,
    version        INTEGER NOT NULL CHECK (version >= 1),
    snapshot_type  TEXT    NOT NULL,
    schema_version INTEGER NOT NULL CHECK (schema_version >= 1),
    state          TEXT    NOT NULL CHECK (json_valid(state)),
    taken_at       REAL    NOT NULL
) WITHOUT ROWID;

-- One row per idempotent append, written in the append's own transaction.
CREATE TABLE idempotency_keys (
    key         TEXT PRIMARY KEY,
    stream_id   TEXT NOT NULL,
    result      TEXT CHECK (result IS NULL OR json_valid(result)),
    recorded_at REAL NOT NULL
) WITHOUT ROWID;
-- Their expiry: keys by age (0012).
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (recorded_at);

-- How far each handler has processed the log (position of the last event it handled).
CREATE TABLE handler_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at REAL    NOT NULL
) WITHOUT ROWID;


-- =================================================================================================
-- Event handlers and process managers (0003, 0005, 0006, 0008)
-- =================================================================================================

-- One row per handler that ever ran. status 'running' means "should run": some worker holds it
-- while owner is set and lease_expires_at is in the future; 'stopped' means halted until
-- `tideflow handlers resume` or a reset.
CREATE TABLE event_handlers (
    name             TEXT    PRIMARY KEY,
    kind             TEXT    NOT NULL CHECK (kind IN ('handler', 'projection', 'process_manager')),
    status           TEXT    NOT NULL CHECK (status IN ('running', 'stopped')),
    owner            TEXT,
    lease_expires_at REAL,
    failing_position INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       TEXT,
    stopped_reason   TEXT,
    updated_at       REAL    NOT NULL
) WITHOUT ROWID;

-- Events a handler gave up on after its retries. One row per (handler, event).
CREATE TABLE dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    handler    TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    event_id   TEXT    NOT NULL,
    event_type TEXT    NOT NULL,
    stream_id  TEXT    NOT NULL,
    error      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL CHECK (attempts >= 1),
    created_at REAL    NOT NULL,
    retried_at REAL,
    CONSTRAINT dead_letters_event UNIQUE (handler, position)
);
CREATE INDEX dead_letters_pending ON dead_letters (handler, id) WHERE retried_at IS NULL;
-- Retention: retried dead letters by age (0012).
CREATE INDEX dead_letters_retried ON dead_letters (retried_at) WHERE retried_at IS NOT NULL;

-- The instances of process managers (sagas), one per (manager, process id). No row locks: the
-- handler's batch transaction holds SQLite's write lock from before it reads an instance until it
-- commits the instance's new state.
CREATE TABLE process_instances (
    manager       TEXT    NOT NULL,
    process_id    TEXT    NOT NULL,
    status        TEXT    NOT NULL
                  CHECK (status IN ('running', 'completed', 'compensated', 'failed')),
    state         TEXT    NOT NULL CHECK (json_valid(state)),
    version       INTEGER NOT NULL CHECK (version >= 0),
    last_position INTEGER NOT NULL CHECK (last_position >= 0),
    error         TEXT,
    started_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    undo          TEXT    NOT NULL CHECK (json_valid(undo)),
    sent          TEXT    NOT NULL CHECK (json_valid(sent)),
    finished_at   REAL,
    PRIMARY KEY (manager, process_id)
) WITHOUT ROWID;

-- `tideflow processes` lists the instances of a manager in a status, most recently updated first.
CREATE INDEX process_instances_listing ON process_instances (manager, status, updated_at DESC);

-- Pruning finished instances once the manager's retention has passed (0009).
CREATE INDEX process_instances_finished
    ON process_instances (manager, finished_at) WHERE finished_at IS NOT NULL;


-- Durable timers of process manager instances (0008): a row per timer; firing marks the due rows
-- fired and appends their events in one write transaction, and each instance takes its fired row
-- when the event reaches it (0013).
CREATE TABLE process_timers (
    manager      TEXT NOT NULL,
    process_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    fire_at      REAL NOT NULL,
    event_type   TEXT NOT NULL,
    data         TEXT NOT NULL CHECK (json_valid(data)),
    scheduled_at REAL NOT NULL,
    token        TEXT,
    fired_at     REAL,
    PRIMARY KEY (manager, process_id, name)
) WITHOUT ROWID;

-- Due soonest first: the firing query and the worker's look at when to wake next (0013: fired
-- rows wait for their instance to take them, and are not due again).
CREATE INDEX process_timers_due ON process_timers (fire_at) WHERE fired_at IS NULL;

-- Cron schedules of flows and jobs (0020): see ../postgres/schema.sql.
CREATE TABLE schedules (
    name         TEXT NOT NULL PRIMARY KEY,
    flow_slug    TEXT NOT NULL,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    input        TEXT NOT NULL CHECK (json_valid(input)),
    catch_up     TEXT NOT NULL CHECK (catch_up IN ('none', 'latest', 'all')),
    grace        REAL NOT NULL,
    last_tick_at REAL NOT NULL,
    next_tick_at REAL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE schedule_ticks (
    schedule TEXT NOT NULL,
    tick_at  REAL NOT NULL,
    run_id   TEXT NOT NULL,
    fired_at REAL NOT NULL,
    PRIMARY KEY (schedule, tick_at)
) WITHOUT ROWID;


-- A database created from this file has every migration up to 0021: record them, so that
-- `tideflow migrate` applies only later ones. applied_at is when this script ran (Unix seconds).
INSERT INTO schema_migrations (version, name, applied_at) VALUES
    (1, 'initial', (julianday('now') - 2440587.5) * 86400.0),
    (2, 'events', (julianday('now') - 2440587.5) * 86400.0),
    (3, 'handlers', (julianday('now') - 2440587.5) * 86400.0),
    (4, 'event_floor_locks', (julianday('now') - 2440587.5) * 86400.0),
    (5, 'process_managers', (julianday('now') - 2440587.5) * 86400.0),
    (6, 'process_manager_kind', (julianday('now') - 2440587.5) * 86400.0),
    (7, 'task_stalls', (julianday('now') - 2440587.5) * 86400.0),
    (8, 'process_timers', (julianday('now') - 2440587.5) * 86400.0),
    (9, 'process_undo', (julianday('now') - 2440587.5) * 86400.0),
    (10, 'stream_deletion', (julianday('now') - 2440587.5) * 86400.0),
    (11, 'run_reports', (julianday('now') - 2440587.5) * 86400.0),
    (12, 'flat_cost', (julianday('now') - 2440587.5) * 86400.0),
    (13, 'timer_tokens', (julianday('now') - 2440587.5) * 86400.0),
    (14, 'observability', (julianday('now') - 2440587.5) * 86400.0),
    (15, 'worker_heartbeats', (julianday('now') - 2440587.5) * 86400.0),
    (16, 'step_skips', (julianday('now') - 2440587.5) * 86400.0),
    (17, 'bulk_start', (julianday('now') - 2440587.5) * 86400.0),
    (18, 'fewer_writes', (julianday('now') - 2440587.5) * 86400.0),
    (19, 'queue_limits', (julianday('now') - 2440587.5) * 86400.0),
    (20, 'schedules', (julianday('now') - 2440587.5) * 86400.0),
    (21, 'queued_by_flow', (julianday('now') - 2440587.5) * 86400.0);

COMMIT;
