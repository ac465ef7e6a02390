-- Retention (issue 18): usage events (key.used, key.denied) leave the hot store only after
-- they were written to a sealed archive segment, read back and verified. The prune is one
-- transaction that records the segment here, keeps each deleted event's hash in
-- pruned_hashes (so the chain and the Merkle tree still verify across the hole), keeps the
-- last version of each usage stream it empties in pruned_streams (so a stream's versions
-- are never handed out twice), deletes the rows and appends one `audit.archived` event.
-- Every table here is insert-only.

-- A sealed segment whose usage events were pruned: seqs first_seq to last_seq.
CREATE TABLE archived_segments (
    first_seq   INTEGER PRIMARY KEY CHECK (first_seq >= 1),
    last_seq    INTEGER NOT NULL UNIQUE CHECK (last_seq >= first_seq),
    name        TEXT    NOT NULL UNIQUE,
    root        BLOB    NOT NULL CHECK (length(root) = 32),
    checkpoint  TEXT    NOT NULL,
    archived_at INTEGER NOT NULL
) STRICT;

CREATE TRIGGER archived_segments_no_update BEFORE UPDATE ON archived_segments
BEGIN
    SELECT RAISE(ABORT, 'archived segments are insert-only');
END;

CREATE TRIGGER archived_segments_no_delete BEFORE DELETE ON archived_segments
BEGIN
    SELECT RAISE(ABORT, 'archived segments are insert-only');
END;

-- The hash of every event deleted from `events`, by seq: ~45 bytes a row against the
-- whole event.
CREATE TABLE IF NOT EXISTS pruned_hashes (
    seq  INTEGER PRIMARY KEY CHECK (seq >= 1),
    hash BLOB    NOT NULL CHECK (length(hash) = 32)
) STRICT;

CREATE TRIGGER IF NOT EXISTS pruned_hashes_no_update BEFORE UPDATE ON pruned_hashes
BEGIN
    SELECT RAISE(ABORT, 'pruned hashes are insert-only');
END;

CREATE TRIGGER IF NOT EXISTS pruned_hashes_no_delete BEFORE DELETE ON pruned_hashes
BEGIN
    SELECT RAISE(ABORT, 'pruned hashes are insert-only');
END;

-- The highest version of each stream a prune deleted events of, per segment.
CREATE TABLE pruned_streams (
    stream   TEXT    NOT NULL,
    last_seq INTEGER NOT NULL,
    version  INTEGER NOT NULL CHECK (version >= 1),
    PRIMARY KEY (stream, last_seq)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER pruned_streams_no_update BEFORE UPDATE ON pruned_streams
BEGIN
    SELECT RAISE(ABORT, 'pruned streams are insert-only');
END;

CREATE TRIGGER pruned_streams_no_delete BEFORE DELETE ON pruned_streams
BEGIN
    SELECT RAISE(ABORT, 'pruned streams are insert-only');
END;

-- A DELETE is allowed only for a usage event inside a registered archived segment whose
-- hash is already kept. UPDATE stays refused (events_no_update). `type` is an id into
-- `names` since 0003.
DROP TRIGGER events_no_delete;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN (SELECT name FROM names WHERE id = OLD.type) IS NOT 'key.used'
    AND (SELECT name FROM names WHERE id = OLD.type) IS NOT 'key.denied'
    OR NOT EXISTS (SELECT 1 FROM archived_segments a
                   WHERE OLD.seq BETWEEN a.first_seq AND a.last_seq)
    OR NOT EXISTS (SELECT 1 FROM pruned_hashes p WHERE p.seq = OLD.seq)
BEGIN
    SELECT RAISE(ABORT, 'events are append-only: only usage events of an archived segment may be deleted');
END;
