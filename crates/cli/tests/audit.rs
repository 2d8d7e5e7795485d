//! `tessera audit` reads the trail through a running service (words, `--json`, filters,
//! `--mine`); `tessera admin-token` records who made the token; `tessera audit verify` checks the
//! chain in the database: intact (also against a pinned head), then an entry edited behind the
//! store's back is named, exit 1.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::serve;
use serde_json::{json, Value};
use tessera_store::{AuditFilter, AuditKind, MasterKey, Store};

fn tessera(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).env_remove("TESSERA_MASTER_KEY").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn call(method: &str, url: &str, bearer: &str, body: Option<Value>) -> Value {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let auth = format!("Bearer {bearer}");
    let mut res = match body {
        Some(b) => agent
            .post(url)
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .send(b.to_string())
            .unwrap(),
        None => {
            assert_eq!(method, "GET");
            agent.get(url).header("Authorization", &auth).call().unwrap()
        }
    };
    assert!(res.status().is_success(), "{url}: {}", res.status());
    serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap()
}

/// Change the stored entry `id` (its actor `system` → `sysTem`) behind the store's back.
fn tamper(db: &Path, id: u64) {
    use redb::ReadableTable;
    const AUDIT: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("audit");
    let file = redb::Database::create(db).unwrap();
    let txn = file.begin_write().unwrap();
    {
        let mut table = txn.open_table(AUDIT).unwrap();
        let mut value = table.get(id).unwrap().unwrap().value().to_vec();
        let at = value.windows(6).position(|w| w == b"system").unwrap();
        value[at + 3] = b'T';
        table.insert(id, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn audit_reads_the_trail_and_verify_finds_an_edited_entry() {
    let dir = tempfile::tempdir().unwrap();
    let (served, url, admin) = serve(dir.path(), &[]);
    let alice = call(
        "POST",
        &format!("{url}/v1/tokens"),
        &admin,
        Some(json!({"subject": "alice", "operations": ["tokens.list", "tokens.mint", "tokens.revoke"]})),
    );
    let alice_token = alice["token"].as_str().unwrap().to_owned();
    let child = call("POST", &format!("{url}/v1/tokens"), &alice_token, Some(json!({"description": "c"})));
    let child_tid = child["tid"].as_str().unwrap();
    call("POST", &format!("{url}/v1/tokens/{child_tid}/revoke"), &alice_token, Some(json!({})));

    // Words: one line per entry.
    let o = tessera(&["audit", "--server", &url, "--token", &admin]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = stdout(&o);
    assert!(text.lines().any(|l| l.contains("admin_token.create success by system")), "{text}");
    assert!(
        text.lines().any(|l| l.contains("token.revoke success by alice") && l.contains(child_tid)),
        "{text}"
    );
    assert!(!text.contains(&alice_token) && !text.contains(&admin), "no token text");
    // JSON lines, filtered.
    let o = tessera(&[
        "audit",
        "--server",
        &url,
        "--token",
        &admin,
        "--kind",
        "token.mint",
        "--actor",
        "alice",
        "--json",
    ]);
    let lines: Vec<Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["target"]["tid"], child_tid);
    // Alice's own, through /v1/audit/mine; the whole trail is the admin's (exit 2, the reason).
    let o = tessera(&["audit", "--server", &url, "--token", &alice_token, "--mine", "--json"]);
    assert!(o.status.success());
    assert!(stdout(&o).lines().count() >= 3, "{}", stdout(&o));
    let o = tessera(&["audit", "--server", &url, "--token", &alice_token]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"), "{}", String::from_utf8_lossy(&o.stderr));
    let pin = call("GET", &format!("{url}/v1/audit/head"), &admin, None)["pin"].as_str().unwrap().to_owned();
    drop(served);

    let db = dir.path().join("data/tessera.redb");
    let db_arg = db.to_str().unwrap();
    // A replacement admin token from the command line: its entry names the command.
    let o = tessera(&["admin-token", "--db", db_arg]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let minted = stdout(&o).trim().to_owned();
    {
        let (master, _) = MasterKey::from_env_or_file(&dir.path().join("data/master.key")).unwrap();
        let store = Store::open(&db, master).unwrap();
        let made = store
            .audit(&AuditFilter { kind: Some(AuditKind::AdminTokenCreate), ..AuditFilter::default() })
            .unwrap();
        assert_eq!(made.len(), 2, "{made:?}");
        assert!(
            made[1].actor.user_agent.as_deref().unwrap().starts_with("tessera admin-token (local"),
            "{made:?}"
        );
        assert!(!format!("{:?}", store.audit(&AuditFilter::default()).unwrap()).contains(&minted));
    }

    // Intact, also against the head pinned while serving.
    let o = tessera(&["audit", "verify", "--db", db_arg]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).starts_with("OK: "), "{}", stdout(&o));
    let o = tessera(&["audit", "verify", "--db", db_arg, "--pinned", &pin]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let o = tessera(&["audit", "verify", "--db", db_arg, "--pinned", "12:beef"]);
    assert_eq!(o.status.code(), Some(2), "a malformed pin is a usage error");

    // An entry edited behind the store's back: named, exit 1.
    tamper(&db, 2);
    let o = tessera(&["audit", "verify", "--db", db_arg]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("BROKEN at entry 2"), "{}", stdout(&o));
}

/// After pruning, `tessera audit verify` says when the anchor was pruned; an anchor without a
/// MAC (as a build before schema 10 wrote it) is reported UNAUTHENTICATED, exit 1, not OK.
#[test]
fn verify_reports_the_anchor_and_one_without_a_mac() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("tessera.redb");
    let db_arg = db.to_str().unwrap();
    let (master, _) = MasterKey::load_or_create(&data.join("master.key")).unwrap();
    let head = {
        let store = Store::open(&db, master).unwrap();
        store.rotate().unwrap();
        let head = store.audit_head().unwrap().unwrap();
        assert_eq!(store.prune_audit(i64::MAX).unwrap(), 1);
        head
    };
    let o = tessera(&["audit", "verify", "--db", db_arg]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let text = stdout(&o);
    assert!(text.contains(&format!("after the pruned entry {head} (pruned at 20")), "{text}");
    assert!(text.contains("anchor MAC checks"), "{text}");

    // The anchor as schema 9 stored it: CBOR {"seq": 1, "mac": [32 bytes as integers]}.
    assert_eq!(head.seq, 1);
    let mut old = vec![0xa2, 0x63, b's', b'e', b'q', 0x01, 0x63, b'm', b'a', b'c', 0x98, 0x20];
    for b in head.mac {
        if b >= 24 {
            old.push(0x18);
        }
        old.push(b);
    }
    let file = redb::Database::create(&db).unwrap();
    let txn = file.begin_write().unwrap();
    {
        let meta: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("meta");
        txn.open_table(meta).unwrap().insert("audit_anchor", old.as_slice()).unwrap();
    }
    txn.commit().unwrap();
    drop(file);
    let o = tessera(&["audit", "verify", "--db", db_arg]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).starts_with(&format!("UNAUTHENTICATED anchor {head}")), "{}", stdout(&o));
}
