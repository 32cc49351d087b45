-- tideflow schema for PostgreSQL, version 4: floor locks replace the gate of version 2.
--
-- Version 2's appenders drew their positions inside a shared "gate" lock that every read_all
-- took exclusively, so readers queued behind appenders and appenders behind readers. Here each
-- appender announces a *floor* before it draws, and readers take no lock at all. The functions
-- are new versions (_v2) and the old ones are dropped in the same transaction: an old process
-- still calling append_events_v1 fails loudly instead of appending without the announcement that
-- new readers rely on. Tables are unchanged; version 2's header still describes them.
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
-- be). Positions above H are left for the next poll. To compute H, every appender announces
-- itself BEFORE it draws a position: it reads the last position drawn so far, L0, and takes a
-- transaction-level SHARED advisory lock whose key encodes its *floor* L0 + 1 (the key layout is
-- in the rules below). A sequence only moves forward, so every position the appender draws after
-- that is >= its floor. PostgreSQL releases a transaction's locks only *after* its commit is
-- visible to new snapshots (ProcArrayEndTransaction runs before the lock release in
-- CommitTransaction), so "the lock is gone" implies "its rows are visible, or it rolled back".
-- A reader (event_horizon_v2) reads the last drawn position L, THEN the lowest floor F among the
-- locks in pg_locks, and takes
--     H = min(L, F - 1)            (H = L when no append is in flight)
--
-- Why that is enough. Take a position p <= L whose transaction T has not settled when the reader
-- reads pg_locks. p <= L means T drew p before the reader read L (nextval and
-- pg_sequence_last_value both work under the sequence's buffer lock, so they are totally
-- ordered). T took its floor lock before it drew, so before the reader read L, so before the
-- reader read pg_locks; and T still holds it. So the reader sees T's floor, which is <= p, and
-- H < p. Hence every position <= H is settled when the reader reads pg_locks, and the events
-- query, whose snapshot is taken after that, sees every one of them that committed. Appenders
-- that announce themselves after the reader read L draw above L, which H excludes anyway.
--
-- Nothing to close in between. Because the announcement comes first, there is no moment at which
-- a drawn position is invisible to readers: readers take no lock at all, so they never wait for
-- appenders and appenders never wait for readers. (Drawing first and announcing the exact
-- position afterwards would leave a window between the two, which readers would have to close
-- with a lock of their own, taken exclusively on every read_all, that appenders hold shared while
-- they draw.) The price of a floor rather than the exact position: an appender in flight holds H
-- at its floor - 1, below the positions that other appenders drew between its reading L0 and its
-- drawing; those wait for it like any position above an append in flight. Appends through
-- append() are one statement, so this is a sub-millisecond delay.
--
-- Why this scales. Writers share every lock they take here (each takes its floor key in shared
-- mode; keys may even coincide), so N writers on different streams commit in parallel - their
-- only serialisation is the stream row each one locks, which is per stream, and the WAL flush,
-- which PostgreSQL already batches across concurrent commits.
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
--   * Positions are drawn ONLY in append_events_v2, after its floor lock is held. events.position
--     has no default, so a plain INSERT that bypasses the protocol fails instead of corrupting
--     order.
--   * The appender reads L0 before it takes the floor lock, and takes the lock before its first
--     nextval; the reader reads L before pg_locks, in one statement (event_horizon_v2). Swapping
--     either pair reopens the race.
--   * The sequence has CACHE 1. With a cache, a session would hold numbers below last_value that
--     it has not drawn yet: a reader would count them as settled, and they would lie below the
--     floor of whoever draws them.
--   * The reader computes H in one statement (event_horizon_v2) and reads events in a LATER
--     statement, in READ COMMITTED: the events query must take its snapshot after H was computed,
--     or a transaction committing in between would be counted as settled but not be in the
--     snapshot. (tideflow reads in autocommit mode, one snapshot per statement.)
--   * read_all runs on the primary: a hot standby's pg_locks does not show the primary's
--     in-flight appends.
--   * Floor locks are transaction-level, so every exit - commit, rollback, error, cancellation,
--     a terminated backend - releases them; nothing is ever held past its transaction.
--   * Advisory lock keys (bigint form, objsubid = 1): floor locks are x'7466' << 48 | floor
--     ("tf" in the high 16 bits; positions stay below 2^48). Other software using advisory locks
--     in the same database must keep out of the x'7466' prefix.
--
-- Lock order inside one append: idempotency key (unique index) -> stream row (UPDATE, or
-- SELECT ... FOR UPDATE) -> floor lock (shared, to commit). A transaction that appends to several
-- streams takes several stream rows; do that in a consistent order (sorted stream ids) or two
-- such transactions can deadlock (PostgreSQL detects it and aborts one). An appender waiting for
-- a stream row has not announced itself yet, so it does not hold readers back while it waits.

