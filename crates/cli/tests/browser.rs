//! The token page in a real headless Chromium (Debian's `chromium`, driven by npm
//! `playwright-core` with no browser download; `make test` installs both): sign in; create a
//! token with restrictions and see it once; the token works against `/v1/verify` with those
//! restrictions, which the page states in one line of words (the layers on demand); reload: the
//! text is gone, the record stays; revoke; an XSS description renders as text; the admin filters,
//! revokes and hides another subject's token; a non-admin sees no admin view and the API refuses
//! it anyway; an expired credential leads back to sign in, a bad first sign-in does not say so;
//! the "expires soon" badge follows the token's lifetime; labels, keyboard, `change` events and
//! a 375 px screen for both views. Screenshots go to `TESSERA_SCREENSHOTS` when set
//! (`TESSERA_SCREENSHOTS=docs/screenshots`, relative to the workspace).

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
    let alice = mint(json!({"subject": "alice", "description": "alice's manager", "ttl": "30d",
        "operations": ["read", "write", "tokens.mint", "tokens.list", "tokens.revoke"]}));
    mint(json!({"subject": "bob", "description": "bob's laptop"}));
    mint(json!({"subject": "bob", "description": "bob's phone"}));

    // Relative to the workspace (cargo runs tests in the crate's directory, node in the js one).
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = std::env::var_os("TESSERA_SCREENSHOTS").map(|s| {
        let s = workspace.join(s);
        std::fs::create_dir_all(&s).unwrap();
        s.canonicalize().unwrap()
    });
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
    // A bad first sign-in: its reason, not the notice for a credential lost mid-session, and
    // the pasted text kept; a good one clears the field.
    assert!(r["bad_signin_error"].as_str().unwrap().contains("Could not sign in"), "{r}");
    assert_eq!(r["bad_signin_notice_visible"], false, "no 'no longer valid' on a first sign-in: {r}");
    assert_eq!(r["bad_signin_kept"], "not-a-token");
    assert_eq!(r["signin_field_after"], "");
    assert_eq!(r["who"], "Signed in as alice");
    assert!(r["me"].as_str().unwrap().contains("tokens.mint"), "{r}");
    // Created with restrictions, shown once, works as restricted.
    assert_eq!(r["created_shown"], true);
    assert_eq!(r["verify_read"], 200);
    assert_eq!(r["verify_write"], 403);
    assert_eq!(r["verify_elsewhere"], 403);
    // Its restrictions: the effective ones first in one line (alice's `allow read write ...`
    // folded with the child's `allow read`), the layers in a closed <details>.
    let effective = r["row_effective"].as_str().unwrap_or_else(|| panic!("no effective line: {r}"));
    assert!(effective.starts_with("read on docs/*, 10 uses per minute, until "), "{effective}");
    assert!(!effective.contains("write") && !effective.contains("tokens."), "{effective}");
    let layers = r["row_layers"].as_str().unwrap();
    assert!(layers.contains("operations: read, write") && layers.contains("resources: docs/*"), "{layers}");
    assert_eq!(r["row_layers_open"], false, "layers on demand");
    let week = r["week_effective"].as_str().unwrap();
    assert!(week.starts_with("read on docs/* from 127.0.0.0/8, 50 uses per minute, until "), "{week}");
    // The page's folding agrees with the service's (/v1/whoami, signed in as that token).
    assert_eq!(r["week_me_effective"], r["week_effective"], "{r}");
    // A fresh 7-day token is not "expiring soon"; in its last quarter it is; expired, it has
    // nothing to revoke.
    assert_eq!(r["row_soon_badges"], 0, "a fresh 7-day token is not badged: {r}");
    assert_eq!(r["week_soon_later"], 1, "{r}");
    assert!(r["week_status_expired"].as_str().unwrap().contains("expired"), "{r}");
    assert_eq!(r["week_expired_buttons"], 0, "no Revoke on an expired row");
    // Each Revoke button is named after its token.
    assert_eq!(r["row_revoke_named"], 1, "{r}");
    // Sorting follows a `change` event alone.
    let before: Vec<String> = serde_json::from_value(r["order_before"].clone()).unwrap();
    let by_description: Vec<String> = serde_json::from_value(r["order_by_description"].clone()).unwrap();
    let mut sorted = before.clone();
    sorted.sort();
    assert_ne!(before, sorted, "created order differs from description order: {r}");
    assert_eq!(by_description, sorted, "{r}");
    // Inputs fill the form (a resource list is long), at 1200 px.
    assert!(r["resources_input_width"].as_f64().unwrap() >= 400.0, "{r}");
    assert!(r["admin_subject_width"].as_f64().unwrap() >= 400.0, "{r}");
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
    assert_eq!(r["revoked_row_buttons"], 0, "no Revoke on a revoked row");
    // Her activity: the token's creation and revocation (newest first), nothing of bob's.
    assert_eq!(r["activity_made"], 1, "{r}");
    assert_eq!(r["activity_revoked"], 1, "{r}");
    assert_eq!(r["activity_first_kind"], "token.revoke", "newest first: {r}");
    assert_eq!(r["activity_mentions_bob"], false, "{r}");
    // Not an admin: no admin view, and the API refuses anyway.
    assert_eq!(r["alice_admin_visible"], false);
    assert_eq!(r["alice_keys_status"], 403);
    assert_eq!(r["overflow_375"], false, "readable at 375 px");
    // The admin filters bob's tokens, revokes one (hidden until asked for); keys are listed.
    assert_eq!(r["bob_rows"], 2);
    assert_eq!(r["bob_filtered"], json!(["bob's phone"]), "{r}");
    assert_eq!(r["bob_revoked_hidden"], true, "{r}");
    assert!(r["bob_status"].as_str().unwrap().contains("revoked"), "{r}");
    assert_eq!(r["bob_revoked_buttons"], 0);
    assert_eq!(r["controls_reset"], true, "signing out resets the list controls");
    assert!(r["keys_rows"].as_u64().unwrap() >= 5, "a root key and four signing keys: {r}");
    // The admin's audit trail filtered by kind: revocations only, bob's laptop's among them.
    assert_eq!(r["audit_kinds"], json!(["token.revoke"]), "{r}");
    assert_eq!(r["audit_has_laptop"], 1, "{r}");
    assert_eq!(r["admin_overflow_375"], false, "the admin view is readable at 375 px");
    // Expired credential.
    assert!(r["expired_notice"].as_str().unwrap().contains("no longer valid"), "{r}");
    assert_eq!(r["token_in_url"], false, "no token in any URL");
    assert_eq!(r["console_errors"], json!([]), "{r}");
}
