-- Migration 0004 replaces the append and horizon functions below (and the gate protocol this
-- header describes) with floor locks: read its header for how appends and readers work now.
--
-- tideflow schema for PostgreSQL, version 2: the event store.
--
-- Model. A stream (streams) is the history of one thing; its events (events) are numbered
-- version 1, 2, 3... without gaps, and every event also gets a store-wide position from a
-- sequence. Readers that follow the whole store (read_all, handlers with a checkpoint) read in
-- position order and remember the last position they processed. Beside the log: the latest
-- snapshot per stream (snapshots), the results of idempotent appends recorded in the same
-- transaction as their events (idempotency_keys), and how far each handler has processed the log
-- (handler_checkpoints).
--
-- Appends go through append_events_v1 (below), one statement, so an append in autocommit mode is
-- one round trip and one transaction. The _v1 suffix lets a later version of the function live
-- beside this one while old and new tideflow processes share a database during an upgrade.
--
-- =================================================================================================
-- Why readers never miss an event, and why writers still run in parallel
-- =================================================================================================
--
-- The problem. Positions come from a sequence, and a sequence hands out numbers in the order
-- transactions *ask*, not the order they *commit*. Writer A draws position 10, writer B draws 11,
-- B commits first. A reader polling "position > 9" now sees 11, remembers 11, and on its next
-- poll asks for "position > 11" - when A commits, event 10 is never delivered. Ordering readers by
-- commit instead of position does not help: PostgreSQL exposes no commit order readers could page
-- through. The classic fixes serialise writers (LOCK TABLE, or one exclusive advisory lock held to
-- commit), which caps throughput at one commit at a time; tideflow must scale with writers.
--
-- The idea. A reader may read up to a "safe horizon" H: a position such that every position <= H
-- is *settled* - its transaction has committed (and is visible) or rolled back (and never will
-- be). Positions above H are left for the next poll. To compute H we need to know, for every drawn
-- position, whether its transaction is still running. Each appender announces it: holding a
-- transaction-level SHARED advisory lock whose key encodes its lowest position (one lock per
-- append; the key layout is in the rules below), taken right after drawing. PostgreSQL releases a
-- transaction's locks only *after* its commit is visible to new snapshots (ProcArrayEndTransaction
-- runs before the lock release in CommitTransaction), so "the lock is gone" implies "its rows are
-- visible, or it rolled back". The reader then takes
--     H = min(last drawn position, lowest in-flight position - 1)
-- where the in-flight positions are read from pg_locks.
--
-- The race this leaves, and the gate that closes it. Between drawing a position (nextval) and
-- taking its lock an appender is invisible: a reader could read last_value = 11, look at pg_locks
-- before A has locked 10, and conclude that 10 is settled. So drawing and locking happen inside a
-- "gate": appenders hold a SESSION-level SHARED advisory lock on the gate key for just those two
-- calls, and release it at once (session-level because a transaction-level lock cannot be released
-- before commit). Shared mode means appenders never wait for each other. A reader computing H
-- takes the gate EXCLUSIVELY for an instant: it waits only for appenders that are inside the
-- draw-and-lock window (microseconds, no I/O, nothing that can block), reads the sequence's
-- last_value, and releases it. Every position <= last_value was then drawn by an appender that
-- had already taken its position lock. After releasing the gate the reader reads the in-flight
-- minimum from pg_locks; any lock still there caps H, any lock gone is settled. (Appenders that
-- enter the gate afterwards draw positions > last_value, which H excludes anyway.)
--
-- Why this scales. Writers share every lock they take here (the gate in shared mode, their own
-- position key), so N writers on different streams commit in parallel - their only serialisation
-- is the stream row each one locks, which is per stream, and the WAL flush, which PostgreSQL
-- already batches across concurrent commits. Readers block writers only for the draw window of the
-- appends in flight at that instant, once per read_all call, not per page.
--
-- What it costs readers. A slow appender holds back H for everyone until it commits or rolls
-- back: ordered, gap-free delivery cannot get ahead of an open transaction. Appends through
-- append() are a single statement, so this is a sub-millisecond window; appends inside
-- store.transaction() hold the horizon for as long as the caller keeps that transaction open, so
-- keep those short. A rolled-back append releases its lock like a committed one: gaps in the
-- sequence never stall readers. Reading pg_locks briefly takes the lock manager's partition
-- locks, at a cost that grows with the number of connections: it is done once per read_all
-- call, so poll at a sensible interval rather than in a tight loop.
--
-- Rules that keep this correct - change none of them without re-reading the above:
--   * Positions are drawn ONLY in append_events_v1, inside the gate. events.position has no
--     default, so a plain INSERT that bypasses the protocol fails instead of corrupting order.
--   * The sequence has CACHE 1. With a cache, a session would hold numbers below last_value that
--     it has not drawn yet, and a reader would count them as settled.
--   * The reader computes H in one statement (event_horizon_v1) and reads events in a LATER
--     statement, in READ COMMITTED: the events query must take its snapshot after H was computed,
--     or a transaction committing in between would be counted as settled but not be in the
--     snapshot. (tideflow reads in autocommit mode, one snapshot per statement.)
--   * read_all runs on the primary: a hot standby's pg_locks does not show the primary's
--     in-flight appends.
--   * Every exit from the gate, errors and cancellation included, releases it (the EXCEPTION
--     blocks below): a leaked session-level gate would block readers for the life of a pooled
--     connection. OTHERS does not match query_canceled, so it is listed too. A terminated backend
--     loses its session locks with the session.
--   * Advisory lock keys (bigint form, objsubid = 1): position locks are
--     x'7466' << 48 | position ("tf" in the high 16 bits; positions stay below 2^48); the gate is
--     x'746667617465' ("tfgate", a 48-bit constant outside that range, like the migration lock
--     of 0001). Other software using advisory locks in the same database must keep out of the
--     x'7466' prefix.
--
-- Lock order inside one append: idempotency key (unique index) -> stream row (FOR UPDATE) ->
-- gate (shared, released before the INSERT) -> position lock (to commit). A transaction that
-- appends to several streams takes several stream rows; do that in a consistent order (sorted
-- stream ids) or two such transactions can deadlock (PostgreSQL detects it and aborts one).

