-- tideflow schema for PostgreSQL, version 13: a fired timer stays until its instance takes it.
--
-- A timer used to be deleted when it fired, its event appended in the same transaction. That
-- left one race: a reaction that cancels (or reschedules) the timer after it fired, but before
-- the instance reached the fired event in the log, found no row - and the instance later got the
-- timeout it had cancelled. Now each schedule has a token (carried in the fired event's
-- metadata), firing marks the row fired instead of deleting it, and the instance takes the row
-- when the event reaches it (storage/timer_store.py, ``take_fired``): an event whose row is gone
-- (cancelled, the instance ended) or holds another token (rescheduled) is stale and ignored.
-- Cancelling and rescheduling work on fired rows as on pending ones.

ALTER TABLE tideflow.process_timers
    ADD COLUMN token    text,
    ADD COLUMN fired_at timestamptz;

DROP INDEX tideflow.process_timers_due;
CREATE INDEX process_timers_due ON tideflow.process_timers (fire_at) WHERE fired_at IS NULL;
