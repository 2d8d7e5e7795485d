//! The audit trail: who changed what, from where, and what was refused.
//!
//! Every state change the store makes writes its entry **in the same transaction** as the change
//! (the writer adds it to the operation, so a rolled-back operation leaves none). Refusals and
//! other entries that are no state change go through the writer's queue without waiting
//! ([`Store::audit_note`]). Entries hold ids only (tids, kids, sids, application names), never
//! token text, refresh tokens, keys or secrets.
//!
//! Entries are chained after commit, never on the write path: one sealer per cluster gives each
//! committed entry its place `seq` (gap-free) and its link `HMAC(k_audit, previous link ‖
//! canonical entry)`, with `k_audit` derived from the master key (see `docs/AUDIT.md` for what this
//! proves and what it does not). [`verify`] walks the chain from the anchor that pruning leaves.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tessera_core::{SessionId, TokenId};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::master::MasterKey;
#[cfg(doc)]
use crate::Store;

mod chain;
mod ops;
mod repeats;
pub(crate) use chain::prune_walk;
pub use chain::{verify, AuditAnchor, AuditVerdict};
pub use ops::Audited;
pub(crate) use ops::{close_repeats, rows_for, with_actor, NoteSlot};
pub(crate) use repeats::Repeats;
pub use repeats::{MAX_REPEAT_KEYS, REPEAT_WINDOW};

/// Entries one [`Store::audit`] call returns at most.
pub const MAX_AUDIT_PAGE: usize = 1000;
/// Longest user agent kept (longer ones are cut at a character boundary).
pub const MAX_USER_AGENT: usize = 200;
/// Longest reason or detail kept.
pub const MAX_AUDIT_TEXT: usize = 200;
/// Longest request id, subject or issuer kept in an entry.
pub const MAX_AUDIT_FIELD: usize = 256;
/// Refusals the writer's queue holds at most before [`Store::audit_note`] drops (and counts) them.
pub const MAX_PENDING_NOTES: usize = 4096;

/// Who asked, and from where: what the server knows of the request behind a write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// Subject of the presented credential.
    pub subject: Option<String>,
    /// Tid of the presented credential.
    pub tid: Option<TokenId>,
    /// For the login exchange: the ID token's issuer.
    pub issuer: Option<String>,
    /// Client address (an `IpAddr`'s text).
    pub address: Option<String>,
    /// `X-Request-Id` (at most 64 printable bytes).
    pub request_id: Option<String>,
    /// User agent; the store keeps at most [`MAX_USER_AGENT`] bytes of it.
    pub user_agent: Option<String>,
}

impl Actor {
    /// The service itself: housekeeping, the CLI's local administration, tests (subject
    /// `system`).
    pub fn system() -> Actor {
        Actor { subject: Some("system".into()), ..Actor::default() }
    }
}

/// What an entry records.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// `token.mint`: target tid; detail `parent=<tid>` when minted from one.
    TokenMint,
    /// `token.revoke`: target tid; detail `descendants=<n>`.
    TokenRevoke,
    /// `key.rotate`: a new active root key (target kid).
    KeyRotate,
    /// `key.import`: a root key added that only verifies (target kid).
    KeyImport,
    /// `key.revoke`: target kid; detail `replacement=<kid>` when one was made active.
    KeyRevoke,
    /// `signing_key.rotate`: target kid (the JWS kid that signs now), app when an application's.
    SigningKeyRotate,
    /// `session.create`: target sid and its first refresh token's tid.
    SessionCreate,
    /// `session.refresh`: target sid and the new (or presented) refresh token's tid.
    SessionRefresh,
    /// `session.reuse`: a spent refresh token presented again; the session was revoked.
    SessionReuse,
    /// `session.revoke`: target sid; detail `descendants=<n>`.
    SessionRevoke,
    /// `link.create`: target tid (the link token).
    LinkCreate,
    /// `link.redeem`: target tid (the link token), its one use.
    LinkRedeem,
    /// `app.register`: target app and its credential's tid.
    AppRegister,
    /// `app.disable`: target app.
    AppDisable,
    /// `exchange.accept`: actor issuer, detail `sub=<sub>`.
    ExchangeAccept,
    /// `exchange.refuse`: actor issuer, reason.
    ExchangeRefuse,
    /// `admin_token.create`: target tid.
    AdminTokenCreate,
    /// `budget.exhausted`: target tid (once per token and window).
    BudgetExhausted,
    /// `management.refused`: a management call refused for authorization.
    Refused,
}

