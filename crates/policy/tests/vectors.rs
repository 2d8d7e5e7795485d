//! The test vectors under `tests/vectors/`: requests and what a policy decides for them, and
//! policies that must not load, each with the line its error must name.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use std::borrow::Cow;

use tessera_policy::{Decision, DecisionRef, Error, Policy, TokenSource};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    host: String,
    method: String,
    path: String,
    expect: String,
    operation: Option<String>,
    resource: Option<String>,
}

#[test]
fn file_policy_decides_every_case() {
    let policy = Policy::load(&dir().join("files.policy.toml")).unwrap();
    assert_eq!(policy.rules(), 8);
    assert_eq!(
        policy.token_source(),
        &TokenSource { header: Some("x-api-token".into()), cookie: Some("tessera".into()) }
    );
    let text = std::fs::read_to_string(dir().join("files.cases.toml")).unwrap();
    let cases: Cases = toml::from_str(&text).unwrap();
    assert!(cases.case.len() >= 25);
    for c in &cases.case {
        let got = policy.decide(&c.host, &c.method, &c.path);
        let what = format!("{} {} {}", c.host, c.method, c.path);
        // The borrowing reading the guard uses decides exactly the same.
        let borrowed = policy.decide_ref(&c.host, &c.method, &c.path).map(DecisionRef::into_owned);
        assert_eq!(format!("{borrowed:?}"), format!("{got:?}"), "{what}");
        match c.expect.as_str() {
            "public" => assert_eq!(got.unwrap(), Decision::Public, "{what}"),
            "unmatched" => assert_eq!(got.unwrap(), Decision::Unmatched, "{what}"),
            "check" => assert_eq!(
                got.unwrap(),
                Decision::Check {
                    operation: c.operation.clone().unwrap(),
                    resource: c.resource.clone().unwrap()
                },
                "{what}"
            ),
            "error" => assert!(got.is_err(), "{what}: {got:?}"),
            other => panic!("unknown expectation {other}"),
        }
    }
}

#[test]
fn bad_policies_name_their_line() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir().join("bad")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        // First line: "# error: line N: <part of the message>"
        let want = text.lines().next().unwrap().strip_prefix("# error: line ").unwrap();
        let (line, message) = want.split_once(": ").unwrap();
        let line: usize = line.parse().unwrap();
        match Policy::from_toml(&text) {
            Err(Error::Invalid { line: got, message: m }) => {
                assert_eq!(got, line, "{}: {m}", path.display());
                assert!(m.contains(message), "{}: {m:?} lacks {message:?}", path.display());
            }
            other => panic!("{}: {other:?}", path.display()),
        }
        seen += 1;
    }
    assert!(seen >= 15);
}

#[test]
fn limits_are_enforced() {
    let mut text = String::new();
    for i in 0..=tessera_policy::MAX_RULES {
        text.push_str(&format!("[[rule]]\nhost = \"*\"\nprefix = \"/r{i}\"\n"));
    }
    match Policy::from_toml(&text) {
        Err(Error::Invalid { line, message }) => {
            assert_eq!(line, tessera_policy::MAX_RULES * 3 + 1);
            assert!(message.contains("more than"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let big = format!(
        "# {}\n[[rule]]\nhost = \"*\"\nprefix = \"/\"\n",
        "x".repeat(tessera_policy::MAX_POLICY_BYTES)
    );
    assert!(matches!(Policy::from_toml(&big), Err(Error::TooLarge { .. })));
    let d = std::env::temp_dir().join(format!("tessera-policy-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let file = d.join("big.toml");
    std::fs::write(&file, &big).unwrap();
    assert!(matches!(Policy::load(&file), Err(Error::TooLarge { .. })));
    assert!(matches!(Policy::load(&dir().join("absent.toml")), Err(Error::Read { .. })));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_root_prefix_covers_everything_of_its_host() {
    let p = Policy::from_toml("[[rule]]\nhost = \"*\"\nprefix = \"/\"\n").unwrap();
    assert_eq!(
        p.decide("h", "GET", "/").unwrap(),
        Decision::Check { operation: "read".into(), resource: "/".into() }
    );
    assert_eq!(
        p.decide("h", "PATCH", "/a/b").unwrap(),
        Decision::Check { operation: "write".into(), resource: "a/b".into() }
    );
}

#[test]
fn plain_paths_are_decided_without_copies() {
    let policy = Policy::load(&dir().join("files.policy.toml")).unwrap();
    let target = "/files/report/2026?x=1";
    match policy.decide_ref("a.example", "GET", target).unwrap() {
        DecisionRef::Check { operation: "read", resource: Cow::Borrowed(r) } => {
            assert_eq!(r, "report");
            // A slice of the request target itself.
            assert!(std::ptr::eq(r.as_ptr(), target[7..].as_ptr()));
        }
        other => panic!("{other:?}"),
    }
    match policy.decide_ref("a.example", "GET", "/files/%72eport").unwrap() {
        DecisionRef::Check { resource: Cow::Owned(r), .. } => assert_eq!(r, "report"),
        other => panic!("{other:?}"),
    }
}

/// A policy path that is not a regular file (`/dev/zero`, a device or FIFO whose metadata says
/// 0 bytes) is refused before anything is read: reading it unbounded would eat memory.
#[test]
fn policies_that_are_not_regular_files_are_refused() {
    match Policy::load(Path::new("/dev/zero")) {
        // Refused up front, not after reading until memory ran out.
        Err(Error::Read { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::InvalidInput),
        other => panic!("{other:?}"),
    }
}
