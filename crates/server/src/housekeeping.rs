//! The housekeeping round, every `--housekeeping-interval` on every node: last uses written in
//! one batch, rate counters whose windows ended dropped, the gauges of tokens expiring within
//! each threshold, expiry notices (claimed once per token and threshold across the cluster,
//! delivered at least once to `--notify-webhook`, signed, with retries and backoff), and, with
//! `--revoke-unused-after`, the revocation of unused tokens; the summaries of collapsed refusals
//! whose window ended written, the audit trail's entries chained (`seal_audit`), its head logged every 10 minutes when it moved, and entries older than
//! `--audit-retention` pruned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use serde_json::json;
use tessera_core::TokenId;
use tessera_store::{Notice, TokenRecord};

use crate::http::text::rfc3339;
pub use crate::notifier::Notifier;
use crate::state::AppState;

/// First retry after a failed delivery; doubled each time, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: i64 = 5;
const MAX_BACKOFF: i64 = 3600;
/// Deliveries tried before a notice is given up (about a day of retries).
const MAX_ATTEMPTS: u32 = 30;
/// How long a node holds a notice it is delivering before another may try.
const DELIVERY_LEASE: i64 = 60;
/// Notices at expiry are not sent for tokens that expired longer ago than this.
const LATE_LIMIT: i64 = 7 * 86_400;

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Last uses written.
    pub flushed: usize,
    /// Notices claimed by this node.
    pub claimed: usize,
    /// Notices delivered.
    pub delivered: usize,
    /// Delivery attempts that failed (retried later).
    pub failed: usize,
    /// Unused tokens revoked.
    pub revoked: usize,
    /// Audit entries chained by this node's sealer.
    pub sealed: usize,
    /// Audit entries older than `--audit-retention` deleted.
    pub pruned: usize,
}

/// How often the chain head goes to the log (when it moved): an outside copy of the log pins it.
const HEAD_LOG_EVERY: Duration = Duration::from_secs(600);

/// `7d`, `1d`, `12h`, `30m`, `0s`: the largest unit that divides the threshold.
fn label(threshold: i64) -> String {
    crate::config::show_duration(Duration::from_secs(u64::try_from(threshold).unwrap_or(0)))
}

/// One round at `now` (seconds since the epoch). Errors are logged and the round goes on: the
/// next one retries.
pub fn tick(state: &AppState, now: i64) -> Round {
    let mut round = Round::default();
    match state.store.flush_uses() {
        Ok(n) => round.flushed = n,
        Err(e) => tracing::warn!("housekeeping: writing last uses: {e}"),
    }
    if let Err(e) = state.store.prune_rates(now) {
        tracing::warn!("housekeeping: dropping ended rate counters: {e}");
    }
    let thresholds: Vec<i64> = state
        .config
        .notify_thresholds
        .iter()
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .collect();
    let longest = thresholds.iter().copied().max().unwrap_or(0);
    let expiring = match state.store.tokens_expiring(now.saturating_add(longest)) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("housekeeping: expiring tokens: {e}");
            Vec::new()
        }
    };
    let gauges = thresholds
        .iter()
        .filter(|t| **t > 0)
        .map(|t| {
            (
                label(*t),
                expiring.iter().filter(|r| r.expires.is_some_and(|e| e > now && e <= now + t)).count(),
            )
        })
        .collect();
    state.metrics.set_expiring(gauges);
    if let Some(notifier) = &state.notifier {
        claim_notices(state, &expiring, &thresholds, now, &mut round);
        deliver(state, notifier, now, &mut round);
    }
    if let Some(after) = state.config.revoke_unused_after {
        revoke_unused(state, now - i64::try_from(after.as_secs()).unwrap_or(i64::MAX / 2), &mut round);
    }
    audit(state, now, &mut round);
    round
}

