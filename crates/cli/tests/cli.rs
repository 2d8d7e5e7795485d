//! Every subcommand: happy paths, exit codes (0 ok, 1 denied, 2 usage/malformed), malformed
//! tokens, bad flags, tokens from stdin, local administration, and interop with pymacaroons.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;

use common::peer;
use serde_json::{json, Value};
use tessera_store::{MasterKey, Store};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn tessera_in(dir: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.env_remove("TESSERA_MASTER_KEY").env_remove("TESSERA_DB");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    Out {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn tessera(args: &[&str]) -> Out {
    tessera_in(None, args, None)
}

fn ok(o: Out) -> String {
    assert_eq!(o.code, 0, "stdout: {}\nstderr: {}", o.stdout, o.stderr);
    o.stdout.trim().to_owned()
}

fn key_file(dir: &Path, byte: u8) -> PathBuf {
    let p = dir.join(format!("key{byte}.hex"));
    std::fs::write(&p, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    p
}

#[test]
fn mint_attenuate_inspect_verify_with_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), 7);
    let k = key.to_str().unwrap();
    let token = ok(tessera(&["mint", "--key-file", k, "--id", "order-7", "--location", "https://shop.test"]));
    // Attenuate from an argument and from stdin.
    let narrow = ok(tessera(&[
        "attenuate",
        &token,
        "--read-only",
        "--resource",
        "issues/42",
        "--expires",
        "6h",
        "--client-ip",
        "10.0.0.0/8",
    ]));
    let from_stdin = ok(tessera_in(None, &["attenuate", "--allow", "read"], Some(&token)));
    assert_ne!(from_stdin, token);

    let text = ok(tessera_in(None, &["inspect"], Some(&narrow)));
    assert!(text.contains("\"order-7\""), "{text}");
    assert!(text.contains("only operations: read"), "{text}");
    assert!(text.contains("only resources: issues/42"), "{text}");
    assert!(text.contains("only from client addresses in: 10.0.0.0/8"), "{text}");
    assert!(text.contains("effective restrictions (unverified)"), "{text}");
    assert!(!text.contains("signature"), "no signature by default");
    let j: Value = serde_json::from_str(&ok(tessera(&["inspect", &narrow, "--json"]))).unwrap();
    assert_eq!(j["location"], "https://shop.test");
    assert_eq!(j["identifier"]["text"], "order-7");
    assert_eq!(j["restrictions"]["operations"], json!(["read"]));
    assert!(j.get("signature").is_none());
    let j: Value =
        serde_json::from_str(&ok(tessera(&["inspect", &narrow, "--json", "--show-signature"]))).unwrap();
    assert!(j["signature"].is_string());

    let verify = |t: &str, extra: &[&str]| {
        let mut args = vec!["verify", t, "--key-file", k, "--client-ip", "10.1.2.3"];
        args.extend_from_slice(extra);
        tessera(&args)
    };
    let allowed = verify(&narrow, &["--op", "read", "--resource", "issues/42"]);
    assert_eq!(allowed.code, 0, "{}", allowed.stderr);
    assert!(allowed.stdout.starts_with("allowed"));
    let denied = verify(&narrow, &["--op", "write", "--resource", "issues/42"]);
    assert_eq!(denied.code, 1);
    assert!(denied.stderr.contains("allow read"), "{}", denied.stderr);
    assert_eq!(verify(&narrow, &["--op", "read", "--resource", "issues/1"]).code, 1);
    assert_eq!(
        verify(&narrow, &["--op", "read", "--resource", "issues/42", "--at", "7h"]).code,
        1,
        "expired"
    );
    let other = key_file(dir.path(), 8);
    let wrong = tessera(&["verify", &narrow, "--key-file", other.to_str().unwrap(), "--op", "read"]);
    assert_eq!(wrong.code, 1);
    assert!(wrong.stderr.contains("signature is invalid"));
    // Application caveats: denied unless satisfied.
    let app = ok(tessera(&["attenuate", &token, "--caveat", "account 42"]));
    assert_eq!(tessera(&["verify", &app, "--key-file", k]).code, 1);
    assert_eq!(tessera(&["verify", &app, "--key-file", k, "--satisfy", "account 42"]).code, 0);
}

