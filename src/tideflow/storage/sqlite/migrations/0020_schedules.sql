-- tideflow schema for SQLite, version 20: cron schedules of flows and jobs.
--
-- The same tables as the PostgreSQL schema (see its 0020_schedules.sql for the design), in
-- SQLite's types: input is TEXT checked with json_valid, timestamps are REAL seconds since the
-- Unix epoch. Firing needs no row lock: its transaction holds SQLite's write lock from the read
-- of the cursor until the ticks, their runs and the new cursor commit.

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
