//! `tessera backup`, `restore`, `revocations replay` and `migrate` against real processes
//! (issue 24): a running node is backed up, the snapshot is restored as another node's database
//! (refused while a service holds the target), the revocations made after the snapshot are
//! replayed from the running source, and the restored node serves: the tokens revoked after the
//! snapshot are refused again, the others verify. Then that database moves to PostgreSQL and
//! back with `tessera migrate`.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;

use common::serve;
use serde_json::{json, Value};

fn tessera(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .env_remove("TESSERA_MASTER_KEY")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn post(url: &str, bearer: Option<&str>, body: Value) -> (u16, Value) {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut req = agent.post(url).header("Content-Type", "application/json");
    if let Some(b) = bearer {
        req = req.header("Authorization", &format!("Bearer {b}"));
    }
    let mut res = req.send(body.to_string()).unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
}

fn mint(url: &str, admin: &str) -> (String, String) {
    let (s, v) =
        post(&format!("{url}/v1/tokens"), Some(admin), json!({"subject": "alice", "operations": ["read"]}));
    assert_eq!(s, 201, "{v}");
    (v["token"].as_str().unwrap().to_owned(), v["tid"].as_str().unwrap().to_owned())
}

fn verifies(url: &str, token: &str) -> bool {
    let (s, _) =
        post(&format!("{url}/v1/verify"), None, json!({"token": token, "context": {"operation": "read"}}));
    s == 200
}

fn db_of(dir: &Path) -> String {
    dir.join("data/tessera.redb").display().to_string()
}

#[test]
fn a_running_node_is_backed_up_restored_elsewhere_and_catches_up_by_replay() {
    let a = tempfile::tempdir().unwrap();
    let (node, url, admin) = serve(a.path(), &[]);
    let (kept, _) = mint(&url, &admin);
    let (doomed, doomed_tid) = mint(&url, &admin);
    let snap = a.path().join("snap.redb");
    let snap_s = snap.display().to_string();
    let (code, out, err) = tessera(&["backup", "--server", &url, "--token", &admin, "--out", &snap_s]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backup: "), "{out}");
    // A second backup never replaces the first.
    let (code, _, err) = tessera(&["backup", "--server", &url, "--token", &admin, "--out", &snap_s]);
    assert_ne!(code, 0);
    assert!(err.contains("exists"), "{err}");
    // Revoked after the snapshot.
    let (s, v) = post(&format!("{url}/v1/tokens/{doomed_tid}/revoke"), Some(&admin), json!({}));
    assert_eq!(s, 200, "{v}");

    // Restoring over the running node's own database is refused.
    let (code, _, err) = tessera(&["restore", "--from", &snap_s, "--db", &db_of(a.path())]);
    assert_ne!(code, 0);
    assert!(err.contains("in use"), "{err}");

    // Restored as another node's database (the same master key).
    let b = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(b.path().join("data")).unwrap();
    let key = b.path().join("data/master.key");
    std::fs::copy(a.path().join("data/master.key"), &key).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (code, out, err) = tessera(&["restore", "--from", &snap_s, "--db", &db_of(b.path())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("tessera revocations replay --from"), "{err}");
    let after = err.split("--after ").nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    let (code, out, err) =
        tessera(&["revocations", "replay", "--from", &url, "--after", &after, "--db", &db_of(b.path())]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 token families"), "{out}");
    drop(node);

    // The restored node serves: the token revoked after the snapshot stays revoked.
    let (node_b, url_b, _) = serve(b.path(), &[]);
    assert!(verifies(&url_b, &kept), "a token of the snapshot does not verify on the restored node");
    assert!(!verifies(&url_b, &doomed), "a revocation made after the snapshot was not replayed");
    drop(node_b);

    // The restored database moves to PostgreSQL and back.
    let pg = tessera_testpg::PgServer::start();
    let pg_url = pg.create_database();
    let key_s = key.display().to_string();
    let (code, out, err) =
        tessera(&["migrate", "--db", &db_of(b.path()), "--master-key-file", &key_s, "--to", &pg_url]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("migrated") && err.contains("tokens"), "{out}{err}");
    assert!(!err.contains(tessera_testpg::PASSWORD) && !out.contains(tessera_testpg::PASSWORD));
    // Again: the target holds data now.
    let (code, _, err) =
        tessera(&["migrate", "--db", &db_of(b.path()), "--master-key-file", &key_s, "--to", &pg_url]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds data"), "{err}");
    let c = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(c.path().join("data")).unwrap();
    std::fs::copy(&key, c.path().join("data/master.key")).unwrap();
    let (code, out, err) =
        tessera(&["migrate", "--database", &pg_url, "--master-key-file", &key_s, "--to", &db_of(c.path())]);
    assert_eq!(code, 0, "{out}{err}");
    let (_node_c, url_c, _) = serve(c.path(), &[]);
    assert!(verifies(&url_c, &kept));
    assert!(!verifies(&url_c, &doomed));
}
