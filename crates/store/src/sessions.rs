//! Sessions: their records (public and stored), and what the session operations mean in the
//! writer's transaction: start, renew (rotation, the grace replay, reuse detection) and end.
//!
//! Each refresh costs the same however old the session is: the session record holds the
//! current refresh token, the first one and the last spent one, never a list. A spent refresh
//! token is recognised by its own record, which names its session, in one lookup. Ending a
//! session is one walk from its first refresh token: each refresh token is the child of the one
//! it replaced, so the walk reaches every one of them once.

use serde::{Deserialize, Serialize};
use tessera_core::{SessionId, TokenId};

use crate::backend::Tx;
use crate::codec::{tid, tids, NewToken, Revocation};
use crate::error::{Error, Result};
use crate::writer::Writer;

/// A session: an access-token template and the chain of refresh tokens that renew it.
///
/// What the store keeps of a session does not grow with its age: each rotation replaces
/// `current` and `last_spent`, nothing is appended. Stored, it is at most 320 bytes beyond its
/// subject, application, algorithm, strategy, caveats and claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionRecord {
    /// Whom the session speaks for.
    pub subject: String,
    /// The registered application its access tokens are for, if any.
    pub app: Option<String>,
    /// Creation time (seconds since the epoch).
    pub created: i64,
    /// Algorithm of its access tokens (`ES256`, `EdDSA`, `HS256`).
    pub alg: String,
    /// Access token lifetime, seconds.
    pub access_ttl: u64,
    /// Refresh token lifetime, seconds.
    pub refresh_ttl: u64,
    /// Default renew strategy (`noRefresh`, `refreshOnExpire`, `refreshBoth`).
    pub strategy: String,
    /// The caveats every access token is restricted by (the creator's and the requested ones).
    pub caveats: Vec<String>,
    /// The caveats of every refresh token before its own `time-before` (what it may do:
    /// `sessions.refresh` on this session; the creator's time and network bounds).
    pub refresh_caveats: Vec<String>,
    /// Custom claims (compact JSON) every token of the session carries.
    pub claims: Option<String>,
    /// The refresh token family that renews now.
    pub current: TokenId,
    /// The session's first refresh token family. Each later one is recorded as a child of the
    /// one it replaced, so every refresh token of the session descends from this one: revoking
    /// it (or the token the session was created from) ends them all, in one walk.
    pub first: TokenId,
    /// The refresh token the last rotation spent (its successor is `current`). Presented again
    /// within the grace window, it gets that successor again; any other spent refresh token of
    /// the session presented again is reuse.
    pub last_spent: Option<Spent>,
    /// When the session was revoked (by an operator, or by reuse detection).
    pub revoked_at: Option<i64>,
}

/// A refresh token replaced by a rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    /// The spent refresh token family.
    #[serde(with = "tid")]
    pub tid: TokenId,
    /// When it was spent, in milliseconds since the epoch (the grace window is measured to the
    /// millisecond, not in whole seconds).
    pub at_ms: i64,
    /// The family that replaced it (returned again within the grace window).
    #[serde(with = "tid")]
    pub successor: TokenId,
}

/// A session as stored (CBOR). Its size does not depend on its age: at most 320 bytes beyond
/// the subject, application, algorithm, strategy, caveats and claims it was created with (each
/// limited at creation); `a_session_record_does_not_grow_with_its_age` holds it to that.
///
/// Records written before schema 8 listed every refresh token (`refreshes`) and every spent
/// one (`spent`). Read, they give `first` and `last_spent` ([`StoredSession::upgraded`]), and
/// `refreshes` is kept, frozen, to recognise their older refresh tokens, whose records do not
/// name their session; nothing is appended to it again.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct StoredSession {
    pub(crate) subject: String,
    pub(crate) app: Option<String>,
    pub(crate) created: i64,
    pub(crate) alg: String,
    pub(crate) access_ttl: u64,
    pub(crate) refresh_ttl: u64,
    pub(crate) strategy: String,
    pub(crate) caveats: Vec<String>,
    pub(crate) refresh_caveats: Vec<String>,
    pub(crate) claims: Option<String>,
    #[serde(with = "tid")]
    pub(crate) current: TokenId,
    /// Absent before schema 8 (then the first of `refreshes`).
    #[serde(default)]
    pub(crate) first: Option<[u8; 16]>,
    #[serde(default)]
    pub(crate) last_spent: Option<Spent>,
    /// Schema 5-7 only (frozen); never written for a newer session.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "tids")]
    pub(crate) refreshes: Vec<TokenId>,
    /// Schema 5-7 only: read into `last_spent`, never written.
    #[serde(default, skip_serializing)]
    pub(crate) spent: Vec<LegacySpent>,
    pub(crate) revoked_at: Option<i64>,
}