-- JSON is stored as json, not jsonb: the text is kept exactly as appended (key order included, as
-- on SQLite), checked but not re-encoded on the way in or out, which is what an immutable log
-- wants. The ->, ->> operators work on json; cast to jsonb for containment or GIN indexes.

CREATE SEQUENCE tideflow.event_position_seq AS bigint MINVALUE 1 START 1 CACHE 1 NO CYCLE;

CREATE TABLE tideflow.streams (
    stream_id text   PRIMARY KEY,
    version   bigint NOT NULL CHECK (version >= 1)
) WITH (fillfactor = 80);  -- room for HOT updates: every append rewrites its stream's row

CREATE TABLE tideflow.events (
    position       bigint      PRIMARY KEY,  -- no default: drawn only by append_events_v1
    version        bigint      NOT NULL CHECK (version >= 1),
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    stream_id      text        NOT NULL,
    event_id       uuid        NOT NULL,
    event_type     text        NOT NULL,
    causation_id   uuid,
    correlation_id uuid,
    recorded_at    timestamptz NOT NULL,
    data           json        NOT NULL,
    metadata       json        NOT NULL,
    CONSTRAINT events_stream_version UNIQUE (stream_id, version),
    CONSTRAINT events_event_id UNIQUE (event_id)
);

CREATE TABLE tideflow.snapshots (
    stream_id      text        PRIMARY KEY,
    version        bigint      NOT NULL CHECK (version >= 1),
    snapshot_type  text        NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    state          json        NOT NULL,
    taken_at       timestamptz NOT NULL
);

-- One row per idempotent append, written in the append's own transaction: the key exists if and
-- only if the events do. recorded_at lets old keys be pruned.
CREATE TABLE tideflow.idempotency_keys (
    key         text        PRIMARY KEY,
    stream_id   text        NOT NULL,
    result      json,
    recorded_at timestamptz NOT NULL
);

-- How far each handler (projection, process manager) has processed the log: the position of the
-- last event it handled. Advanced in the handler's own transaction, next to its writes.
CREATE TABLE tideflow.handler_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL CHECK (position >= 0),
    updated_at timestamptz NOT NULL
);

