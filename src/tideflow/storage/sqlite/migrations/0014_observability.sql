-- tideflow schema for SQLite, version 14: failed attempts with their tracebacks, and the trace
-- context a run carries (PostgreSQL's 0014 says why).
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

ALTER TABLE runs ADD COLUMN trace_context TEXT;