/// The audit trail's share of a round: the summaries of collapsed refusals whose window ended,
/// then chain the committed entries (one sealer per cluster), then, with `--audit-retention`,
/// delete entries older than it from the start of the chain (the store keeps the last one
/// deleted as the anchor the rest verifies from).
fn audit(state: &AppState, now: i64, round: &mut Round) {
    state.store.flush_audit_repeats();
    match state.store.seal_audit() {
        Ok(n) => round.sealed = n,
        Err(e) => tracing::warn!("housekeeping: sealing audit entries: {e}"),
    }
    if state.config.audit_retention.is_zero() {
        return;
    }
    let keep = i64::try_from(state.config.audit_retention.as_millis()).unwrap_or(i64::MAX);
    match state.store.prune_audit(now.saturating_mul(1000).saturating_sub(keep)) {
        Ok(n) => round.pruned = n,
        Err(e) => tracing::warn!("housekeeping: pruning audit entries: {e}"),
    }
}

/// Write the audit chain's head to the log (`audit_head_seq`, `audit_head_mac`) when it is not
/// `last`; the head logged.
fn log_head(state: &AppState, last: Option<tessera_store::AuditHead>) -> Option<tessera_store::AuditHead> {
    match state.store.audit_head() {
        Ok(Some(head)) if Some(head) != last => {
            let mac: String = head.mac.iter().map(|b| format!("{b:02x}")).collect();
            tracing::info!(audit_head_seq = head.seq, audit_head_mac = %mac, "audit chain head {head}");
            Some(head)
        }
        Ok(_) => last,
        Err(e) => {
            tracing::warn!("housekeeping: reading the audit head: {e}");
            last
        }
    }
}

/// A token crosses a threshold once `now` passes `expires - threshold`; it gets that notice only
/// if it existed before then (a one-hour token gets no "7 days left" notice), and no notice at
/// expiry for tokens that expired long ago.
fn claim_notices(
    state: &AppState,
    expiring: &[TokenRecord],
    thresholds: &[i64],
    now: i64,
    round: &mut Round,
) {
    for r in expiring {
        let Some(expires) = r.expires else { continue };
        for &t in thresholds {
            let crossed = expires - t;
            let due = now >= crossed && r.created < crossed && (t > 0 || now - expires < LATE_LIMIT);
            if !due || (t > 0 && now >= expires) {
                continue;
            }
            let n = Notice {
                tid: r.tid,
                threshold: t,
                created: now,
                delivered_at: None,
                attempts: 0,
                next_attempt: now,
            };
            match state.store.claim_notice(n) {
                Ok(true) => round.claimed += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!("housekeeping: claiming a notice: {e}"),
            }
        }
    }
}

fn deliver(state: &AppState, notifier: &Notifier, now: i64, round: &mut Round) {
    let due = match state.store.due_notices(now) {
        Ok(d) => d,
        Err(e) => return tracing::warn!("housekeeping: due notices: {e}"),
    };
    for n in due {
        // One node at a time delivers a notice.
        if !state.store.lease_notice(&n, now, now + DELIVERY_LEASE).unwrap_or(false) {
            continue;
        }
        let record = match state.store.token(&n.tid) {
            Ok(Some(r)) => r,
            _ => continue,
        };
        let body = json!({
            "id": format!("{}-{}", n.tid, n.threshold),
            "type": if n.threshold == 0 { "token.expired" } else { "token.expiring" },
            "threshold": label(n.threshold),
            "threshold_seconds": n.threshold,
            "token": {
                "tid": n.tid.to_string(),
                "subject": record.subject,
                "description": record.description,
                "expires": record.expires.and_then(rfc3339),
            },
            "sent_at": rfc3339(now),
        })
        .to_string();
        let ok = send(notifier, &body, &format!("{}-{}", n.tid, n.threshold));
        let attempts = n.attempts + 1;
        let next = if ok {
            round.delivered += 1;
            Notice { delivered_at: Some(now), attempts, ..n }
        } else {
            round.failed += 1;
            let backoff = (FIRST_BACKOFF << (attempts - 1).min(20)).min(MAX_BACKOFF);
            let next_attempt = if attempts >= MAX_ATTEMPTS { i64::MAX } else { now + backoff };
            if attempts >= MAX_ATTEMPTS {
                tracing::warn!(
                    "housekeeping: giving up the notice {}-{} after {attempts} attempts",
                    n.tid,
                    n.threshold
                );
            }
            Notice { attempts, next_attempt, ..n }
        };
        if let Err(e) = state.store.put_notice(next) {
            tracing::warn!("housekeeping: recording a notice: {e}");
        }
    }
}