-- append_events_v1: append events to one stream if it is in the expected state.
--
-- Contract. p_expected_kind is 'any', 'no_stream', 'exists' or 'exact' (then p_expected is the
-- version the stream must be at; 0 means no events). p_events is a JSON array with one object per
-- event: {"event_id", "event_type", "schema_version", "data", "metadata", "causation_id",
-- "correlation_id"}, where data and metadata are JSON *strings* holding the event's JSON texts.
-- There may be no events (then only the expectation is checked and the key recorded). Returns
-- the version of the first event and the positions of all of them, in order. Raises
--     SQLSTATE TF001 with DETAIL = the stream's actual version, when the expectation fails;
--     SQLSTATE TF002 when p_idempotency_key is already recorded;
-- in both cases having written nothing (the caller's transaction, or savepoint, rolls back).
--
-- Why one JSON document: a client sends it as a single text value - dumping one array parameter
-- per column cost a Python client more CPU than the whole server-side append. Why data and
-- metadata as strings inside it, not nested objects: json_to_recordset then only unescapes them,
-- and json_in validates and stores the client's text byte for byte; extracting nested objects
-- would parse them twice and refuse the escape \u0000, which JSON allows.
CREATE FUNCTION tideflow.append_events_v1(
    p_stream_id        text,
    p_expected_kind    text,
    p_expected         bigint,
    p_events           json,
    p_recorded_at      timestamptz,
    p_idempotency_key  text,
    p_result           text,
    OUT first_version  bigint,
    OUT positions      bigint[]
) LANGUAGE plpgsql AS $$
DECLARE
    v_count   integer := json_array_length(p_events);
    v_current bigint;
    v_exists  boolean;
BEGIN
    -- The key first: a command retried while its first attempt is still committing waits here
    -- and is reported as a duplicate, rather than as a version conflict it would then "fix".
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO tideflow.idempotency_keys (key, stream_id, result, recorded_at)
        VALUES (p_idempotency_key, p_stream_id, p_result::json, p_recorded_at)
        ON CONFLICT (key) DO NOTHING;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'idempotency key % is already recorded', p_idempotency_key
                USING ERRCODE = 'TF002';
        END IF;
    END IF;

    -- The stream row is the per-stream lock: appenders to one stream queue here, so versions
    -- commit in order and readers of one stream never see a gap.
    LOOP
        SELECT s.version INTO v_current FROM tideflow.streams AS s
        WHERE s.stream_id = p_stream_id FOR UPDATE;
        v_exists := FOUND;
        IF NOT v_exists THEN
            v_current := 0;
        END IF;
        IF (p_expected_kind = 'no_stream' AND v_exists)
           OR (p_expected_kind = 'exists' AND NOT v_exists)
           OR (p_expected_kind = 'exact' AND v_current <> p_expected) THEN
            RAISE EXCEPTION 'stream % is at version %', p_stream_id, v_current
                USING ERRCODE = 'TF001', DETAIL = v_current::text;
        END IF;
        first_version := v_current + 1;
        IF v_count = 0 THEN
            positions := '{}';
            RETURN;
        END IF;
        IF v_exists THEN
            UPDATE tideflow.streams SET version = v_current + v_count
            WHERE stream_id = p_stream_id;
            EXIT;
        END IF;
        INSERT INTO tideflow.streams (stream_id, version) VALUES (p_stream_id, v_count)
        ON CONFLICT (stream_id) DO NOTHING;
        EXIT WHEN FOUND;
        -- A concurrent append created the stream after our SELECT (ON CONFLICT waited for it to
        -- commit): look again, now finding and locking its row.
    END LOOP;

    -- The gate: draw positions and announce the lowest one, atomically for readers.
    BEGIN
        PERFORM pg_advisory_lock_shared(x'746667617465'::bigint);
        IF v_count = 1 THEN
            positions := ARRAY[nextval('tideflow.event_position_seq')];
        ELSE
            positions := ARRAY(SELECT nextval('tideflow.event_position_seq')
                               FROM generate_series(1, v_count) ORDER BY 1);
        END IF;
        PERFORM pg_advisory_xact_lock_shared((x'7466'::bigint << 48) | positions[1]);
        PERFORM pg_advisory_unlock_shared(x'746667617465'::bigint);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock_shared(x'746667617465'::bigint);
        RAISE;
    END;

    INSERT INTO tideflow.events (position, version, schema_version, stream_id, event_id,
                                 event_type, causation_id, correlation_id, recorded_at, data,
                                 metadata)
    SELECT positions[e.ord], v_current + e.ord, e.schema_version, p_stream_id, e.event_id,
           e.event_type, e.causation_id, e.correlation_id, p_recorded_at, e.data::json,
           e.metadata::json
    FROM ROWS FROM (json_to_recordset(p_events) AS (event_id uuid, event_type text,
                                                    schema_version integer, data text,
                                                    metadata text, causation_id uuid,
                                                    correlation_id uuid))
         WITH ORDINALITY AS e(event_id, event_type, schema_version, data, metadata,
                              causation_id, correlation_id, ord);
END
$$;

-- event_horizon_v1: the highest position a reader may read now without ever missing an event
-- below it (the safe horizon H of the header). Call it in its own statement, before the query
-- that reads events, in READ COMMITTED.
CREATE FUNCTION tideflow.event_horizon_v1() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_drawn     bigint;
    v_in_flight bigint;
BEGIN
    BEGIN
        PERFORM pg_advisory_lock(x'746667617465'::bigint);
        SELECT CASE WHEN s.is_called THEN s.last_value ELSE s.last_value - 1 END
        INTO v_drawn FROM tideflow.event_position_seq AS s;
        PERFORM pg_advisory_unlock(x'746667617465'::bigint);
    EXCEPTION WHEN OTHERS OR query_canceled THEN
        PERFORM pg_advisory_unlock(x'746667617465'::bigint);
        RAISE;
    END;
    SELECT min(((l.classid::bigint << 32) | l.objid::bigint) - (x'7466'::bigint << 48))
    INTO v_in_flight
    FROM pg_catalog.pg_locks AS l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1
      AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d
                        WHERE d.datname = current_database())
      AND l.classid::bigint >= (x'7466'::bigint << 16)
      AND l.classid::bigint < (x'7467'::bigint << 16);
    IF v_in_flight IS NULL THEN
        RETURN v_drawn;
    END IF;
    RETURN least(v_drawn, v_in_flight - 1);
END
$$;
