//! What each write records, and the write methods on behalf of an actor.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tessera_core::{SessionId, TokenId};

use super::{
    new_row, Actor, AuditEntry, AuditFilter, AuditHead, AuditKind, AuditNote, AuditRow, AuditVerdict, Only,
    Outcome, Repeats, Target, MAX_PENDING_NOTES,
};
use crate::codec::RevocationTarget;
use crate::error::Result;
use crate::store::Inner;
use crate::writer::{Done, Op};
use crate::Store;

impl Store {
    /// The same write methods, recording `actor` in each entry (see [`Audited`]).
    pub fn audited<'a>(&'a self, actor: &Actor) -> Audited<'a> {
        Audited { store: self, actor: actor.clone() }
    }

    /// Queue an entry that is no state change (a refusal, an exchange) to the writer, without
    /// waiting for it: `false` (and [`Store::audit_dropped`] counts it) when
    /// [`MAX_PENDING_NOTES`] are queued already. Never blocks.
    ///
    /// A refusal (but `budget.exhausted`) identical to one written less than [`REPEAT_WINDOW`](super::REPEAT_WINDOW)
    /// ago is counted instead of written (`true`); the count goes into one summary entry when the
    /// window ends: see [`Store::flush_audit_repeats`] and `docs/AUDIT.md`.
    pub fn audit_note(&self, note: AuditNote) -> bool {
        if !Repeats::collapses(&note) {
            return queue_note(&self.inner, note);
        }
        let mut out = self.inner.audit_repeats.admit(note, Instant::now());
        // `admit` gives the refusal itself last (nothing when it is counted), after the summaries
        // of windows that ended.
        let own = out.pop();
        let mut queued = true;
        for n in out {
            queued &= queue_summary(&self.inner, n);
        }
        if let Some(n) = own {
            queued &= queue_note(&self.inner, n);
        }
        queued
    }

    /// Write the summaries of the windows of collapsed refusals that have ended (the
    /// housekeeping round calls this); how many were queued.
    pub fn flush_audit_repeats(&self) -> usize {
        let notes = self.inner.audit_repeats.flush(Instant::now(), false);
        notes.into_iter().filter(|n| queue_summary(&self.inner, n.clone())).count()
    }

    /// End every window of collapsed refusals now and write their summaries (before the service
    /// stops; dropping the store does it too); how many were queued.
    pub fn close_audit_repeats(&self) -> usize {
        close_repeats(&self.inner)
    }

    /// Distinct refusals whose window is running (at most [`MAX_REPEAT_KEYS`](super::MAX_REPEAT_KEYS)).
    pub fn audit_repeat_keys(&self) -> usize {
        self.inner.audit_repeats.len()
    }

    /// Notes not written since the store opened: [`Store::audit_note`] found the queue full, or
    /// the writer could not write them (past their deadline, or their transaction failed).
    pub fn audit_dropped(&self) -> u64 {
        self.inner.audit_dropped.load(Ordering::Relaxed)
    }

    /// Entries that pass `filter`, by id, after its cursor, at most its page.
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditEntry>> {
        self.inner.backend.audit(filter)
    }

    /// The newest sealed entry (`None`: nothing sealed, nothing pruned).
    pub fn audit_head(&self) -> Result<Option<AuditHead>> {
        self.inner.backend.audit_head()
    }

    /// Chain the committed entries not sealed yet; how many. On PostgreSQL one node of the
    /// cluster seals at a time (the others return 0 meanwhile); on redb entries are sealed as
    /// they are written, so this finds none.
    pub fn seal_audit(&self) -> Result<usize> {
        self.inner.backend.seal_audit(&self.inner.audit_key)
    }

    /// Delete sealed entries older than `before_ms`, from the start of the chain, keeping the
    /// last one deleted as the anchor the rest verifies from (with the time of pruning and the
    /// anchor's own MAC); how many. The anchor and every entry deleted are checked first: a chain
    /// that breaks there is not pruned ([`crate::Error::Corrupt`], nothing deleted).
    pub fn prune_audit(&self, before_ms: i64) -> Result<usize> {
        self.inner.backend.prune_audit(&self.inner.audit_key, before_ms, crate::store::now_ms())
    }

    /// [`verify`](super::verify) this store's chain.
    pub fn verify_audit(&self, pinned: Option<AuditHead>) -> Result<AuditVerdict> {
        super::verify(self, pinned)
    }
}

