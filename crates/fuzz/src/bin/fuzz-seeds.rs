//! Write the seed corpus of every fuzz target: tokens from the test vectors and the fixture,
//! caveats, envelopes, tickets, HTTP bodies, ID tokens and exchange requests. `make fuzz-seeds`
//! runs it into `fuzz/corpus/`; files are named by the SHA-256 of their content, so running it
//! again changes nothing.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tessera_core::{envelope, Context, RootKey, Token, Verifier};
use tessera_fuzz::{fixture, fixture_token};

struct Seeds {
    root: PathBuf,
    written: usize,
}

impl Seeds {
    fn add(&mut self, target: &str, data: &[u8]) -> std::io::Result<()> {
        let dir = self.root.join(target);
        std::fs::create_dir_all(&dir)?;
        let name: String = Sha256::digest(data).iter().take(20).map(|b| format!("{b:02x}")).collect();
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(path, data)?;
            self.written += 1;
        }
        Ok(())
    }

    fn token(&mut self, t: &Token) -> std::io::Result<()> {
        self.add("v2_binary", t.to_binary())?;
        self.add("token_text", t.encode().as_bytes())?;
        self.add("token_text", STANDARD.encode(t.to_binary()).as_bytes())?;
        self.add("v2_json", t.to_json().as_bytes())
    }
}

/// Every token, V1 form and caveat in the pymacaroons vectors.
fn vectors(seeds: &mut Seeds, v: &Value) -> std::io::Result<()> {
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                match (k.as_str(), val) {
                    (k, Value::String(s)) if k.ends_with("base64url") => {
                        if let Ok(bin) = URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')) {
                            let target = if bin.first() == Some(&2) { "v2_binary" } else { "v1" };
                            seeds.add(target, &bin)?;
                        }
                        seeds.add("token_text", s.as_bytes())?;
                    }
                    ("v2_json", obj @ Value::Object(_)) => {
                        seeds.add("v2_json", obj.to_string().as_bytes())?
                    }
                    ("caveats", Value::Array(cs)) => {
                        let texts: Vec<&str> = cs.iter().filter_map(Value::as_str).collect();
                        for pair in texts.windows(2) {
                            seeds.add("caveat", format!("{}\0{}", pair[0], pair[1]).as_bytes())?;
                        }
                        for c in texts {
                            seeds.add("caveat", c.as_bytes())?;
                        }
                        vectors(seeds, val)?;
                    }
                    _ => vectors(seeds, val)?,
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                vectors(seeds, i)?;
            }
        }
        _ => {}
    }
    Ok(())
}

const CAVEATS: &[&str] = &[
    "allow read",
    "allow read write tokens.mint",
    "resource issues/*",
    "resource issues/7/* wiki/home",
    "time-before 2030-01-01T00:00:00Z",
    "time-after 2026-01-01T00:00:00+02:00",
    "client-ip 10.0.0.0/8 2001:db8::/32",
    "client-ip 192.168.1.7",
    "account 42",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args().nth(1).map_or_else(|| PathBuf::from("fuzz/corpus"), PathBuf::from);
    let mut seeds = Seeds { root, written: 0 };
    let vectors_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/macaroons-v2.json");
    vectors(&mut seeds, &serde_json::from_str(&std::fs::read_to_string(vectors_file)?)?)?;

    let f = fixture();
    for n in [0, 1, 3, CAVEATS.len() - 1] {
        seeds.token(&fixture_token(&CAVEATS[..n]))?;
    }
    let caveat_key = RootKey::new(&[1; 32])?;
    let third =
        fixture_token(&CAVEATS[..2]).add_third_party_caveat("https://idp.test", &caveat_key, b"is-admin")?;
    seeds.token(&third)?;
    for c in CAVEATS {
        seeds.add("caveat", c.as_bytes())?;
    }
    for (a, b) in [
        ("resource issues/*", "resource issues/7/*"),
        ("allow read write", "allow write"),
        ("client-ip 10.0.0.0/8", "client-ip 10.1.0.0/16"),
    ] {
        seeds.add("caveat", format!("{a}\0{b}").as_bytes())?;
    }

    // Envelopes: a real one as text (mode 0) and its claims (mode 1).
    let t = fixture_token(&CAVEATS[..4]);
    let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000)?;
    let ctx = Context::deferring_scope(now);
    let v = Verifier::with_keys(&f.keys).verify(&t, &[], &ctx)?;
    let jwt = envelope::issue(
        &v,
        &f.secret.envelope_key(),
        "https://tessera.test",
        now,
        time::Duration::minutes(5),
    )?;
    seeds.add("envelope", [b"\0", jwt.as_bytes()].concat().as_slice())?;
    if let Some(claims) = jwt.split('.').nth(1).and_then(|c| URL_SAFE_NO_PAD.decode(c).ok()) {
        seeds.add("envelope", [b"\x01", claims.as_slice()].concat().as_slice())?;
    }

    // Tickets: a sealed one (mode 0) and a plaintext body (mode 1): CBOR {ck, cond, tid}.
    if let Some(sealed) = tessera_server::fuzzing::seal_ticket(f.kid, &f.secret, f.tid) {
        seeds.add("ticket", [b"\0", sealed.as_slice()].concat().as_slice())?;
    }
    let mut body = vec![0x01, 0xa3, 0x62, b'c', b'k', 0x58, 0x20];
    body.extend_from_slice(&[7; 32]);
    body.extend_from_slice(&[0x64, b'c', b'o', b'n', b'd', 0x6b]);
    body.extend_from_slice(b"not-revoked");
    body.extend_from_slice(&[0x63, b't', b'i', b'd', 0x90]);
    body.extend_from_slice(&[3; 16]);
    seeds.add("ticket", &body)?;

    // HTTP bodies.
    let token = fixture_token(&CAVEATS[..4]).encode();
    for b in [
        json!({"token": token}),
        json!({"token": token, "context": {"operation": "read", "resource": "issues/7/1", "time": "2027-01-01T00:00:00Z"}}),
        json!({"token": token, "discharges": [], "context": {"client_ip": "10.1.2.3"}}),
        json!({"token": third.encode(), "discharges": [third.encode()]}),
    ] {
        seeds.add("http_verify", b.to_string().as_bytes())?;
    }
    for b in [
        json!({}),
        json!({"subject": "alice", "description": "ci", "ttl": "6h", "operations": ["read"], "resources": ["issues/*"], "client_ips": ["10.0.0.0/8"], "revocable": true}),
        json!({"ttl": "90d", "operations": ["tokens.mint", "tokens.list"]}),
    ] {
        seeds.add("http_mint", b.to_string().as_bytes())?;
    }
    // ID tokens and exchange requests (their encodings are described in tessera_fuzz::exchange).
    for (target, data) in tessera_fuzz::exchange::seeds() {
        seeds.add(target, &data)?;
    }
    println!("wrote {} new seed files under {}", seeds.written, seeds.root.display());
    Ok(())
}
