//! Refusals collapsed: the first of a kind in a window is written, the identical ones after it
//! within [`REPEAT_WINDOW`] are counted in memory, and one summary entry says how many when the
//! window ends.
//!
//! Without this, a client refused on every call within its rate limit (about 140 calls a second
//! per address) wrote as many durable entries, kept for the whole retention. "Identical" is the
//! same key: kind, outcome, reason, detail, the target, and the actor's subject, tid, issuer,
//! address and user agent (not its request id, which changes with every request). The target is
//! in the key so that a prober cannot hide which tokens it tried behind one decoy's entry, and
//! the user agent so that two callers behind one address and one token family are not merged
//! into one of them; a caller who varies either gets entries as before (past the bound below,
//! uncollapsed). The summary is an ordinary entry (the chain is unchanged): the key's fields, the
//! last repeat's request id, and the detail `repeated=<n> total=<n+1> within <window>s; <detail>`.
//!
//! The map holds at most [`MAX_REPEAT_KEYS`] keys. When it is full (windows that ended are
//! swept first, at most once a second), a refusal of a new key is written uncollapsed, as
//! before: never dropped, so filling the map with junk keys cannot hide another client's
//! refusals (the writer's bounded queue still bounds what is written).
//! `budget.exhausted` is not collapsed here: it is written once per token and window already.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tessera_core::TokenId;

use super::{clip, AuditKind, AuditNote, Outcome, Target, MAX_AUDIT_FIELD, MAX_AUDIT_TEXT};

/// How long identical refusals are collapsed after the first (which is written at once).
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// Keys (distinct refusals with a window running) kept at most; past that, refusals of a new
/// key are written uncollapsed.
pub const MAX_REPEAT_KEYS: usize = 4096;
/// How often a full map is swept for windows that ended, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What makes two refusals identical (each text bounded as the entry stores it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    kind: AuditKind,
    reason: Option<String>,
    detail: Option<String>,
    subject: Option<String>,
    tid: Option<TokenId>,
    issuer: Option<String>,
    address: Option<String>,
    user_agent: Option<String>,
    target: Target,
}

impl Key {
    fn of(n: &AuditNote) -> Key {
        let f = |v: &Option<String>, max| v.as_deref().map(|s| clip(s, max));
        Key {
            kind: n.kind,
            reason: f(&n.reason, MAX_AUDIT_TEXT),
            detail: f(&n.detail, MAX_AUDIT_TEXT),
            subject: f(&n.actor.subject, MAX_AUDIT_FIELD),
            tid: n.actor.tid,
            issuer: f(&n.actor.issuer, MAX_AUDIT_FIELD),
            address: f(&n.actor.address, 64),
            user_agent: f(&n.actor.user_agent, MAX_AUDIT_FIELD),
            target: Target {
                kid: f(&n.target.kid, MAX_AUDIT_FIELD),
                app: f(&n.target.app, MAX_AUDIT_FIELD),
                ..n.target.clone()
            },
        }
    }
}

/// A window running for one key.
#[derive(Debug)]
struct Window {
    /// When the first refusal (the one written) came.
    start: Instant,
    /// Identical refusals since, not written.
    repeats: u64,
    /// The latest of them (its request id goes into the summary).
    last: Option<AuditNote>,
}

#[derive(Debug)]
struct Map {
    windows: HashMap<Key, Window>,
    swept: Option<Instant>,
}

/// The windows of collapsed refusals, bounded (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Repeats {
    map: Mutex<Map>,
    window: Duration,
}

impl Default for Repeats {
    fn default() -> Self {
        Repeats::new(REPEAT_WINDOW)
    }
}

impl Repeats {
    pub(crate) fn new(window: Duration) -> Repeats {
        Repeats { map: Mutex::new(Map { windows: HashMap::new(), swept: None }), window }
    }

    /// Whether `note` is a refusal this collapses (every refusal but `budget.exhausted`).
    pub(crate) fn collapses(note: &AuditNote) -> bool {
        note.outcome == Outcome::Refused && note.kind != AuditKind::BudgetExhausted
    }

    /// The notes to write for `note`, arriving at `now`: itself when it starts a window (after
    /// the summary of its key's window that ended, if that one had repeats) or when the map is
    /// full; nothing when it repeats a running window (it is counted).
    pub(crate) fn admit(&self, note: AuditNote, now: Instant) -> Vec<AuditNote> {
        let key = Key::of(&note);
        let Ok(mut map) = self.map.lock() else { return vec![note] };
        let mut out = Vec::new();
        if let Some(w) = map.windows.get_mut(&key) {
            if now < w.start + self.window {
                w.repeats += 1;
                w.last = Some(note);
                return out;
            }
            let ended = map.windows.remove(&key);
            out.extend(ended.and_then(|w| self.summary(&key, w)));
        }
        if map.windows.len() >= MAX_REPEAT_KEYS && map.swept.is_none_or(|t| now >= t + SWEEP_EVERY) {
            map.swept = Some(now);
            out.extend(self.take(&mut map, now, false));
        }
        if map.windows.len() < MAX_REPEAT_KEYS {
            map.windows.insert(key, Window { start: now, repeats: 0, last: None });
        }
        out.push(note);
        out
    }

    /// The summaries of the windows ended at `now` (of every window, with `all`), which are
    /// closed; windows without repeats need none.
    pub(crate) fn flush(&self, now: Instant, all: bool) -> Vec<AuditNote> {
        match self.map.lock() {
            Ok(mut map) => self.take(&mut map, now, all),
            Err(_) => Vec::new(),
        }
    }

