-- tideflow schema for PostgreSQL, version 15: workers' heartbeats, for the dashboard.
--
-- A flow worker records itself here when it starts and every heartbeat interval after (one
-- upsert of its own row: nothing contends), and marks its row stopped when it stops. A worker
-- whose heartbeat is older than three intervals died or lost the database. Idle workers show up
-- too, which the leases alone (tasks.worker_id, event_handlers.owner) cannot say. Rows of
-- workers silent for a day are deleted by the next heartbeat of any worker.
CREATE TABLE tideflow.workers (
    worker_id          text        PRIMARY KEY,
    hostname           text        NOT NULL,
    pid                integer     NOT NULL,
    flows              jsonb       NOT NULL,
    concurrency        integer     NOT NULL,
    running            integer     NOT NULL,
    heartbeat_interval double precision NOT NULL,
    started_at         timestamptz NOT NULL,
    heartbeat_at       timestamptz NOT NULL,
    stopped_at         timestamptz
);