#[test]
fn malformed_input_and_bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), 7);
    let k = key.to_str().unwrap();
    let token = ok(tessera(&["mint", "--key-file", k]));
    for args in [
        vec!["attenuate", "garbage!!", "--read-only"],
        vec!["attenuate", &token],
        vec!["attenuate", &token, "--caveat", "time-before tomorrow"],
        vec!["attenuate", &token, "--client-ip", "300.1.1.1"],
        vec!["attenuate", &token, "--expires", "soonish"],
        vec!["attenuate", &token, "--allow", "two words"],
        vec!["inspect", "AAAA"],
        vec!["verify", &token],
        vec!["verify", "%%%", "--key-file", k],
        vec!["verify", &token, "--key-file", "/nonexistent/key"],
        vec!["verify", &token, "--key-file", k, "--client-ip", "nope"],
        vec!["mint"],
        vec!["frobnicate"],
        vec!["keys", "list", "--db", "/nonexistent/tessera.redb"],
        vec!["jwt-check", "a.b.c", "--key-hex", "xyz", "--issuer", "i"],
    ] {
        let o = tessera(&args);
        assert_eq!(o.code, 2, "{args:?}: stdout {} stderr {}", o.stdout, o.stderr);
        assert!(!o.stderr.is_empty(), "{args:?} explains itself");
        assert!(!o.stderr.contains("panicked"), "{args:?}");
    }
    let empty = tessera_in(None, &["inspect"], Some(""));
    assert_eq!(empty.code, 2);
    assert!(empty.stderr.contains("no token"), "{}", empty.stderr);
    let short = dir.path().join("short.hex");
    std::fs::write(&short, "abcd").unwrap();
    let o = tessera(&["mint", "--key-file", short.to_str().unwrap()]);
    assert_eq!(o.code, 2);
    assert!(o.stderr.contains("at least 32"), "{}", o.stderr);
}

/// A database made the way the service makes one.
fn database(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    let (master, _) = MasterKey::load_or_create(&data.join("master.key")).unwrap();
    let store = Store::open(data.join("tessera.redb"), master).unwrap();
    store.rotate().unwrap();
    store.ensure_signing_keys(tessera_core::envelope::Algorithm::Es256).unwrap();
    data.join("tessera.redb")
}

#[test]
fn local_administration_against_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let db = db.to_str().unwrap();
    let token = ok(tessera(&[
        "mint",
        "--db",
        db,
        "--subject",
        "alice",
        "--description",
        "laptop",
        "--read-only",
        "--expires",
        "1h",
    ]));
    let verify = |t: &str, op: &str| tessera(&["verify", t, "--db", db, "--op", op]);
    let v = verify(&token, "read");
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.contains("subject:    alice"), "{}", v.stdout);
    assert_eq!(verify(&token, "write").code, 1);

    let list = ok(tessera(&["tokens", "list", "--db", db, "--subject", "alice"]));
    assert!(list.contains("live") && list.contains("laptop"), "{list}");
    assert!(list.contains("last used never"), "{list}");
    let soon = ok(tessera(&["tokens", "list", "--db", db, "--subject", "alice", "--expiring-within", "2h"]));
    assert!(soon.contains("laptop"), "expires in 1h: {soon}");
    let none = ok(tessera(&["tokens", "list", "--db", db, "--subject", "alice", "--expiring-within", "30m"]));
    assert!(!none.contains("laptop"), "{none}");
    assert_eq!(
        tessera(&["tokens", "list", "--db", db, "--subject", "alice", "--expiring-within", "soon"]).code,
        2
    );
    assert!(!list.contains(&token[..30]), "never token text");
    let tid = list.split_whitespace().next().unwrap().to_owned();

    // JWT envelope from the database, checked with the key the service would hand out.
    let jwt = ok(tessera(&["jwt", &token, "--db", db, "--issuer", "https://tessera.test"]));
    assert_eq!(jwt.split('.').count(), 3);

    let keys = ok(tessera(&["keys", "list", "--db", db]));
    assert!(keys.contains("active"));
    // The JWT signing keys are listed beside the root keys: one active, one published as next.
    let signing: Vec<&str> = keys.lines().filter(|l| l.contains("ES256")).collect();
    assert_eq!(signing.len(), 2, "{keys}");
    assert!(
        signing.iter().any(|l| l.contains(" next ")) && signing.iter().any(|l| l.contains(" active ")),
        "{keys}"
    );
    let old_kid = keys.split_whitespace().next().unwrap().to_owned();
    ok(tessera(&["keys", "rotate", "--db", db]));
    assert_eq!(verify(&token, "read").code, 0, "retired keys still verify");
    let admin = ok(tessera(&["admin-token", "--db", db]));
    assert_eq!(tessera(&["verify", &admin, "--db", db, "--op", "keys.rotate"]).code, 0);

    assert!(ok(tessera(&["tokens", "revoke", &tid, "--db", db])).contains("revoked"));
    let revoked = verify(&token, "read");
    assert_eq!(revoked.code, 1);
    assert!(revoked.stderr.contains("revoked"), "{}", revoked.stderr);
    assert!(ok(tessera(&["tokens", "revoke", &tid, "--db", db])).contains("already"));
    ok(tessera(&["keys", "revoke", &old_kid, "--db", db]));
    assert!(ok(tessera(&["keys", "list", "--db", db])).contains("revoked"));
    assert_eq!(tessera(&["tokens", "revoke", "zz", "--db", db]).code, 2);
}

