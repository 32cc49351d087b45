-- tideflow schema for SQLite, version 6: process managers are a kind of event handler.
--
-- As on PostgreSQL (see its 0006), only the CHECK on event_handlers.kind changes. SQLite cannot
-- alter a constraint, so the table is rebuilt in the migration's transaction: same columns, same
-- rows. Nothing references it (dead_letters names its handler without a foreign key).

CREATE TABLE event_handlers_v6 (
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

INSERT INTO event_handlers_v6 (name, kind, status, owner, lease_expires_at, failing_position,
                               attempts, last_error, stopped_reason, updated_at)
SELECT name, kind, status, owner, lease_expires_at, failing_position, attempts, last_error,
       stopped_reason, updated_at
FROM event_handlers;

DROP TABLE event_handlers;

ALTER TABLE event_handlers_v6 RENAME TO event_handlers;
