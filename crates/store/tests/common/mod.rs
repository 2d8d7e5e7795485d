//! The two backends the store suite runs on.

#![allow(dead_code)] // each test file uses a different subset
#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::path::PathBuf;
use std::sync::OnceLock;

use tessera_core::TokenId;
use tessera_store::{Error, Freshness, Location, MasterKey, NewToken, PostgresOptions, Store};
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
