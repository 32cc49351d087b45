-- tideflow schema for SQLite, version 13: a fired timer stays until its instance takes it
-- (PostgreSQL's 0013 says why).
ALTER TABLE process_timers ADD COLUMN token TEXT;
ALTER TABLE process_timers ADD COLUMN fired_at REAL;
DROP INDEX process_timers_due;
CREATE INDEX process_timers_due ON process_timers (fire_at) WHERE fired_at IS NULL;
