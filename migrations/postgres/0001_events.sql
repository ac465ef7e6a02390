-- The event log, shared by every node. Rows are only ever inserted: the triggers below
-- refuse UPDATE, DELETE and TRUNCATE. seq is assigned by the appending node under a
-- transaction-scoped advisory lock (gap-free from 1, in commit order), never by a
-- sequence, which would hand out numbers that commit out of order or not at all.
-- occurred_at is UTC microseconds since the Unix epoch. data is canonical JSON as TEXT
-- (not JSONB, which would normalise it), so that reading a row and hashing it again gives
-- the stored hash.
CREATE TABLE events (
    seq            BIGINT  PRIMARY KEY CHECK (seq >= 1),
    event_id       TEXT    NOT NULL UNIQUE,
    stream         TEXT    NOT NULL,
    stream_version BIGINT  NOT NULL CHECK (stream_version >= 1),
    type           TEXT    NOT NULL,
    schema         INTEGER NOT NULL CHECK (schema BETWEEN 0 AND 65535),
    occurred_at    BIGINT  NOT NULL,
    actor          TEXT    NOT NULL,
    request_id     TEXT,
    data           TEXT    NOT NULL,
    prev_hash      BYTEA   NOT NULL CHECK (length(prev_hash) = 32),
    hash           BYTEA   NOT NULL CHECK (length(hash) = 32),
    UNIQUE (stream, stream_version)
);

CREATE INDEX events_type_seq ON events (type, seq);
CREATE INDEX events_actor_seq ON events (actor, seq);
CREATE INDEX events_occurred_at ON events (occurred_at);

CREATE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

-- Statement-level, so that even a statement that matches no row is refused.
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Wakes every node's tail. PostgreSQL delivers a notification only when (and if) the
-- inserting transaction commits, and folds repeats within one transaction, so a batch
-- sends one. The payload is the highest seq inserted; listeners treat it as a hint and
-- read the log from their own head.
CREATE FUNCTION events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('keyward_events', (SELECT max(seq) FROM inserted)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_notify AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();