-- append_events_v2: append events to one stream if it is in the expected state.
--
-- Contract. p_expected_kind is 'any', 'no_stream', 'exists' or 'exact' (then p_expected is the
-- version the stream must be at; 0 means no events). The events come as three JSON arrays with
-- one element per event, in order: p_events holds objects {"event_id", "event_type",
-- "schema_version", "causation_id", "correlation_id"}, p_data and p_metadata the events' data
-- and metadata objects. There may be no events (then only the expectation is checked and the key
-- recorded). Returns the version of the first event and the positions of all of them, in order.
-- Raises
--     SQLSTATE TF001 with DETAIL = the stream's actual version, when the expectation fails;
--     SQLSTATE TF002 when p_idempotency_key is already recorded;
-- in both cases having written nothing (the caller's transaction, or savepoint, rolls back).
--
-- Why JSON documents: a client sends each as a single text value - dumping one array parameter
-- per column cost a Python client more CPU than the whole server-side append. Why data and
-- metadata in arrays of their own: json_array_elements returns each element as a slice of the
-- array's text, already json (validated once, when the parameter is cast), so the client's text
-- is stored byte for byte without being unescaped, parsed into fields or validated a second time
-- (and without refusing the escape \u0000, which JSON allows but unescaping into text does not);
-- the client only joins its encoded texts with commas.
CREATE FUNCTION tideflow.append_events_v2(
    p_stream_id        text,
    p_expected_kind    text,
    p_expected         bigint,
    p_events           json,
    p_data             json,
    p_metadata         json,
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
    -- commit in order and readers of one stream never see a gap. The common case - events for
    -- a stream that exists and is where the caller expects - is this one UPDATE: it locks the
    -- row, checks the expectation (re-checked on the newest row version if it had to wait for
    -- another appender) and moves the version. Anything else takes the loop below.
    IF v_count > 0 AND (p_expected_kind IN ('any', 'exists')
                        OR (p_expected_kind = 'exact' AND p_expected > 0)) THEN
        UPDATE tideflow.streams AS s SET version = s.version + v_count
        WHERE s.stream_id = p_stream_id AND (p_expected_kind <> 'exact' OR s.version = p_expected)
        RETURNING s.version - v_count INTO v_current;
    END IF;
    IF v_current IS NULL THEN
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
            IF v_count = 0 THEN
                first_version := v_current + 1;
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
            -- A concurrent append created the stream after our SELECT (ON CONFLICT waited for
            -- it to commit): look again, now finding and locking its row.
        END LOOP;
    END IF;
    first_version := v_current + 1;

    -- Announce, then draw (the header says why in this order): the floor lock's key is one
    -- above the last position drawn by anyone so far, which every position drawn below is at
    -- least. Drawing in a loop of plain assignments, not a query, keeps the function free of
    -- statements planned anew on every call.
    PERFORM pg_advisory_xact_lock_shared((x'7466'::bigint << 48)
        | (coalesce(pg_sequence_last_value('tideflow.event_position_seq'), 0) + 1));
    positions := ARRAY[nextval('tideflow.event_position_seq')];
    FOR i IN 2..v_count LOOP
        positions[i] := nextval('tideflow.event_position_seq');
    END LOOP;

    INSERT INTO tideflow.events (position, version, schema_version, stream_id, event_id,
                                 event_type, causation_id, correlation_id, recorded_at, data,
                                 metadata)
    SELECT positions[e.ord], v_current + e.ord, e.schema_version, p_stream_id, e.event_id,
           e.event_type, e.causation_id, e.correlation_id, p_recorded_at, e.data, e.metadata
    FROM ROWS FROM (json_to_recordset(p_events) AS (event_id uuid, event_type text,
                                                    schema_version integer, causation_id uuid,
                                                    correlation_id uuid),
                    json_array_elements(p_data), json_array_elements(p_metadata))
         WITH ORDINALITY AS e(event_id, event_type, schema_version, causation_id,
                              correlation_id, data, metadata, ord);
END
$$;

-- event_horizon_v2: the highest position a reader may read now without ever missing an event
-- below it (the safe horizon H of the header). Call it in its own statement, before the query
-- that reads events, in READ COMMITTED. It takes no lock and never waits for appenders.
CREATE FUNCTION tideflow.event_horizon_v2() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_drawn     bigint;
    v_in_flight bigint;
BEGIN
    -- First the last drawn position, THEN the floors of the appends in flight: the other order
    -- would miss an append that announces itself and draws in between.
    v_drawn := coalesce(pg_sequence_last_value('tideflow.event_position_seq'), 0);
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

-- The functions of version 2, dropped last so that nothing can use them once this commits.
DROP FUNCTION tideflow.append_events_v1(text, text, bigint, json, timestamptz, text, text);
DROP FUNCTION tideflow.event_horizon_v1();
