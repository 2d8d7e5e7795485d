//! The writer: one thread that drains every queued operation into one durable transaction of
//! the backend (group commit), each operation all-or-nothing, then lets the follower apply what
//! committed to memory before anyone is answered. What each operation means — validation,
//! lineage, transitive revocation, the change-log entries — is written here once, on the
//! backend's [`Tx`] primitives.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use tessera_core::{KeyId, RootKey, SessionId, TokenId};

use crate::audit::{self, Actor, AuditNote, NoteSlot, Only};
use crate::backend::{Backend, Event, Tx};
use crate::codec::{
    AppRecord, KeyInfo, KeyState, NewToken, Notice, Refreshed, Revocation, RevocationTarget, SessionRecord,
    SigningKeyInfo, SigningKeyState, StoredApp, StoredKey, StoredSigningKey, StoredToken, TokenRecord,
};
use crate::error::{Error, Result};
use crate::follow::Follower;
use crate::master::MasterKey;
use crate::memory::signing_label;
use crate::store::now_ms;
use tessera_core::envelope::SigningKey;

mod batch;

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
    /// Revoke a key. With a `replacement`, a key that was active is replaced by it (made
    /// active) in the same transaction, so minting goes on and concurrent revocations of the
    /// active key make one new key, not several.
    RevokeKey {
        kid: KeyId,
        replacement: Option<(KeyId, RootKey)>,
    },
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
        session: Box<SessionRecord>,
        refresh: NewToken,
    },
    /// Renew a session with the refresh token family `presented`; with `successor`, rotate to it
    /// (recorded as the presented token's child). The last spent token presented again within
    /// `grace_ms` milliseconds gets the same successor; any other spent one revokes the session.
    RefreshSession {
        sid: SessionId,
        presented: TokenId,
        successor: Option<NewToken>,
        grace_ms: i64,
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
    /// An operation on behalf of `actor` (an [`crate::Audited`] call): its audit entry names
    /// the actor instead of the system.
    As {
        actor: Box<Actor>,
        op: Box<Op>,
    },
    /// An audit entry that is no state change (a refusal); holds its place in the bounded queue
    /// of notes until the writer is done with it.
    Note {
        note: Box<AuditNote>,
        /// Dropped (the place freed) whatever becomes of the job.
        slot: NoteSlot,
    },
}

/// The writer's answer to one [`Op`].
pub(crate) enum Done {
    Key(Option<KeyInfo>),
    Token(TokenRecord),
    /// A key revocation's log entry (none when it was revoked already) and the key made active
    /// in its place, if any.
    KeyRevoked(Option<Revocation>, Option<KeyId>),
    Revocations(Vec<Revocation>),
    Signing(Vec<SigningKeyInfo>),
    App(Box<AppRecord>),
    Session(Box<SessionRecord>),
    Refreshed(Refreshed),
    Used(Option<i64>),
    Claimed(bool),
    Nothing,
}

/// An operation, the instant by which it must be answered, and where its answer goes.
pub(crate) struct Job {
    pub(crate) op: Op,
    /// Set when the operation was submitted: it covers the time queued for the writer and the
    /// transaction. A job still queued at its deadline is never run.
    pub(crate) deadline: Instant,
    pub(crate) reply: SyncSender<Result<Done>>,
}