/// Queue `note` to the writer without waiting, holding a place of the bounded queue; `false`
/// (counted with the dropped) when the queue is full.
fn queue_note(inner: &Inner, note: AuditNote) -> bool {
    queue_in(inner, note, &inner.audit_pending, MAX_PENDING_NOTES)
}

/// Queue the summary of a window of collapsed refusals, in places of its own (as many as there
/// can be windows): a queue full of other notes must not throw away the count of many refusals.
fn queue_summary(inner: &Inner, note: AuditNote) -> bool {
    queue_in(inner, note, &inner.audit_summaries_pending, super::MAX_REPEAT_KEYS)
}

fn queue_in(inner: &Inner, note: AuditNote, pending: &Arc<AtomicUsize>, cap: usize) -> bool {
    let queued = NoteSlot::take(pending, &inner.audit_dropped, cap)
        .is_some_and(|slot| inner.queue(Op::Note { note: Box::new(note), slot }));
    if !queued {
        inner.audit_dropped.fetch_add(1, Ordering::Relaxed);
    }
    queued
}

/// [`Store::close_audit_repeats`].
pub(crate) fn close_repeats(inner: &Inner) -> usize {
    let notes = inner.audit_repeats.flush(Instant::now(), true);
    notes.into_iter().filter(|n| queue_summary(inner, n.clone())).count()
}

/// The store's write methods on behalf of an [`Actor`]: the same signatures, each writing its
/// audit entry, with the actor, in the same transaction as the change.
#[derive(Debug)]
pub struct Audited<'a> {
    store: &'a Store,
    actor: Actor,
}

impl Audited<'_> {
    fn run<T>(&self, f: impl FnOnce(&Store) -> Result<T>) -> Result<T> {
        as_actor(&self.actor, || f(self.store))
    }
}