impl AuditKind {
    /// Every kind, in the order above.
    pub const ALL: [AuditKind; 19] = [
        AuditKind::TokenMint,
        AuditKind::TokenRevoke,
        AuditKind::KeyRotate,
        AuditKind::KeyImport,
        AuditKind::KeyRevoke,
        AuditKind::SigningKeyRotate,
        AuditKind::SessionCreate,
        AuditKind::SessionRefresh,
        AuditKind::SessionReuse,
        AuditKind::SessionRevoke,
        AuditKind::LinkCreate,
        AuditKind::LinkRedeem,
        AuditKind::AppRegister,
        AuditKind::AppDisable,
        AuditKind::ExchangeAccept,
        AuditKind::ExchangeRefuse,
        AuditKind::AdminTokenCreate,
        AuditKind::BudgetExhausted,
        AuditKind::Refused,
    ];

    /// The dotted name (`token.mint`, ...), as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::TokenMint => "token.mint",
            AuditKind::TokenRevoke => "token.revoke",
            AuditKind::KeyRotate => "key.rotate",
            AuditKind::KeyImport => "key.import",
            AuditKind::KeyRevoke => "key.revoke",
            AuditKind::SigningKeyRotate => "signing_key.rotate",
            AuditKind::SessionCreate => "session.create",
            AuditKind::SessionRefresh => "session.refresh",
            AuditKind::SessionReuse => "session.reuse",
            AuditKind::SessionRevoke => "session.revoke",
            AuditKind::LinkCreate => "link.create",
            AuditKind::LinkRedeem => "link.redeem",
            AuditKind::AppRegister => "app.register",
            AuditKind::AppDisable => "app.disable",
            AuditKind::ExchangeAccept => "exchange.accept",
            AuditKind::ExchangeRefuse => "exchange.refuse",
            AuditKind::AdminTokenCreate => "admin_token.create",
            AuditKind::BudgetExhausted => "budget.exhausted",
            AuditKind::Refused => "management.refused",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AuditKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        AuditKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| Error::BadAudit(format!("unknown audit kind {s:?}")))
    }
}

/// Whether the recorded attempt succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `success`.
    Success,
    /// `refused`.
    Refused,
}

impl Outcome {
    /// `success` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Outcome {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "success" => Ok(Outcome::Success),
            "refused" => Ok(Outcome::Refused),
            _ => Err(Error::BadAudit(format!("unknown outcome {s:?}"))),
        }
    }
}

/// What an entry is about (ids only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Target {
    /// A token family.
    pub tid: Option<TokenId>,
    /// A root key (hex) or a JWS signing key (thumbprint).
    pub kid: Option<String>,
    /// A session.
    pub sid: Option<SessionId>,
    /// An application's name.
    pub app: Option<String>,
}

/// One recorded entry, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the sealed chain (gap-free from the first kept entry); 0 = not sealed yet.
    pub seq: u64,
    /// Insert id (order of insert; may have gaps): the cursor for reading.
    pub id: u64,
    /// When, in milliseconds since the epoch.
    pub at_ms: i64,
    /// What.
    pub kind: AuditKind,
    /// Whether it succeeded.
    pub outcome: Outcome,
    /// Who, from where.
    pub actor: Actor,
    /// About what.
    pub target: Target,
    /// Short, on refusals (at most [`MAX_AUDIT_TEXT`] bytes).
    pub reason: Option<String>,
    /// Short, e.g. `descendants=12` (at most [`MAX_AUDIT_TEXT`] bytes).
    pub detail: Option<String>,
}

/// A refusal, or another entry that is not part of a state change (written through the
/// writer's queue, see [`Store::audit_note`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditNote {
    /// What.
    pub kind: AuditKind,
    /// Whether it succeeded.
    pub outcome: Outcome,
    /// Who, from where.
    pub actor: Actor,
    /// About what.
    pub target: Target,
    /// Why it was refused.
    pub reason: Option<String>,
    /// More, e.g. `sub=<sub>`.
    pub detail: Option<String>,
}

