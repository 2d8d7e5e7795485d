//! The [`Tx`] primitives of one write transaction in SQL (the batch and its pipeline around them
//! are in `pipeline.rs`).

use tessera_core::{KeyId, SessionId, TokenId};
use tokio_postgres::Row;

use super::pipeline::{p, Params, PgTx};
use super::rows::{
    app_of, bytes, db, key_of, kind_of, notice_of, session_of, signing_key_of, signing_state_name,
    state_name, token_of, SELECT_APPS, SELECT_SIGNING,
};
use crate::backend::{Event, Tx};
use crate::codec::{Notice, StoredApp, StoredKey, StoredSession, StoredSigningKey, StoredToken};
use crate::error::{Error, Result};

impl PgTx<'_> {
    /// The family of `ids` as the statement's snapshot sees it (the migration's `tessera_family`).
    fn family(&mut self, ids: &[Vec<u8>]) -> Result<Vec<(TokenId, bool)>> {
        self.run(
            "SELECT tid, revoked FROM tessera_family($1) ORDER BY depth, tid",
            vec![p(ids.to_vec())],
            |rows| {
                rows.iter()
                    .map(|r| {
                        let tid = TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?);
                        Ok((tid, r.try_get(1).map_err(db)?))
                    })
                    .collect()
            },
        )
    }
}