macro_rules! audited {
    ($( $(#[$doc:meta])* fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty; )*) => {
        impl Audited<'_> {
            $(
                $(#[$doc])*
                pub fn $name(&self $(, $arg: $ty)*) -> Result<$ret> {
                    self.run(|s| s.$name($($arg),*))
                }
            )*
        }
    };
}

audited! {
    /// [`Store::record_token`], audited (`token.mint`).
    fn record_token(&self, new: crate::NewToken) -> crate::TokenRecord;
    /// [`Store::revoke_token`], audited (`token.revoke`).
    fn revoke_token(&self, tid: TokenId) -> Vec<crate::Revocation>;
    /// [`Store::rotate`], audited (`key.rotate`).
    fn rotate(&self) -> crate::KeyInfo;
    /// [`Store::import_key`], audited (`key.rotate` when activated, else `key.import`).
    fn import_key(&self, secret: &[u8], activate: bool) -> crate::KeyInfo;
    /// [`Store::revoke_key`], audited (`key.revoke`).
    fn revoke_key(&self, kid: tessera_core::KeyId) -> Option<crate::Revocation>;
    /// [`Store::revoke_key_replacing`], audited (`key.revoke`).
    fn revoke_key_replacing(&self, kid: tessera_core::KeyId) -> (Option<crate::Revocation>, Option<tessera_core::KeyId>);
    /// [`Store::rotate_signing_key`], audited (`signing_key.rotate`).
    fn rotate_signing_key(&self, alg: tessera_core::envelope::Algorithm, min_published: std::time::Duration, owner: Option<&str>) -> Vec<crate::SigningKeyInfo>;
    /// [`Store::create_session`], audited (`session.create`).
    fn create_session(&self, sid: SessionId, session: crate::SessionRecord, refresh: crate::NewToken) -> crate::SessionRecord;
    /// [`Store::refresh_session`], audited (`session.refresh`, or `session.reuse`).
    fn refresh_session(&self, sid: SessionId, presented: TokenId, successor: Option<crate::NewToken>, grace: std::time::Duration) -> crate::Refreshed;
    /// [`Store::revoke_session`], audited (`session.revoke`).
    fn revoke_session(&self, sid: SessionId) -> Vec<crate::Revocation>;
    /// [`Store::register_app`], audited (`app.register`).
    fn register_app(&self, app: crate::AppRecord, credential: crate::NewToken) -> crate::AppRecord;
    /// [`Store::disable_app`], audited (`app.disable`).
    fn disable_app(&self, name: &str) -> crate::AppRecord;
    /// [`Store::record_link`], audited (`link.create`).
    fn record_link(&self, token: crate::NewToken, grant: String) -> crate::TokenRecord;
    /// [`Store::consume`], audited (`link.redeem` when the token is a link and this is its use).
    fn consume(&self, tid: TokenId) -> Option<i64>;
}

thread_local! {
    /// The actor of the writes this thread submits inside an [`Audited`] call (none: the
    /// system). Set only for the duration of that call; the store's `submit` attaches it to the
    /// operation, which the writer thread then records.
    static ACTOR: RefCell<Option<Actor>> = const { RefCell::new(None) };
}

/// Run `f` with `actor` as the actor of the writes this thread submits.
fn as_actor<T>(actor: &Actor, f: impl FnOnce() -> T) -> T {
    struct Reset(Option<Actor>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let previous = self.0.take();
            ACTOR.with(|a| *a.borrow_mut() = previous);
        }
    }
    let _reset = Reset(ACTOR.with(|a| a.borrow_mut().replace(actor.clone())));
    f()
}

/// The operation, carrying the actor of the current [`Audited`] call if there is one.
pub(crate) fn with_actor(op: Op) -> Op {
    match ACTOR.with(|a| a.borrow().clone()) {
        Some(actor) => Op::As { actor: Box::new(actor), op: Box::new(op) },
        None => op,
    }
}

/// A place in the writer's queue held by a note until the writer is done with it (written,
/// refused, or dropped unrun): the queue of notes is bounded without a bounded channel.
#[derive(Debug)]
pub(crate) struct NoteSlot(Arc<AtomicUsize>, Arc<AtomicU64>);

impl NoteSlot {
    fn take(pending: &Arc<AtomicUsize>, dropped: &Arc<AtomicU64>, cap: usize) -> Option<NoteSlot> {
        pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < cap).then_some(n + 1))
            .ok()
            .map(|_| NoteSlot(Arc::clone(pending), Arc::clone(dropped)))
    }

    /// The note was queued but will not be written: count it with the dropped.
    pub(crate) fn missed(&self) {
        self.1.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for NoteSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn descendants(n: usize) -> Option<String> {
    Some(format!("descendants={}", n.saturating_sub(1)))
}

fn token(tid: TokenId) -> Target {
    Target { tid: Some(tid), ..Target::default() }
}

fn session(sid: SessionId, tid: Option<TokenId>) -> Target {
    Target { sid: Some(sid), tid, ..Target::default() }
}

/// The entries operation `op` writes, having done `done`, in its transaction (none for an
/// operation that changed nothing, such as revoking twice, or that is no audited change).
pub(crate) fn rows_for(op: &Op, done: &Done, actor: &Actor, at_ms: i64) -> Vec<(AuditRow, Only)> {
    let ok = Outcome::Success;
    let row = |kind, target, subject: Option<&str>, detail: Option<String>| {
        new_row(kind, ok, actor, target, at_ms).about(subject).saying(None, detail.as_deref())
    };
    let one = |r: AuditRow| vec![(r, Only::Always)];
    match (op, done) {
        (Op::Record(new), Done::Token(_)) => one(row(
            AuditKind::TokenMint,
            token(new.tid),
            Some(&new.subject),
            new.parent.map(|p| format!("parent={p}")),
        )),
        (Op::RevokeToken(tid), Done::Revocations(r)) if !r.is_empty() => {
            one(row(AuditKind::TokenRevoke, token(*tid), None, descendants(r.len())))
        }
        (Op::AddKey { kid, activate, .. }, Done::Key(Some(_))) => {
            let kind = if *activate { AuditKind::KeyRotate } else { AuditKind::KeyImport };
            one(row(kind, Target { kid: Some(kid.to_string()), ..Target::default() }, None, None))
        }
        (Op::RevokeKey { kid, .. }, Done::KeyRevoked(Some(_), replacement)) => one(row(
            AuditKind::KeyRevoke,
            Target { kid: Some(kid.to_string()), ..Target::default() },
            None,
            replacement.map(|k| format!("replacement={k}")),
        )),
        (Op::EnsureSigning { .. } | Op::RotateSigning { .. }, Done::Signing(keys)) => {
            let active = keys.iter().find(|k| k.state == crate::SigningKeyState::Active);
            let owner = match op {
                Op::RotateSigning { owner, .. } => owner.clone(),
                _ => None,
            };
            let detail = matches!(op, Op::EnsureSigning { .. }).then(|| "first keys".to_owned());
            one(row(
                AuditKind::SigningKeyRotate,
                Target { kid: active.map(|k| k.kid.clone()), app: owner, ..Target::default() },
                None,
                detail,
            ))
        }
        (Op::CreateApp { app, credential, .. }, Done::App(_)) => one(row(
            AuditKind::AppRegister,
            Target { app: Some(app.name.clone()), tid: Some(credential.tid), ..Target::default() },
            Some(&credential.subject),
            None,
        )),
        (Op::DisableApp(name), Done::App(_)) => one(row(
            AuditKind::AppDisable,
            Target { app: Some(name.clone()), ..Target::default() },
            None,
            None,
        )),
        (Op::CreateSession { sid, session: s, refresh }, Done::Session(_)) => {
            one(row(AuditKind::SessionCreate, session(*sid, Some(refresh.tid)), Some(&s.subject), None))
        }
        (Op::RefreshSession { sid, presented, .. }, Done::Refreshed(r)) => match r {
            crate::Refreshed::Current { session: s, rotated_to } => one(row(
                AuditKind::SessionRefresh,
                session(*sid, Some(rotated_to.unwrap_or(*presented))),
                Some(&s.subject),
                rotated_to.map(|_| format!("spent={presented}")),
            )),
            crate::Refreshed::Replayed { session: s, successor } => one(row(
                AuditKind::SessionRefresh,
                session(*sid, Some(*successor)),
                Some(&s.subject),
                Some(format!("replayed={presented}")),
            )),
            crate::Refreshed::ReuseDetected => {
                one(row(AuditKind::SessionReuse, session(*sid, Some(*presented)), None, None))
            }
        },
        (Op::RevokeSession(sid), Done::Revocations(r)) if !r.is_empty() => {
            let first = r.first().and_then(|r| match r.target {
                RevocationTarget::Token(t) => Some(t),
                RevocationTarget::Key(_) => None,
            });
            one(row(
                AuditKind::SessionRevoke,
                session(*sid, first),
                None,
                Some(format!("revoked={}", r.len())),
            ))
        }
        (Op::CreateLink { token: t, .. }, Done::Token(_)) => {
            one(row(AuditKind::LinkCreate, token(t.tid), Some(&t.subject), None))
        }
        (Op::Consume(tid), Done::Used(None)) => {
            vec![(row(AuditKind::LinkRedeem, token(*tid), None, None), Only::TargetIsLink)]
        }
        _ => Vec::new(),
    }
}
