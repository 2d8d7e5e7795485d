//! The writer: one thread that drains every queued operation into one durable transaction of
//! the backend (group commit), each operation all-or-nothing, then lets the follower apply what
//! committed to memory before anyone is answered. What each operation means — validation,
//! lineage, transitive revocation, the change-log entries — is written here once, on the
//! backend's [`Tx`] primitives.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use tessera_core::{KeyId, RootKey, SessionId, TokenId};

use crate::backend::{Backend, Event, Tx};
use crate::codec::{
    AppRecord, KeyInfo, KeyState, NewToken, Notice, Refreshed, Revocation, RevocationTarget, SessionRecord,
    SigningKeyInfo, SigningKeyState, Spent, StoredApp, StoredKey, StoredSession, StoredSigningKey,
    StoredToken, TokenRecord,
};
use crate::error::{Error, Result};
use crate::follow::Follower;
use crate::master::MasterKey;
use crate::memory::signing_label;
use crate::store::now;
use tessera_core::envelope::SigningKey;

/// Most operations one commit carries.
const MAX_BATCH: usize = 512;

/// A write the store asks of the writer.
pub(crate) enum Op {
    /// Add a key; with `activate` it signs from now on and the active one retires. With
    /// `only_if_none`, nothing happens when a key exists already (first start of a cluster).
    AddKey {
        kid: KeyId,
        secret: RootKey,
        activate: bool,
        only_if_none: bool,
    },
    RevokeKey(KeyId),
    Record(NewToken),
    RevokeToken(TokenId),
    /// Create the first signing keys of an algorithm (one active, one published as next), unless
    /// it has keys already.
    EnsureSigning {
        active: Box<SigningKey>,
        next: Box<SigningKey>,
    },
    /// Promote the next key of `next`'s algorithm to active (it must have been published for at
    /// least `min_published` seconds), retire the active one, publish `next` as the new next.
    RotateSigning {
        next: Box<SigningKey>,
        min_published: i64,
        /// The application whose keys rotate; `None` for the service's.
        owner: Option<String>,
    },
    /// Register an application with its credential's record and, with its own keys, an active
    /// and a next signing key per algorithm.
    CreateApp {
        app: Box<AppRecord>,
        credential: NewToken,
        keys: Vec<(SigningKey, SigningKey)>,
    },
    /// Disable an application: no new envelopes; its credential is revoked.
    DisableApp(String),
    /// Start a session with its first refresh token's record.
    CreateSession {
        sid: SessionId,
        session: Box<StoredSession>,
        refresh: NewToken,
    },
    /// Renew a session with the refresh token family `presented`; with `successor`, rotate to it.
    /// A spent token presented again within `grace` seconds gets the same successor; later, the
    /// whole session is revoked.
    RefreshSession {
        sid: SessionId,
        presented: TokenId,
        successor: Option<NewToken>,
        grace: i64,
    },
    /// Revoke a session: every refresh token of it, and the session.
    RevokeSession(SessionId),
    /// Record a link token with what it grants when redeemed.
    CreateLink {
        token: NewToken,
        grant: String,
    },
    /// The single use of a token: `Done::Used(None)` the first time, else when it was used.
    Consume(TokenId),
    /// Move tokens' last use forward (a batch from memory).
    Touch(Vec<(TokenId, i64)>),
    /// Claim an expiry notice (once per token and threshold, across the cluster).
    ClaimNotice(Notice),
    /// Record delivery progress of a notice.
    PutNotice(Notice),
    /// Take a due notice for delivery until `until` (so no other node delivers it meanwhile):
    /// `Done::Claimed(true)` for the one taker.
    LeaseNotice {
        tid: TokenId,
        threshold: i64,
        now: i64,
        until: i64,
    },
}

/// The writer's answer to one [`Op`].
pub(crate) enum Done {
    Key(Option<KeyInfo>),
    Token(TokenRecord),
    Revocation(Option<Revocation>),
    Revocations(Vec<Revocation>),
    Signing(Vec<SigningKeyInfo>),
    App(Box<AppRecord>),
    Session(Box<SessionRecord>),
    Refreshed(Refreshed),
    Used(Option<i64>),
    Claimed(bool),
    Nothing,
}