/// A spent refresh token as schema 5-7 listed it (time in seconds).
#[derive(Clone, Copy, Serialize, Deserialize)]
pub(crate) struct LegacySpent {
    #[serde(with = "tid")]
    tid: TokenId,
    at: i64,
    #[serde(with = "tid")]
    successor: TokenId,
}

impl StoredSession {
    /// A new session whose first (and current) refresh token is `first`.
    pub(crate) fn new(r: SessionRecord, created: i64, first: TokenId) -> StoredSession {
        StoredSession {
            subject: r.subject,
            app: r.app,
            created,
            alg: r.alg,
            access_ttl: r.access_ttl,
            refresh_ttl: r.refresh_ttl,
            strategy: r.strategy,
            caveats: r.caveats,
            refresh_caveats: r.refresh_caveats,
            claims: r.claims,
            current: first,
            first: Some(*first.as_bytes()),
            last_spent: None,
            refreshes: Vec::new(),
            spent: Vec::new(),
            revoked_at: None,
        }
    }

    /// The record in today's form: a schema 5-7 record's lists give `first` and `last_spent`.
    pub(crate) fn upgraded(mut self) -> StoredSession {
        if self.first.is_none() {
            self.first = Some(*self.refreshes.first().unwrap_or(&self.current).as_bytes());
        }
        if let Some(last) = self.spent.last().filter(|_| self.last_spent.is_none()) {
            self.last_spent =
                Some(Spent { tid: last.tid, at_ms: last.at.saturating_mul(1000), successor: last.successor });
        }
        self.spent.clear();
        self
    }

    /// The first refresh token family (of an upgraded record).
    pub(crate) fn first(&self) -> TokenId {
        TokenId::from_bytes(self.first.unwrap_or(*self.current.as_bytes()))
    }

    pub(crate) fn into_record(self) -> SessionRecord {
        let s = self.upgraded();
        SessionRecord {
            first: s.first(),
            subject: s.subject,
            app: s.app,
            created: s.created,
            alg: s.alg,
            access_ttl: s.access_ttl,
            refresh_ttl: s.refresh_ttl,
            strategy: s.strategy,
            caveats: s.caveats,
            refresh_caveats: s.refresh_caveats,
            claims: s.claims,
            current: s.current,
            last_spent: s.last_spent,
            revoked_at: s.revoked_at,
        }
    }
}

/// What a refresh did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refreshed {
    /// The presented token is the session's current one; with a rotation, `rotated_to` is the
    /// new current family (the presented one is now spent).
    Current {
        /// The session after the refresh.
        session: Box<SessionRecord>,
        /// The new refresh token family, if one was issued.
        rotated_to: Option<TokenId>,
    },
    /// The presented token was spent within the grace window: the client lost the answer; the
    /// same successor is the answer again.
    Replayed {
        /// The session.
        session: Box<SessionRecord>,
        /// The family that replaced the presented one.
        successor: TokenId,
    },
    /// The presented token was spent before the grace window: reuse. The whole session has been
    /// revoked (every refresh token of it).
    ReuseDetected,
}

impl Writer {
    /// Record a session and its first refresh token.
    pub(crate) fn create_session(
        &self,
        tx: &mut dyn Tx,
        sid: &SessionId,
        session: &SessionRecord,
        refresh: &NewToken,
        at: i64,
    ) -> Result<SessionRecord> {
        if tx.session(sid)?.is_some() {
            return Err(Error::Corrupt(format!("session id {sid} is already recorded")));
        }
        Self::record_with(tx, refresh, at, None, Some(sid))?;
        let stored = StoredSession::new(session.clone(), at, refresh.tid);
        tx.put_session(sid, &stored)?;
        Ok(stored.into_record())
    }

