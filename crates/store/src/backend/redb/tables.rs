//! The tables of one write transaction, each opened once for the whole batch.
//!
//! Opening a redb table looks its definition up in the table tree and checks its types; closing
//! it stages its root for the commit. A batch's operations used to open their tables again and
//! again (a record: keys, tokens twice, the subject index, the audit table and `meta`): now each
//! table is opened the first time an operation of the transaction needs it and stays open until
//! the batch commits or aborts, when all are closed. Reads through an open table see the
//! transaction's own writes, as before.

use redb::{Key, Table, TableDefinition, Value, WriteTransaction};

use super::{
    audit::AUDIT, APPS, BY_SUBJECT, CHANGES, CHILDREN, KEYS, META, NOTICES, SESSIONS, SIGNING, TOKENS,
};
use crate::error::{storage, Result};

type Bytes = &'static [u8];
/// A table keyed by name (`meta`, signing keys, applications).
type Named<'t> = Table<'t, &'static str, Bytes>;
/// A table keyed by sequence number (the change log, the audit trail).
type Numbered<'t> = Table<'t, u64, Bytes>;
/// The lineage index: (parent tid, child tid).
type Lineage<'t> = Table<'t, ([u8; 16], [u8; 16]), ()>;

/// Every table a write transaction may touch, opened on first use.
pub(super) struct Tables<'t> {
    txn: &'t WriteTransaction,
    meta: Option<Named<'t>>,
    keys: Option<Table<'t, [u8; 8], Bytes>>,
    tokens: Option<Table<'t, [u8; 16], Bytes>>,
    by_subject: Option<Table<'t, (&'static str, [u8; 16]), ()>>,
    changes: Option<Numbered<'t>>,
    children: Option<Lineage<'t>>,
    signing: Option<Named<'t>>,
    apps: Option<Named<'t>>,
    sessions: Option<Table<'t, [u8; 16], Bytes>>,
    notices: Option<Table<'t, ([u8; 16], i64), Bytes>>,
    audit: Option<Numbered<'t>>,
}

/// The table in `slot`, opened in `txn` if it is not open yet.
fn open<'s, 't, K: Key + 'static, V: Value + 'static>(
    txn: &'t WriteTransaction,
    slot: &'s mut Option<Table<'t, K, V>>,
    definition: TableDefinition<K, V>,
) -> Result<&'s mut Table<'t, K, V>> {
    if slot.is_none() {
        *slot = Some(txn.open_table(definition).map_err(storage)?);
    }
    slot.as_mut().ok_or_else(|| crate::error::Error::Corrupt("a table did not stay open".into()))
}

impl<'t> Tables<'t> {
    /// None open yet.
    pub(super) fn new(txn: &'t WriteTransaction) -> Tables<'t> {
        Tables {
            txn,
            meta: None,
            keys: None,
            tokens: None,
            by_subject: None,
            changes: None,
            children: None,
            signing: None,
            apps: None,
            sessions: None,
            notices: None,
            audit: None,
        }
    }

    pub(super) fn keys(&mut self) -> Result<&mut Table<'t, [u8; 8], Bytes>> {
        open(self.txn, &mut self.keys, KEYS)
    }

    pub(super) fn tokens(&mut self) -> Result<&mut Table<'t, [u8; 16], Bytes>> {
        open(self.txn, &mut self.tokens, TOKENS)
    }

    pub(super) fn by_subject(&mut self) -> Result<&mut Table<'t, (&'static str, [u8; 16]), ()>> {
        open(self.txn, &mut self.by_subject, BY_SUBJECT)
    }

    pub(super) fn changes(&mut self) -> Result<&mut Numbered<'t>> {
        open(self.txn, &mut self.changes, CHANGES)
    }

    pub(super) fn children(&mut self) -> Result<&mut Lineage<'t>> {
        open(self.txn, &mut self.children, CHILDREN)
    }

    pub(super) fn signing(&mut self) -> Result<&mut Named<'t>> {
        open(self.txn, &mut self.signing, SIGNING)
    }

    pub(super) fn apps(&mut self) -> Result<&mut Named<'t>> {
        open(self.txn, &mut self.apps, APPS)
    }

    pub(super) fn sessions(&mut self) -> Result<&mut Table<'t, [u8; 16], Bytes>> {
        open(self.txn, &mut self.sessions, SESSIONS)
    }

    pub(super) fn notices(&mut self) -> Result<&mut Table<'t, ([u8; 16], i64), Bytes>> {
        open(self.txn, &mut self.notices, NOTICES)
    }

    pub(super) fn audit(&mut self) -> Result<&mut Numbered<'t>> {
        open(self.txn, &mut self.audit, AUDIT)
    }

    /// The audit table and `meta` at once (the audit trail reads its anchor beside its entries).
    pub(super) fn audit_and_meta(&mut self) -> Result<(&mut Numbered<'t>, &mut Named<'t>)> {
        let audit = open(self.txn, &mut self.audit, AUDIT)?;
        let meta = open(self.txn, &mut self.meta, META)?;
        Ok((audit, meta))
    }
}
