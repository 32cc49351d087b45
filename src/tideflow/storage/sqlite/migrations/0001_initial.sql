-- tideflow schema for SQLite, version 1.
--
-- The same tables as the PostgreSQL schema, in SQLite's types: JSON is TEXT (checked with
-- json_valid), timestamps are REAL seconds since the Unix epoch (query them with
-- datetime(col, 'unixepoch')). Writers serialise on SQLite's database lock; WAL mode lets readers
-- (the CLI, wait_for_run) proceed meanwhile.

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
    remaining_steps INTEGER NOT NULL,
    started_at      REAL NOT NULL,
    finished_at     REAL,
    FOREIGN KEY (flow_slug, flow_version) REFERENCES flows (flow_slug, version)
);
CREATE INDEX runs_by_started ON runs (started_at DESC);
CREATE INDEX runs_by_flow ON runs (flow_slug, started_at DESC);

CREATE TABLE run_steps (
    run_id          TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    step_slug       TEXT NOT NULL,
    step_index      INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('single', 'map')),
    depends_on      TEXT NOT NULL,
    dependents      TEXT NOT NULL, -- steps that depend on this one; '[]' for leaves
    status          TEXT NOT NULL
                    CHECK (status IN ('created', 'started', 'completed', 'failed', 'skipped')),
    remaining_deps  INTEGER NOT NULL,
    initial_tasks   INTEGER,
    remaining_tasks INTEGER,
    output          TEXT,
    error           TEXT,
    max_attempts    INTEGER NOT NULL,
    base_delay      REAL NOT NULL,
    max_delay       REAL NOT NULL,
    timeout         REAL,
    start_delay     REAL NOT NULL,
    created_at      REAL NOT NULL,
    started_at      REAL,
    finished_at     REAL,
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
    visible_at       REAL NOT NULL,
    started_at       REAL,
    lease_expires_at REAL,
    finished_at      REAL,
    PRIMARY KEY (run_id, step_slug, task_index),
    FOREIGN KEY (run_id, step_slug) REFERENCES run_steps (run_id, step_slug) ON DELETE CASCADE
);
-- The claim query reads only this index: queued tasks by visibility.
CREATE INDEX tasks_queued ON tasks (visible_at) WHERE status = 'queued';
-- Stalled-task recovery reads only this one.
CREATE INDEX tasks_started ON tasks (lease_expires_at) WHERE status = 'started';
