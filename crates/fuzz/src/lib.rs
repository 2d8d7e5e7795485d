//! The bodies of Tessera's fuzz targets, one function per target, each taking the fuzzer's bytes.
//!
//! A target panics only on a finding: besides "never panics", each one asserts a property of
//! what it parsed (canonical re-encoding, round trips, folded restrictions that agree with the
//! caveats checked one by one, a remembered token answering like a fresh one, an envelope that never allows what its `cap` denies, a verify
//! answer that is well-formed, an ID token accepted only when it meets every rule, an exchange
//! that never names a reserved subject nor issues more than its template). The cargo-fuzz crate in `fuzz/` runs them under libFuzzer
//! (`make fuzz`); `tests/replay.rs` runs the committed corpus through them in `make test`.
//!
//! ```
//! // Every target accepts any bytes.
//! for (_, target) in tessera_fuzz::TARGETS {
//!     target(b"\x02\x00garbage");
//! }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod exchange;

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use tessera_core::caveat::resource_matches;
use tessera_core::{
    envelope, Caveat, Context, Identifier, KeyId, Predicate, Restrictions, RootKey, SignatureMemo, StaticKeys,
};
use tessera_core::{Token, TokenId, Verifier};
use time::OffsetDateTime;

/// A target's body: takes the fuzzer's bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// Every target: (name, body). The names are the directories of `fuzz/corpus/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("v2_binary", v2_binary),
    ("v1", v1),
    ("v2_json", v2_json),
    ("token_text", token_text),
    ("caveat", caveat),
    ("envelope", envelope_decode),
    ("ticket", ticket),
    ("http_verify", http_verify),
    ("http_mint", http_mint),
    ("id_token", exchange::id_token),
    ("http_exchange", exchange::http_exchange),
];

/// The fixed key, key id and token id the targets (and their seeds) use.
pub struct Fixture {
    /// Root key of [`Fixture::kid`].
    pub secret: RootKey,
    /// Its key id.
    pub kid: KeyId,
    /// A token family id.
    pub tid: TokenId,
    /// The key provider a verifier of the fixture's tokens uses.
    pub keys: StaticKeys,
}

/// The fixture, built once per process.
pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let secret = RootKey::new(&[0x5a; 32]).unwrap_or_else(|_| unreachable!("32 bytes"));
        let kid = KeyId::from_bytes(*b"fuzzkid1");
        let mut keys = StaticKeys::new();
        keys.insert(kid, secret.clone());
        Fixture { secret, kid, tid: TokenId::from_bytes(*b"fuzz-token-id-01"), keys }
    })
}

/// A Tessera token of the fixture with `caveats` (for seeds and the HTTP targets).
pub fn fixture_token(caveats: &[&str]) -> Token {
    let f = fixture();
    let id = Identifier::new(f.kid, f.tid, "fuzz").unwrap_or_else(|_| unreachable!("short subject"));
    let mut t =
        Token::mint_tessera(Some("https://tessera.test"), &f.secret, &id).unwrap_or_else(|_| unreachable!());
    for c in caveats {
        t = t.attenuate(c).unwrap_or_else(|_| unreachable!("seed caveats are valid"));
    }
    t
}

fn when() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap_or_else(|_| unreachable!())
}

/// Parsed tokens re-encode to the same token in every format, and verifying never panics.
fn round_trips(t: &Token) {
    let bin = t.to_binary();
    let again = Token::from_binary(bin).expect("a token's own binary parses");
    assert_eq!(again.to_binary(), bin, "binary round trip");
    let text = Token::decode(&t.encode()).expect("a token's own text parses");
    assert_eq!(text.to_binary(), bin, "text round trip");
    let json = Token::decode(&t.to_json()).expect("a token's own JSON parses");
    assert_eq!(json.identifier(), t.identifier());
    assert_eq!(json.signature(), t.signature());
    assert!(json.caveats().eq(t.caveats()), "JSON round trip changed the caveats");
    let f = fixture();
    let ctx = Context::at(when()).operation("read").resource("issues/1");
    let _ = Verifier::with_keys(&f.keys).verify(t, &[], &ctx);
}

