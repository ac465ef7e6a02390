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
-- An append writes its nodes in the transaction that writes its events, under the same
-- advisory lock, so the table holds exactly the complete nodes at these levels within
-- the first N events for some N: how far the tree is built follows from the highest
-- level-4 node (see src/store/tree.rs), and no row ever needs to change. Rows are only
-- ever inserted: the triggers below refuse UPDATE, DELETE and TRUNCATE.
CREATE TABLE merkle_nodes (
    level INTEGER NOT NULL CHECK (level BETWEEN 4 AND 60 AND level % 4 = 0),
    idx   BIGINT  NOT NULL CHECK (idx >= 0),
    hash  BYTEA   NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);

CREATE FUNCTION merkle_nodes_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Merkle tree is append-only' USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER merkle_nodes_no_update BEFORE UPDATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION merkle_nodes_refuse_change();
CREATE TRIGGER merkle_nodes_no_delete BEFORE DELETE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION merkle_nodes_refuse_change();
CREATE TRIGGER merkle_nodes_no_truncate BEFORE TRUNCATE ON merkle_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION merkle_nodes_refuse_change();