    /// Renew session `sid` with the refresh token family `presented` (see [`Refreshed`]).
    pub(crate) fn refresh_session(
        &self,
        tx: &mut dyn Tx,
        sid: &SessionId,
        presented: &TokenId,
        successor: Option<&NewToken>,
        grace_ms: i64,
        at_ms: i64,
    ) -> Result<Refreshed> {
        let at = at_ms.div_euclid(1000);
        let mut s = tx.session(sid)?.ok_or_else(|| Error::UnknownSession(sid.to_string()))?.upgraded();
        if s.revoked_at.is_some() {
            return Err(Error::SessionRevoked(sid.to_string()));
        }
        // Renewal stands on the current refresh token. Once it is revoked (by itself, or with an
        // ancestor such as the token the session was created from), nothing renews the session:
        // not the current token, nor the one it replaced within the grace window, which would
        // be answered with it.
        let current = tx.token(&s.current)?.ok_or(Error::UnknownToken(s.current))?;
        if current.revoked_at.is_some() {
            return Err(Error::SessionRevoked(sid.to_string()));
        }
        if *presented == s.current {
            let rotated_to = match successor {
                Some(new) => {
                    // The successor is the presented token's child, whatever the caller said:
                    // the chain is what ending the session walks.
                    let new = NewToken { parent: Some(*presented), ..new.clone() };
                    Self::record_with(tx, &new, at, None, Some(sid))?;
                    s.last_spent = Some(Spent { tid: *presented, at_ms, successor: new.tid });
                    s.current = new.tid;
                    tx.put_session(sid, &s)?;
                    Some(new.tid)
                }
                None => None,
            };
            return Ok(Refreshed::Current { session: Box::new(s.into_record()), rotated_to });
        }
        match s.last_spent.filter(|x| x.tid == *presented) {
            // The client lost the answer to its last refresh: the same successor again.
            Some(last) if at_ms - last.at_ms <= grace_ms => {
                return Ok(Refreshed::Replayed {
                    session: Box::new(s.into_record()),
                    successor: last.successor,
                });
            }
            Some(_) => {}
            None => {
                let ours = s.refreshes.contains(presented)
                    || tx.token(presented)?.and_then(|t| t.session) == Some(*sid.as_bytes());
                if !ours {
                    return Err(Error::NotThisSession(sid.to_string()));
                }
            }
        }
        // Reuse: a spent refresh token of this session, presented after its grace window (or not
        // the last one spent). Whoever holds it may have stolen it: everything goes, and this
        // commits (the answer is an error to the caller, not to the batch).
        self.end_session(tx, sid, &mut s, at)?;
        Ok(Refreshed::ReuseDetected)
    }

    /// Revoke a session (nothing when it is revoked already).
    pub(crate) fn revoke_session(
        &self,
        tx: &mut dyn Tx,
        sid: &SessionId,
        at: i64,
    ) -> Result<Vec<Revocation>> {
        let mut s = tx.session(sid)?.ok_or_else(|| Error::UnknownSession(sid.to_string()))?.upgraded();
        if s.revoked_at.is_some() {
            return Ok(Vec::new());
        }
        self.end_session(tx, sid, &mut s, at)
    }

    /// Revoke every refresh token of the session (one walk from its first, plus the frozen list
    /// of a schema 5-7 record, with one seen set) and the session; the log entries come last.
    fn end_session(
        &self,
        tx: &mut dyn Tx,
        sid: &SessionId,
        s: &mut StoredSession,
        at: i64,
    ) -> Result<Vec<Revocation>> {
        let first = s.first();
        let mut roots = vec![first];
        roots.extend(s.refreshes.iter().filter(|t| **t != first));
        let marked = self.mark_revoked(tx, &roots, at)?;
        s.revoked_at = Some(at);
        tx.put_session(sid, s)?;
        Self::log_revocations(tx, &marked, at)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

    use std::sync::mpsc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tessera_core::{KeyId, RootKey};

    use super::*;
    use crate::backend::redb::RedbBackend;
    use crate::backend::Backend;
    use crate::codec;
    use crate::follow::Follower;
    use crate::master::MasterKey;
    use crate::memory::Memory;
    use crate::writer::{Done, Job, Op};

    struct Fixture {
        _dir: tempfile::TempDir,
        backend: Arc<RedbBackend>,
        writer: Writer,
        kid: KeyId,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let master = MasterKey::from_bytes([7; 32]);
            let backend = Arc::new(RedbBackend::open(&dir.path().join("t.redb"), &master).unwrap());
            let follower = Arc::new(Follower::new(backend.clone(), Arc::new(Memory::new()), master.clone()));
            let writer = Writer { backend: backend.clone(), follower, master, visits: Default::default() };
            let kid = KeyId::generate().unwrap();
            let f = Fixture { _dir: dir, backend, writer, kid };
            let secret = RootKey::generate().unwrap();
            f.run(Op::AddKey { kid, secret, activate: true, only_if_none: false }).unwrap();
            f
        }

        fn run(&self, op: Op) -> Result<Done> {
            let (reply, answer) = mpsc::sync_channel(1);
            self.writer.batch(vec![Job { op, deadline: Instant::now() + Duration::from_secs(60), reply }]);
            answer.recv().unwrap()
        }

        fn token(&self, parent: Option<TokenId>) -> NewToken {
            NewToken {
                tid: TokenId::generate().unwrap(),
                kid: self.kid,
                subject: "alice".into(),
                description: "refresh token of a session".into(),
                expires: Some(1_900_000_000),
                caveats: vec!["allow sessions.refresh".into(), "resource sessions/0123".into()],
                parent,
            }
        }

        fn refresh(
            &self,
            sid: SessionId,
            presented: TokenId,
            successor: Option<NewToken>,
        ) -> Result<Refreshed> {
            match self.run(Op::RefreshSession { sid, presented, successor, grace_ms: 60_000 })? {
                Done::Refreshed(r) => Ok(r),
                _ => panic!("not a refresh"),
            }
        }

        fn stored(&self, sid: &SessionId) -> StoredSession {
            self.backend.session(sid).unwrap().unwrap()
        }
    }