impl Tx for PgTx<'_> {
    fn key(&mut self, kid: &KeyId) -> Result<Option<StoredKey>> {
        if let Some(k) = self.keys.get(kid) {
            return Ok(k.clone());
        }
        let params: Params = vec![p(kid.as_bytes().to_vec())];
        let key = self.run(
            "SELECT kid, sealed, state, created, retired_at, revoked_at FROM tessera_keys WHERE kid = $1",
            params,
            |rows| rows.first().map(key_of).transpose().map(|k| k.map(|(_, k)| k)),
        )?;
        self.keys.insert(*kid, key.clone());
        Ok(key)
    }

    fn keys(&mut self) -> Result<Vec<(KeyId, StoredKey)>> {
        self.run(
            "SELECT kid, sealed, state, created, retired_at, revoked_at FROM tessera_keys",
            vec![],
            |rows| rows.iter().map(key_of).collect(),
        )
    }

    fn put_key(&mut self, kid: &KeyId, key: &StoredKey) -> Result<()> {
        self.keys.insert(*kid, Some(key.clone()));
        let params: Params = vec![
            p(kid.as_bytes().to_vec()),
            p(key.sealed.clone()),
            p(state_name(key.state)),
            p(key.created),
            p(key.retired_at),
            p(key.revoked_at),
        ];
        self.run(
            "INSERT INTO tessera_keys (kid, sealed, state, created, retired_at, revoked_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (kid) DO UPDATE SET sealed = excluded.sealed, state = excluded.state,
               retired_at = excluded.retired_at, revoked_at = excluded.revoked_at",
            params,
            |_| Ok(()),
        )
    }

    fn token(&mut self, tid: &TokenId) -> Result<Option<StoredToken>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        self.run(select_tokens!("WHERE tid = $1"), params, |rows| {
            rows.first().map(token_of).transpose().map(|t| t.map(|(_, t)| t))
        })
    }

    /// `FOR SHARE`: a revocation of this family locks its rows `FOR NO KEY UPDATE` before it
    /// reads the family for the last time, so it waits for this child to commit and then sees it,
    /// or this waits for the revocation and then sees the parent revoked.
    fn parent(&mut self, tid: &TokenId) -> Result<Option<StoredToken>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        self.run(select_tokens!("WHERE tid = $1 FOR SHARE"), params, |rows| {
            rows.first().map(token_of).transpose().map(|t| t.map(|(_, t)| t))
        })
    }

    fn insert_token(&mut self, tid: &TokenId, t: &StoredToken) -> Result<()> {
        let params = record_params(tid, t);
        self.defer(INSERT_TOKEN_SQL, params);
        Ok(())
    }

    /// One statement, one round trip: the key, the id, the parent (`FOR SHARE`, as
    /// [`Tx::parent`] holds it) and the insert, which happens only when every check passes; then
    /// the checks' findings say which error, if any, the operation has.
    fn record_token(&mut self, tid: &TokenId, t: &StoredToken) -> Result<()> {
        let rows = self.run_many(RECORD_SQL, vec![record_params(tid, t)])?;
        recorded(tid, t, &rows[0])
    }

    /// The statement of [`Tx::record_token`] once per record, pipelined: one round trip for all.
    /// Each sees the ones before it (one transaction, run in order). None raises an error for a
    /// refusal, so an error is the database's and fails them all.
    fn record_tokens(&mut self, rows: &[(TokenId, StoredToken)]) -> Result<Vec<Result<()>>> {
        let sets = rows.iter().map(|(tid, t)| record_params(tid, t)).collect();
        let found = self.run_many(RECORD_SQL, sets)?;
        Ok(rows.iter().zip(&found).map(|((tid, t), found)| recorded(tid, t, found)).collect())
    }

    fn revoke_token(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        self.defer(REVOKE_ONE_SQL, params);
        Ok(())
    }

    fn children(&mut self, tid: &TokenId) -> Result<Vec<TokenId>> {
        let params: Params = vec![p(tid.as_bytes().to_vec())];
        self.run("SELECT tid FROM tessera_tokens WHERE parent = $1 ORDER BY tid", params, |rows| {
            rows.iter().map(|r| Ok(TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?))).collect()
        })
    }

    fn signing_keys(&mut self) -> Result<Vec<(String, StoredSigningKey)>> {
        self.run(SELECT_SIGNING, vec![], |rows| rows.iter().map(signing_key_of).collect())
    }

    fn put_signing_key(&mut self, kid: &str, k: &StoredSigningKey) -> Result<()> {
        let state = signing_state_name(k.state);
        let params: Params = vec![
            p(kid.to_owned()),
            p(k.alg.clone()),
            p(k.sealed.clone()),
            p(k.jwk.clone()),
            p(state),
            p(k.created),
            p(k.activated_at),
            p(k.retired_at),
            p(k.owner.clone()),
        ];
        self.run(
            "INSERT INTO tessera_signing_keys (kid, alg, sealed, jwk, state, created, activated_at, retired_at, owner)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (kid) DO UPDATE SET state = excluded.state, activated_at = excluded.activated_at,
               retired_at = excluded.retired_at",
            params,
            |_| Ok(()),
        )
    }

    fn apps(&mut self) -> Result<Vec<(String, StoredApp)>> {
        self.run(SELECT_APPS, vec![], |rows| rows.iter().map(app_of).collect())
    }

    fn put_app(&mut self, name: &str, app: &StoredApp) -> Result<()> {
        let params: Params = vec![p(name.to_owned()), p(app.audience.clone()), p(crate::codec::encode(app))];
        self.run(
            "INSERT INTO tessera_apps (name, audience, record) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            params,
            |_| Ok(()),
        )
    }

    /// One statement, one round trip: the row is locked (`FOR UPDATE`: of two nodes using one
    /// token at once, the second waits and then sees the first's use) and marked used only if
    /// it was not; the answer is the use before this one, if any.
    fn mark_used(&mut self, tid: &TokenId, at: i64) -> Result<Option<i64>> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        let (found, before) = self.run(
            "WITH o AS MATERIALIZED (SELECT used_at FROM tessera_tokens WHERE tid = $1 FOR UPDATE),
             u AS (UPDATE tessera_tokens SET used_at = $2
                   WHERE tid = $1 AND EXISTS (SELECT 1 FROM o WHERE used_at IS NULL) RETURNING 1)
             SELECT EXISTS (SELECT 1 FROM o), (SELECT used_at FROM o), EXISTS (SELECT 1 FROM u)",
            params,
            |rows| {
                let r = rows.first().ok_or_else(|| Error::Corrupt("a single use returned no row".into()))?;
                Ok((r.try_get::<_, bool>(0).map_err(db)?, r.try_get::<_, Option<i64>>(1).map_err(db)?))
            },
        )?;
        if !found {
            return Err(Error::UnknownToken(*tid));
        }
        Ok(before)
    }

    fn touch(&mut self, tid: &TokenId, at: i64) -> Result<()> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(at)];
        self.defer(TOUCH_SQL, params);
        Ok(())
    }

    fn claim_notice(&mut self, n: &Notice) -> Result<bool> {
        let params: Params = vec![
            p(n.tid.as_bytes().to_vec()),
            p(n.threshold),
            p(n.created),
            p(n.delivered_at),
            p(i32::try_from(n.attempts).unwrap_or(i32::MAX)),
            p(n.next_attempt),
        ];
        self.run(
            "INSERT INTO tessera_notices (tid, threshold, created, delivered_at, attempts, next_attempt)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tid, threshold) DO NOTHING RETURNING tid",
            params,
            |rows| Ok(!rows.is_empty()),
        )
    }

    fn notice(&mut self, tid: &TokenId, threshold: i64) -> Result<Option<Notice>> {
        let params: Params = vec![p(tid.as_bytes().to_vec()), p(threshold)];
        self.run(
            "SELECT tid, threshold, created, delivered_at, attempts, next_attempt FROM tessera_notices
             WHERE tid = $1 AND threshold = $2 FOR UPDATE",
            params,
            |rows| rows.first().map(notice_of).transpose(),
        )
    }

    fn put_notice(&mut self, n: &Notice) -> Result<()> {
        let params: Params = vec![
            p(n.tid.as_bytes().to_vec()),
            p(n.threshold),
            p(n.delivered_at),
            p(i32::try_from(n.attempts).unwrap_or(i32::MAX)),
            p(n.next_attempt),
        ];
        self.defer(PUT_NOTICE_SQL, params);
        Ok(())
    }

    fn session(&mut self, sid: &SessionId) -> Result<Option<StoredSession>> {
        let params: Params = vec![p(sid.as_bytes().to_vec())];
        // FOR UPDATE: a refresh of this session on another node waits for this transaction.
        self.run("SELECT record FROM tessera_sessions WHERE sid = $1 FOR UPDATE", params, |rows| {
            rows.first().map(session_of).transpose()
        })
    }

    fn put_session(&mut self, sid: &SessionId, session: &StoredSession) -> Result<()> {
        let params: Params =
            vec![p(sid.as_bytes().to_vec()), p(session.subject.clone()), p(crate::codec::encode(session))];
        // Queued: it goes with the next statement or the commit (the record was read `FOR
        // UPDATE` before, so nothing else can have changed it).
        self.defer(PUT_SESSION_SQL, params);
        Ok(())
    }

    /// One statement (the migration's `tessera_family`): the whole family, each token once (at
    /// its smallest depth), by depth then id.
    ///
    /// The family is locked (`FOR NO KEY UPDATE`, in id order) and read again until no new member
    /// appears: a child recorded concurrently holds its parent `FOR SHARE` until it commits, so
    /// the lock waits for it and the next read (a new snapshot) sees it. Once every member is
    /// locked no child can be added under any of them until this transaction ends.
    fn descendants(&mut self, roots: &[TokenId]) -> Result<Vec<(TokenId, bool)>> {
        let ids: Vec<Vec<u8>> = roots.iter().map(|t| t.as_bytes().to_vec()).collect();
        let mut locked: std::collections::HashSet<TokenId> = std::collections::HashSet::new();
        let found = loop {
            let found = self.family(&ids)?;
            let new: Vec<Vec<u8>> = found
                .iter()
                .filter(|(t, _)| !locked.contains(t))
                .map(|(t, _)| t.as_bytes().to_vec())
                .collect();
            if new.is_empty() {
                break found;
            }
            self.run(
                "SELECT tid FROM tessera_tokens WHERE tid = ANY($1) ORDER BY tid FOR NO KEY UPDATE",
                vec![p(new)],
                |_| Ok(()),
            )?;
            locked.extend(found.iter().map(|(t, _)| *t));
        };
        if let Some(missing) = roots.iter().find(|r| !found.iter().any(|(t, _)| t == *r)) {
            return Err(Error::UnknownToken(*missing));
        }
        // The roots first, in the order given (they are at depth 0, or below another root).
        let (mut first, rest): (Vec<_>, Vec<_>) = found.into_iter().partition(|(t, _)| roots.contains(t));
        first.sort_by_key(|(t, _)| roots.iter().position(|r| r == t));
        first.extend(rest);
        Ok(first)
    }

    /// One statement; a record another writer revoked first is left as it is, and not returned.
    fn revoke_tokens(&mut self, tids: &[TokenId], at: i64) -> Result<Vec<TokenId>> {
        if tids.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Vec<u8>> = tids.iter().map(|t| t.as_bytes().to_vec()).collect();
        let marked: std::collections::HashSet<TokenId> = self.run(
            "UPDATE tessera_tokens SET revoked_at = $2 WHERE tid = ANY($1) AND revoked_at IS NULL RETURNING tid",
            vec![p(ids), p(at)],
            |rows| {
                rows.iter().map(|r| Ok(TokenId::from_bytes(bytes(r.try_get(0).map_err(db)?, "tid")?))).collect()
            },
        )?;
        Ok(tids.iter().filter(|t| marked.contains(t)).copied().collect())
    }

    /// One statement, whatever the number of entries: the counter's lock is taken once, here.
    fn append_all(&mut self, at: i64, events: &[Event]) -> Result<Vec<u64>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (kinds, ids): (Vec<&'static str>, Vec<Vec<u8>>) = events.iter().map(kind_of).unzip();
        let n = events.len() as i64;
        let mut seqs: Vec<u64> = self.run(
            "WITH next AS (UPDATE tessera_change_counter SET last_seq = last_seq + $2 RETURNING last_seq)
             INSERT INTO tessera_changes (seq, at, kind, id)
             SELECT next.last_seq - $2 + e.ord, $1, e.kind, e.id
             FROM next, unnest($3::text[], $4::bytea[]) WITH ORDINALITY AS e (kind, id, ord)
             RETURNING seq",
            vec![p(at), p(n), p(kinds), p(ids)],
            |rows| rows.iter().map(|r| r.try_get::<_, i64>(0).map(|s| s as u64).map_err(db)).collect(),
        )?;
        self.appended = true;
        // seq = first + ord - 1: ascending seq is the order given.
        seqs.sort_unstable();
        if seqs.len() != events.len() {
            return Err(Error::Corrupt("change counter row is missing".into()));
        }
        Ok(seqs)
    }

    fn appended(&self) -> bool {
        self.appended
    }

    fn insert_audit(&mut self, row: &crate::audit::AuditRow, only: crate::audit::Only) -> Result<()> {
        self.audit.push(row, only);
        Ok(())
    }

    fn copy_tokens(&mut self, rows: &[(TokenId, StoredToken)]) -> Result<()> {
        super::bulk::copy_tokens(self, rows)
    }

    fn copy_changes(&mut self, rows: &[crate::backend::Change]) -> Result<()> {
        super::bulk::copy_changes(self, rows)
    }

    fn copy_audit(
        &mut self,
        anchor: Option<crate::audit::AuditAnchor>,
        rows: &[crate::audit::AuditRow],
    ) -> Result<()> {
        super::bulk::copy_audit(self, anchor, rows)
    }

    fn append(&mut self, at: i64, event: Event) -> Result<u64> {
        let (kind, id) = kind_of(&event);
        let params: Params = vec![p(at), p(kind), p(id)];
        // The counter row's lock is held until commit: appends are serialized in commit order.
        let seq = self.run(
            "WITH next AS (UPDATE tessera_change_counter SET last_seq = last_seq + 1 RETURNING last_seq)
             INSERT INTO tessera_changes (seq, at, kind, id) SELECT last_seq, $1, $2, $3 FROM next
             RETURNING seq",
            params,
            |rows| rows.first().map(|r| r.try_get::<_, i64>(0).map_err(db)).transpose(),
        )?;
        self.appended = true;
        seq.map(|s| s as u64).ok_or_else(|| Error::Corrupt("change counter row is missing".into()))
    }
}

