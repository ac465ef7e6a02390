-- Retention (issue 18): usage events (key.used, key.denied) leave the hot store only after
-- they were written to a sealed archive segment, read back and verified. The prune is one
-- transaction that records the segment here, keeps each deleted event's hash in
-- pruned_hashes (so the chain and the Merkle tree still verify across the hole), keeps the
-- last version of each usage stream it empties in pruned_streams (so a stream's versions
-- are never handed out twice), deletes the rows and appends one `audit.archived` event.
-- Every table here is insert-only.

-- A sealed segment whose usage events were pruned: seqs first_seq to last_seq.
CREATE TABLE archived_segments (
    first_seq   BIGINT PRIMARY KEY CHECK (first_seq >= 1),
    last_seq    BIGINT NOT NULL UNIQUE CHECK (last_seq >= first_seq),
    name        TEXT   NOT NULL UNIQUE,
    root        BYTEA  NOT NULL CHECK (length(root) = 32),
    checkpoint  TEXT   NOT NULL,
    archived_at BIGINT NOT NULL
);

-- The hash of every event deleted from `events`, by seq.
CREATE TABLE IF NOT EXISTS pruned_hashes (
    seq  BIGINT PRIMARY KEY CHECK (seq >= 1),
    hash BYTEA  NOT NULL CHECK (length(hash) = 32)
);

-- The highest version of each stream a prune deleted events of, per segment.
CREATE TABLE pruned_streams (
    stream   TEXT   NOT NULL,
    last_seq BIGINT NOT NULL,
    version  BIGINT NOT NULL CHECK (version >= 1),
    PRIMARY KEY (stream, last_seq)
);

CREATE FUNCTION archive_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is insert-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER archived_segments_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON archived_segments
    FOR EACH STATEMENT EXECUTE FUNCTION archive_refuse_change();
CREATE TRIGGER pruned_streams_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON pruned_streams
    FOR EACH STATEMENT EXECUTE FUNCTION archive_refuse_change();
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'pruned_hashes_no_change'
                   AND tgrelid = 'pruned_hashes'::regclass) THEN
        CREATE TRIGGER pruned_hashes_no_change BEFORE UPDATE OR DELETE OR TRUNCATE ON pruned_hashes
            FOR EACH STATEMENT EXECUTE FUNCTION archive_refuse_change();
    END IF;
END;
$$;

-- A DELETE is allowed only for a usage event inside a registered archived segment whose
-- hash is already kept, row by row. UPDATE and TRUNCATE stay refused (0001).
DROP TRIGGER events_no_delete ON events;

CREATE FUNCTION events_delete_archived() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.type NOT IN ('key.used', 'key.denied')
        OR NOT EXISTS (SELECT 1 FROM archived_segments a
                       WHERE OLD.seq BETWEEN a.first_seq AND a.last_seq)
        OR NOT EXISTS (SELECT 1 FROM pruned_hashes p WHERE p.seq = OLD.seq) THEN
        RAISE EXCEPTION 'events are append-only: only usage events of an archived segment may be deleted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN OLD;
END;
$$;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_delete_archived();
