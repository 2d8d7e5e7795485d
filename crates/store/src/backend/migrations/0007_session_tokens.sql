-- Schema version 8 (issue 19, finding 1): sessions of a fixed size, and revocation walks whose
-- cost is linear in the family they revoke.
--
-- A refresh token's record names its session, so a spent one is recognised by one lookup instead
-- of a list in the session's record that grew with every rotation. The session records themselves
-- (CBOR) change form as they are next written; older ones are read as they are.

ALTER TABLE tessera_tokens ADD COLUMN session bytea CHECK (length(session) = 16);

-- A family and everything minted from it, transitively, each token once with its smallest depth:
-- one statement however deep the lineage (a session's refresh tokens are a chain, one per
-- rotation). The planner settings hold the recursion to an index lookup per token: with the
-- statistics of a table that grew since it was last analysed it chose a hash join that scans the
-- table at every level, which is quadratic (37 s for a chain of 10,000 instead of 0.1 s).
CREATE FUNCTION tessera_family(roots bytea[])
RETURNS TABLE (tid bytea, revoked boolean, depth integer)
LANGUAGE sql STABLE
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off
AS $$
    WITH RECURSIVE walk (tid, revoked, depth) AS (
        SELECT t.tid, t.revoked_at IS NOT NULL, 0 FROM tessera_tokens t WHERE t.tid = ANY (roots)
      UNION ALL
        SELECT t.tid, t.revoked_at IS NOT NULL, w.depth + 1
        FROM walk w JOIN tessera_tokens t ON t.parent = w.tid
    )
    SELECT walk.tid, bool_or(walk.revoked), min(walk.depth) FROM walk GROUP BY walk.tid
$$;