    /// What the service records for a session (`plan` in the server), with its usual caveats.
    fn typical() -> SessionRecord {
        SessionRecord {
            subject: "alice@example.com".into(),
            app: None,
            created: 0,
            alg: "ES256".into(),
            access_ttl: 900,
            refresh_ttl: 72 * 3600,
            strategy: "refreshBoth".into(),
            caveats: vec!["allow read write".into(), "resource docs/*".into()],
            refresh_caveats: vec![
                "allow sessions.refresh".into(),
                format!("resource sessions/{}", "ab".repeat(16)),
            ],
            claims: None,
            current: TokenId::from_bytes([0; 16]),
            first: TokenId::from_bytes([0; 16]),
            last_spent: None,
            revoked_at: None,
        }
    }

    #[test]
    fn a_session_record_does_not_grow_with_its_age() {
        let f = Fixture::new();
        let sid = SessionId::generate().unwrap();
        let first = f.token(None);
        f.run(Op::CreateSession { sid, session: Box::new(typical()), refresh: first.clone() }).unwrap();
        let mut current = first.tid;
        let mut sizes = Vec::new();
        for i in 1..=1000 {
            let next = f.token(None);
            f.refresh(sid, current, Some(next.clone())).unwrap();
            current = next.tid;
            if [1, 10, 1000].contains(&i) {
                sizes.push(codec::encode(&f.stored(&sid)).len());
            }
        }
        // Token ids are CBOR arrays of small integers (a byte under 24 is one byte, else two),
        // so the size moves within those bounds; the largest possible record has every id 0xff.
        let mut largest = f.stored(&sid);
        let ff = TokenId::from_bytes([0xff; 16]);
        largest.current = ff;
        largest.first = Some([0xff; 16]);
        largest.last_spent = Some(Spent { tid: ff, at_ms: i64::MAX, successor: ff });
        largest.revoked_at = Some(i64::MAX);
        let largest = codec::encode(&largest).len();
        assert!(sizes.iter().all(|s| *s <= largest), "{sizes:?} > {largest}");
        // The bound StoredSession's documentation gives, beyond what the session was created with.
        let t = typical();
        let variable = t.subject.len()
            + t.alg.len()
            + t.strategy.len()
            + t.caveats.iter().chain(&t.refresh_caveats).map(String::len).sum::<usize>();
        eprintln!("a session record: {sizes:?} bytes, at most {largest}, {variable} of them its own fields");
        assert!(largest - variable <= 320, "{} bytes beyond the session's own fields", largest - variable);
    }