/// POST the event; true on a 2xx answer.
fn send(notifier: &Notifier, body: &str, id: &str) -> bool {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let res = agent
        .post(&notifier.url)
        .header("Content-Type", "application/json")
        .header("X-Tessera-Signature", notifier.sign(body.as_bytes()))
        .header("X-Tessera-Delivery", id)
        .send(body);
    match res {
        Ok(r) if r.status().is_success() => true,
        Ok(r) => {
            tracing::warn!("housekeeping: webhook answered {} for {id}", r.status());
            false
        }
        Err(e) => {
            tracing::warn!("housekeeping: webhook: {e}");
            false
        }
    }
}

fn revoke_unused(state: &AppState, cutoff: i64, round: &mut Round) {
    // Every unrevoked token: an unrevoked token's ancestors are all unrevoked (revocation is
    // transitive), so each one's parent chain is in here.
    let all = match state.store.tokens_unused_since(i64::MAX) {
        Ok(u) => u,
        Err(e) => return tracing::warn!("housekeeping: unused tokens: {e}"),
    };
    for tid in unused_families(&all, cutoff, &state.config.admin_subject) {
        match state.store.revoke_token(tid) {
            Ok(entries) => round.revoked += entries.len(),
            Err(e) => tracing::warn!("housekeeping: revoking unused {tid}: {e}"),
        }
    }
}

/// The tops of the families nobody used: a token is unused when neither it nor any descendant was
/// used (or, never used, created) at or after `cutoff`. Revoking a parent revokes its children,
/// so a parent one of whose descendants is in use is kept, and only the topmost unused token of
/// each unused subtree is named (its descendants go with it). The admin's tokens are kept:
/// revoking them could lock the operator out. Linear in the number of tokens.
fn unused_families(all: &[TokenRecord], cutoff: i64, admin: &str) -> Vec<TokenId> {
    let parent_of: HashMap<TokenId, Option<TokenId>> = all.iter().map(|r| (r.tid, r.parent)).collect();
    let mut in_use: HashSet<TokenId> = HashSet::new();
    for r in all.iter().filter(|r| r.last_used.unwrap_or(r.created) >= cutoff) {
        // Mark the token and its ancestors; stop where an earlier walk already did.
        let mut at = Some(r.tid);
        while let Some(tid) = at {
            if !in_use.insert(tid) {
                break;
            }
            at = parent_of.get(&tid).copied().flatten();
        }
    }
    let kept: HashSet<TokenId> = all.iter().filter(|r| r.subject == admin).map(|r| r.tid).collect();
    let revoked = |tid: &TokenId| parent_of.contains_key(tid) && !in_use.contains(tid) && !kept.contains(tid);
    all.iter()
        .filter(|r| revoked(&r.tid))
        // A child of a revoked parent goes with it.
        .filter(|r| !r.parent.is_some_and(|p| revoked(&p)))
        .map(|r| r.tid)
        .collect()
}

/// Run rounds every `--housekeeping-interval` until `stop`; a last flush of uses at the end.
pub(crate) fn spawn(state: web::Data<AppState>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let step = Duration::from_millis(200);
        let mut waited = Duration::ZERO;
        let mut head = None;
        let mut head_logged: Option<std::time::Instant> = None;
        while !stop.load(Ordering::Acquire) {
            std::thread::sleep(step);
            waited += step;
            if waited >= state.config.housekeeping_interval {
                waited = Duration::ZERO;
                tick(&state, time::OffsetDateTime::now_utc().unix_timestamp());
                if head_logged.is_none_or(|t| t.elapsed() >= HEAD_LOG_EVERY) {
                    head = log_head(&state, head);
                    head_logged = Some(std::time::Instant::now());
                }
            }
        }
        let _ = state.store.flush_uses();
        // The counts of refusals still collapsed written, the last entries sealed, and the head
        // they end at logged, before the process ends.
        state.store.close_audit_repeats();
        let _ = state.store.seal_audit();
        log_head(&state, head);
    })
}