/// An operation and where its answer goes.
pub(crate) type Job = (Op, SyncSender<Result<Done>>);

/// The writer thread's state.
pub(crate) struct Writer {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) follower: Arc<Follower>,
    pub(crate) master: MasterKey,
    /// Token records visited by revocation walks, ever (the work a revocation costs, counted
    /// for tests: [`crate::Store::revocation_visits`]).
    pub(crate) visits: Arc<AtomicU64>,
}

impl Writer {
    pub(crate) fn run(self, rx: Receiver<Job>) {
        while let Ok(first) = rx.recv() {
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            self.batch(jobs);
        }
    }

    /// One durable transaction for every queued operation.
    pub(crate) fn batch(&self, jobs: Vec<Job>) {
        let mut done: Vec<Option<Done>> = jobs.iter().map(|_| None).collect();
        let outcome = self.backend.batch(jobs.len(), &mut |tx, i| {
            done[i] = Some(self.apply(tx, &jobs[i].0)?);
            Ok(())
        });
        match outcome {
            Ok(results) => {
                // Memory follows the log before anyone hears of the commit. If the database
                // cannot be read back right now, the follower catches up later.
                let _ = self.follower.catch_up();
                for (((_, reply), result), done) in jobs.into_iter().zip(results).zip(done) {
                    let answer = result
                        .and_then(|()| done.ok_or_else(|| Error::Corrupt("operation left no result".into())));
                    let _ = reply.send(answer);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let unavailable = matches!(e, Error::Unavailable(_));
                for (_, reply) in jobs {
                    let err = if unavailable {
                        Error::Unavailable(format!("nothing written: {msg}"))
                    } else {
                        Error::Corrupt(format!("commit failed, nothing written: {msg}"))
                    };
                    let _ = reply.send(Err(err));
                }
            }
        }
    }

    fn log(tx: &mut dyn Tx, at: i64, target: RevocationTarget) -> Result<Revocation> {
        let event = match target {
            RevocationTarget::Token(tid) => Event::TokenRevoked(tid),
            RevocationTarget::Key(kid) => Event::KeyRevoked(kid),
        };
        let seq = tx.append(at, event)?;
        Ok(Revocation { seq, at, target })
    }

    /// Mark one token record revoked and log it; `None` when it already was.
    fn revoke_one(tx: &mut dyn Tx, tid: &TokenId, at: i64) -> Result<Option<Revocation>> {
        let stored = tx.token(tid)?.ok_or(Error::UnknownToken(*tid))?;
        if stored.revoked_at.is_some() {
            return Ok(None);
        }
        tx.revoke_token(tid, at)?;
        Self::log(tx, at, RevocationTarget::Token(*tid)).map(Some)
    }

    /// Record a freshly minted token (its key usable, its parent recorded and not revoked).
    fn record(tx: &mut dyn Tx, new: &NewToken, at: i64) -> Result<TokenRecord> {
        Self::record_with(tx, new, at, None)
    }

    /// [`Writer::record`], with what the token grants when redeemed (a link).
    fn record_with(tx: &mut dyn Tx, new: &NewToken, at: i64, grant: Option<String>) -> Result<TokenRecord> {
        let key = tx.key(&new.kid)?.ok_or(Error::UnknownKey(new.kid))?;
        if key.state == KeyState::Revoked {
            return Err(Error::KeyRevoked(new.kid));
        }
        if tx.token(&new.tid)?.is_some() {
            return Err(Error::DuplicateToken(new.tid));
        }
        if let Some(parent) = &new.parent {
            // In the same transaction as a revocation would be: a child is never
            // recorded under a parent whose revocation has committed.
            let p = tx.token(parent)?.ok_or(Error::UnknownToken(*parent))?;
            if p.revoked_at.is_some() {
                return Err(Error::ParentRevoked(*parent));
            }
        }
        let stored = StoredToken {
            kid: *new.kid.as_bytes(),
            subject: new.subject.clone(),
            description: new.description.clone(),
            created: at,
            expires: new.expires,
            caveats: new.caveats.clone(),
            revoked_at: None,
            parent: new.parent.map(|p| *p.as_bytes()),
            used_at: None,
            last_used: None,
            grant,
        };
        tx.insert_token(&new.tid, &stored)?;
        Ok(stored.into_record(new.tid))
    }

    /// Revoke the family `tid` and, breadth first, every family minted from it.
    fn revoke_family(&self, tx: &mut dyn Tx, tid: &TokenId, at: i64) -> Result<Vec<Revocation>> {
        if tx.token(tid)?.is_none() {
            return Err(Error::UnknownToken(*tid));
        }
        let mut entries = Vec::new();
        let mut queue = VecDeque::from([*tid]);
        let mut seen = HashSet::from([*tid]);
        while let Some(t) = queue.pop_front() {
            self.visits.fetch_add(1, Ordering::Relaxed);
            if let Some(entry) = Self::revoke_one(tx, &t, at)? {
                entries.push(entry);
            }
            for child in tx.children(&t)? {
                if seen.insert(child) {
                    queue.push_back(child);
                }
            }
        }
        Ok(entries)
    }

    /// Revoke every refresh token family of a session, and the session.
    fn end_session(
        &self,
        tx: &mut dyn Tx,
        sid: &SessionId,
        s: &mut StoredSession,
        at: i64,
    ) -> Result<Vec<Revocation>> {
        let mut entries = Vec::new();
        for tid in s.refreshes.clone() {
            entries.extend(self.revoke_family(tx, &tid, at)?);
        }
        s.revoked_at = Some(at);
        tx.put_session(sid, s)?;
        Ok(entries)
    }

    /// A new signing key, sealed, ready to store; its kid is its public key's thumbprint.
    fn stored_signing(
        &self,
        key: &SigningKey,
        state: SigningKeyState,
        at: i64,
        owner: Option<&str>,
    ) -> Result<(String, StoredSigningKey)> {
        let public = key.public_key().ok_or_else(|| Error::Corrupt("HS256 keys are not stored".into()))?;
        let kid = public.thumbprint();
        let stored = StoredSigningKey {
            alg: key.algorithm().name().to_owned(),
            sealed: self.master.seal(&signing_label(&kid), key.secret_bytes().as_ref())?,
            jwk: public.jwk().to_string(),
            state,
            created: at,
            activated_at: (state == SigningKeyState::Active).then_some(at),
            retired_at: None,
            owner: owner.map(str::to_owned),
        };
        Ok((kid, stored))
    }

    /// Store an active and a next signing key for `owner` (the service's when `None`).
    fn put_pair(
        &self,
        tx: &mut dyn Tx,
        active: &SigningKey,
        next: &SigningKey,
        at: i64,
        owner: Option<&str>,
    ) -> Result<Vec<SigningKeyInfo>> {
        let mut out = Vec::new();
        for (key, state) in [(active, SigningKeyState::Active), (next, SigningKeyState::Next)] {
            let (kid, stored) = self.stored_signing(key, state, at, owner)?;
            tx.put_signing_key(&kid, &stored)?;
            out.push(stored.info(&kid));
        }
        Ok(out)
    }

    /// Apply one operation inside the batch's transaction. An error may come after some writes:
    /// the backend then keeps none of them.
    fn apply(&self, tx: &mut dyn Tx, op: &Op) -> Result<Done> {
        let at = now();
        match op {
            Op::AddKey { kid, secret, activate, only_if_none } => {
                // The append comes first: it serializes key changes across every writer of the
                // database, so `only_if_none` sees any key another node added before.
                tx.append(at, Event::KeyChanged(*kid))?;
                let keys = tx.keys()?;
                if *only_if_none && !keys.is_empty() {
                    return Err(Error::KeysExist);
                }
                if *activate {
                    for (k, mut stored) in keys.into_iter().filter(|(_, k)| k.state == KeyState::Active) {
                        stored.state = KeyState::Retired;
                        stored.retired_at = Some(at);
                        tx.put_key(&k, &stored)?;
                        tx.append(at, Event::KeyChanged(k))?;
                    }
                }
                let state = if *activate { KeyState::Active } else { KeyState::Retired };
                let stored = StoredKey {
                    sealed: self.master.seal(kid.as_bytes(), secret.expose_secret())?,
                    state,
                    created: at,
                    retired_at: (!activate).then_some(at),
                    revoked_at: None,
                };
                tx.put_key(kid, &stored)?;
                Ok(Done::Key(Some(stored.info(*kid))))
            }
            Op::RevokeKey(kid) => {
                let mut stored = tx.key(kid)?.ok_or(Error::UnknownKey(*kid))?;
                if stored.state == KeyState::Revoked {
                    return Ok(Done::Revocation(None));
                }
                stored.state = KeyState::Revoked;
                stored.revoked_at = Some(at);
                tx.put_key(kid, &stored)?;
                Self::log(tx, at, RevocationTarget::Key(*kid)).map(|e| Done::Revocation(Some(e)))
            }
            Op::Record(new) => Self::record(tx, new, at).map(Done::Token),
            Op::EnsureSigning { active, next } => {
                // The append first: it serializes with every other writer of the database.
                tx.append(at, Event::SigningKeys)?;
                let alg = active.algorithm().name();
                if tx.signing_keys()?.iter().any(|(_, k)| k.alg == alg && k.owner.is_none()) {
                    return Err(Error::KeysExist);
                }
                self.put_pair(tx, active, next, at, None).map(Done::Signing)
            }
            Op::RotateSigning { next, min_published, owner } => {
                tx.append(at, Event::SigningKeys)?;
                let alg = next.algorithm().name();
                let keys: Vec<(String, StoredSigningKey)> = tx
                    .signing_keys()?
                    .into_iter()
                    .filter(|(_, k)| k.alg == alg && k.owner == *owner)
                    .collect();
                let (next_kid, mut promoted) = keys
                    .iter()
                    .find(|(_, k)| k.state == SigningKeyState::Next)
                    .cloned()
                    .ok_or_else(|| Error::NoNextSigningKey(alg.to_owned()))?;
                let published = at - promoted.created;
                if published < *min_published {
                    return Err(Error::TooEarly { published, required: *min_published });
                }
                let mut out = Vec::new();
                for (kid, mut k) in keys.into_iter().filter(|(_, k)| k.state == SigningKeyState::Active) {
                    k.state = SigningKeyState::Retired;
                    k.retired_at = Some(at);
                    tx.put_signing_key(&kid, &k)?;
                    out.push(k.info(&kid));
                }
                promoted.state = SigningKeyState::Active;
                promoted.activated_at = Some(at);
                tx.put_signing_key(&next_kid, &promoted)?;
                out.push(promoted.info(&next_kid));
                let (kid, stored) = self.stored_signing(next, SigningKeyState::Next, at, owner.as_deref())?;
                tx.put_signing_key(&kid, &stored)?;
                out.push(stored.info(&kid));
                Ok(Done::Signing(out))
            }
            Op::RevokeToken(tid) => self.revoke_family(tx, tid, at).map(Done::Revocations),
            Op::CreateApp { app, credential, keys } => {
                tx.append(at, Event::Apps)?;
                let apps = tx.apps()?;
                if apps.iter().any(|(name, _)| *name == app.name) {
                    return Err(Error::AppExists(format!("application name \"{}\"", app.name)));
                }
                if let Some((name, _)) = apps.iter().find(|(_, a)| a.audience == app.audience) {
                    return Err(Error::AppExists(format!(
                        "audience \"{}\" (of application \"{name}\")",
                        app.audience
                    )));
                }
                Self::record(tx, credential, at)?;
                let stored = StoredApp {
                    audience: app.audience.clone(),
                    ttl: app.ttl,
                    algorithms: app.algorithms.clone(),
                    own_keys: app.own_keys,
                    refresh_strategy: app.refresh_strategy.clone(),
                    operations: app.operations.clone(),
                    resources: app.resources.clone(),
                    credential: *credential.tid.as_bytes(),
                    created: at,
                    disabled_at: None,
                };
                tx.put_app(&app.name, &stored)?;
                if !keys.is_empty() {
                    tx.append(at, Event::SigningKeys)?;
                }
                for (active, next) in keys {
                    self.put_pair(tx, active, next, at, Some(&app.name))?;
                }
                Ok(Done::App(Box::new(stored.into_record(app.name.clone()))))
            }
            Op::DisableApp(name) => {
                tx.append(at, Event::Apps)?;
                let (_, mut stored) = tx
                    .apps()?
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .ok_or_else(|| Error::UnknownApp(name.clone()))?;
                if stored.disabled_at.is_none() {
                    stored.disabled_at = Some(at);
                    tx.put_app(name, &stored)?;
                    self.revoke_family(tx, &TokenId::from_bytes(stored.credential), at)?;
                }
                Ok(Done::App(Box::new(stored.into_record(name.clone()))))
            }
            Op::CreateSession { sid, session, refresh } => {
                if tx.session(sid)?.is_some() {
                    return Err(Error::Corrupt(format!("session id {sid} is already recorded")));
                }
                Self::record(tx, refresh, at)?;
                let mut stored = (**session).clone();
                stored.created = at;
                stored.current = refresh.tid;
                stored.refreshes = vec![refresh.tid];
                tx.put_session(sid, &stored)?;
                Ok(Done::Session(Box::new(stored)))
            }
            Op::RefreshSession { sid, presented, successor, grace } => {
                let mut s = tx.session(sid)?.ok_or_else(|| Error::UnknownSession(sid.to_string()))?;
                if s.revoked_at.is_some() {
                    return Err(Error::SessionRevoked(sid.to_string()));
                }
                if *presented == s.current {
                    let rotated_to = match successor {
                        Some(new) => {
                            Self::record(tx, new, at)?;
                            s.spent.push(Spent { tid: *presented, at, successor: new.tid });
                            s.refreshes.push(new.tid);
                            s.current = new.tid;
                            tx.put_session(sid, &s)?;
                            Some(new.tid)
                        }
                        None => None,
                    };
                    return Ok(Done::Refreshed(Refreshed::Current { session: Box::new(s), rotated_to }));
                }
                let spent = s.spent.iter().find(|x| x.tid == *presented).copied();
                match spent {
                    Some(x) if at - x.at <= *grace => Ok(Done::Refreshed(Refreshed::Replayed {
                        session: Box::new(s),
                        successor: x.successor,
                    })),
                    Some(_) => {
                        // Reuse: whoever holds a spent token may have stolen it. Everything goes,
                        // and this commits (the answer is an error to the caller, not to the batch).
                        self.end_session(tx, sid, &mut s, at)?;
                        Ok(Done::Refreshed(Refreshed::ReuseDetected))
                    }
                    None => Err(Error::NotThisSession(sid.to_string())),
                }
            }
            Op::CreateLink { token, grant } => {
                Self::record_with(tx, token, at, Some(grant.clone())).map(Done::Token)
            }
            Op::Consume(tid) => tx.mark_used(tid, at).map(Done::Used),
            Op::Touch(batch) => {
                for (tid, when) in batch {
                    tx.touch(tid, *when)?;
                }
                Ok(Done::Nothing)
            }
            Op::ClaimNotice(n) => tx.claim_notice(n).map(Done::Claimed),
            Op::PutNotice(n) => tx.put_notice(n).map(|()| Done::Nothing),
            Op::LeaseNotice { tid, threshold, now, until } => match tx.notice(tid, *threshold)? {
                Some(mut n) if n.delivered_at.is_none() && n.next_attempt <= *now => {
                    n.next_attempt = *until;
                    tx.put_notice(&n)?;
                    Ok(Done::Claimed(true))
                }
                _ => Ok(Done::Claimed(false)),
            },
            Op::RevokeSession(sid) => {
                let mut s = tx.session(sid)?.ok_or_else(|| Error::UnknownSession(sid.to_string()))?;
                if s.revoked_at.is_some() {
                    return Ok(Done::Revocations(Vec::new()));
                }
                self.end_session(tx, sid, &mut s, at).map(Done::Revocations)
            }
        }
    }
}
