-- tideflow schema for SQLite, version 5: the instances of process managers (sagas).
--
-- The same table as the PostgreSQL schema (see its 0005_process_managers.sql for why it exists
-- and what last_position is for), in SQLite's types: state is TEXT checked with json_valid,
-- timestamps are REAL seconds since the Unix epoch. No row locks are needed: the handler's batch
-- transaction holds SQLite's write lock (BEGIN IMMEDIATE) from before it reads an instance until
-- it commits the instance's new state.

CREATE TABLE process_instances (
    manager       TEXT    NOT NULL,
    process_id    TEXT    NOT NULL,
    status        TEXT    NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
    state         TEXT    NOT NULL CHECK (json_valid(state)),
    version       INTEGER NOT NULL CHECK (version >= 0),
    last_position INTEGER NOT NULL CHECK (last_position >= 0),
    error         TEXT,
    started_at    REAL    NOT NULL,
    updated_at    REAL    NOT NULL,
    PRIMARY KEY (manager, process_id)
) WITHOUT ROWID;

-- `tideflow processes` lists the instances of a manager in a status, most recently updated first.
CREATE INDEX process_instances_listing ON process_instances (manager, status, updated_at DESC);
