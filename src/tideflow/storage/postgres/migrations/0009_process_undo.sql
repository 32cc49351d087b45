-- tideflow schema for PostgreSQL, version 9: process instances that undo, end and are pruned.
--
-- * status 'compensated': the instance undid what it had done (its recorded undos, dispatched in
--   reverse order when a later command was refused) and ended.
-- * undo: the undo commands of the commands it sent that declared one, oldest first - what an
--   automatic compensation dispatches, newest first. sent: what it sent (and undid), in order,
--   for `tideflow saga` (bounded by the runtime).
-- * finished_at: when it ended (completed, compensated, failed); finished instances are deleted
--   once the manager's retention has passed, and a starting event for a finished id begins a new
--   instance. The partial index serves that pruning.
ALTER TABLE tideflow.process_instances DROP CONSTRAINT process_instances_status_check;
ALTER TABLE tideflow.process_instances ADD CONSTRAINT process_instances_status_check
    CHECK (status IN ('running', 'completed', 'compensated', 'failed'));
ALTER TABLE tideflow.process_instances
    ADD COLUMN undo        json        NOT NULL DEFAULT '[]',
    ADD COLUMN sent        json        NOT NULL DEFAULT '[]',
    ADD COLUMN finished_at timestamptz;
UPDATE tideflow.process_instances SET finished_at = updated_at WHERE status <> 'running';
-- The defaults only filled the existing rows: the runtime writes both columns every time.
ALTER TABLE tideflow.process_instances ALTER COLUMN undo DROP DEFAULT,
                                       ALTER COLUMN sent DROP DEFAULT;

CREATE INDEX process_instances_finished
    ON tideflow.process_instances (manager, finished_at) WHERE finished_at IS NOT NULL;