/// V2 binary: a token is accepted only in its one canonical encoding.
pub fn v2_binary(data: &[u8]) {
    if data.first() != Some(&2) {
        return;
    }
    if let Ok(t) = Token::from_binary(data) {
        assert_eq!(t.to_binary(), data, "V2 binary accepted in a non-canonical form");
        round_trips(&t);
    }
}

/// V1 binary (read only): whatever parses becomes a V2 token that round-trips.
pub fn v1(data: &[u8]) {
    if data.first() == Some(&2) {
        return;
    }
    if let Ok(t) = Token::from_binary(data) {
        round_trips(&t);
    }
}

/// V2 JSON (and V1 JSON): whatever parses round-trips.
pub fn v2_json(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if !text.trim_start().starts_with('{') {
        return;
    }
    if let Ok(t) = Token::decode(text) {
        round_trips(&t);
    }
}

/// Token text in any form (base64 of either alphabet, padded or not, or JSON).
pub fn token_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(t) = Token::decode(text) {
        round_trips(&t);
    }
}

/// Request contexts to check caveats against: fixed ones plus one per word of the caveats (and
/// names under and beside each pattern), so the interesting boundaries are reached.
fn contexts(caveats: &[&str]) -> Vec<Context> {
    let mut resources: Vec<String> = ["issues/1", "issues/../admin/x", "issues/%2e%2e/x", "a", "*", ""]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for c in caveats {
        for w in c.split(' ').skip(1) {
            resources.push(w.to_owned());
            if let Some(prefix) = w.strip_suffix('*') {
                resources.push(format!("{prefix}x"));
                resources.push(format!("{prefix}x/y"));
                resources.push(format!("{prefix}../x"));
            }
        }
    }
    let times = [when(), OffsetDateTime::UNIX_EPOCH, when() + time::Duration::days(36_500)];
    let ips = ["10.1.2.3", "::1", "192.168.0.1", "2001:db8::7"];
    let mut out = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        let ctx = Context::at(times[i % times.len()])
            .operation(caveats.first().and_then(|c| c.split(' ').nth(1)).unwrap_or("read"))
            .resource(r.clone())
            .client_ip(ips[i % ips.len()].parse().unwrap_or_else(|_| unreachable!()));
        out.push(ctx.clone().operation("read"));
        out.push(ctx);
    }
    out
}

/// The caveat language: one or two caveats (split at the first NUL). For well-formed built-in
/// caveats, the folded [`Restrictions`] (what a JWT envelope carries) decide every context
/// exactly as checking the caveats one by one does.
pub fn caveat(data: &[u8]) {
    let mut parts = data.splitn(2, |b| *b == 0);
    let cids: Vec<&[u8]> = parts.by_ref().collect();
    let mut preds = Vec::new();
    for cid in &cids {
        let _ = Predicate::parse(cid);
        match Predicate::validate(cid) {
            Ok(Predicate::Other(_)) | Err(_) => return,
            Ok(p) => preds.push(p),
        }
    }
    let texts: Vec<&str> = cids.iter().filter_map(|c| std::str::from_utf8(c).ok()).collect();
    let mut folded = Restrictions::default();
    for p in &preds {
        folded.add(p);
    }
    for ctx in contexts(&texts) {
        let direct = preds.iter().all(|p| p.check(&ctx).is_ok());
        assert_eq!(folded.check(&ctx).is_ok(), direct, "folded {folded:?} disagrees on {:?}", ctx.resource);
    }
    remembered_like_fresh(&texts);
}

/// A token with `caveats`, verified through a signature memo context after context (a hit once
/// one succeeded), answers exactly as a fresh verification of it does.
fn remembered_like_fresh(caveats: &[&str]) {
    let f = fixture();
    let mut t = fixture_token(&[]);
    for c in caveats {
        match t.attenuate(c) {
            Ok(next) => t = next,
            Err(_) => return,
        }
    }
    let text = t.encode();
    let memo = SignatureMemo::default();
    let remembering = Verifier::with_keys(&f.keys).service_caveats().memo(&memo);
    let plain = Verifier::with_keys(&f.keys).service_caveats();
    for ctx in contexts(caveats) {
        let fresh = plain.verify(&t, &[], &ctx).map(|v| v.restrictions());
        let via = remembering.verify_text(&text, &ctx).map(|v| v.restrictions().clone());
        assert_eq!(via, fresh, "the signature memo disagrees on {ctx:?}");
    }
}

