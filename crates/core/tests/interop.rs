//! Interop with independent implementations, in both directions: pymacaroons 0.13 (tokens,
//! third-party caveats, bound discharges, V1/V2/JSON forms) and PyJWT (envelopes).
//!
//! The peers live in a Python venv that `make test` creates (`make venv`); `TESSERA_PYTHON`
//! points at its interpreter. Without it these tests fail with instructions: they never skip.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use tessera_core::{envelope, Context, Identifier, KeyId, RootKey, StaticKeys, Token, TokenId, Verifier};
use time::macros::datetime;
use time::Duration;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn peer(cmd: &str, request: Value) -> Value {
    let python = std::env::var_os("TESSERA_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/venv/bin/python"));
    assert!(
        python.exists(),
        "interop peer missing: {} does not exist. Run `make venv` (make test does) or set TESSERA_PYTHON",
        python.display()
    );
    let mut child = Command::new(python)
        .arg(workspace().join("tests/interop/peer.py"))
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "peer {cmd} failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

const CAVEATS: [&str; 5] = [
    "allow read write",
    "resource issues/*",
    "time-after 2026-01-01T00:00:00Z",
    "time-before 2030-01-01T00:00:00Z",
    "client-ip 10.0.0.0/8",
];

struct Setup {
    keys: StaticKeys,
    token_key: tessera_core::TokenKey,
    token: Token,
    secret: RootKey,
    kid: KeyId,
}

fn setup() -> Setup {
    let secret = RootKey::generate().unwrap();
    let kid = KeyId::generate().unwrap();
    let id = Identifier::new(kid, TokenId::generate().unwrap(), "alice").unwrap();
    let mut token = Token::mint_tessera(Some("https://tessera.test"), &secret, &id).unwrap();
    for c in CAVEATS {
        token = token.attenuate(c).unwrap();
    }
    let token_key = secret.token_key(&id.tid);
    let mut keys = StaticKeys::new();
    keys.insert(kid, secret.clone());
    Setup { keys, token_key, token, secret, kid }
}

fn ctx(op: &str) -> Context {
    Context::at(datetime!(2027-06-01 0:00 UTC))
        .operation(op)
        .resource("issues/42")
        .client_ip("10.1.2.3".parse().unwrap())
}

fn key_hex(k: &RootKey) -> String {
    hex::encode(k.expose_secret())
}

#[test]
fn pymacaroons_verifies_our_tokens_with_a_bound_discharge() {
    let s = setup();
    let tp_key = RootKey::generate().unwrap();
    let root = s.token.add_third_party_caveat("https://idp.test", &tp_key, b"ticket-9").unwrap();
    let d = Token::discharge(Some("https://idp.test"), &tp_key, b"ticket-9")
        .unwrap()
        .attenuate("time-before 2029-01-01T00:00:00Z")
        .unwrap();
    let bound = root.bind(&d);
    let mut exact: Vec<&str> = CAVEATS.to_vec();
    exact.push("time-before 2029-01-01T00:00:00Z");
    let req = json!({
        "token": root.encode(),
        "key_hex": hex::encode(s.token_key.expose_secret()),
        "discharges": [bound.encode()],
        "exact": exact,
    });
    let answer = peer("verify", req.clone());
    assert_eq!(answer["ok"], true, "{answer}");

    // The peer rejects what we reject: wrong key, unbound discharge, an unsatisfied caveat.
    let mut wrong = req.clone();
    wrong["key_hex"] = json!(hex::encode([7u8; 32]));
    assert_eq!(peer("verify", wrong)["ok"], false);
    let mut unbound = req.clone();
    unbound["discharges"] = json!([d.encode()]);
    assert_eq!(peer("verify", unbound)["ok"], false);
    let mut unmet = req;
    unmet["exact"] = json!(&CAVEATS[1..]);
    assert_eq!(peer("verify", unmet)["ok"], false);

    // And the JSON form of our token is read by the peer too.
    let json_req = json!({
        "token": root.to_json(),
        "key_hex": hex::encode(s.token_key.expose_secret()),
        "discharges": [bound.encode()],
        "exact": exact,
    });
    assert_eq!(peer("verify", json_req)["ok"], true);
}

#[test]
fn tokens_attenuated_by_pymacaroons_verify_here() {
    let s = setup();
    let answer = peer(
        "attenuate",
        json!({"token": s.token.encode(), "caveats": ["allow read", "resource issues/42"]}),
    );
    let narrowed = Token::decode(answer["token"].as_str().unwrap()).unwrap();
    assert_eq!(narrowed.caveat_count(), CAVEATS.len() + 2);
    let v = Verifier::with_keys(&s.keys);
    let verified = v.verify(&narrowed, &[], &ctx("read")).unwrap();
    assert_eq!(verified.restrictions().operations, Some(vec!["read".to_owned()]));
    assert!(v.verify(&narrowed, &[], &ctx("write")).is_err(), "the peer's caveat narrows");
    assert!(v.verify(&narrowed, &[], &ctx("read").resource("issues/43")).is_err());
}

