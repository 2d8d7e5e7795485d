//! An audit entry as the `audit` table stores it: CBOR of [`StoredEntry`] (schema 9), read with
//! ciborium, written by [`encode`] directly.
//!
//! Every durable write writes an entry, and ciborium spent about 4,000 instructions on each (a
//! map of 18 or 19 named fields, the link as an array of 32 integers, every text copied into
//! the struct first). [`encode`] writes the same bytes from the row itself, as ciborium writes
//! them (definite lengths, the shortest integer forms, `None` as null): a test holds the two equal
//! for entries of every shape, so what is stored, and so every reader, is unchanged.

use serde::{Deserialize, Serialize};
use tessera_core::{SessionId, TokenId};

use crate::audit::{Actor, AuditEntry, AuditRow, Target};
use crate::error::Result;

/// An entry as stored (CBOR).
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEntry {
    pub(super) seq: u64,
    pub(super) at_ms: i64,
    pub(super) kind: String,
    pub(super) outcome: String,
    pub(super) actor_subject: Option<String>,
    pub(super) actor_tid: Option<[u8; 16]>,
    pub(super) issuer: Option<String>,
    pub(super) address: Option<String>,
    pub(super) request_id: Option<String>,
    pub(super) user_agent: Option<String>,
    pub(super) target_tid: Option<[u8; 16]>,
    pub(super) target_kid: Option<String>,
    pub(super) target_sid: Option<[u8; 16]>,
    pub(super) target_app: Option<String>,
    pub(super) target_subject: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) detail: Option<String>,
    pub(super) mac: [u8; 32],
    /// The id, when it is not the seq (an entry copied from PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) id: Option<u64>,
}

/// The row as it reads back.
pub(super) fn row_of(s: StoredEntry) -> Result<AuditRow> {
    Ok(AuditRow {
        entry: AuditEntry {
            seq: s.seq,
            id: s.id.unwrap_or(s.seq),
            at_ms: s.at_ms,
            kind: s.kind.parse()?,
            outcome: s.outcome.parse()?,
            actor: Actor {
                subject: s.actor_subject,
                tid: s.actor_tid.map(TokenId::from_bytes),
                issuer: s.issuer,
                address: s.address,
                request_id: s.request_id,
                user_agent: s.user_agent,
            },
            target: Target {
                tid: s.target_tid.map(TokenId::from_bytes),
                kid: s.target_kid,
                sid: s.target_sid.map(SessionId::from_bytes),
                app: s.target_app,
            },
            reason: s.reason,
            detail: s.detail,
        },
        target_subject: s.target_subject,
        mac: Some(s.mac),
    })
}

/// CBOR major types used here.
const UNSIGNED: u8 = 0;
const NEGATIVE: u8 = 1;
const TEXT: u8 = 3;
const ARRAY: u8 = 4;
const MAP: u8 = 5;
/// CBOR `null` (what ciborium writes for `None`).
const NULL: u8 = 0xf6;

