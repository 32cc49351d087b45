-- tideflow schema for SQLite, version 15: workers' heartbeats (PostgreSQL's 0015 says why).
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
