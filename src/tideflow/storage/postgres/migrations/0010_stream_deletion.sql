-- tideflow schema for PostgreSQL, version 10: deleting streams.
--
-- A stream can be deleted (EventStore.delete_stream). Soft: the stream's row keeps its version
-- and gets deleted_at, its events stay in the table marked deleted - every read (read_stream,
-- read_all) leaves them out - and appends to it are refused. Hard, for erasure requests: the
-- events, the snapshot, the idempotency keys and the stream's row are deleted, as if the stream
-- had never existed. Neither touches positions: the sequence never goes back, so the floor-lock
-- protocol of 0004 and every handler checkpoint stay valid (a checkpoint may point at a position
-- that no longer holds an event, as after a rolled-back append).
--
-- The deleted-stream check belongs in the append, under the stream row's lock, or an append
-- racing a delete could land after it: append_events_v3 is append_events_v2 with that check
-- (SQLSTATE TF003, "stream is deleted"). Its common case is still one UPDATE, with one more
-- condition; a deleted stream falls through to the loop, which raises. append_events_v2 stays
-- for workers of the previous release during an upgrade (storage.md, "Migrations"): they do not
-- know deleted streams and would append to one, so delete streams once every worker runs this
-- release.
--
-- events.deleted is false for every event that is not in a soft-deleted stream, the default, so
-- neither append function writes it. Adding a column with a constant default rewrites nothing.

ALTER TABLE tideflow.streams ADD COLUMN deleted_at timestamptz;
ALTER TABLE tideflow.events ADD COLUMN deleted boolean NOT NULL DEFAULT false;

-- append_events_v3: append_events_v2 (0004, whose comments describe the contract), refusing a
-- deleted stream with SQLSTATE TF003.
CREATE FUNCTION tideflow.append_events_v3(
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
    v_deleted boolean;
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
          AND s.deleted_at IS NULL
        RETURNING s.version - v_count INTO v_current;
    END IF;
    IF v_current IS NULL THEN
        LOOP
            SELECT s.version, s.deleted_at IS NOT NULL INTO v_current, v_deleted
            FROM tideflow.streams AS s
            WHERE s.stream_id = p_stream_id FOR UPDATE;
            v_exists := FOUND;
            IF NOT v_exists THEN
                v_current := 0;
            ELSIF v_deleted THEN
                RAISE EXCEPTION 'stream % is deleted', p_stream_id USING ERRCODE = 'TF003';
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
