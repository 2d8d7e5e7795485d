//! Child process for the crash test (`tests/crash.rs`): records tokens (and revokes some) in a
//! loop, on behalf of the actor `crash-writer` (each change with its audit entry), printing
//! `ack <tid>` / `rev <tid>` only after the store call returned Ok, until killed.
//!
//! Usage: `tessera-store-crash-writer DB_PATH MASTER_KEY_HEX`

#![allow(clippy::unwrap_used)] // a test helper: any failure should be loud

use std::io::Write;

use tessera_core::TokenId;
use tessera_store::{Actor, MasterKey, NewToken, Store};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("db path");
    let master = MasterKey::from_hex(&args.next().expect("master key hex")).unwrap();
    let store = Store::open(&path, master).unwrap();
    let kid = match store.active_key() {
        Some((kid, _)) => kid,
        None => store.rotate().unwrap().kid,
    };
    let actor = Actor { subject: Some("crash-writer".into()), ..Actor::default() };
    let audited = store.audited(&actor);
    let out = std::io::stdout();
    let mut n = 0u64;
    loop {
        let tid = TokenId::generate().unwrap();
        audited
            .record_token(NewToken {
                tid,
                kid,
                subject: "crash".into(),
                description: format!("write {n}"),
                expires: None,
                caveats: vec![],
                parent: None,
            })
            .unwrap();
        writeln!(out.lock(), "ack {tid}").unwrap();
        if n % 3 == 0 {
            audited.revoke_token(tid).unwrap();
            writeln!(out.lock(), "rev {tid}").unwrap();
        }
        out.lock().flush().unwrap();
        n += 1;
    }
}
