//! `tessera serve` and `tessera discharge` against the running service: a revocable token
//! verifies only with a fresh bound discharge, and after revocation no discharge is issued.

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

use std::io::Write;
use std::process::{Command, Stdio};

mod common;

use base64::Engine as _;
use common::{jose, peer, serve};
use serde_json::{json, Value};

fn tessera(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
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

/// `tessera session create|refresh|revoke` against the running service.
#[test]
fn sessions_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, url, admin) = serve(dir.path(), &["--refresh-grace", "0s"]);
    let (code, out, err) = tessera(
        &[
            "session",
            "create",
            "--server",
            &url,
            "--token",
            &admin,
            "--subject",
            "fay",
            "--allow",
            "read",
            "--strategy",
            "refreshBoth",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["strategy"], "refreshBoth");
    let rt = s["refresh_token"].as_str().unwrap();
    let (code, out, err) = tessera(&["session", "refresh", "--server", &url], Some(rt));
    assert_eq!(code, 0, "{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["refresh_rotated"], true);
    assert_eq!(r["session_id"], s["session_id"]);
    let next = r["refresh_token"].as_str().unwrap();
    let (code, out, err) =
        tessera(&["session", "refresh", "--server", &url, next, "--strategy", "noRefresh"], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["refresh_rotated"], false);
    let sid = s["session_id"].as_str().unwrap();
    let (code, out, err) = tessera(&["session", "revoke", "--server", &url, "--token", &admin, sid], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"revoked\": true"), "{out}");
    let (code, _, err) = tessera(&["session", "refresh", "--server", &url, next], None);
    assert_eq!(code, 2);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = tessera(&["session", "refresh", "--server", &url], Some(""));
    assert_eq!(code, 2);
    assert!(err.contains("no refresh token"), "{err}");
}

#[test]
fn serve_then_discharge_revocable_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, addr, admin) = serve(dir.path(), &["--discharge-ttl", "2m"]);

    let (status, minted) = post(
        &format!("{addr}/v1/tokens"),
        Some(&admin),
        json!({"subject": "alice", "operations": ["read"], "revocable": true}),
    );
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap().to_owned();
    let tid = minted["tid"].as_str().unwrap().to_owned();

    // Without a discharge the token is denied; with `tessera discharge` it verifies.
    let verify = |discharges: &[String]| {
        post(
            &format!("{addr}/v1/verify"),
            None,
            json!({"token": token, "discharges": discharges, "context": {"operation": "read"}}),
        )
        .0
    };
    assert_eq!(verify(&[]), 403);
    let (code, out, err) = tessera(&["discharge", "--server", &addr], Some(&token));
    assert_eq!(code, 0, "{err}");
    let bound: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(bound.len(), 1);
    assert_eq!(verify(&bound), 200);
    // The caveat's own location works as well (no --server).
    let (code, _, err) = tessera(&["discharge", &token], None);
    assert_eq!(code, 0, "{err}");
    // The CLI's inspect shows the third-party caveat.
    let (_, text, _) = tessera(&["inspect", &token], None);
    assert!(text.contains("third-party caveat at http://127.0.0.1"), "{text}");
    // A JWT through the service, for scripts.
    let (code, jwt, err) = tessera(&["jwt", "--server", &addr, "--discharge", &bound[0]], Some(&token));
    assert_eq!(code, 0, "{err}");
    assert_eq!(jwt.trim().split('.').count(), 3);
    // Issue 20: one default for the CLI and the service (ES256, the service's --jwt-alg).
    let header = jwt.trim().split('.').next().unwrap();
    let header: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(header).unwrap())
            .unwrap();
    assert_eq!(header["alg"], "ES256", "{header}");

    let (status, _) = post(&format!("{addr}/v1/tokens/{tid}/revoke"), Some(&admin), json!({}));
    assert_eq!(status, 200);
    let (code, _, err) = tessera(&["discharge", "--server", &addr], Some(&token));
    assert_eq!(code, 2);
    assert!(err.contains("403") && err.contains("revoked"), "{err}");
    // Local administration refuses politely while the service holds the database.
    let db = dir.path().join("data/tessera.redb");
    let (code, _, err) = tessera(&["keys", "list", "--db", db.to_str().unwrap()], None);
    assert_eq!(code, 2);
    assert!(err.contains("in use by another process"), "{err}");
    let (code, _, err) = tessera(&["discharge", "--server", &addr], Some(&admin));
    assert_eq!(code, 2);
    assert!(err.contains("no third-party caveat"), "{err}");
}

/// A service in another language verifies envelopes with nothing but the JWKS URL: PyJWT's
/// PyJWKClient and npm jose's createRemoteJWKSet fetch the running service's key set, for
/// ES256 and EdDSA; `tessera jwt-check --jwks` does the same from a shell.
#[test]
fn other_languages_verify_envelopes_through_the_jwks_url() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, url, admin) = serve(dir.path(), &[]);
    let (status, minted) =
        post(&format!("{url}/v1/tokens"), Some(&admin), json!({"subject": "erin", "operations": ["read"]}));
    assert_eq!(status, 201, "{minted}");
    let token = minted["token"].as_str().unwrap();
    for alg in ["ES256", "EdDSA"] {
        let (status, env) =
            post(&format!("{url}/v1/jwt"), None, json!({"token": token, "alg": alg, "aud": "api"}));
        assert_eq!(status, 200, "{env}");
        let jwt = env["jwt"].as_str().unwrap();
        let req = json!({"jwks_uri": format!("{url}/.well-known/jwks.json"), "jwt": jwt, "issuer": url, "audience": "api"});
        let answer = peer("jwks", req);
        assert_eq!(answer["ok"], true, "{alg}: {answer}");
        assert_eq!(answer["alg"], alg);
        assert_eq!(answer["claims"]["sub"], "erin");
        assert_eq!(answer["claims"]["cap"]["allow"], json!(["read"]));
        // The wrong audience is refused by PyJWT too.
        let wrong = json!({"jwks_uri": format!("{url}/.well-known/jwks.json"), "jwt": jwt, "issuer": url, "audience": "other"});
        assert_eq!(peer("jwks", wrong.clone())["ok"], false);
        // A second, independent verifier: npm jose (createRemoteJWKSet + jwtVerify).
        let answer = jose(
            json!({"jwks_uri": format!("{url}/.well-known/jwks.json"), "jwt": jwt, "issuer": url, "audience": "api"}),
        );
        assert_eq!(answer["ok"], true, "{alg}: {answer}");
        assert_eq!(answer["alg"], alg);
        assert_eq!(answer["payload"]["sub"], "erin");
        assert_eq!(jose(wrong)["ok"], false, "jose refuses the wrong audience");
        // And `tessera jwt-check` with the JWKS URL, or a saved copy of it.
        let jwks_url = format!("{url}/.well-known/jwks.json");
        let saved = dir.path().join("jwks.json");
        std::fs::write(&saved, ureq::get(&jwks_url).call().unwrap().body_mut().read_to_string().unwrap())
            .unwrap();
        for source in [jwks_url.as_str(), saved.to_str().unwrap()] {
            let check = |aud: &str, op: &str| {
                tessera(
                    &["jwt-check", jwt, "--jwks", source, "--issuer", &url, "--aud", aud, "--op", op],
                    None,
                )
                .0
            };
            assert_eq!(check("api", "read"), 0, "{alg} via {source}");
            assert_eq!(check("api", "write"), 1, "cap enforced");
            assert_eq!(check("other", "read"), 1, "audience enforced");
        }
    }
}
