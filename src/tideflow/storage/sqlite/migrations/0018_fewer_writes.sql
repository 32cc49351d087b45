-- tideflow schema for SQLite, version 18: fewer writes per run (PostgreSQL's 0018 says why).
--
-- runs_by_finished goes: every run that ended wrote an entry in it, and retention, its only
-- reader, finds old runs through runs_finished_by_status (finished runs by status and start:
-- a run that finished before a cut-off started before it). The claim and the completion have
-- no stored functions here to change.
DROP INDEX runs_by_finished;