/// Which entries [`Store::audit`] returns (all conditions together).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Entries with an id above this (the cursor).
    pub after: u64,
    /// At most this many (0 or more than [`MAX_AUDIT_PAGE`]: [`MAX_AUDIT_PAGE`]).
    pub limit: usize,
    /// The actor's subject, the actor's tid (hex) or the issuer equals this.
    pub actor: Option<String>,
    /// The entry concerns this subject: the actor's subject, or the subject of the token it
    /// targets, equals it.
    pub subject: Option<String>,
    /// The actor's tid or the target tid is one of these (empty: any).
    pub tids: Vec<TokenId>,
    /// Of this kind.
    pub kind: Option<AuditKind>,
    /// With this outcome.
    pub outcome: Option<Outcome>,
    /// At or after this time (ms).
    pub since_ms: Option<i64>,
    /// Before this time (ms).
    pub until_ms: Option<i64>,
}

impl AuditFilter {
    /// The page size this filter gets.
    pub(crate) fn page(&self) -> usize {
        if self.limit == 0 {
            MAX_AUDIT_PAGE
        } else {
            self.limit.min(MAX_AUDIT_PAGE)
        }
    }

    /// Whether `e` (with the subject of the token it targets) passes every condition but the
    /// cursor and the limit.
    pub(crate) fn admits(&self, e: &AuditEntry, target_subject: Option<&str>) -> bool {
        let actor_tid = e.actor.tid.map(|t| t.to_string());
        self.actor.as_ref().is_none_or(|a| {
            e.actor.subject.as_ref() == Some(a)
                || actor_tid.as_ref() == Some(a)
                || e.actor.issuer.as_ref() == Some(a)
        }) && self
            .subject
            .as_ref()
            .is_none_or(|s| e.actor.subject.as_ref() == Some(s) || target_subject == Some(s.as_str()))
            && (self.tids.is_empty()
                || self.tids.iter().any(|t| e.actor.tid == Some(*t) || e.target.tid == Some(*t)))
            && self.kind.is_none_or(|k| e.kind == k)
            && self.outcome.is_none_or(|o| e.outcome == o)
            && self.since_ms.is_none_or(|s| e.at_ms >= s)
            && self.until_ms.is_none_or(|u| e.at_ms < u)
    }
}

/// The newest sealed entry: what an outside copy pins. Text form `<seq>:<hex mac>`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditHead {
    /// Its place in the chain.
    pub seq: u64,
    /// Its link.
    pub mac: [u8; 32],
}

impl fmt::Debug for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuditHead({self})")
    }
}

impl fmt::Display for AuditHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.seq)?;
        self.mac.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl FromStr for AuditHead {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::BadAudit(format!("an audit head is <seq>:<64 hex digits>, not {s:?}"));
        let (seq, hex) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut mac = [0u8; 32];
        for (i, b) in mac.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(AuditHead { seq, mac })
    }
}

/// The chain key: `HMAC(master, "tessera/audit/v1")`, redacted in `Debug`. Held as HMAC-SHA-256
/// keyed with it (the inner and outer padded-key blocks already hashed: every link would hash
/// them again), which is as secret as the key and, like it, wiped on drop (`hmac`'s and `sha2`'s
/// `zeroize` features); the key bytes themselves are wiped once it is made.
#[derive(Clone)]
pub(crate) struct AuditKey(Hmac<Sha256>);

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey([redacted])")
    }
}

impl AuditKey {
    pub(crate) fn from_master(master: &MasterKey) -> AuditKey {
        let key: Zeroizing<[u8; 32]> = master.derive(b"tessera/audit/v1");
        AuditKey(<Hmac<Sha256> as KeyInit>::new_from_slice(key.as_slice()).unwrap_or_else(|_| unreachable!()))
    }

