//! Whole-table reads and bulk loads for a migration (`crate::migrate`): where PostgreSQL differs
//! from the primitives' defaults is that a row per round trip would make a 100,000-token copy
//! take minutes, so rows go in arrays, a thousand per statement.

use tessera_core::{SessionId, TokenId};

use super::pipeline::{p, Params, PgTx};
use super::rows::{bytes, db, notice_of, session_of, token_of};
use super::PostgresBackend;
use crate::audit::{AuditAnchor, AuditRow};
use crate::backend::postgres::rows::kind_of;
use crate::backend::Change;
use crate::codec::{Notice, StoredSession, StoredToken};
use crate::error::{Error, Result};

impl PostgresBackend {
    pub(super) fn tokens_page_(
        &self,
        after: Option<TokenId>,
        limit: usize,
    ) -> Result<Vec<(TokenId, StoredToken)>> {
        // The empty byte string sorts before every 16-byte id.
        let after = after.map_or_else(Vec::new, |t| t.as_bytes().to_vec());
        self.query(
            select_tokens!("WHERE tid > $1 ORDER BY tid LIMIT $2"),
            vec![p(after), p(i64::try_from(limit).unwrap_or(i64::MAX))],
            |rows| rows.iter().map(token_of).collect(),
        )
    }

    pub(super) fn sessions_page_(
        &self,
        after: Option<SessionId>,
        limit: usize,
    ) -> Result<Vec<(SessionId, StoredSession)>> {
        let after = after.map_or_else(Vec::new, |s| s.as_bytes().to_vec());
        self.query(
            "SELECT record, sid FROM tessera_sessions WHERE sid > $1 ORDER BY sid LIMIT $2",
            vec![p(after), p(i64::try_from(limit).unwrap_or(i64::MAX))],
            |rows| {
                rows.iter()
                    .map(|r| {
                        let sid = SessionId::from_bytes(bytes(r.try_get(1).map_err(db)?, "sid")?);
                        Ok((sid, session_of(r)?))
                    })
                    .collect()
            },
        )
    }

    pub(super) fn all_notices_(&self) -> Result<Vec<Notice>> {
        self.query(
            "SELECT tid, threshold, created, delivered_at, attempts, next_attempt FROM tessera_notices
             ORDER BY tid, threshold",
            vec![],
            |rows| rows.iter().map(notice_of).collect(),
        )
    }
}

