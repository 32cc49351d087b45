-- tideflow schema for SQLite, version 3: who runs each event handler, and what it could not do.
--
-- The same tables as the PostgreSQL schema (see its 0003_handlers.sql for the model), in SQLite's
-- types: timestamps are REAL seconds since the Unix epoch, event ids TEXT. How far a handler has
-- got is not here: that is its checkpoint (handler_checkpoints, migration 0002), advanced in the
-- handler's own transaction.

-- One row per handler that ever ran. status 'running' means "should run": some worker holds it
-- while owner is set and lease_expires_at is in the future; 'stopped' means halted (its error
-- policy is "stop", see stopped_reason) until `tideflow handlers resume` or a reset.
CREATE TABLE event_handlers (
    name             TEXT    PRIMARY KEY,
    kind             TEXT    NOT NULL CHECK (kind IN ('handler', 'projection')),
    status           TEXT    NOT NULL CHECK (status IN ('running', 'stopped')),
    owner            TEXT,
    lease_expires_at REAL,
    failing_position INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       TEXT,
    stopped_reason   TEXT,
    updated_at       REAL    NOT NULL
) WITHOUT ROWID;

-- Events a handler gave up on after max_attempts (error policy "dead_letter"): it moved past
-- them. One row per (handler, event): reprocessing after a reset updates the row.
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
