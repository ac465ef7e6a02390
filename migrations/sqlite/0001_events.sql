-- The event log. Rows are only ever inserted: the triggers below refuse UPDATE and DELETE.
-- seq is assigned by the appender (gap-free from 1, in commit order), never by SQLite.
-- occurred_at is UTC microseconds since the Unix epoch. data is canonical JSON, so that
-- reading a row and hashing it again gives the stored hash.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY CHECK (seq >= 1),
    event_id       TEXT    NOT NULL UNIQUE,
    stream         TEXT    NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
    type           TEXT    NOT NULL,
    schema         INTEGER NOT NULL CHECK (schema BETWEEN 0 AND 65535),
    occurred_at    INTEGER NOT NULL,
    actor          TEXT    NOT NULL,
    request_id     TEXT,
    data           TEXT    NOT NULL,
    prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
    hash           BLOB    NOT NULL CHECK (length(hash) = 32),
    UNIQUE (stream, stream_version)
) STRICT;

CREATE INDEX events_type_seq ON events (type, seq);
CREATE INDEX events_actor_seq ON events (actor, seq);
CREATE INDEX events_occurred_at ON events (occurred_at);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'events are append-only');
END;