#[test]
fn custom_claims_at_mint_are_shown_by_verify_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let db = db.to_str().unwrap();
    let claims = r#"{"roles":["editor"],"org":7}"#;
    let token = ok(tessera(&["mint", "--db", db, "--subject", "alice", "--claims", claims]));
    let token = token.trim();
    let v = tessera(&["verify", token, "--db", db]);
    assert_eq!(v.code, 0, "{}", v.stderr);
    assert!(v.stdout.contains(r#"claims:     {"org":7,"roles":["editor"]}"#), "{}", v.stdout);
    let text = ok(tessera(&["inspect", token]));
    assert!(text.contains(r#"{"org":7,"roles":["editor"]} (bound by the signature)"#), "{text}");
    let j: Value = serde_json::from_str(&ok(tessera(&["inspect", token, "--json"]))).unwrap();
    assert_eq!(j["identifier"]["claims"]["roles"][0], "editor");
    for bad in [r#"{"sub":"root"}"#, "[1]", "{"] {
        let o = tessera(&["mint", "--db", db, "--subject", "alice", "--claims", bad]);
        assert_eq!(o.code, 2, "{bad}: {}", o.stderr);
        assert!(o.stderr.contains("--claims"), "{}", o.stderr);
    }
}

#[test]
fn jwt_check_enforces_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let db = database(dir.path());
    let db = db.to_str().unwrap();
    let token =
        ok(tessera(&["mint", "--db", db, "--subject", "bob", "--allow", "read", "--resource", "docs/*"]));
    let jwt = ok(tessera(&["jwt", &token, "--db", db, "--issuer", "iss"]));
    // The envelope key, as GET /v1/keys/{kid}/envelope-key would return it.
    let (master, _) = MasterKey::load_or_create(&dir.path().join("data/master.key")).unwrap();
    let store = Store::open(db, master).unwrap();
    let (_, secret) = store.active_key().unwrap();
    drop(store);
    let hex: String = secret.envelope_key().expose_secret().iter().map(|b| format!("{b:02x}")).collect();
    let check = |op: &str, res: &str| {
        tessera(&["jwt-check", &jwt, "--key-hex", &hex, "--issuer", "iss", "--op", op, "--resource", res])
    };
    let o = check("read", "docs/a");
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("subject:  bob"));
    assert_eq!(check("write", "docs/a").code, 1);
    assert_eq!(check("read", "src/a").code, 1);
    let wrong =
        tessera(&["jwt-check", &jwt, "--key-hex", &"00".repeat(32), "--issuer", "iss", "--op", "read"]);
    assert_eq!(wrong.code, 1);
}

#[test]
fn interop_with_pymacaroons_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), 9);
    let k = key.to_str().unwrap();
    let key_hex = "09".repeat(32);
    // pymacaroons mints and attenuates; tessera verifies.
    let minted = peer(
        "mint",
        json!({"key_hex": key_hex, "location": "https://peer.test", "identifier": "peer-1",
                                     "caveats": ["allow read write"]}),
    );
    let theirs = peer("attenuate", json!({"token": minted["token"], "caveats": ["resource issues/42"]}));
    let t = theirs["token"].as_str().unwrap();
    assert_eq!(tessera(&["verify", t, "--key-file", k, "--op", "read", "--resource", "issues/42"]).code, 0);
    assert_eq!(tessera(&["verify", t, "--key-file", k, "--op", "read", "--resource", "issues/1"]).code, 1);
    // tessera attenuates; pymacaroons verifies (and honours our caveat).
    let ours = ok(tessera(&["attenuate", t, "--read-only"]));
    let exact = json!(["allow read write", "resource issues/42", "allow read"]);
    let v = peer("verify", json!({"token": ours, "key_hex": key_hex, "exact": exact}));
    assert_eq!(v["ok"], true, "{v}");
    let v = peer(
        "verify",
        json!({"token": ours, "key_hex": key_hex, "exact": ["allow read write", "resource issues/42"]}),
    );
    assert_eq!(v["ok"], false, "the peer sees the added caveat");
}

