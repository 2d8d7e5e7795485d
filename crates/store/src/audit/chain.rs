//! The chain as a whole: the anchor pruning leaves (with its own MAC since schema 10), walking
//! the chain to verify it, and the walk pruning makes before it deletes anything.

use super::{AuditHead, AuditKey, AuditRow};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::Store;

/// Where the kept chain starts: the last pruned entry's place and link, when it was pruned,
/// and the anchor's own MAC under the chain key (`HMAC(k_audit, "tessera/audit-anchor/v1" ‖
/// seq ‖ link ‖ pruned_at_ms)`), so that an anchor cannot be written without the master key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuditAnchor {
    /// The last pruned entry's place in the chain.
    pub seq: u64,
    /// The last pruned entry's link.
    pub link: [u8; 32],
    /// When it was pruned (ms since the epoch) and the anchor's MAC; `None` for an anchor
    /// written before schema 10 (by a build without anchor MACs): it cannot be authenticated.
    pub sealed: Option<(i64, [u8; 32])>,
}

impl std::fmt::Debug for AuditAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditAnchor({}, pruned at {:?})", self.head(), self.sealed.map(|(at, _)| at))
    }
}

impl AuditAnchor {
    /// The anchor as a head (`seq:link`).
    pub fn head(&self) -> AuditHead {
        AuditHead { seq: self.seq, mac: self.link }
    }

    /// When it was pruned (ms since the epoch); `None` for an anchor from before schema 10.
    pub fn pruned_at_ms(&self) -> Option<i64> {
        self.sealed.map(|(at, _)| at)
    }

    /// A new anchor at `head`, pruned at `pruned_at_ms`, with its MAC.
    pub(crate) fn new(key: &AuditKey, head: AuditHead, pruned_at_ms: i64) -> AuditAnchor {
        AuditAnchor {
            seq: head.seq,
            link: head.mac,
            sealed: Some((pruned_at_ms, key.anchor_mac(head.seq, &head.mac, pruned_at_ms))),
        }
    }