/// A data item's head: its major type and argument, in the shortest form.
fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if let Ok(b) = u8::try_from(n) {
        if b < 24 {
            out.push(m | b);
        } else {
            out.extend_from_slice(&[m | 24, b]);
        }
    } else if let Ok(s) = u16::try_from(n) {
        out.push(m | 25);
        out.extend_from_slice(&s.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(m | 26);
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn int(out: &mut Vec<u8>, v: i64) {
    match u64::try_from(v) {
        Ok(n) => head(out, UNSIGNED, n),
        // -1 - v, which is !v: a non-negative value for any negative v.
        Err(_) => head(out, NEGATIVE, !(v as u64)),
    }
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, TEXT, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A byte array as serde writes `[u8; N]`: an array of N integers.
fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    head(out, ARRAY, b.len() as u64);
    for &x in b {
        head(out, UNSIGNED, u64::from(x));
    }
}

fn opt_text(out: &mut Vec<u8>, name: &str, v: Option<&str>) {
    text(out, name);
    match v {
        Some(s) => text(out, s),
        None => out.push(NULL),
    }
}

fn opt_bytes(out: &mut Vec<u8>, name: &str, v: Option<&[u8]>) {
    text(out, name);
    match v {
        Some(b) => bytes(out, b),
        None => out.push(NULL),
    }
}

/// The stored form of `row` sealed with `mac`: exactly the bytes ciborium writes for its
/// [`StoredEntry`] (the id only when it differs from the seq).
pub(super) fn encode(row: &AuditRow, mac: &[u8; 32]) -> Vec<u8> {
    let e = &row.entry;
    let id = (e.id != e.seq).then_some(e.id);
    let mut out = Vec::with_capacity(512);
    head(&mut out, MAP, if id.is_some() { 19 } else { 18 });
    text(&mut out, "seq");
    head(&mut out, UNSIGNED, e.seq);
    text(&mut out, "at_ms");
    int(&mut out, e.at_ms);
    text(&mut out, "kind");
    text(&mut out, e.kind.as_str());
    text(&mut out, "outcome");
    text(&mut out, e.outcome.as_str());
    let a = &e.actor;
    opt_text(&mut out, "actor_subject", a.subject.as_deref());
    opt_bytes(&mut out, "actor_tid", a.tid.as_ref().map(|t| t.as_bytes().as_slice()));
    opt_text(&mut out, "issuer", a.issuer.as_deref());
    opt_text(&mut out, "address", a.address.as_deref());
    opt_text(&mut out, "request_id", a.request_id.as_deref());
    opt_text(&mut out, "user_agent", a.user_agent.as_deref());
    let t = &e.target;
    opt_bytes(&mut out, "target_tid", t.tid.as_ref().map(|t| t.as_bytes().as_slice()));
    opt_text(&mut out, "target_kid", t.kid.as_deref());
    opt_bytes(&mut out, "target_sid", t.sid.as_ref().map(|s| s.as_bytes().as_slice()));
    opt_text(&mut out, "target_app", t.app.as_deref());
    opt_text(&mut out, "target_subject", row.target_subject.as_deref());
    opt_text(&mut out, "reason", e.reason.as_deref());
    opt_text(&mut out, "detail", e.detail.as_deref());
    text(&mut out, "mac");
    bytes(&mut out, mac);
    if let Some(id) = id {
        text(&mut out, "id");
        head(&mut out, UNSIGNED, id);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use super::*;
    use crate::audit::{AuditKind, Outcome};
    use crate::codec;

    /// What the table held before [`encode`]: the struct, through ciborium.
    fn by_ciborium(row: &AuditRow, mac: [u8; 32]) -> Vec<u8> {
        let e = &row.entry;
        codec::encode(&StoredEntry {
            seq: e.seq,
            at_ms: e.at_ms,
            kind: e.kind.as_str().to_owned(),
            outcome: e.outcome.as_str().to_owned(),
            actor_subject: e.actor.subject.clone(),
            actor_tid: e.actor.tid.map(|t| *t.as_bytes()),
            issuer: e.actor.issuer.clone(),
            address: e.actor.address.clone(),
            request_id: e.actor.request_id.clone(),
            user_agent: e.actor.user_agent.clone(),
            target_tid: e.target.tid.map(|t| *t.as_bytes()),
            target_kid: e.target.kid.clone(),
            target_sid: e.target.sid.map(|s| *s.as_bytes()),
            target_app: e.target.app.clone(),
            target_subject: row.target_subject.clone(),
            reason: e.reason.clone(),
            detail: e.detail.clone(),
            mac,
            id: (e.id != e.seq).then_some(e.id),
        })
    }

    /// A small deterministic generator (xorshift), so every run checks the same entries.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        /// A number near one of the boundaries of CBOR's integer forms.
        fn number(&mut self) -> u64 {
            const EDGES: [u64; 10] =
                [0, 23, 24, 255, 256, 65_535, 65_536, 0xffff_ffff, 0x1_0000_0000, u64::MAX];
            let edge = EDGES[(self.next() % 10) as usize];
            match self.next() % 3 {
                0 => edge,
                1 => edge.wrapping_add(self.next() % 3),
                _ => edge.wrapping_sub(self.next() % 3),
            }
        }

        fn text(&mut self) -> Option<String> {
            const PIECES: [&str; 6] = ["a", "é", "日本", "🎉", "\u{fffd}", "x-1.2"];
            if self.next() % 3 == 0 {
                return None;
            }
            // Lengths around 23/24 and 255/256 bytes, where the text's head grows.
            let len = [0, 1, 22, 23, 24, 25, 254, 255, 256, 300][(self.next() % 10) as usize];
            let mut s = String::new();
            while s.len() < len {
                s.push_str(PIECES[(self.next() % 6) as usize]);
            }
            Some(s)
        }

        fn id16(&mut self) -> Option<[u8; 16]> {
            (self.next() % 2 == 0).then(|| core::array::from_fn(|_| self.number() as u8))
        }

        fn row(&mut self) -> (AuditRow, [u8; 32]) {
            let seq = self.number();
            let id = if self.next() % 2 == 0 { seq } else { self.number() };
            let row = AuditRow {
                entry: AuditEntry {
                    seq,
                    id,
                    at_ms: self.number() as i64,
                    kind: AuditKind::ALL[(self.next() % AuditKind::ALL.len() as u64) as usize],
                    outcome: if self.next() % 2 == 0 { Outcome::Success } else { Outcome::Refused },
                    actor: Actor {
                        subject: self.text(),
                        tid: self.id16().map(TokenId::from_bytes),
                        issuer: self.text(),
                        address: self.text(),
                        request_id: self.text(),
                        user_agent: self.text(),
                    },
                    target: Target {
                        tid: self.id16().map(TokenId::from_bytes),
                        kid: self.text(),
                        sid: self.id16().map(SessionId::from_bytes),
                        app: self.text(),
                    },
                    reason: self.text(),
                    detail: self.text(),
                },
                target_subject: self.text(),
                mac: None,
            };
            let mac = core::array::from_fn(|_| self.number() as u8);
            (row, mac)
        }
    }

    #[test]
    fn encode_writes_what_ciborium_writes_and_it_reads_back() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..5_000 {
            let (row, mac) = g.row();
            let bytes = encode(&row, &mac);
            assert_eq!(bytes, by_ciborium(&row, mac), "{row:?}");
            let back = row_of(codec::decode(&bytes, "audit entry").unwrap()).unwrap();
            assert_eq!(back.entry, row.entry);
            assert_eq!(back.target_subject, row.target_subject);
            assert_eq!(back.mac, Some(mac));
        }
    }

    /// Reviewer (r-redbaudit): the edges the generator does not reach: texts of 65,535, 65,536
    /// and 70,000 bytes (two- and four-byte lengths), negative `at_ms` at every head boundary,
    /// `Some("")` next to `None`, an id of 0 and u64::MAX beside a seq.
    #[test]
    fn encoding_edges_match_ciborium() {
        let base = Gen(1).row().0;
        let mut cases = Vec::new();
        for len in [0usize, 23, 24, 255, 256, 65_535, 65_536, 70_000] {
            let mut r = base.clone();
            let s = "x".repeat(len);
            r.entry.detail = Some(s.clone());
            r.entry.actor.user_agent = Some(s.clone());
            r.target_subject = Some(s);
            cases.push(r);
        }
        for at in [
            -1i64,
            -23,
            -24,
            -25,
            -255,
            -256,
            -257,
            -65_536,
            -65_537,
            -4_294_967_296,
            -4_294_967_297,
            i64::MIN,
            i64::MAX,
            0,
        ] {
            let mut r = base.clone();
            r.entry.at_ms = at;
            cases.push(r);
        }
        let mut r = base.clone();
        r.entry.reason = Some(String::new());
        r.entry.detail = None;
        r.entry.actor.subject = Some(String::new());
        cases.push(r);
        for (seq, id) in [(5u64, 0u64), (0, u64::MAX), (u64::MAX, 0), (0, 0), (24, 23)] {
            let mut r = base.clone();
            r.entry.seq = seq;
            r.entry.id = id;
            cases.push(r);
        }
        for row in cases {
            let mac = [0xab; 32];
            let bytes = encode(&row, &mac);
            assert_eq!(bytes, by_ciborium(&row, mac));
            let back = row_of(codec::decode(&bytes, "audit entry").unwrap()).unwrap();
            assert_eq!(back.entry, row.entry);
            assert_eq!(back.target_subject, row.target_subject);
        }
    }
}