/// The HS256 header of the fixture's envelopes (taken from a real one).
fn envelope_header() -> &'static str {
    static H: OnceLock<String> = OnceLock::new();
    H.get_or_init(|| {
        let f = fixture();
        let t = fixture_token(&[]);
        let v = Verifier::with_keys(&f.keys)
            .verify(&t, &[], &Context::at(when()))
            .unwrap_or_else(|_| unreachable!());
        let jwt = envelope::issue(
            &v,
            &f.secret.envelope_key(),
            "https://tessera.test",
            when(),
            time::Duration::minutes(5),
        )
        .unwrap_or_else(|_| unreachable!());
        jwt.split('.').next().unwrap_or_default().to_owned()
    })
}

/// JWT envelope decoding. Mode byte 0: the rest is the compact JWT text. Mode 1: the rest is the
/// claims JSON, signed with the fixture's envelope key (so the claims parser and `cap` checks are
/// reached): a decoded envelope never allows a request its `cap` denies.
pub fn envelope_decode(data: &[u8]) {
    let f = fixture();
    let key = f.secret.envelope_key();
    let key_for = |k: &KeyId| (*k == f.kid).then(|| key.clone());
    let Some((&mode, rest)) = data.split_first() else { return };
    let jwt = match mode % 2 {
        0 => match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
        _ => {
            use hmac::{KeyInit, Mac};
            let input = format!("{}.{}", envelope_header(), URL_SAFE_NO_PAD.encode(rest));
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.expose_secret())
                .unwrap_or_else(|_| unreachable!());
            m.update(input.as_bytes());
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
        }
    };
    for ctx in contexts(&[]) {
        if let Ok(claims) = envelope::decode(&jwt, key_for, "https://tessera.test", &ctx) {
            assert!(claims.exp > ctx.time.unix_timestamp(), "expired envelope accepted");
            if let (Some(ops), Some(op)) = (&claims.cap.allow, &ctx.operation) {
                assert!(ops.contains(op), "operation outside cap accepted");
            }
            if let (Some(rs), Some(r)) = (&claims.cap.resource, &ctx.resource) {
                assert!(rs.iter().any(|p| resource_matches(p, r)), "resource outside cap accepted");
                assert!(!rs.iter().any(|p| tessera_core::caveat::has_dot_segment(p)), "dot segment in cap");
            }
        }
    }
}

/// Discharge tickets. Mode byte 0: open the rest as a ticket. Mode 1: seal the rest as a
/// ticket's plaintext and open it (reaching the body's decoding behind the cipher).
pub fn ticket(data: &[u8]) {
    let f = fixture();
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 2 {
        0 => {
            let _ = tessera_server::fuzzing::open_ticket(rest, &f.secret);
        }
        _ => {
            let _ = tessera_server::fuzzing::open_sealed_plaintext(f.kid, &f.secret, rest);
        }
    }
}

/// `POST /v1/verify` bodies through the handler's own code: an answer is well-formed JSON that
/// says `valid: true` for the fixture's token family.
pub fn http_verify(data: &[u8]) {
    let f = fixture();
    if let Ok(answer) = tessera_server::fuzzing::verify_body(&f.keys, data) {
        let v: serde_json::Value = serde_json::from_slice(&answer).expect("verify answers JSON");
        assert_eq!(v["valid"], true);
        assert_eq!(v["tid"], f.tid.to_string());
    }
}

/// `POST /v1/tokens` bodies through the handler's checks: whatever is accepted is a list of
/// well-formed caveats a token can carry, ending in what was asked for.
pub fn http_mint(data: &[u8]) {
    static CONFIG: OnceLock<tessera_server::Config> = OnceLock::new();
    let config = CONFIG.get_or_init(|| tessera_server::Config::for_data_dir("/nonexistent"));
    if let Ok(caveats) = tessera_server::fuzzing::mint_body(config, data) {
        let mut t = fixture_token(&[]);
        for c in &caveats {
            t = t.attenuate(c).expect("accepted caveats attenuate");
        }
        assert_eq!(t.caveats().filter(|c| matches!(c, Caveat::FirstParty(_))).count(), caveats.len());
    }
}
