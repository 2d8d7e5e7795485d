//! Whole-table reads and bulk loads for a migration (`crate::migrate`): where PostgreSQL differs
//! from the primitives' defaults is that a row per round trip would make a 100,000-token copy
//! take minutes, so rows go in arrays, a thousand per statement.

use tessera_core::{SessionId, TokenId};

use super::rows::{bytes, db, notice_of, session_of, token_of};
use super::tx::{p, Params, PgTx};
use super::PostgresBackend;
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
