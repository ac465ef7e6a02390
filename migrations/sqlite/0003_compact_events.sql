-- Fewer bytes per event (issue 18). The events table is rebuilt in a compact shape; every
-- event keeps exactly the hash it had, since the hash covers the canonical JSON body, not
-- the stored bytes (see events/src/compact.rs and src/store/sqlite.rs):
--
-- - stream, type and actor are ids into `names`, a dictionary of strings that only grows;
-- - prev_hash is not stored: it is the hash of the row before, or for a row whose
--   predecessor was pruned, the hash kept in `pruned_hashes`; seq 1 follows the zero hash;
-- - event_id is the ULID's 16 bytes, request_id and data the compact encoding
--   (events/src/compact.rs) as BLOBs. Rows written before this migration keep their
--   event_id, request_id and data as the TEXT they were (a 26-character ULID, the id, the
--   canonical JSON), and readers take either form.
CREATE TABLE names (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE
) STRICT;

-- The hashes of events removed from the hot log, so that the event after one still has a
-- prev_hash to verify against.
CREATE TABLE IF NOT EXISTS pruned_hashes (seq INTEGER PRIMARY KEY CHECK(seq>=1), hash BLOB NOT NULL CHECK(length(hash)=32)) STRICT;

INSERT INTO names (name)
SELECT stream FROM events UNION SELECT type FROM events UNION SELECT actor FROM events;

DROP TRIGGER events_no_update;
DROP TRIGGER events_no_delete;
DROP INDEX events_type_seq;
DROP INDEX events_actor_seq;
DROP INDEX events_occurred_at;
ALTER TABLE events RENAME TO events_v2;

CREATE TABLE events (
    seq            INTEGER PRIMARY KEY CHECK (seq >= 1),
    event_id       ANY     NOT NULL UNIQUE CHECK (
        (typeof(event_id) = 'blob' AND length(event_id) = 16)
        OR (typeof(event_id) = 'text' AND length(event_id) = 26)),
    stream         INTEGER NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
    type           INTEGER NOT NULL,
    schema         INTEGER NOT NULL CHECK (schema BETWEEN 0 AND 65535),
    occurred_at    INTEGER NOT NULL,
    actor          INTEGER NOT NULL,
    request_id     ANY     CHECK (typeof(request_id) IN ('null', 'blob', 'text')),
    data           ANY     NOT NULL CHECK (typeof(data) IN ('blob', 'text')),
    hash           BLOB    NOT NULL CHECK (length(hash) = 32),
    UNIQUE (stream, stream_version)
) STRICT;

INSERT INTO events (seq, event_id, stream, stream_version, type, schema, occurred_at, actor,
                    request_id, data, hash)
SELECT e.seq, e.event_id, s.id, e.stream_version, t.id, e.schema, e.occurred_at, a.id,
       e.request_id, e.data, e.hash
FROM events_v2 e
JOIN names s ON s.name = e.stream
JOIN names t ON t.name = e.type
JOIN names a ON a.name = e.actor
ORDER BY e.seq;

DROP TABLE events_v2;

-- An index on one column orders its entries by (column, rowid), and seq is the rowid: the
-- same order as (type, seq) without storing seq twice.
CREATE INDEX events_type_seq ON events (type);
CREATE INDEX events_actor_seq ON events (actor);
CREATE INDEX events_occurred_at ON events (occurred_at);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
