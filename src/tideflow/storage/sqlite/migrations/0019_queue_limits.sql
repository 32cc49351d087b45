-- tideflow schema for SQLite, version 19: queue limits (PostgreSQL's 0019 says what and why).
--
-- The same table, column and index. SQLite has no stored functions: the limited claim is the
-- flow store's (storage/queue_limits.py), statement by statement inside the claim's
-- transaction, which holds SQLite's single write lock from its start (BEGIN IMMEDIATE) - so
-- the counts it reads cannot change under it, without a row to lock.
CREATE TABLE flow_limits (
    flow_slug     TEXT PRIMARY KEY,
    limits        TEXT NOT NULL CHECK (json_valid(limits)),
    recent_claims TEXT NOT NULL CHECK (json_valid(recent_claims)),
    updated_at    REAL NOT NULL
);

ALTER TABLE tasks ADD COLUMN limit_key TEXT;
CREATE INDEX tasks_limited ON tasks (flow_slug, step_slug, limit_key)
    WHERE status = 'started' AND limit_key IS NOT NULL;
