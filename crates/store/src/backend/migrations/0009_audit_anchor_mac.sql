-- Schema version 10: the audit anchor's own time and MAC.
--
-- Pruning writes, with the last pruned entry's seq and link, when it pruned (`pruned_at_ms`) and
-- `anchor_mac` = HMAC(k_audit, 'tessera/audit-anchor/v1' || seq || mac || pruned_at_ms), so that
-- an anchor cannot be written (every entry deleted, the newest copied into the anchor) without
-- the master key. An anchor written before this migration has neither: verification reports it
-- as unauthenticated (never intact) until the next pruning replaces it.

ALTER TABLE tessera_audit_anchor
    ADD COLUMN pruned_at_ms bigint,
    ADD COLUMN anchor_mac bytea CHECK (length(anchor_mac) = 32),
    ADD CONSTRAINT tessera_audit_anchor_sealed CHECK ((pruned_at_ms IS NULL) = (anchor_mac IS NULL));

-- A node of an older build still running during a rolling upgrade prunes with
-- `ON CONFLICT (one) DO UPDATE SET seq = .., mac = ..`, which would keep the previous anchor's
-- time and MAC beside its new seq and link (a MAC that no longer checks: a false "broken"). Such
-- an update clears both instead, leaving an anchor without a MAC, as that build wrote it.
CREATE FUNCTION tessera_audit_anchor_unsealed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.seq, NEW.mac) IS DISTINCT FROM (OLD.seq, OLD.mac)
       AND NEW.anchor_mac IS NOT DISTINCT FROM OLD.anchor_mac THEN
        NEW.pruned_at_ms := NULL;
        NEW.anchor_mac := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER tessera_audit_anchor_unsealed BEFORE UPDATE ON tessera_audit_anchor
    FOR EACH ROW EXECUTE FUNCTION tessera_audit_anchor_unsealed();
