-- tideflow schema for PostgreSQL, version 6: process managers are a kind of event handler.
--
-- A process manager (tideflow.sagas, migration 0005) runs as an event handler; its row in
-- event_handlers says so, so that `tideflow handlers` tells it from plain handlers and
-- projections. Only the CHECK of migration 0003 changes.

ALTER TABLE tideflow.event_handlers DROP CONSTRAINT event_handlers_kind_check;
ALTER TABLE tideflow.event_handlers ADD CONSTRAINT event_handlers_kind_check
    CHECK (kind IN ('handler', 'projection', 'process_manager'));