    /// A record written by schema 5-7 (lists of every refresh token and every spend, times in
    /// seconds), whose refresh tokens' records name no session, is read and kept working: the
    /// last spend is replayed, an older spent token is reuse, and ending it revokes every one.
    #[test]
    fn a_session_recorded_before_schema_8_is_read_and_ended() {
        #[derive(Serialize)]
        struct Schema7 {
            subject: String,
            app: Option<String>,
            created: i64,
            alg: String,
            access_ttl: u64,
            refresh_ttl: u64,
            strategy: String,
            caveats: Vec<String>,
            refresh_caveats: Vec<String>,
            claims: Option<String>,
            #[serde(with = "tid")]
            current: TokenId,
            #[serde(with = "tids")]
            refreshes: Vec<TokenId>,
            spent: Vec<LegacySpent>,
            revoked_at: Option<i64>,
        }
        let f = Fixture::new();
        // The chain as schema 7 recorded it: each token the child of the one before, no session.
        let mut chain = vec![f.token(None)];
        for _ in 0..3 {
            let parent = chain.last().map(|t| t.tid);
            chain.push(f.token(parent));
        }
        for t in &chain {
            f.run(Op::Record(t.clone())).unwrap();
        }
        let tids: Vec<TokenId> = chain.iter().map(|t| t.tid).collect();
        let now = crate::store::now_ms() / 1000;
        let spent = (0..3).map(|i| LegacySpent { tid: tids[i], at: now, successor: tids[i + 1] }).collect();
        let t = typical();
        let old = Schema7 {
            subject: t.subject,
            app: None,
            created: now,
            alg: t.alg,
            access_ttl: t.access_ttl,
            refresh_ttl: t.refresh_ttl,
            strategy: t.strategy,
            caveats: t.caveats,
            refresh_caveats: t.refresh_caveats,
            claims: None,
            current: tids[3],
            refreshes: tids.clone(),
            spent,
            revoked_at: None,
        };
        let read: StoredSession = codec::decode(&codec::encode(&old), "session").unwrap();
        let r = read.clone().into_record();
        assert_eq!((r.first, r.current), (tids[0], tids[3]));
        assert_eq!(r.last_spent, Some(Spent { tid: tids[2], at_ms: now * 1000, successor: tids[3] }));

        let sid = SessionId::generate().unwrap();
        f.run(Op::CreateSession { sid, session: Box::new(typical()), refresh: f.token(None) }).unwrap();
        // Replace it with the old record as the writer reads it (upgraded; the writer writes
        // nothing else back).
        let deadline = Instant::now() + Duration::from_secs(9);
        let upgraded = read.upgraded();
        f.backend
            .batch(1, deadline, &mut |tx, _| tx.put_session(&sid, &upgraded))
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        let r = f.refresh(sid, tids[2], None).unwrap();
        assert!(matches!(r, Refreshed::Replayed { successor, .. } if successor == tids[3]), "{r:?}");
        // A rotation keeps the frozen list, appends nothing, and marks the new token.
        let next = f.token(None);
        f.refresh(sid, tids[3], Some(next.clone())).unwrap();
        assert_eq!(f.stored(&sid).refreshes, tids);
        assert_eq!(f.backend.token(&next.tid).unwrap().unwrap().session, Some(*sid.as_bytes()));
        // An older spent token, recognised by the frozen list: reuse, and every token is revoked.
        assert_eq!(f.refresh(sid, tids[1], None).unwrap(), Refreshed::ReuseDetected);
        for tid in tids.iter().chain([&next.tid]) {
            assert!(f.backend.token(tid).unwrap().unwrap().revoked_at.is_some(), "{tid}");
        }
    }

    /// Issue 19, finding 16: a write still queued at its deadline is answered `Unavailable` and
    /// never run; the others of its batch are.
    #[test]
    fn a_write_past_its_deadline_is_not_run() {
        let f = Fixture::new();
        let late = f.token(None);
        let on_time = f.token(None);
        let (reply, late_answer) = mpsc::sync_channel(1);
        let (reply2, on_time_answer) = mpsc::sync_channel(1);
        let gone = Instant::now().checked_sub(Duration::from_millis(1)).unwrap();
        f.writer.batch(vec![
            Job { op: Op::Record(late.clone()), deadline: gone, reply },
            Job {
                op: Op::Record(on_time.clone()),
                deadline: Instant::now() + Duration::from_secs(9),
                reply: reply2,
            },
        ]);
        assert!(matches!(late_answer.recv().unwrap(), Err(Error::Unavailable(_))));
        assert!(on_time_answer.recv().unwrap().is_ok());
        assert!(f.backend.token(&late.tid).unwrap().is_none(), "a write past its deadline was run");
        assert!(f.backend.token(&on_time.tid).unwrap().is_some());
    }
}