/// A note that will not be written (past its deadline, or its transaction failed) is counted
/// with those the queue dropped.
fn missed(job: &Job) {
    if let Op::Note { slot, .. } = &job.op {
        slot.missed();
    }
}

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

    fn log(tx: &mut dyn Tx, at: i64, target: RevocationTarget) -> Result<Revocation> {
        let event = match target {
            RevocationTarget::Token(tid) => Event::TokenRevoked(tid),
            RevocationTarget::Key(kid) => Event::KeyRevoked(kid),
        };
        let seq = tx.append(at, event)?;
        Ok(Revocation { seq, at, target })
    }

    /// Record a freshly minted token (its key usable, its parent recorded and not revoked).
    fn record(tx: &mut dyn Tx, new: &NewToken, at: i64) -> Result<TokenRecord> {
        Self::record_with(tx, new, at, None, None)
    }

    /// [`Writer::record`], with what the token grants when redeemed (a link), or the session
    /// whose refresh token it is.
    pub(crate) fn record_with(
        tx: &mut dyn Tx,
        new: &NewToken,
        at: i64,
        grant: Option<String>,
        session: Option<&SessionId>,
    ) -> Result<TokenRecord> {
        let stored = stored_token(new, at, grant, session);
        tx.record_token(&new.tid, &stored)?;
        Ok(stored.into_record(new.tid))
    }

    /// Mark the families `roots` and, transitively, every family minted from them revoked, in
    /// one walk (each token visited once, however many roots reach it); returns those this call
    /// marked, roots first, then breadth first. Nothing is logged yet: see
    /// [`Writer::log_revocations`].
    pub(crate) fn mark_revoked(&self, tx: &mut dyn Tx, roots: &[TokenId], at: i64) -> Result<Vec<TokenId>> {
        let family = tx.descendants(roots)?;
        self.visits.fetch_add(family.len() as u64, Ordering::Relaxed);
        let live: Vec<TokenId> = family.into_iter().filter(|(_, revoked)| !revoked).map(|(t, _)| t).collect();
        tx.revoke_tokens(&live, at)
    }

    /// The change-log entries of tokens just marked revoked, appended together. On a shared
    /// database an append takes the log's lock until commit, so an operation appends last: the
    /// walk before it holds no other node's revocations back.
    pub(crate) fn log_revocations(tx: &mut dyn Tx, tids: &[TokenId], at: i64) -> Result<Vec<Revocation>> {
        let events: Vec<Event> = tids.iter().map(|t| Event::TokenRevoked(*t)).collect();
        let seqs = tx.append_all(at, &events)?;
        Ok(tids
            .iter()
            .zip(seqs)
            .map(|(t, seq)| Revocation { seq, at, target: RevocationTarget::Token(*t) })
            .collect())
    }

    /// Revoke the family `tid` and, breadth first, every family minted from it.
    fn revoke_family(&self, tx: &mut dyn Tx, tid: &TokenId, at: i64) -> Result<Vec<Revocation>> {
        let marked = self.mark_revoked(tx, &[*tid], at)?;
        Self::log_revocations(tx, &marked, at)
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

    /// Apply one operation inside the batch's transaction, with its audit entries. An error may
    /// come after some writes: the backend then keeps none of them (nor the entries).
    fn apply(&self, tx: &mut dyn Tx, op: &Op) -> Result<Done> {
        let at_ms = now_ms();
        let (op, actor) = match op {
            Op::As { actor, op } => (&**op, Some(&**actor)),
            op => (op, None),
        };
        if let Op::Note { note, .. } = op {
            let n = &**note;
            let row = audit::new_row(n.kind, n.outcome, &n.actor, n.target.clone(), at_ms)
                .saying(n.reason.as_deref(), n.detail.as_deref());
            tx.insert_audit(&row, Only::Always)?;
            return Ok(Done::Nothing);
        }
        let done = self.apply_op(tx, op, at_ms)?;
        let system;
        let actor = match actor {
            Some(a) => a,
            None => {
                system = Actor::system();
                &system
            }
        };
        for (row, only) in audit::rows_for(op, &done, actor, at_ms) {
            tx.insert_audit(&row, only)?;
        }
        Ok(done)
    }

    /// What operation `op` changes, at `at_ms`.
    fn apply_op(&self, tx: &mut dyn Tx, op: &Op, at_ms: i64) -> Result<Done> {
        let at = at_ms.div_euclid(1000);
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
            Op::RevokeKey { kid, replacement } => {
                if replacement.is_some() {
                    // The append first: it serializes key changes across every writer of the
                    // database, so of two revocations of the active key only one replaces it.
                    tx.append(at, Event::KeyChanged(*kid))?;
                }
                let mut stored = tx.key(kid)?.ok_or(Error::UnknownKey(*kid))?;
                if stored.state == KeyState::Revoked {
                    return Ok(Done::KeyRevoked(None, None));
                }
                let mut active = None;
                if let (KeyState::Active, Some((new_kid, secret))) = (stored.state, replacement) {
                    let new = StoredKey {
                        sealed: self.master.seal(new_kid.as_bytes(), secret.expose_secret())?,
                        state: KeyState::Active,
                        created: at,
                        retired_at: None,
                        revoked_at: None,
                    };
                    tx.put_key(new_kid, &new)?;
                    tx.append(at, Event::KeyChanged(*new_kid))?;
                    active = Some(*new_kid);
                }
                stored.state = KeyState::Revoked;
                stored.revoked_at = Some(at);
                tx.put_key(kid, &stored)?;
                let entry = Self::log(tx, at, RevocationTarget::Key(*kid))?;
                Ok(Done::KeyRevoked(Some(entry), active))
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
                self.create_session(tx, sid, session, refresh, at).map(|s| Done::Session(Box::new(s)))
            }
            Op::RefreshSession { sid, presented, successor, grace_ms } => self
                .refresh_session(tx, sid, presented, successor.as_ref(), *grace_ms, at_ms)
                .map(Done::Refreshed),
            Op::CreateLink { token, grant } => {
                Self::record_with(tx, token, at, Some(grant.clone()), None).map(Done::Token)
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
            Op::RevokeSession(sid) => self.revoke_session(tx, sid, at).map(Done::Revocations),
            Op::As { op, .. } => self.apply_op(tx, op, at_ms),
            Op::Note { .. } => Ok(Done::Nothing),
        }
    }
}

/// The stored record of a token minted at `at`, with what it grants when redeemed (a link) or
/// the session whose refresh token it is.
fn stored_token(new: &NewToken, at: i64, grant: Option<String>, session: Option<&SessionId>) -> StoredToken {
    StoredToken {
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
        session: session.map(|s| *s.as_bytes()),
    }
}