/// Every column of each record in one statement (a parent before its children: the lineage's
/// foreign key is checked at the end of each statement).
pub(super) fn copy_tokens(tx: &mut PgTx<'_>, rows: &[(TokenId, StoredToken)]) -> Result<()> {
    for chunk in rows.chunks(1000) {
        // Arrays of arrays cannot be ragged: the caveats travel flat, each with its row's index.
        let (mut owners, mut caveats) = (Vec::new(), Vec::new());
        for (i, (_, t)) in chunk.iter().enumerate() {
            for c in &t.caveats {
                owners.push(i as i64 + 1);
                caveats.push(c.clone());
            }
        }
        let col = |f: fn(&StoredToken) -> Option<i64>| chunk.iter().map(|(_, t)| f(t)).collect::<Vec<_>>();
        let params: Params = vec![
            p(chunk.iter().map(|(tid, _)| tid.as_bytes().to_vec()).collect::<Vec<_>>()),
            p(chunk.iter().map(|(_, t)| t.kid.to_vec()).collect::<Vec<_>>()),
            p(chunk.iter().map(|(_, t)| t.subject.clone()).collect::<Vec<_>>()),
            p(chunk.iter().map(|(_, t)| t.description.clone()).collect::<Vec<_>>()),
            p(chunk.iter().map(|(_, t)| t.created).collect::<Vec<_>>()),
            p(col(|t| t.expires)),
            p(owners),
            p(col(|t| t.revoked_at)),
            p(chunk.iter().map(|(_, t)| t.parent.map(|b| b.to_vec())).collect::<Vec<_>>()),
            p(col(|t| t.used_at)),
            p(col(|t| t.last_used)),
            p(chunk.iter().map(|(_, t)| t.grant.clone()).collect::<Vec<_>>()),
            p(chunk.iter().map(|(_, t)| t.session.map(|b| b.to_vec())).collect::<Vec<_>>()),
            p(caveats),
        ];
        tx.run(
            "WITH r AS (
               SELECT * FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                 $8::int8[], $9::bytea[], $10::int8[], $11::int8[], $12::text[], $13::bytea[]) WITH ORDINALITY
                 AS r (tid, kid, subject, description, created, expires, revoked_at, parent, used_at, last_used,
                   grant_json, session, idx)
             ), c AS (
               SELECT owner, array_agg(caveat ORDER BY ord) AS caveats
               FROM unnest($7::int8[], $14::text[]) WITH ORDINALITY AS c (owner, caveat, ord) GROUP BY owner
             )
             INSERT INTO tessera_tokens (tid, kid, subject, description, created, expires, caveats, revoked_at,
               parent, used_at, last_used, grant_json, session)
             SELECT r.tid, r.kid, r.subject, r.description, r.created, r.expires, COALESCE(c.caveats, '{}'),
               r.revoked_at, r.parent, r.used_at, r.last_used, r.grant_json, r.session
             FROM r LEFT JOIN c ON c.owner = r.idx ORDER BY r.idx",
            params,
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// The entries with their own numbers, and the counter moved to the last: only onto a log that
/// ends just before the first (the counter row's update says so, under its lock).
pub(super) fn copy_changes(tx: &mut PgTx<'_>, rows: &[Change]) -> Result<()> {
    for chunk in rows.chunks(1000) {
        let (Some(first), Some(last)) = (chunk.first(), chunk.last()) else { continue };
        let (from, to) = (first.seq as i64 - 1, last.seq as i64);
        let moved = tx.run(
            "UPDATE tessera_change_counter SET last_seq = $2 WHERE last_seq = $1 RETURNING last_seq",
            vec![p(from), p(to)],
            |rows| Ok(!rows.is_empty()),
        )?;
        if !moved || to - from != chunk.len() as i64 {
            return Err(Error::Corrupt(format!(
                "change-log entries {}..={} do not follow the target's log, or have a gap",
                first.seq, last.seq
            )));
        }
        let (kinds, ids): (Vec<&'static str>, Vec<Vec<u8>>) = chunk.iter().map(|c| kind_of(&c.event)).unzip();
        tx.run(
            "INSERT INTO tessera_changes (seq, at, kind, id)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::text[], $4::bytea[])",
            vec![
                p(chunk.iter().map(|c| c.seq as i64).collect::<Vec<_>>()),
                p(chunk.iter().map(|c| c.at).collect::<Vec<_>>()),
                p(kinds),
                p(ids),
            ],
            |_| Ok(()),
        )?;
    }
    Ok(())
}

/// Sealed audit entries with their ids, seqs and links, a thousand per statement, then the
/// anchor, and the id counter moved past the copied ids (entries written later get larger
/// ones, as the cursor readers use expects). Into a database with no audit trail yet.
pub(super) fn copy_audit(tx: &mut PgTx<'_>, anchor: Option<AuditAnchor>, rows: &[AuditRow]) -> Result<()> {
    let held = tx.run(
        "SELECT EXISTS (SELECT 1 FROM tessera_audit) OR EXISTS (SELECT 1 FROM tessera_audit_anchor)",
        vec![],
        |rows| rows.first().map_or(Ok(false), |r| r.try_get::<_, bool>(0).map_err(db)),
    )?;
    if held {
        return Err(Error::Corrupt("the target already has an audit trail".into()));
    }
    if let Some(a) = anchor {
        // The anchor's time and MAC as they are (none for an anchor from before schema 10): the
        // target derives the same chain key from the same master key, so the MAC still checks.
        tx.run(
            "INSERT INTO tessera_audit_anchor (seq, mac, pruned_at_ms, anchor_mac) VALUES ($1, $2, $3, $4)",
            vec![
                p(a.seq as i64),
                p(a.link.to_vec()),
                p(a.sealed.map(|(at, _)| at)),
                p(a.sealed.map(|(_, m)| m.to_vec())),
            ],
            |_| Ok(()),
        )?;
    }
    for chunk in rows.chunks(1000) {
        let mut macs = Vec::with_capacity(chunk.len());
        for r in chunk {
            let mac =
                r.mac.ok_or_else(|| Error::Corrupt(format!("audit entry {} is not sealed", r.entry.id)))?;
            macs.push(mac.to_vec());
        }
        let text = |f: fn(&AuditRow) -> Option<&str>| {
            chunk.iter().map(|r| f(r).map(str::to_owned)).collect::<Vec<Option<String>>>()
        };
        let id16 =
            |f: fn(&AuditRow) -> Option<Vec<u8>>| chunk.iter().map(f).collect::<Vec<Option<Vec<u8>>>>();
        let params: Params = vec![
            p(chunk.iter().map(|r| r.entry.id as i64).collect::<Vec<_>>()),
            p(chunk.iter().map(|r| r.entry.seq as i64).collect::<Vec<_>>()),
            p(macs),
            p(chunk.iter().map(|r| r.entry.at_ms).collect::<Vec<_>>()),
            p(chunk.iter().map(|r| r.entry.kind.as_str().to_owned()).collect::<Vec<_>>()),
            p(chunk.iter().map(|r| r.entry.outcome.as_str().to_owned()).collect::<Vec<_>>()),
            p(text(|r| r.entry.actor.subject.as_deref())),
            p(id16(|r| r.entry.actor.tid.map(|t| t.as_bytes().to_vec()))),
            p(text(|r| r.entry.actor.issuer.as_deref())),
            p(text(|r| r.entry.actor.address.as_deref())),
            p(text(|r| r.entry.actor.request_id.as_deref())),
            p(text(|r| r.entry.actor.user_agent.as_deref())),
            p(id16(|r| r.entry.target.tid.map(|t| t.as_bytes().to_vec()))),
            p(text(|r| r.entry.target.kid.as_deref())),
            p(id16(|r| r.entry.target.sid.map(|s| s.as_bytes().to_vec()))),
            p(text(|r| r.entry.target.app.as_deref())),
            p(text(|r| r.target_subject.as_deref())),
            p(text(|r| r.entry.reason.as_deref())),
            p(text(|r| r.entry.detail.as_deref())),
        ];
        tx.run(
            "INSERT INTO tessera_audit (id, seq, mac, at_ms, kind, outcome, actor_subject, actor_tid, issuer,
               address, request_id, user_agent, target_tid, target_kid, target_sid, target_app, target_subject,
               reason, detail)
             SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[], $4::int8[], $5::text[], $6::text[],
               $7::text[], $8::bytea[], $9::text[], $10::text[], $11::text[], $12::text[], $13::bytea[],
               $14::text[], $15::bytea[], $16::text[], $17::text[], $18::text[], $19::text[])",
            params,
            |_| Ok(()),
        )?;
    }
    if let Some(last) = rows.iter().map(|r| r.entry.id).max() {
        tx.run(
            "SELECT setval(pg_get_serial_sequence('tessera_audit', 'id'), $1)",
            vec![p(last as i64)],
            |_| Ok(()),
        )?;
    }
    Ok(())
}
