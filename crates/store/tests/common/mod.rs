//! The two backends the store suite runs on.

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::path::PathBuf;
use std::sync::OnceLock;

use tessera_core::TokenId;
use tessera_store::{Error, Freshness, Location, MasterKey, NewToken, PostgresOptions, SessionRecord, Store};
use tessera_testpg::PgServer;

pub(crate) fn master() -> MasterKey {
    MasterKey::from_bytes([7; 32])
}

/// The record of a new token of `subject` under the store's active key, a child of `parent`.
pub(crate) fn new_token(store: &Store, subject: &str, parent: Option<TokenId>) -> NewToken {
    NewToken {
        tid: TokenId::generate().unwrap(),
        kid: store.active_key().unwrap().0,
        subject: subject.into(),
        description: String::new(),
        expires: None,
        caveats: vec![],
        parent,
    }
}

/// One throwaway PostgreSQL server per test binary.
pub(crate) fn pg() -> &'static PgServer {
    static PG: OnceLock<PgServer> = OnceLock::new();
    PG.get_or_init(PgServer::start)
}

/// A fresh database on one backend.
pub(crate) enum Db {
    File(tempfile::TempDir),
    Postgres(String),
}

impl Db {
    pub(crate) fn file() -> Db {
        Db::File(tempfile::tempdir().unwrap())
    }

    pub(crate) fn postgres() -> Db {
        Db::Postgres(pg().create_database())
    }

    pub(crate) fn path(&self) -> PathBuf {
        match self {
            Db::File(dir) => dir.path().join("data/tessera.redb"),
            Db::Postgres(_) => panic!("not a file"),
        }
    }

    pub(crate) fn location(&self) -> Location {
        match self {
            Db::File(_) => Location::File(self.path()),
            Db::Postgres(url) => Location::Postgres { url: url.clone(), options: PostgresOptions::default() },
        }
    }

    pub(crate) fn open_with(&self, master: MasterKey) -> Result<Store, Error> {
        Store::open_at(&self.location(), master, Freshness::default())
    }

    pub(crate) fn open(&self) -> Store {
        self.open_with(master()).unwrap()
    }
}

/// A test case run on both backends: `name::redb` and `name::postgres`.
#[macro_export]
macro_rules! on_both {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn redb() {
                let case: fn(Db) = $body;
                case(Db::file());
            }

            #[test]
            fn postgres() {
                let case: fn(Db) = $body;
                case(Db::postgres());
            }
        }
    };
}

/// A session's record as `POST /v1/sessions` makes one (its ids are set by the store).
pub(crate) fn session_of(subject: &str) -> SessionRecord {
    SessionRecord {
        subject: subject.into(),
        app: None,
        created: 0,
        alg: "ES256".into(),
        access_ttl: 900,
        refresh_ttl: 72 * 3600,
        strategy: "refreshBoth".into(),
        caveats: vec!["allow read".into()],
        refresh_caveats: vec!["allow sessions.refresh".into()],
        claims: None,
        current: TokenId::from_bytes([0; 16]),
        first: TokenId::from_bytes([0; 16]),
        last_spent: None,
        revoked_at: None,
    }
}

/// A row lock held by a connection of the test's own (`FOR UPDATE` on a token's row), so a
/// writer that needs the row waits, observably, where the test chooses.
pub(crate) struct RowLock {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
    url: String,
}

impl RowLock {
    pub(crate) fn take(url: &str, tid: &TokenId) -> RowLock {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let client = rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute("BEGIN").await.unwrap();
            let rows = client
                .query("SELECT 1 FROM tessera_tokens WHERE tid = $1 FOR UPDATE", &[&tid.as_bytes().to_vec()])
                .await
                .unwrap();
            assert_eq!(rows.len(), 1);
            client
        });
        RowLock { rt, client, url: url.to_owned() }
    }

    /// Statements of the test's own, committed on a connection of their own.
    pub(crate) fn run(&self, sql: &str) {
        self.rt.block_on(async {
            let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client.batch_execute(sql).await.unwrap();
        });
    }

    pub(crate) fn release(&self) {
        self.rt.block_on(self.client.batch_execute("ROLLBACK")).unwrap();
    }
}
