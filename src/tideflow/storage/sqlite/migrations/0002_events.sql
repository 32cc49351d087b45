-- tideflow schema for SQLite, version 2: the event store.
--
-- The same tables as the PostgreSQL schema (see its 0002_events.sql for the model), in SQLite's
-- types: JSON is TEXT checked with json_valid, UUIDs are TEXT in their 36-character form,
-- timestamps are REAL seconds since the Unix epoch.
--
-- Ordering is simple here. SQLite has one writer at a time (every write transaction starts with
-- BEGIN IMMEDIATE), so positions are handed out in commit order: a reader can never see position
-- 11 while position 10 is still uncommitted, and the PostgreSQL horizon machinery is not needed.
-- AUTOINCREMENT keeps a position from ever being handed out twice, even if the newest events
-- were deleted; a rolled-back append gives its positions back (they were never visible).

CREATE TABLE streams (
    stream_id TEXT    PRIMARY KEY,
    version   INTEGER NOT NULL CHECK (version >= 1)
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
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_event_id UNIQUE (event_id)
);

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

-- How far each handler has processed the log (position of the last event it handled).
CREATE TABLE handler_checkpoints (
    name       TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL CHECK (position >= 0),
    updated_at REAL    NOT NULL
) WITHOUT ROWID;
