-- tideflow schema for SQLite, version 11: runs that report back (PostgreSQL's 0011 says how).
ALTER TABLE runs ADD COLUMN report TEXT CHECK (report IS NULL OR json_valid(report));
