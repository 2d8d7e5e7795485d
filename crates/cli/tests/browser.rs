//! The token page in a real headless Chromium (Debian's `chromium`, driven by npm
//! `playwright-core` with no browser download; `make test` installs both): sign in; create a
//! token with restrictions and see it once; the token works against `/v1/verify` with those
//! restrictions; reload: the text is gone, the record stays; revoke; an XSS description renders
//! as text; the admin revokes another subject's token; a non-admin sees no admin view and the
//! API refuses it anyway; an expired credential leads back to sign in; labels, keyboard and a
//! 375 px screen. Screenshots go to `TESSERA_SCREENSHOTS` when set (docs/screenshots).

#![allow(clippy::unwrap_used)] // test fixtures: a panic is the failure report

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::serve;
use serde_json::{json, Value};

fn post(url: &str, bearer: &str, body: Value) -> Value {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let mut res = agent
        .post(url)
        .header("Content-Type", "application/json")
        .header("Authorization", &format!("Bearer {bearer}"))
        .send(body.to_string())
        .unwrap();
    assert_eq!(res.status().as_u16(), 201);
    serde_json::from_str(&res.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn the_token_page_in_a_real_browser() {
    let dir = tempfile::tempdir().unwrap();
    let (_serve, url, admin) = serve(dir.path(), &[]);
    // The page and its headers.
    let agent =
        ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().new_agent();
    let res = agent.get(&format!("{url}/ui/")).call().unwrap();
    let csp = res.headers().get("content-security-policy").unwrap().to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let root = agent.get(&format!("{url}/")).call().unwrap();
    assert_eq!(root.status().as_u16(), 302);

    let mint = |body: Value| post(&format!("{url}/v1/tokens"), &admin, body);
    let alice = mint(json!({"subject": "alice", "description": "alice's manager",
        "operations": ["read", "write", "tokens.mint", "tokens.list", "tokens.revoke"]}));
    mint(json!({"subject": "bob", "description": "bob's laptop"}));

    let shots = std::env::var_os("TESSERA_SCREENSHOTS").map(PathBuf::from);
    if let Some(s) = &shots {
        std::fs::create_dir_all(s).unwrap();
    }
    let input = dir.path().join("page.json");
    std::fs::write(
        &input,
        json!({"url": url, "admin": admin, "alice": alice["token"], "short_wait_ms": 3500, "shots": shots})
            .to_string(),
    )
    .unwrap();
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/js");
    assert!(js.join("node_modules/playwright-core").exists(), "run `make node-peers` (make test does)");
    assert!(
        std::path::Path::new(&std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()))
            .exists(),
        "Debian's chromium is missing: `make browser` installs it (make test does)"
    );
    let out = Command::new("node").arg(js.join("page.mjs")).arg(&input).current_dir(&js).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap_or(json!({}));
    assert_eq!(r["ok"], true, "{r:#}\n{}", String::from_utf8_lossy(&out.stderr));

    // Sign in, accessibility.
    assert_eq!(r["unlabelled"], json!([]), "every control has a label");
    assert_eq!(r["tab_reaches_token"], true);
    assert!(r["bad_signin_error"].as_str().unwrap().contains("Could not sign in"), "{r}");
    assert_eq!(r["who"], "Signed in as alice");
    assert!(r["me"].as_str().unwrap().contains("tokens.mint"), "{r}");
    // Created with restrictions, shown once, works as restricted.
    assert_eq!(r["created_shown"], true);
    assert_eq!(r["verify_read"], 200);
    assert_eq!(r["verify_write"], 403);
    assert_eq!(r["verify_elsewhere"], 403);
    let restrictions = r["row_restrictions"].as_str().unwrap();
    assert!(
        restrictions.contains("operations: read") && restrictions.contains("resources: docs/*"),
        "{restrictions}"
    );
    assert!(restrictions.contains("at most 10 uses per 1m"), "{restrictions}");
    // XSS: the description is text.
    assert_eq!(r["row_description"], "ci <img src=x onerror=alert(1)>");
    assert_eq!(r["img_elements"], 0);
    assert_eq!(r["alerts"], json!([]));
    assert!(r["create_error"].as_str().unwrap().contains("rate-limit"), "{r}");
    // Reload: gone, but the record stays.
    assert_eq!(r["after_reload_created_hidden"], true);
    assert_eq!(r["after_reload_text"], "");
    assert_eq!(r["after_reload_row"], 1);
    // Revoke.
    assert_eq!(r["verify_after_revoke"], 401);
    assert!(r["revoked_row_status"].as_str().unwrap().contains("revoked"), "{r}");
    // Not an admin: no admin view, and the API refuses anyway.
    assert_eq!(r["alice_admin_visible"], false);
    assert_eq!(r["alice_keys_status"], 403);
    assert_eq!(r["overflow_375"], false, "readable at 375 px");
    // The admin revokes bob's token; keys are listed.
    assert!(r["bob_status"].as_str().unwrap().contains("revoked"), "{r}");
    assert!(r["keys_rows"].as_u64().unwrap() >= 5, "a root key and four signing keys: {r}");
    // Expired credential.
    assert!(r["expired_notice"].as_str().unwrap().contains("no longer valid"), "{r}");
    assert_eq!(r["token_in_url"], false, "no token in any URL");
    assert_eq!(r["console_errors"], json!([]), "{r}");
}
