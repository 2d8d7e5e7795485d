//! Three `tessera serve` nodes on one PostgreSQL (a throwaway server this test starts): tokens,
//! revocations and rotations cross nodes; a node killed mid-write loses no acknowledged write;
//! a database outage is survived (stale after --max-staleness, 503 for writes) and recovered from
//! without restarting nodes; bad database settings are clear errors at start.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tessera_testpg::PgServer;
use tessera_testserver::TestServer;

const MASTER: &str = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e";

/// A `tessera serve` node of the cluster.
type Node = TestServer;

fn serve(database: &str, master: &str, extra: &[&str]) -> Command {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_tessera"));
    c.args(["serve", "--listen", "127.0.0.1:0", "--rate-limit", "0", "--database", database])
        .args(extra)
        .arg("--data-dir")
        .arg(dir.path())
        .env("TESSERA_MASTER_KEY", master)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // The directory lives as long as the test: it holds nothing on a cluster but is required.
    std::mem::forget(dir);
    c
}

fn start(database: &str, extra: &[&str]) -> Node {
    TestServer::start(&mut serve(database, MASTER, extra))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .new_agent()
}

fn call(method: &str, url: &str, bearer: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let a = agent();
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let res = match (method, body) {
        ("GET", _) => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        ("DELETE", _) => {
            let mut r = a.delete(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        (_, body) => {
            let mut r = a.post(url).header("Content-Type", "application/json");
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.send(body.unwrap_or(json!({})).to_string())
        }
    };
    let mut res = res.unwrap();
    let status = res.status().as_u16();
    (status, serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap_or(Value::Null))
}

fn verify(node: &Node, token: &str) -> u16 {
    call("POST", &format!("{}/v1/verify", node.url()), None, Some(json!({"token": token}))).0
}

fn mint(node: &Node, admin: &str, subject: &str) -> (u16, Value) {
    call("POST", &format!("{}/v1/tokens", node.url()), Some(admin), Some(json!({"subject": subject})))
}

fn until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

#[test]
fn three_nodes_share_tokens_revocations_and_keys() {
    let pg = PgServer::start();
    let db = pg.create_database();
    // Started together on an empty database: exactly one creates the first key.
    let nodes: Vec<Node> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| start(&db, &["--refresh-grace", "1s"]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admins: Vec<&str> = nodes.iter().filter_map(|n| n.admin()).collect();
    assert_eq!(admins.len(), 1, "exactly one node prints the admin token");
    let admin = admins[0].to_owned();
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);

    // Mint on A, verify on B and C.
    let (status, minted) = mint(a, &admin, "alice");
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    let tid = minted["tid"].as_str().unwrap().to_owned();
    assert_eq!(verify(b, &token), 200);
    assert_eq!(verify(c, &token), 200);

    // Revoke on C: refused on A and B within a second.
    let (status, _) = call("POST", &format!("{}/v1/tokens/{tid}/revoke", c.url()), Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(verify(c, &token), 401);
    for n in [a, b] {
        let took = until(Duration::from_secs(1), || verify(n, &token) == 401)
            .expect("revocation did not propagate in 1 s");
        eprintln!("revocation visible on {} after {took:?}", n.url());
    }

    // Rotate on B: A signs new tokens with the new key, C verifies them.
    let (status, key) = call("POST", &format!("{}/v1/keys/rotate", b.url()), Some(&admin), None);
    assert_eq!(status, 201, "{key}");
    until(Duration::from_secs(1), || mint(a, &admin, "bob").1["kid"] == key["kid"])
        .expect("A did not see the rotation");
    let (_, m) = mint(a, &admin, "bob");
    // C follows the key change within the propagation bound (until then it fails closed).
    until(Duration::from_secs(1), || verify(c, m["token"].as_str().unwrap()) == 200)
        .expect("C did not verify a token of the new key within 1 s");
    // Every node reports the same last applied entry once quiet.
    let seqs = || -> Vec<Value> {
        nodes
            .iter()
            .map(|n| call("GET", &format!("{}/health", n.url()), None, None).1["last_applied"].clone())
            .collect()
    };
    until(Duration::from_secs(1), || seqs().windows(2).all(|w| w[0] == w[1])).expect("nodes disagree");
    let (_, health) = call("GET", &format!("{}/health", a.url()), None, None);
    assert_eq!(health["backend"], "postgres");

    // Register an application on A: B issues its envelopes with its own keys; disabled on C, A
    // refuses its credential.
    let (status, app) = call(
        "POST",
        &format!("{}/v1/apps", a.url()),
        Some(&admin),
        Some(json!({"name": "billing", "audience": "https://billing.example", "own_keys": true})),
    );
    assert_eq!(status, 201, "{app}");
    let credential = app["credential"].as_str().unwrap().to_owned();
    let (_, m) = mint(a, &admin, "carol");
    let envelope = |n: &Node| {
        call("POST", &format!("{}/v1/jwt", n.url()), Some(&credential), Some(json!({"token": m["token"]})))
    };
    until(Duration::from_secs(1), || envelope(b).0 == 200).expect("B did not see the application");
    let (_, env) = envelope(b);
    let (_, jwks) = call("GET", &format!("{}/v1/apps/billing/jwks.json", c.url()), None, None);
    assert!(jwks["keys"].as_array().unwrap().iter().any(|k| k["kid"] == env["kid"]), "{jwks} {env}");
    let (status, _) = call("DELETE", &format!("{}/v1/apps/billing", c.url()), Some(&admin), None);
    assert_eq!(status, 200);
    until(Duration::from_secs(1), || envelope(a).0 == 401).expect("A still serves a disabled application");

    // Sessions: created on A, rotated on B; the spent token replayed on C after the grace window
    // revokes the session for every node; a second session revoked on C is refused on A at once.
    let refresh = |n: &Node, token: &str| {
        call("POST", &format!("{}/v1/sessions/refresh", n.url()), None, Some(json!({"refresh_token": token})))
    };
    let create = |n: &Node| {
        let (status, s) = call(
            "POST",
            &format!("{}/v1/sessions", n.url()),
            Some(&admin),
            Some(json!({"subject": "gus", "strategy": "refreshBoth"})),
        );
        assert_eq!(status, 201, "{s}");
        s
    };
    let s = create(a);
    let first = s["refresh_token"].as_str().unwrap().to_owned();
    let (status, r) = refresh(b, &first);
    assert_eq!(status, 200, "{r}");
    let second = r["refresh_token"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(2100)); // past the 1 s grace window of these nodes
    assert_eq!(refresh(c, &first).0, 401, "reuse on C");
    assert_eq!(refresh(a, &second).0, 401, "the whole session is gone, on A too");
    let s = create(b);
    let token = s["refresh_token"].as_str().unwrap().to_owned();
    let sid = s["session_id"].as_str().unwrap();
    let (status, _) = call("POST", &format!("{}/v1/sessions/{sid}/revoke", c.url()), Some(&admin), None);
    assert_eq!(status, 200);
    assert_eq!(refresh(a, &token).0, 401, "revoked on C: refused on A at once");
}

#[test]
fn a_node_killed_mid_write_loses_no_acknowledged_write() {
    let pg = PgServer::start();
    let db = pg.create_database();
    let a = start(&db, &[]);
    let admin = a.admin().unwrap().to_owned();
    let mut b = start(&db, &[]);
    let acked: Vec<String> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (url, admin) = (b.url().to_owned(), admin.clone());
                s.spawn(move || {
                    let mut acked = Vec::new();
                    let a = agent();
                    loop {
                        let r = a
                            .post(&format!("{url}/v1/tokens"))
                            .header("Authorization", &format!("Bearer {admin}"))
                            .header("Content-Type", "application/json")
                            .send(json!({"subject": "crash"}).to_string());
                        match r {
                            Ok(mut res) if res.status().as_u16() == 201 => {
                                let v: Value =
                                    serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap();
                                acked.push(v["tid"].as_str().unwrap().to_owned());
                            }
                            _ => return acked, // the node is gone
                        }
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(700));
        b.kill(); // SIGKILL
        writers.into_iter().flat_map(|w| w.join().unwrap()).collect()
    });
    assert!(acked.len() > 10, "only {} writes before the kill", acked.len());
    let (status, list) = call("GET", &format!("{}/v1/tokens?subject=crash", a.url()), Some(&admin), None);
    assert_eq!(status, 200);
    let stored: std::collections::HashSet<&str> =
        list["tokens"].as_array().unwrap().iter().map(|t| t["tid"].as_str().unwrap()).collect();
    let missing: Vec<&String> = acked.iter().filter(|t| !stored.contains(t.as_str())).collect();
    assert!(missing.is_empty(), "{} acknowledged writes lost: {missing:?}", missing.len());
    eprintln!("{} acknowledged writes, all present", acked.len());
}

#[test]
fn a_database_outage_is_survived_and_recovered_without_restarts() {
    let mut pg = PgServer::start();
    let db = pg.create_database();
    let a = start(&db, &["--max-staleness", "3s"]);
    let admin = a.admin().unwrap().to_owned();
    let (_, m) = mint(&a, &admin, "alice");
    let token = m["token"].as_str().unwrap().to_owned();
    pg.stop();
    // From memory until max-staleness; writes fail at once with 503.
    assert_eq!(verify(&a, &token), 200);
    let (status, body) = mint(&a, &admin, "alice");
    assert_eq!(status, 503, "{body}");
    until(Duration::from_secs(8), || verify(&a, &token) == 503).expect("never went stale");
    let (status, health) = call("GET", &format!("{}/health", a.url()), None, None);
    assert_eq!(status, 503);
    assert_eq!(health["status"], "stale");
    assert!(health["detail"].as_str().unwrap().contains("database"), "{health}");
    // Issue 20: the revocation feed checks staleness before it asks the database, so it answers
    // at once with the reason instead of waiting on the database first.
    let (status, feed) = call("GET", &format!("{}/v1/revocations", a.url()), None, None);
    assert_eq!(status, 503, "{feed}");
    assert!(feed["detail"].as_str().unwrap().contains("has not heard from the database"), "{feed}");
    // Public keys are served from memory while stale (documented in API.md and CLUSTER.md):
    // they are public, and a verifier refusing envelopes would not make anything safer.
    assert_eq!(call("GET", &format!("{}/.well-known/jwks.json", a.url()), None, None).0, 200);
    // Back: the same process recovers.
    pg.start_again();
    until(Duration::from_secs(10), || verify(&a, &token) == 200).expect("did not recover");
    assert_eq!(mint(&a, &admin, "alice").0, 201);
    assert_eq!(call("GET", &format!("{}/health", a.url()), None, None).0, 200);
}

fn start_fails(database: &str, master: &str) -> String {
    let started = Instant::now();
    let out = serve(database, master, &[]).output().unwrap();
    assert!(!out.status.success(), "started with {database}");
    assert!(started.elapsed() < Duration::from_secs(20));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_database_settings_are_clear_errors_at_start() {
    let pg = PgServer::start();
    let err = start_fails("postgres://tessera:x@127.0.0.1:1/tessera", MASTER);
    assert!(err.contains("database"), "{err}");
    let db = pg.create_database();
    let err = start_fails(&db.replace(tessera_testpg::PASSWORD, "wrong"), MASTER);
    assert!(err.contains("password"), "{err}");
    assert!(!err.contains("wrong"), "the password is never printed: {err}");
    // A second node with another master key: refused, nothing written.
    let a = start(&db, &[]);
    drop(a);
    let keys = pg.sql(&db, "SELECT count(*) FROM tessera_keys");
    let changes = pg.sql(&db, "SELECT count(*) FROM tessera_changes");
    let err = start_fails(&db, &"ab".repeat(32));
    assert!(err.contains("wrong master key"), "{err}");
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM tessera_keys"), keys);
    assert_eq!(pg.sql(&db, "SELECT count(*) FROM tessera_changes"), changes);
    // A schema newer than the binary.
    pg.sql(&db, "UPDATE tessera_meta SET value = '\\x00000063'::bytea WHERE name = 'schema'");
    let err = start_fails(&db, MASTER);
    assert!(err.contains("newer"), "{err}");
}

/// Limits that need the service, across three nodes: one link redeemed by 100 concurrent
/// requests spread over the nodes succeeds once; a token's budget is never exceeded by the
/// cluster (and at most one lease per node is left unused).
#[test]
fn single_use_and_budgets_hold_across_three_nodes() {
    let pg = PgServer::start();
    let db = pg.create_database();
    let nodes: Vec<Node> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..3).map(|_| s.spawn(|| start(&db, &[]))).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let admin = nodes.iter().find_map(|n| n.admin()).unwrap().to_owned();

    let (status, link) = call(
        "POST",
        &format!("{}/v1/links", nodes[0].url()),
        Some(&admin),
        Some(json!({"subject": "kim", "issue": "token"})),
    );
    assert_eq!(status, 201, "{link}");
    let link = link["link_token"].as_str().unwrap().to_owned();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..100)
            .map(|i| {
                let (node, link) = (&nodes[i % 3], &link);
                s.spawn(move || {
                    call(
                        "POST",
                        &format!("{}/v1/links/redeem", node.url()),
                        None,
                        Some(json!({"token": link})),
                    )
                    .0
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 401).count(), 99, "{statuses:?}");

    let (_, m) = call(
        "POST",
        &format!("{}/v1/tokens", nodes[1].url()),
        Some(&admin),
        Some(json!({"subject": "kim", "operations": ["read"], "rate_limit": "300/1h"})),
    );
    let token = m["token"].as_str().unwrap().to_owned();
    let ok: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..9)
            .map(|i| {
                let (node, token) = (&nodes[i % 3], &token);
                s.spawn(move || {
                    (0..100)
                        .filter(|_| {
                            let body = json!({"token": token, "context": {"operation": "read"}});
                            call("POST", &format!("{}/v1/verify", node.url()), None, Some(body)).0 == 200
                        })
                        .count()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    eprintln!("budget 300/1h across three nodes: {ok} admitted of 900 requests");
    assert!(ok <= 300, "the cluster admitted {ok} of a budget of 300");
    assert!(ok >= 300 - 3 * 3, "the cluster admitted only {ok}");
}

/// Security review round 3, finding 13: a compromised root key could not be revoked on a
/// cluster (no HTTP route; `tessera keys revoke` took only a redb file and echoed the database
/// password in its error). Revoked on one node, its tokens are refused by every node; the CLI
/// revokes through `--database`; no message shows the password.
#[test]
fn a_root_key_is_revoked_on_a_cluster_by_http_and_by_the_cli() {
    let pg = PgServer::start();
    let db = pg.create_database();
    let a = start(&db, &[]);
    let b = start(&db, &[]);
    let admin = a.admin().or(b.admin()).unwrap().to_owned();
    let rotate = |node: &Node| call("POST", &format!("{}/v1/keys/rotate", node.url()), Some(&admin), None);
    // Two keys beside the admin's: one revoked over HTTP, one by the CLI.
    for key_round in ["http", "cli"] {
        let (status, key) = rotate(&a);
        assert_eq!(status, 201, "{key}");
        let kid = key["kid"].as_str().unwrap().to_owned();
        let (status, minted) = mint(&a, &admin, "victim");
        assert_eq!(status, 201, "{minted}");
        assert_eq!(minted["kid"], kid.as_str());
        let token = minted["token"].as_str().unwrap().to_owned();
        assert!(until(Duration::from_secs(5), || verify(&b, &token) == 200).is_some());
        if key_round == "http" {
            let (status, r) = call("POST", &format!("{}/v1/keys/{kid}/revoke", a.url()), Some(&admin), None);
            assert_eq!(status, 200, "{r}");
            assert!(r["active"].is_string(), "the active key was replaced: {r}");
        } else {
            let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
                .args(["keys", "revoke", &kid, "--database", &db])
                .env("TESSERA_MASTER_KEY", MASTER)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        // Refused on this node at once and on the other within the propagation bound.
        assert_eq!(verify(&a, &token), 401, "{key_round}");
        let waited = until(Duration::from_secs(2), || verify(&b, &token) == 401);
        assert!(waited.is_some(), "{key_round}: node B still accepts a token of the revoked key");
    }
    // A wrong password: a clear error, exit 2, and never the password.
    let wrong = db.replace(tessera_testpg::PASSWORD, "Sup3rSecretPw");
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["keys", "list", "--database", &wrong])
        .env("TESSERA_MASTER_KEY", MASTER)
        .output()
        .unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{said}");
    assert!(!said.contains("Sup3rSecretPw"), "{said}");
    assert!(said.contains("***"), "{said}");
    // The reviewer's command: a URL given to --db is refused without being echoed.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["keys", "revoke", "0011223344556677", "--db", &db])
        .env("TESSERA_MASTER_KEY", MASTER)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(!said.contains(tessera_testpg::PASSWORD) && said.contains("--database"), "{said}");
}