    /// Keys with a window running.
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.windows.len())
    }

    fn take(&self, map: &mut Map, now: Instant, all: bool) -> Vec<AuditNote> {
        let ended: Vec<Key> = map
            .windows
            .iter()
            .filter(|(_, w)| all || now >= w.start + self.window)
            .map(|(k, _)| k.clone())
            .collect();
        ended
            .into_iter()
            .filter_map(|k| {
                let w = map.windows.remove(&k)?;
                self.summary(&k, w)
            })
            .collect()
    }

    /// The entry that says how many refusals of `key` its window collapsed.
    fn summary(&self, key: &Key, w: Window) -> Option<AuditNote> {
        let mut last = w.last?;
        let mut detail =
            format!("repeated={} total={} within {}s", w.repeats, w.repeats + 1, self.window.as_secs());
        if let Some(d) = &key.detail {
            detail.push_str("; ");
            detail.push_str(d);
        }
        last.detail = Some(detail);
        Some(last)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use crate::audit::Actor;

    fn refusal(address: &str, tid: u8) -> AuditNote {
        AuditNote {
            kind: AuditKind::Refused,
            outcome: Outcome::Refused,
            actor: Actor {
                subject: Some("mallory".into()),
                address: Some(address.into()),
                request_id: Some(format!("req-{tid}")),
                ..Actor::default()
            },
            target: Target { tid: Some(TokenId::from_bytes([tid; 16])), ..Target::default() },
            reason: Some("operation tokens.revoke is not allowed".into()),
            detail: Some("op=tokens.revoke".into()),
        }
    }

    #[test]
    fn identical_refusals_in_a_window_are_one_entry_and_a_summary() {
        let r = Repeats::default();
        let t0 = Instant::now();
        let mut written = Vec::new();
        for i in 0..100u32 {
            written.extend(r.admit(refusal("192.0.2.1", 1), t0 + Duration::from_millis(i.into())));
        }
        assert_eq!(written.len(), 1, "the first is written, the rest counted");
        assert_eq!(written[0].detail.as_deref(), Some("op=tokens.revoke"));
        assert!(r.flush(t0 + Duration::from_secs(59), false).is_empty(), "the window still runs");
        let summary = r.flush(t0 + REPEAT_WINDOW, false);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].detail.as_deref(), Some("repeated=99 total=100 within 60s; op=tokens.revoke"));
        assert_eq!(summary[0].target.tid, Some(TokenId::from_bytes([1; 16])));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn the_next_refusal_after_the_window_writes_the_summary_and_starts_over() {
        let r = Repeats::default();
        let t0 = Instant::now();
        assert_eq!(r.admit(refusal("192.0.2.1", 1), t0).len(), 1);
        // Another target is another key (review of issue 22: a decoy's entry hid which tokens a
        // prober tried): written, not counted.
        assert_eq!(r.admit(refusal("192.0.2.1", 2), t0 + Duration::from_secs(1)).len(), 1);
        assert!(r.admit(refusal("192.0.2.1", 1), t0 + Duration::from_secs(2)).is_empty());
        assert!(r.admit(refusal("192.0.2.1", 1), t0 + Duration::from_secs(3)).is_empty());
        let out = r.admit(refusal("192.0.2.1", 1), t0 + REPEAT_WINDOW);
        assert_eq!(out.len(), 2, "the summary, then the refusal that opens the next window");
        assert_eq!(out[0].detail.as_deref(), Some("repeated=2 total=3 within 60s; op=tokens.revoke"));
        assert_eq!(out[0].target.tid, Some(TokenId::from_bytes([1; 16])), "its target");
        assert_eq!(out[0].actor.request_id.as_deref(), Some("req-1"), "the last repeat's request");
        assert_eq!(out[1].detail.as_deref(), Some("op=tokens.revoke"));
        // A window with no repeats ends without a summary.
        assert!(r.flush(t0 + 2 * REPEAT_WINDOW, false).is_empty());
    }

    #[test]
    fn different_addresses_and_budget_refusals_are_not_merged() {
        let r = Repeats::default();
        let t0 = Instant::now();
        assert_eq!(r.admit(refusal("192.0.2.1", 1), t0).len(), 1);
        assert_eq!(r.admit(refusal("192.0.2.2", 1), t0).len(), 1);
        let mut other = refusal("192.0.2.1", 1);
        other.reason = Some("another reason".into());
        assert_eq!(r.admit(other, t0).len(), 1);
        assert_eq!(r.len(), 3);
        let mut budget = refusal("192.0.2.1", 1);
        budget.kind = AuditKind::BudgetExhausted;
        assert!(!Repeats::collapses(&budget));
        assert!(Repeats::collapses(&refusal("192.0.2.1", 1)));
    }

    #[test]
    fn the_map_is_bounded_and_a_new_key_past_it_is_written_uncollapsed() {
        let r = Repeats::default();
        let t0 = Instant::now();
        for i in 0..MAX_REPEAT_KEYS {
            assert_eq!(r.admit(refusal(&format!("10.0.{}.{}", i / 256, i % 256), 1), t0).len(), 1);
        }
        assert_eq!(r.len(), MAX_REPEAT_KEYS);
        for _ in 0..3 {
            assert_eq!(r.admit(refusal("192.0.2.99", 1), t0).len(), 1, "written, never dropped");
        }
        assert_eq!(r.len(), MAX_REPEAT_KEYS);
        // Once windows end, the sweep frees their places.
        assert_eq!(r.admit(refusal("192.0.2.99", 1), t0 + REPEAT_WINDOW).len(), 1);
        assert_eq!(r.len(), 1);
    }
}