    /// `Some(true)` when its MAC checks, `Some(false)` when it does not (forged, copied from an
    /// entry, or edited), `None` when it has none (written before schema 10).
    pub(crate) fn authentic(&self, key: &AuditKey) -> Option<bool> {
        self.sealed.map(|(at, mac)| key.checks_anchor(self.seq, &self.link, at, &mac))
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditVerdict {
    /// Every sealed entry from the anchor on links to the one before it, the anchor (if any)
    /// carries its MAC, and the pinned head (if any) is in the chain.
    Intact {
        /// Where the kept chain starts (the last pruned entry, and when), if anything was pruned.
        anchor: Option<AuditAnchor>,
        /// The newest sealed entry (`None`: nothing sealed).
        head: Option<AuditHead>,
        /// Sealed entries checked.
        checked: u64,
        /// Entries not sealed yet (not covered by the chain).
        unsealed: u64,
    },
    /// The entries verify from the anchor on, but the anchor has no MAC: it was written before
    /// schema 10 (or replaced by one without a MAC). It cannot be told from a forged one, so this
    /// is not [`AuditVerdict::Intact`]; the next pruning writes an anchor with a MAC.
    UnauthenticatedAnchor {
        /// The anchor (no time, no MAC).
        anchor: AuditHead,
        /// The newest sealed entry.
        head: Option<AuditHead>,
        /// Sealed entries checked.
        checked: u64,
        /// Entries not sealed yet.
        unsealed: u64,
    },
    /// The chain breaks at `seq`: the entry there was edited, is missing, the anchor there does
    /// not match its MAC, or (past the newest entry kept) the newest entries up to a pinned head
    /// were deleted.
    Broken {
        /// The first place in the chain that does not verify.
        seq: u64,
        /// What is wrong there.
        reason: String,
    },
}

/// Walk the chain of `store` from its anchor and name the first entry that breaks it; with
/// `pinned` (a head an outside copy kept), also check that the chain still reaches it with the
/// same link (deleting the newest entries is caught only so).
pub fn verify(store: &Store, pinned: Option<AuditHead>) -> Result<AuditVerdict> {
    verify_chain(&*store.inner.backend, &store.inner.audit_key, pinned)
}

fn verify_chain(src: &dyn Backend, key: &AuditKey, pinned: Option<AuditHead>) -> Result<AuditVerdict> {
    const PAGE: usize = 1000;
    let anchor = src.audit_anchor()?;
    if let Some(a) = anchor.filter(|a| a.authentic(key) == Some(false)) {
        return Ok(broken(
            a.seq,
            format!(
                "the anchor ({}) does not match its MAC: it was not written by pruning (forged, or \
                 copied from an entry)",
                a.head()
            ),
        ));
    }
    let (mut seq, mut prev) = anchor.map_or((0, [0u8; 32]), |a| (a.seq, a.link));
    let mut checked = 0u64;
    if let Some(p) = pinned.filter(|p| p.seq == seq && anchor.is_some()) {
        if p.mac != prev {
            return Ok(broken(seq, "the anchor differs from the pinned head"));
        }
    }
    // A pin below the anchor cannot be checked: the anchor carries only the last pruned link.
    // Say so rather than call the chain intact.
    if let Some(p) = pinned.filter(|p| anchor.is_some_and(|a| p.seq < a.seq)) {
        return Ok(broken(
            p.seq,
            format!(
                "the pinned head {} was pruned (the anchor is {seq}); the anchor cannot be checked against it: \
                 pin a newer head",
                p.seq
            ),
        ));
    }
    loop {
        let page = src.audit_sealed_after(seq, PAGE)?;
        for row in &page {
            let e = &row.entry;
            if e.seq != seq + 1 {
                return Ok(broken(
                    seq + 1,
                    format!("entry {} is missing (the next kept one is {})", seq + 1, e.seq),
                ));
            }
            let Some(mac) = row.mac else { return Ok(broken(e.seq, "sealed without a link")) };
            if !key.checks(&prev, row, &mac) {
                return Ok(broken(e.seq, format!("entry {} (id {}) does not match its link", e.seq, e.id)));
            }
            if let Some(p) = pinned.filter(|p| p.seq == e.seq) {
                if p.mac != mac {
                    return Ok(broken(e.seq, "the entry differs from the pinned head"));
                }
            }
            seq = e.seq;
            prev = mac;
            checked += 1;
        }
        if page.len() < PAGE {
            break;
        }
    }
    if let Some(p) = pinned.filter(|p| p.seq > seq) {
        return Ok(broken(
            seq + 1,
            format!(
                "the chain ends at {seq} but the pinned head is {}: entries {}..={} were deleted",
                p.seq,
                seq + 1,
                p.seq
            ),
        ));
    }
    let head = (seq > 0).then_some(AuditHead { seq, mac: prev });
    let unsealed = src.audit_unsealed()?;
    Ok(match anchor {
        Some(a) if a.sealed.is_none() => {
            AuditVerdict::UnauthenticatedAnchor { anchor: a.head(), head, checked, unsealed }
        }
        anchor => AuditVerdict::Intact { anchor, head, checked, unsealed },
    })
}

fn broken(seq: u64, reason: impl Into<String>) -> AuditVerdict {
    AuditVerdict::Broken { seq, reason: reason.into() }
}

/// Pruning's check before it deletes: the current `anchor` (its MAC, when it has one) and then
/// `rows` (sealed, in seq order from the anchor) older than `before_ms`, each at its place and
/// matching its link. The count of rows to delete and the new anchor (MAC'd, pruned at `now_ms`),
/// or `None` when no row is older. A row that does not verify stops pruning with an error:
/// pruning never deletes the evidence of an edit, nor anchors (with a MAC) a chain it did not
/// check.
pub(crate) fn prune_walk(
    key: &AuditKey,
    anchor: Option<AuditAnchor>,
    rows: &[AuditRow],
    before_ms: i64,
    now_ms: i64,
) -> Result<Option<(usize, AuditAnchor)>> {
    let refuse = |seq: u64, why: &str| {
        Err(Error::Corrupt(format!(
            "the audit chain breaks at entry {seq} ({why}): nothing pruned; run `tessera audit verify`"
        )))
    };
    if let Some(a) = anchor.filter(|a| a.authentic(key) == Some(false)) {
        return refuse(a.seq, "the anchor does not match its MAC");
    }
    let (mut seq, mut prev) = anchor.map_or((0, [0u8; 32]), |a| (a.seq, a.link));
    let mut n = 0;
    for row in rows.iter().take_while(|r| r.entry.at_ms < before_ms) {
        if row.entry.seq != seq + 1 {
            return refuse(seq + 1, "missing");
        }
        match row.mac {
            Some(mac) if key.checks(&prev, row, &mac) => prev = mac,
            _ => return refuse(row.entry.seq, "it does not match its link"),
        }
        seq = row.entry.seq;
        n += 1;
    }
    Ok((n > 0).then(|| (n, AuditAnchor::new(key, AuditHead { seq, mac: prev }, now_ms))))
}
