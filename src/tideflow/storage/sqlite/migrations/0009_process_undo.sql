-- tideflow schema for SQLite, version 9: process instances that undo, end and are pruned.
--
-- As on PostgreSQL (its 0009 says what the columns are for): status 'compensated', the undo
-- stack, the commands sent, finished_at. SQLite cannot alter a CHECK, so the table is rebuilt in
-- the migration's transaction, rows kept.

CREATE TABLE process_instances_v9 (
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

INSERT INTO process_instances_v9 (manager, process_id, status, state, version, last_position,
                                  error, started_at, updated_at, undo, sent, finished_at)
SELECT manager, process_id, status, state, version, last_position, error, started_at, updated_at,
       '[]', '[]', CASE WHEN status <> 'running' THEN updated_at END
FROM process_instances;

DROP TABLE process_instances;

ALTER TABLE process_instances_v9 RENAME TO process_instances;

CREATE INDEX process_instances_listing ON process_instances (manager, status, updated_at DESC);

CREATE INDEX process_instances_finished
    ON process_instances (manager, finished_at) WHERE finished_at IS NOT NULL;