/// The parameters of [`RECORD_SQL`].
fn record_params(tid: &TokenId, t: &StoredToken) -> Params {
    vec![
        p(tid.as_bytes().to_vec()),
        p(t.kid.to_vec()),
        p(t.subject.clone()),
        p(t.description.clone()),
        p(t.created),
        p(t.expires),
        p(t.caveats.clone()),
        p(t.parent.map(|b| b.to_vec())),
        p(t.grant.clone()),
        p(t.session.map(|b| b.to_vec())),
    ]
}

/// The outcome of recording `tid` from what [`RECORD_SQL`] found: the key's state (none:
/// unknown), whether the id was taken, whether the parent was found and revoked, and whether the
/// row went in; the refusals in the order [`Tx::record_token`] checks them.
fn recorded(tid: &TokenId, t: &StoredToken, rows: &[Row]) -> Result<()> {
    let r = rows.first().ok_or_else(|| Error::Corrupt("recording a token returned no row".into()))?;
    let key_state: Option<String> = r.try_get(0).map_err(db)?;
    let (duplicate, parent_found, parent_revoked, inserted): (bool, bool, bool, bool) = (
        r.try_get(1).map_err(db)?,
        r.try_get(2).map_err(db)?,
        r.try_get(3).map_err(db)?,
        r.try_get(4).map_err(db)?,
    );
    let kid = KeyId::from_bytes(t.kid);
    match key_state.as_deref() {
        None => return Err(Error::UnknownKey(kid)),
        Some("revoked") => return Err(Error::KeyRevoked(kid)),
        Some(_) => {}
    }
    if duplicate {
        return Err(Error::DuplicateToken(*tid));
    }
    if let Some(parent) = t.parent.map(TokenId::from_bytes) {
        if !parent_found {
            return Err(Error::UnknownToken(parent));
        }
        if parent_revoked {
            return Err(Error::ParentRevoked(parent));
        }
    }
    if !inserted {
        // Recorded by a concurrent writer after this statement's snapshot.
        return Err(Error::DuplicateToken(*tid));
    }
    Ok(())
}

