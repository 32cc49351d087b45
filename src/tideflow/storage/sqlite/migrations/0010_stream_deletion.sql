-- tideflow schema for SQLite, version 10: deleting streams.
--
-- As PostgreSQL's 0010 (whose header explains soft and hard deletion): streams.deleted_at marks
-- a soft-deleted stream, events.deleted its events, which every read leaves out. The append
-- (sqlite/database.py) reads deleted_at with the stream's version, under the write lock, and
-- refuses a deleted stream; there is no function to replace.

ALTER TABLE streams ADD COLUMN deleted_at REAL;
ALTER TABLE events ADD COLUMN deleted INTEGER NOT NULL DEFAULT false CHECK (deleted IN (0, 1));