    fn mac(&self, prev: &[u8; 32], row: &AuditRow) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(prev);
        row.canonical_into(&mut |b| m.update(b));
        m
    }

    /// The link of entry `row` after the link `prev`.
    pub(crate) fn link(&self, prev: &[u8; 32], row: &AuditRow) -> [u8; 32] {
        self.mac(prev, row).finalize().into_bytes().into()
    }

    /// Whether `mac` is the link of `row` after `prev` (compared in constant time).
    pub(crate) fn checks(&self, prev: &[u8; 32], row: &AuditRow, mac: &[u8; 32]) -> bool {
        self.mac(prev, row).verify_slice(mac).is_ok()
    }

    /// The anchor's own MAC: `HMAC(k_audit, "tessera/audit-anchor/v1" ‖ seq ‖ link ‖
    /// pruned_at_ms)`, integers big-endian. The label differs from an entry's, and the input
    /// (71 bytes) is shorter than any entry's link input (the previous link, the entry's label
    /// and three integers alone are 78), so no entry's link is ever an anchor's MAC.
    fn anchor_hmac(&self, seq: u64, link: &[u8; 32], pruned_at_ms: i64) -> Hmac<Sha256> {
        let mut m = self.0.clone();
        m.update(b"tessera/audit-anchor/v1");
        m.update(&seq.to_be_bytes());
        m.update(link);
        m.update(&pruned_at_ms.to_be_bytes());
        m
    }

    /// The MAC of an anchor at `seq` with `link`, pruned at `pruned_at_ms`.
    pub(crate) fn anchor_mac(&self, seq: u64, link: &[u8; 32], pruned_at_ms: i64) -> [u8; 32] {
        self.anchor_hmac(seq, link, pruned_at_ms).finalize().into_bytes().into()
    }

    /// Whether `mac` is that MAC (compared in constant time).
    pub(crate) fn checks_anchor(&self, seq: u64, link: &[u8; 32], pruned_at_ms: i64, mac: &[u8; 32]) -> bool {
        self.anchor_hmac(seq, link, pruned_at_ms).verify_slice(mac).is_ok()
    }
}

/// A condition an entry is written under (checked in the operation's transaction).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Only {
    /// Always.
    Always,
    /// Only when the target token is a link (its record has a grant).
    TargetIsLink,
}

/// An entry as stored: the public fields, the subject of the token it targets, and its link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuditRow {
    pub(crate) entry: AuditEntry,
    /// The subject of the target token (filled from its record when the writer does not know
    /// it).
    pub(crate) target_subject: Option<String>,
    /// The link, once sealed.
    pub(crate) mac: Option<[u8; 32]>,
}

/// An optional field of the canonical bytes: 0, or 1 and its length (u32, big-endian) and bytes.
fn put_opt(out: &mut impl FnMut(&[u8]), v: Option<&[u8]>) {
    match v {
        None => out(&[0]),
        Some(b) => {
            let len = u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes();
            out(&[1, len[0], len[1], len[2], len[3]]);
            out(b);
        }
    }
}

impl AuditRow {
    /// The bytes the link covers: every field but the link, each length-prefixed, in a fixed
    /// order, after a version label. Two different entries never give the same bytes. (Links
    /// hash them piece by piece: [`AuditRow::canonical_into`].)
    #[cfg(test)]
    pub(crate) fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.canonical_into(&mut |b| out.extend_from_slice(b));
        out
    }

    /// The canonical bytes, piece by piece into `out` (a link hashes them as they come, without
    /// gathering them first): every field but the link, each length-prefixed, in a fixed order,
    /// after a version label. Two different entries never give the same bytes.
    pub(crate) fn canonical_into(&self, out: &mut impl FnMut(&[u8])) {
        let e = &self.entry;
        out(b"tessera/audit-entry/v1");
        out(&e.seq.to_be_bytes());
        out(&e.id.to_be_bytes());
        out(&e.at_ms.to_be_bytes());
        put_opt(out, Some(e.kind.as_str().as_bytes()));
        put_opt(out, Some(e.outcome.as_str().as_bytes()));
        let a = &e.actor;
        put_opt(out, a.subject.as_deref().map(str::as_bytes));
        put_opt(out, a.tid.as_ref().map(|t| t.as_bytes().as_slice()));
        put_opt(out, a.issuer.as_deref().map(str::as_bytes));
        put_opt(out, a.address.as_deref().map(str::as_bytes));
        put_opt(out, a.request_id.as_deref().map(str::as_bytes));
        put_opt(out, a.user_agent.as_deref().map(str::as_bytes));
        let t = &e.target;
        put_opt(out, t.tid.as_ref().map(|t| t.as_bytes().as_slice()));
        put_opt(out, t.kid.as_deref().map(str::as_bytes));
        put_opt(out, t.sid.as_ref().map(|s| s.as_bytes().as_slice()));
        put_opt(out, t.app.as_deref().map(str::as_bytes));
        put_opt(out, self.target_subject.as_deref().map(str::as_bytes));
        put_opt(out, e.reason.as_deref().map(str::as_bytes));
        put_opt(out, e.detail.as_deref().map(str::as_bytes));
    }
}

