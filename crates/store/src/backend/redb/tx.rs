//! The embedded backend's write transaction: the `Tx` operations the writer's rules run on, one
//! redb write transaction per batch, each table opened once for it ([`Tables`]).

use super::*;

impl Tx for RedbTx<'_, '_> {
    fn key(&mut self, kid: &KeyId) -> Result<Option<StoredKey>> {
        let v = self.tables.keys()?.get(kid.as_bytes()).map_err(storage)?;
        v.map(|v| codec::decode(v.value(), "key")).transpose()
    }

    fn keys(&mut self) -> Result<Vec<(KeyId, StoredKey)>> {
        all_keys(self.tables.keys()?)
    }

    fn put_key(&mut self, kid: &KeyId, key: &StoredKey) -> Result<()> {
        self.tables.keys()?.insert(kid.as_bytes(), codec::encode(key).as_slice()).map_err(storage)?;
        Ok(())
    }

    fn token(&mut self, tid: &TokenId) -> Result<Option<StoredToken>> {
        get_token(self.tables.tokens()?, tid)
    }

    fn insert_token(&mut self, tid: &TokenId, token: &StoredToken) -> Result<()> {
        self.tables.tokens()?.insert(tid.as_bytes(), codec::encode(token).as_slice()).map_err(storage)?;
        self.tables.by_subject()?.insert((token.subject.as_str(), *tid.as_bytes()), ()).map_err(storage)?;
        if let Some(parent) = token.parent {
            self.tables.children()?.insert((parent, *tid.as_bytes()), ()).map_err(storage)?;
        }
        Ok(())
    }

    fn revoke_token(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let tokens = self.tables.tokens()?;
        let mut stored = get_token(tokens, tid)?.ok_or(Error::UnknownToken(*tid))?;
        stored.revoked_at = Some(at);
        tokens.insert(tid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
        Ok(())
    }

    fn children(&mut self, tid: &TokenId) -> Result<Vec<TokenId>> {
        children(self.tables.children()?, tid)
    }

    fn mark_used(&mut self, tid: &TokenId, at: i64) -> Result<Option<i64>> {
        let tokens = self.tables.tokens()?;
        let mut stored = get_token(tokens, tid)?.ok_or(Error::UnknownToken(*tid))?;
        if let Some(t) = stored.used_at {
            return Ok(Some(t));
        }
        stored.used_at = Some(at);
        tokens.insert(tid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
        Ok(None)
    }

    fn touch(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let tokens = self.tables.tokens()?;
        if let Some(mut stored) = get_token(tokens, tid)? {
            if stored.last_used.is_none_or(|l| l < at) {
                stored.last_used = Some(at);
                tokens.insert(tid.as_bytes(), codec::encode(&stored).as_slice()).map_err(storage)?;
            }
        }
        Ok(())
    }

    fn claim_notice(&mut self, n: &Notice) -> Result<bool> {
        let t = self.tables.notices()?;
        let key = (*n.tid.as_bytes(), n.threshold);
        if t.get(key).map_err(storage)?.is_some() {
            return Ok(false);
        }
        t.insert(key, codec::encode(n).as_slice()).map_err(storage)?;
        Ok(true)
    }

    fn notice(&mut self, tid: &TokenId, threshold: i64) -> Result<Option<Notice>> {
        let v = self.tables.notices()?.get((*tid.as_bytes(), threshold)).map_err(storage)?;
        v.map(|v| codec::decode(v.value(), "notice")).transpose()
    }

    fn put_notice(&mut self, n: &Notice) -> Result<()> {
        let t = self.tables.notices()?;
        t.insert((*n.tid.as_bytes(), n.threshold), codec::encode(n).as_slice()).map_err(storage)?;
        Ok(())
    }

    fn signing_keys(&mut self) -> Result<Vec<(String, StoredSigningKey)>> {
        by_name(self.tables.signing()?, "signing key")
    }

    fn put_signing_key(&mut self, kid: &str, key: &StoredSigningKey) -> Result<()> {
        self.tables.signing()?.insert(kid, codec::encode(key).as_slice()).map_err(storage)?;
        Ok(())
    }

    fn apps(&mut self) -> Result<Vec<(String, StoredApp)>> {
        by_name(self.tables.apps()?, "application")
    }

    fn put_app(&mut self, name: &str, app: &StoredApp) -> Result<()> {
        self.tables.apps()?.insert(name, codec::encode(app).as_slice()).map_err(storage)?;
        Ok(())
    }

    fn session(&mut self, sid: &SessionId) -> Result<Option<StoredSession>> {
        // One writer per file: the write transaction is the lock.
        let v = self.tables.sessions()?.get(sid.as_bytes()).map_err(storage)?;
        v.map(|v| codec::decode(v.value(), "session")).transpose()
    }

    fn put_session(&mut self, sid: &SessionId, session: &StoredSession) -> Result<()> {
        self.tables.sessions()?.insert(sid.as_bytes(), codec::encode(session).as_slice()).map_err(storage)?;
        Ok(())
    }

    fn insert_audit(&mut self, row: &AuditRow, only: Only) -> Result<()> {
        audit::insert(self.tables, self.audit_tail, self.audit_key, row, only)
    }

    fn copy_audit(&mut self, anchor: Option<AuditAnchor>, rows: &[AuditRow]) -> Result<()> {
        audit::copy(self.tables, anchor, rows)
    }

    fn append(&mut self, at: i64, event: Event) -> Result<u64> {
        // One writer thread per database: the next number is the last one plus one.
        let log = self.tables.changes()?;
        let seq = log.last().map_err(storage)?.map_or(0, |(k, _)| k.value()) + 1;
        let entry = StoredRevocation { at, target: target_of(event) };
        log.insert(seq, codec::encode(&entry).as_slice()).map_err(storage)?;
        Ok(seq)
    }
}