#[test]
fn jwt_check_refuses_bad_key_sources_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_jwks = dir.path().join("not-jwks.json");
    std::fs::write(&not_jwks, r#"{"keys": 7}"#).unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let missing = dir.path().join("missing.json");
    for source in [&not_jwks, &garbage, &missing] {
        let o = tessera(&["jwt-check", "a.b.c", "--jwks", source.to_str().unwrap(), "--issuer", "i"]);
        assert_eq!(o.code, 2, "{}: {}", source.display(), o.stderr);
    }
    // Neither key given, or both.
    assert_eq!(tessera(&["jwt-check", "a.b.c", "--issuer", "i"]).code, 2);
    let both = ["jwt-check", "a.b.c", "--issuer", "i", "--key-hex", &"00".repeat(32), "--jwks", "x"];
    assert_eq!(tessera(&both).code, 2);
    // A JWKS without the kid: denied (exit 1), not a usage error.
    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, r#"{"keys": []}"#).unwrap();
    let jwt = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IngifQ.e30.AAAA";
    assert_eq!(tessera(&["jwt-check", jwt, "--jwks", empty.to_str().unwrap(), "--issuer", "i"]).code, 1);
}

/// Security review 3, finding 14: `jwt-check --jwks` took the algorithm from the JWK's `kty` and
/// `crv` only, so an entry saying `"alg": "EdDSA"` over a P-256 key still verified an ES256
/// envelope. A JWK whose `alg` is not its key's, or whose `use` is not `sig`, names no key.
#[test]
fn jwt_check_refuses_a_jwk_whose_alg_or_use_disagrees() {
    use tessera_core::envelope::{self, Algorithm, SigningKey};
    use tessera_core::{Context, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId, Verifier};
    let secret = RootKey::new(&[9u8; 32]).unwrap();
    let kid = KeyId::from_bytes([1; 8]);
    let id = Identifier::new(kid, TokenId::from_bytes([2; 16]), "alice").unwrap();
    let token = Token::mint_tessera(None, &secret, &id).unwrap();
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret);
    let now = time::OffsetDateTime::now_utc();
    let verified = Verifier::with_keys(&keys).verify(&token, &[], &Context::at(now)).unwrap();
    let es = SigningKey::generate(Algorithm::Es256).unwrap();
    let public = es.public_key().unwrap();
    let jwt = envelope::issue_signed(
        &verified,
        &es,
        &public.thumbprint(),
        "iss",
        None,
        now,
        time::Duration::minutes(5),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let check = |edit: &dyn Fn(&mut Value)| {
        let mut jwk = public.jwk();
        edit(&mut jwk);
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, json!({"keys": [jwk]}).to_string()).unwrap();
        tessera(&["jwt-check", &jwt, "--jwks", path.to_str().unwrap(), "--issuer", "iss"])
    };
    let o = check(&|_| {});
    assert_eq!(o.code, 0, "as published: {}", o.stderr);
    for (name, value) in [("alg", "EdDSA"), ("alg", "HS256"), ("use", "enc")] {
        let o = check(&|j| j[name] = json!(value));
        assert_eq!(o.code, 1, "{name}: {value}: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.contains(name), "{name}: {}", o.stderr);
    }
}