/// Whether `c` may not reach whoever reads the trail as it is: a control character (C0
/// including NUL, which PostgreSQL's text cannot hold, DEL and C1), a line or paragraph separator
/// (U+2028, U+2029: line breaks to many viewers), or a bidirectional control (U+200E, U+200F,
/// U+202A-U+202E, U+2066-U+2069: they reorder what a terminal or browser shows after them).
pub(crate) fn unsafe_to_show(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// `text` with every character [`unsafe_to_show`] replaced by U+FFFD, then cut to at most `max`
/// bytes at a character boundary. Callers without a credential put text here (an exchange's
/// unverified `iss` and `sub`, a user agent): a terminal escape, a line break or a reordering
/// mark in it must not reach whoever reads the trail.
pub(crate) fn clip(text: &str, max: usize) -> String {
    if text.len() <= max && !text.chars().any(unsafe_to_show) {
        // Nothing to replace or cut (the usual case): the same text, copied once.
        return text.to_owned();
    }
    replace_and_cut(text, max)
}

/// What [`clip`] is, without its shortcut: every character unsafe to show replaced, then cut to
/// `max` bytes at a character boundary.
fn replace_and_cut(text: &str, max: usize) -> String {
    let clean: String = text
        .chars()
        .take(max)
        .map(|c| if unsafe_to_show(c) { char::REPLACEMENT_CHARACTER } else { c })
        .collect();
    let mut end = clean.len().min(max);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].to_owned()
}

/// An entry about to be written: every field bounded.
pub(crate) fn new_row(
    kind: AuditKind,
    outcome: Outcome,
    actor: &Actor,
    target: Target,
    at_ms: i64,
) -> AuditRow {
    let f = |v: &Option<String>, max| v.as_deref().map(|s| clip(s, max));
    AuditRow {
        entry: AuditEntry {
            seq: 0,
            id: 0,
            at_ms,
            kind,
            outcome,
            actor: Actor {
                subject: f(&actor.subject, MAX_AUDIT_FIELD),
                tid: actor.tid,
                issuer: f(&actor.issuer, MAX_AUDIT_FIELD),
                address: f(&actor.address, 64),
                request_id: f(&actor.request_id, 64),
                user_agent: f(&actor.user_agent, MAX_USER_AGENT),
            },
            target: Target {
                tid: target.tid,
                kid: target.kid.map(|k| clip(&k, MAX_AUDIT_FIELD)),
                sid: target.sid,
                app: target.app.map(|a| clip(&a, MAX_AUDIT_FIELD)),
            },
            reason: None,
            detail: None,
        },
        target_subject: None,
        mac: None,
    }
}

impl AuditRow {
    /// With the subject of the token it targets (else the backend reads it from the record).
    pub(crate) fn about(mut self, target_subject: Option<&str>) -> AuditRow {
        self.target_subject = target_subject.map(|s| clip(s, MAX_AUDIT_FIELD));
        self
    }

    /// With a reason and a detail (each cut to [`MAX_AUDIT_TEXT`]).
    pub(crate) fn saying(mut self, reason: Option<&str>, detail: Option<&str>) -> AuditRow {
        self.entry.reason = reason.map(|r| clip(r, MAX_AUDIT_TEXT));
        self.entry.detail = detail.map(|d| clip(d, MAX_AUDIT_TEXT));
        self
    }
}

#[cfg(test)]
mod tests;