/// Recording a new token in one statement (see [`Tx::record_token`]). Every check is a
/// materialized CTE, evaluated before the insert that depends on them; the parent is locked
/// `FOR SHARE` and read in its latest committed version. `ON CONFLICT DO NOTHING` covers an id
/// recorded concurrently after the snapshot.
const RECORD_SQL: &str = "WITH k AS MATERIALIZED (SELECT state FROM tessera_keys WHERE kid = $2::bytea),
    d AS MATERIALIZED (SELECT 1 FROM tessera_tokens WHERE tid = $1::bytea),
    par AS MATERIALIZED (SELECT revoked_at FROM tessera_tokens WHERE tid = $8::bytea FOR SHARE),
    ins AS (
        INSERT INTO tessera_tokens (tid, kid, subject, description, created, expires, caveats, parent, grant_json,
            session)
        SELECT $1::bytea, $2::bytea, $3::text, $4::text, $5::bigint, $6::bigint, $7::text[], $8::bytea, $9::text,
            $10::bytea
        WHERE EXISTS (SELECT 1 FROM k WHERE state <> 'revoked')
          AND NOT EXISTS (SELECT 1 FROM d)
          AND ($8::bytea IS NULL OR EXISTS (SELECT 1 FROM par WHERE revoked_at IS NULL))
        ON CONFLICT (tid) DO NOTHING
        RETURNING 1)
    SELECT (SELECT state FROM k), EXISTS (SELECT 1 FROM d), EXISTS (SELECT 1 FROM par),
        EXISTS (SELECT 1 FROM par WHERE revoked_at IS NOT NULL), EXISTS (SELECT 1 FROM ins)";

/// A token record's insert (queued: see [`PgTx::defer`]).
pub(super) const INSERT_TOKEN_SQL: &str =
    "INSERT INTO tessera_tokens (tid, kid, subject, description, created, expires, caveats, parent, grant_json, session)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/// One token record marked revoked (queued).
pub(super) const REVOKE_ONE_SQL: &str = "UPDATE tessera_tokens SET revoked_at = $2 WHERE tid = $1";

/// A last use moved forward, never back (queued).
pub(super) const TOUCH_SQL: &str =
    "UPDATE tessera_tokens SET last_used = $2 WHERE tid = $1 AND (last_used IS NULL OR last_used < $2)";

/// A notice's delivery progress (queued).
pub(super) const PUT_NOTICE_SQL: &str =
    "UPDATE tessera_notices SET delivered_at = $3, attempts = $4, next_attempt = $5
     WHERE tid = $1 AND threshold = $2";

/// A session's record, new or replaced (queued).
pub(super) const PUT_SESSION_SQL: &str =
    "INSERT INTO tessera_sessions (sid, subject, record) VALUES ($1, $2, $3)
     ON CONFLICT (sid) DO UPDATE SET record = excluded.record";
