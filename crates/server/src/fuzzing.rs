//! Entry points for the fuzz targets (`crates/fuzz`, `fuzz/`): the service's own code paths for
//! request bodies, login exchanges and discharge tickets, without HTTP. Not a stable API.

use std::path::Path;
use std::time::Duration;

use tessera_core::{KeyId, KeyProvider, RootKey, TokenId};

use crate::config::Config;
use crate::exchange::{admit, ask, cached_key, Exchange};
use crate::http::problem::ApiError;
use crate::mint::Inheritance;
use crate::routes::tokens::{mint_spec, MintRequest};
use crate::routes::verify::{verify_request, VerifyRequest};
use crate::spec::check_subject;
use crate::ticket;

/// A `POST /v1/verify` body as the handler treats it: JSON, then decode and verify with `keys`
/// (the service passes its store). `Ok` holds the answer's JSON; `Err` its status code.
pub fn verify_body(keys: &dyn KeyProvider, body: &[u8]) -> Result<Vec<u8>, u16> {
    let req: VerifyRequest = serde_json::from_slice(body).map_err(|_| 400u16)?;
    verify_request(keys, req).map_err(|e: ApiError| e.status().as_u16())
}

/// A `POST /v1/tokens` body as the handler checks it (for a caller with no caveats of its own),
/// up to the mint itself: the caveats it would carry, or the error status.
pub fn mint_body(config: &Config, body: &[u8]) -> Result<Vec<String>, u16> {
    let req: MintRequest = serde_json::from_slice(body).map_err(|_| 400u16)?;
    check_subject(req.subject()).map_err(|e| e.status().as_u16())?;
    let subject = req.subject().unwrap_or("fuzz").to_owned();
    let inherited = Inheritance { caveats: Vec::new(), revocable: false, claims: None };
    let spec = mint_spec(config, req, subject, inherited, None, true).map_err(|e| e.status().as_u16())?;
    Ok(spec.caveats)
}

/// Open `data` as a discharge ticket with `secret`: `Some((condition, tid))` when it opens.
pub fn open_ticket(data: &[u8], secret: &RootKey) -> Option<(String, TokenId)> {
    ticket::open(data, secret).map(|t| (t.condition.clone(), t.tid))
}

/// Seal a ticket for `tid` (what a revocable token carries), for seeds and round trips.
pub fn seal_ticket(kid: KeyId, secret: &RootKey, tid: TokenId) -> Option<Vec<u8>> {
    ticket::seal(kid, secret, tid).ok().map(|(cid, _)| cid)
}

/// Seal arbitrary bytes as a ticket's plaintext (so the fuzzer reaches the body's decoding,
/// which the cipher otherwise guards), then open it.
pub fn open_sealed_plaintext(kid: KeyId, secret: &RootKey, plaintext: &[u8]) -> Option<(String, TokenId)> {
    let sealed = ticket::seal_raw(kid, secret, plaintext).ok()?;
    open_ticket(&sealed, secret)
}

/// Trusted issuers for the exchange target: an issuers file whose `jwks_file`s all stand for one
/// JWKS given inline, so keys are never fetched.
#[derive(Debug)]
pub struct ExchangeFixture {
    exchange: Exchange,
    admin_subject: String,
}

impl ExchangeFixture {
    /// Check `issuers` (the trusted issuers file's text) as the service does at start, every
    /// `jwks_file` reading as `jwks`; `admin_subject` as `--admin-subject`.
    pub fn new(issuers: &str, jwks: &str, admin_subject: &str) -> Result<Self, String> {
        let read = |_: &Path| Ok(jwks.to_owned());
        let exchange = Exchange::parse(issuers, "fuzz", Duration::from_secs(90 * 86_400), &read)?;
        Ok(ExchangeFixture { exchange, admin_subject: admin_subject.to_owned() })
    }
}

/// What an exchange would issue.
#[derive(Debug)]
pub struct Exchanged {
    /// The subject it would be for.
    pub subject: String,
    /// A session (else a Tessera token).
    pub session: bool,
    /// The custom claims copied from the ID token.
    pub claims: Option<serde_json::Map<String, serde_json::Value>>,
}

/// A `POST /v1/exchange` body (JSON when `json`, else a form) through the handler's own steps at
/// `now`, up to what it would issue (the key from the fixture's JWKS, never fetched): `Ok` says
/// for whom and what; `Err` is the answer's status.
pub fn exchange_body(
    fixture: &ExchangeFixture,
    json: bool,
    body: &[u8],
    now: time::OffsetDateTime,
) -> Result<Exchanged, u16> {
    let status = |e: ApiError| e.status().as_u16();
    let asked = ask(&fixture.exchange, json, body).map_err(status)?;
    let key = cached_key(&fixture.exchange, &asked).map_err(status)?;
    let admitted = admit(&fixture.exchange, &asked, key, now, &fixture.admin_subject).map_err(status)?;
    Ok(Exchanged {
        session: admitted.issues_session(),
        claims: admitted.custom.as_ref().map(|c| c.as_map().clone()),
        subject: admitted.subject,
    })
}
