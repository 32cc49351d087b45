-- tideflow schema for SQLite, version 8: durable timers of process manager instances.
--
-- The same table as the PostgreSQL schema (see its 0008_process_timers.sql for the design), in
-- SQLite's types: data is TEXT checked with json_valid, timestamps are REAL seconds since the
-- Unix epoch. Firing needs no row locks: its transaction holds SQLite's write lock from the
-- DELETE of the due rows until their events are appended and committed.

CREATE TABLE process_timers (
    manager      TEXT NOT NULL,
    process_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    fire_at      REAL NOT NULL,
    event_type   TEXT NOT NULL,
    data         TEXT NOT NULL CHECK (json_valid(data)),
    scheduled_at REAL NOT NULL,
    PRIMARY KEY (manager, process_id, name)
) WITHOUT ROWID;

CREATE INDEX process_timers_due ON process_timers (fire_at);
