-- The Merkle tree over the log (RFC 6962 shape, see events/src/merkle.rs): leaf i is
-- SHA-256(0x00 || hash of event seq i+1), and node (level L, index k) covers leaves
-- [k*2^L, (k+1)*2^L).
--
-- Only complete subtrees at every 4th level are kept (levels 4, 8, 12, ...), as the
-- C2SP tlog-tiles layout keeps tiles of height 8: 1/16 + 1/256 + ... = about 1/15 of a
-- row per event. Leaves are not kept: they are the events' own hashes. Any node in
-- between is folded from at most 8 rows below it (stored nodes, or event hashes), so a
-- proof reads O(log N) rows, all in one query.
--
-- The appender writes a batch's nodes in the transaction that writes its events, so the
-- table holds exactly the complete nodes at these levels within the first N events for
-- some N: how far the tree is built follows from the highest level-4 node (see
-- src/store/tree.rs), and no row ever needs to change. Rows are only ever inserted: the
-- triggers below refuse UPDATE and DELETE, as for the events.
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL CHECK (level BETWEEN 4 AND 60 AND level % 4 = 0),
    idx   INTEGER NOT NULL CHECK (idx >= 0),
    hash  BLOB    NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
) STRICT, WITHOUT ROWID;

CREATE TRIGGER merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
BEGIN
    SELECT RAISE(ABORT, 'the Merkle tree is append-only');
END;

CREATE TRIGGER merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
BEGIN
    SELECT RAISE(ABORT, 'the Merkle tree is append-only');
END;
