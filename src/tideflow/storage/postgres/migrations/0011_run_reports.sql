-- tideflow schema for PostgreSQL, version 11: runs that report back.
--
-- runs.report: set on a run whose end must be told to the event log - one a process manager
-- started, or one of a flow that opts in - with the correlation, causation and metadata its
-- lifecycle event carries. When the run ends (completed, failed, cancelled) the transaction that
-- ended it appends the event and clears the column, so each run reports exactly once.
ALTER TABLE tideflow.runs ADD COLUMN report json;
