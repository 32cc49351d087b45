-- tideflow schema for SQLite, version 16: skipped steps' reasons and conditional runs
-- (PostgreSQL's 0016 says what they mean). SQLite runs every transition in the flow store's
-- Python, so runs.conditional is only kept for parity; nothing here reads it.
ALTER TABLE run_steps ADD COLUMN skip_reason TEXT
    CHECK (skip_reason IN ('condition_unmet', 'handler_failed', 'dependency_skipped'));
ALTER TABLE runs ADD COLUMN conditional INTEGER NOT NULL DEFAULT 0 CHECK (conditional IN (0, 1));