#[test]
fn tokens_minted_by_pymacaroons_verify_here_in_every_form() {
    let root_key = RootKey::generate().unwrap();
    let tp_key = RootKey::generate().unwrap();
    for version in [1, 2] {
        let answer = peer(
            "mint",
            json!({
                "version": version,
                "key_hex": key_hex(&root_key),
                "location": "https://peer.test",
                "identifier": format!("peer-token-v{version}"),
                "caveats": ["allow read", "client-ip 10.0.0.0/8"],
                "third_party": {
                    "location": "https://idp.test",
                    "key_hex": key_hex(&tp_key),
                    "id": "peer-ticket",
                    "caveats": ["time-before 2029-01-01T00:00:00Z"],
                },
            }),
        );
        let discharges: Vec<Token> = answer["discharges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| Token::decode(d.as_str().unwrap()).unwrap())
            .collect();
        for form in ["token", "json"] {
            let t = Token::decode(answer[form].as_str().unwrap())
                .unwrap_or_else(|e| panic!("v{version} {form}: {e}"));
            assert_eq!(t.identifier(), format!("peer-token-v{version}").as_bytes());
            let v = Verifier::new();
            v.verify_with_key(&t, &root_key, &discharges, &ctx("read"))
                .unwrap_or_else(|e| panic!("v{version} {form}: {e}"));
            assert!(v.verify_with_key(&t, &root_key, &discharges, &ctx("write")).is_err());
            assert!(v.verify_with_key(&t, &root_key, &[], &ctx("read")).is_err(), "discharge required");
            let late = Context { time: datetime!(2029-06-01 0:00 UTC), ..ctx("read") };
            assert!(v.verify_with_key(&t, &root_key, &discharges, &late).is_err(), "discharge expired");
            // We attenuate the peer's token; the peer verifies it with a rebound discharge.
            let ours = t.attenuate("resource issues/42").unwrap();
            let d = Token::discharge(Some("https://idp.test"), &tp_key, b"peer-ticket")
                .unwrap()
                .attenuate("time-before 2029-01-01T00:00:00Z")
                .unwrap();
            let back = peer(
                "verify",
                json!({
                    "token": ours.encode(),
                    "key_hex": key_hex(&root_key),
                    "discharges": [ours.bind(&d).encode()],
                    "exact": ["allow read", "client-ip 10.0.0.0/8", "resource issues/42",
                              "time-before 2029-01-01T00:00:00Z"],
                }),
            );
            assert_eq!(back["ok"], true, "v{version} {form}: {back}");
        }
    }
}

#[test]
fn pyjwt_verifies_our_envelopes() {
    let s = setup();
    let v = Verifier::with_keys(&s.keys);
    let verified = v.verify(&s.token, &[], &ctx("read")).unwrap();
    let key = s.secret.envelope_key();
    let now = datetime!(2027-06-01 0:00 UTC);
    let jwt = envelope::issue(&verified, &key, "https://tessera.test", now, Duration::minutes(5)).unwrap();
    let answer = peer(
        "jwt",
        json!({"jwt": jwt, "key_hex": hex::encode(key.expose_secret()), "issuer": "https://tessera.test"}),
    );
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["claims"]["sub"], "alice");
    assert_eq!(answer["claims"]["cap"]["allow"], json!(["read", "write"]));
    assert_eq!(answer["claims"]["cap"]["resource"], json!(["issues/*"]));
    assert_eq!(answer["header"]["kid"], s.kid.to_string());
    assert_eq!(answer["header"]["alg"], "HS256");
    let wrong =
        peer("jwt", json!({"jwt": jwt, "key_hex": hex::encode([1u8; 32]), "issuer": "https://tessera.test"}));
    assert_eq!(wrong["ok"], false);
}

#[test]
fn pyjwt_verifies_es256_and_eddsa_envelopes_from_the_jwk_alone() {
    let s = setup();
    let verified = Verifier::with_keys(&s.keys).verify(&s.token, &[], &ctx("read")).unwrap();
    let now = time::OffsetDateTime::now_utc();
    for alg in [envelope::Algorithm::Es256, envelope::Algorithm::EdDsa] {
        let key = envelope::SigningKey::generate(alg).unwrap();
        let jwk = key.public_key().unwrap().jwk();
        let kid = jwk["kid"].as_str().unwrap().to_owned();
        let check = |signer: &envelope::SigningKey| {
            let jwt = envelope::issue_signed(
                &verified,
                signer,
                &kid,
                "https://tessera.test",
                Some("gw"),
                now,
                Duration::minutes(5),
            )
            .unwrap();
            peer("jwk", json!({"jwt": jwt, "jwk": jwk, "issuer": "https://tessera.test", "audience": "gw"}))
        };
        let answer = check(&key);
        assert_eq!(answer["ok"], true, "{alg}: {answer}");
        assert_eq!(answer["header"]["alg"], alg.name());
        assert_eq!(answer["claims"]["aud"], "gw");
        // A token signed by another key under the same kid fails in PyJWT too.
        let answer = check(&envelope::SigningKey::generate(alg).unwrap());
        assert_eq!(answer["ok"], false, "{answer}");
    }
}
