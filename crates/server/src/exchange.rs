//! Login exchange, shaped like RFC 8693 token exchange: `POST /v1/exchange` takes an ID token
//! (or another JWT) from a configured trusted issuer and returns a Tessera token or a session
//! for its `sub`, built from the issuer's template.
//!
//! Trusted issuers come from the JSON file named by `--exchange-config` (docs/SESSIONS.md): each
//! has its issuer URL, this service's client id at it (`audience`), its JWKS (a URL fetched and
//! cached, refetched at most every [`REFETCH`] for an unknown `kid`; or a file), the algorithms
//! allowed (ES256, EdDSA), a clock leeway, and the template.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tessera_core::envelope::{verify_id_token, Algorithm, IdTokenRules, PublicKey, VerifyKey};
use tessera_core::{CustomClaims, REGISTERED_CLAIMS};

use crate::api::{blocking, check_subject, lifetime, restriction_caveats};
use crate::mint::{mint, Inheritance, MintSpec};
use crate::problem::ApiError;
use crate::sessions::{plan, start, NewSessionRequest, Strategy};
use crate::AppState;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// RFC 8693's grant type.
pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token types accepted.
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Issued token types: a session (its access token is a JWT) or a Tessera token.
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A Tessera token (a macaroon), for `requested_token_type`.
pub(crate) const TESSERA_TOKEN: &str = "urn:tessera:params:oauth:token-type:tessera";
/// Shortest time between two fetches of an issuer's JWKS (for an unknown `kid`).
const REFETCH: Duration = Duration::from_secs(30);
/// Largest JWKS document read.
const MAX_JWKS: u64 = 256 * 1024;

/// The trusted issuers file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    issuers: Vec<IssuerConfig>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
struct IssuerConfig {
    issuer: String,
    audience: String,
    jwks_url: Option<String>,
    jwks_file: Option<PathBuf>,
    algorithms: Vec<String>,
    #[serde(default)]
    leeway: Option<String>,
    #[serde(default)]
    subject_prefix: String,
    template: Template,
}

/// What a login gets.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
struct Template {
    /// `session` or `token` (the default when the request does not say).
    #[serde(default)]
    issue: Issue,
    operations: Option<Vec<String>>,
    resources: Option<Vec<String>>,
    client_ips: Option<Vec<String>>,
    /// Lifetime of a Tessera token.
    ttl: Option<String>,
    /// Claims of the subject token copied into the custom claims, by name.
    #[serde(default)]
    claims: Vec<String>,
    /// For sessions.
    app: Option<String>,
    alg: Option<String>,
    access_ttl: Option<String>,
    refresh_ttl: Option<String>,
    strategy: Option<Strategy>,
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Issue {
    #[default]
    Token,
    Session,
}

/// One trusted issuer, checked, with its JWKS cache.
#[derive(Debug)]
struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    leeway: Duration,
    keys: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    by_kid: HashMap<String, PublicKey>,
    fetched: Option<Instant>,
}

/// The configured issuers.
#[derive(Debug)]
pub struct Exchange {
    issuers: Vec<Issuer>,
}

impl Exchange {
    /// Read and check the trusted issuers file: every mistake is an error naming the issuer.
    pub fn load(path: &Path, max_ttl: Duration) -> std::result::Result<Exchange, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: File = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut issuers = Vec::new();
        for c in file.issuers {
            let name = c.issuer.clone();
            let bad = |why: String| format!("{}: issuer \"{name}\": {why}", path.display());
            if c.issuer.is_empty() || issuers.iter().any(|i: &Issuer| i.config.issuer == c.issuer) {
                return Err(bad("issuer must be non-empty and listed once".into()));
            }
            if c.audience.is_empty() {
                return Err(bad("audience (this service's client id at the issuer) is required".into()));
            }
            if c.jwks_url.is_some() == c.jwks_file.is_some() {
                return Err(bad("give exactly one of jwks_url and jwks_file".into()));
            }
            let mut algorithms = Vec::new();
            for a in &c.algorithms {
                match Algorithm::from_name(a) {
                    Some(alg @ (Algorithm::Es256 | Algorithm::EdDsa)) => algorithms.push(alg),
                    _ => {
                        return Err(bad(format!(
                            "algorithm \"{a}\" is not offered for ID tokens (ES256, EdDSA)"
                        )))
                    }
                }
            }
            if algorithms.is_empty() {
                return Err(bad("algorithms must name at least one of ES256, EdDSA".into()));
            }
            let leeway = match &c.leeway {
                None => Duration::from_secs(60),
                Some(l) => humantime::parse_duration(l).map_err(|e| bad(format!("leeway: {e}")))?,
            };
            let t = &c.template;
            if let Some(name) = t.claims.iter().find(|n| REGISTERED_CLAIMS.contains(&n.as_str())) {
                return Err(bad(format!("template claim \"{name}\" is a registered claim")));
            }
            restriction_caveats(&t.operations, &t.resources, &t.client_ips)
                .map_err(|e| bad(e.detail().to_owned()))?;
            lifetime("ttl", t.ttl.as_deref(), Duration::from_secs(3600), max_ttl)
                .map_err(|e| bad(e.detail().to_owned()))?;
            let mut keys = Keys::default();
            if let Some(file) = &c.jwks_file {
                let text =
                    std::fs::read_to_string(file).map_err(|e| bad(format!("{}: {e}", file.display())))?;
                let doc: Value =
                    serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", file.display())))?;
                keys.by_kid = parse_jwks(&doc).map_err(bad)?;
            }
            issuers.push(Issuer { config: c, algorithms, leeway, keys: Mutex::new(keys) });
        }
        Ok(Exchange { issuers })
    }
}

/// The public keys of a JWKS with a `kid` (keys of other types are skipped).
fn parse_jwks(doc: &Value) -> std::result::Result<HashMap<String, PublicKey>, String> {
    let keys = doc["keys"].as_array().ok_or("the JWKS has no \"keys\" array")?;
    Ok(keys
        .iter()
        .filter_map(|k| Some((k["kid"].as_str()?.to_owned(), PublicKey::from_jwk(k).ok()?)))
        .collect())
}

fn fetch_jwks(url: &str) -> std::result::Result<HashMap<String, PublicKey>, String> {
    let agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(5))).build().new_agent();
    let mut res = agent.get(url).call().map_err(|e| format!("fetching the JWKS {url}: {e}"))?;
    let text = res
        .body_mut()
        .with_config()
        .limit(MAX_JWKS)
        .read_to_string()
        .map_err(|e| format!("reading the JWKS {url}: {e}"))?;
    let doc: Value = serde_json::from_str(&text).map_err(|e| format!("the JWKS {url} is not JSON: {e}"))?;
    parse_jwks(&doc)
}

impl Issuer {
    /// The key a `kid` names: from the cache, or after a refetch of the JWKS URL (at most every
    /// [`REFETCH`]).
    fn key(&self, kid: &str) -> Result<PublicKey> {
        let stale = {
            let keys = self.keys.lock().map_err(|_| ApiError::internal("JWKS cache poisoned"))?;
            if let Some(k) = keys.by_kid.get(kid) {
                return Ok(*k);
            }
            keys.fetched.is_none_or(|t| t.elapsed() >= REFETCH)
        };
        if let (Some(url), true) = (&self.config.jwks_url, stale) {
            let fetched = fetch_jwks(url).map_err(ApiError::unavailable)?;
            let mut keys = self.keys.lock().map_err(|_| ApiError::internal("JWKS cache poisoned"))?;
            keys.by_kid = fetched;
            keys.fetched = Some(Instant::now());
            if let Some(k) = keys.by_kid.get(kid) {
                return Ok(*k);
            }
        }
        Err(ApiError::unauthorized(format!(
            "kid \"{kid:.80}\" is not in the JWKS of issuer \"{}\"",
            self.config.issuer
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExchangeRequest {
    grant_type: String,
    subject_token: String,
    subject_token_type: String,
    requested_token_type: Option<String>,
    /// Ignored (RFC 8693 optional parameters this service has no use for).
    #[allow(dead_code)]
    audience: Option<String>,
    #[allow(dead_code)]
    scope: Option<String>,
}

/// The `iss` of a JWT, unverified (only to choose which issuer's keys verify it).
fn claimed_issuer(jwt: &str) -> Option<String> {
    use base64::Engine;
    let payload = jwt.split('.').nth(1)?;
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v["iss"].as_str().map(str::to_owned)
}

/// A form (RFC 8693's encoding) or JSON body.
fn parse_body(req: &HttpRequest, body: &[u8]) -> Result<ExchangeRequest> {
    let json = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if json {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))
    }
}

pub(crate) async fn exchange(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    state.store.check_fresh()?;
    let Some(exchange) = state.exchange.as_ref() else {
        return Err(ApiError::not_found("no trusted issuers are configured (--exchange-config)"));
    };
    let r = parse_body(&req, &body)?;
    if r.grant_type != GRANT_TYPE {
        return Err(ApiError::bad_request(format!("grant_type must be {GRANT_TYPE}")));
    }
    if r.subject_token_type != ID_TOKEN && r.subject_token_type != JWT {
        return Err(ApiError::bad_request(format!("subject_token_type must be {ID_TOKEN} or {JWT}")));
    }
    let iss = claimed_issuer(&r.subject_token)
        .ok_or_else(|| ApiError::unauthorized("subject_token is not a JWT with an iss claim"))?;
    let issuer = exchange
        .issuers
        .iter()
        .position(|i| i.config.issuer == iss)
        .ok_or_else(|| ApiError::unauthorized(format!("issuer \"{iss:.200}\" is not trusted")))?;
    // Verification may fetch the issuer's JWKS: off the async workers.
    let st = state.clone();
    let token = r.subject_token.clone();
    let claims = blocking(move || {
        let Some(i) = st.exchange.as_ref().and_then(|x| x.issuers.get(issuer)) else {
            return Err(ApiError::internal("issuer vanished"));
        };
        let rules = IdTokenRules {
            issuer: &i.config.issuer,
            audience: &i.config.audience,
            algorithms: &i.algorithms,
            now: time::OffsetDateTime::now_utc(),
            leeway: time::Duration::try_from(i.leeway).map_err(ApiError::internal)?,
        };
        // The key lookup answers in ApiError terms; carry its detail through the core's error.
        let lookup = |kid: &str| {
            i.key(kid)
                .map(VerifyKey::Public)
                .map_err(|e| tessera_core::Error::Envelope(e.detail().to_owned()))
        };
        verify_id_token(&token, lookup, &rules)
            .map_err(|e| ApiError::unauthorized(format!("subject_token: {e}")))
    })
    .await?;
    let i = &exchange.issuers[issuer];
    let t = &i.config.template;
    let sub = claims["sub"].as_str().unwrap_or_default();
    let subject = format!("{}{sub}", i.config.subject_prefix);
    check_subject(Some(&subject))?;
    let copied: Map<String, Value> =
        t.claims.iter().filter_map(|n| claims.get(n).map(|v| (n.clone(), v.clone()))).collect();
    let custom = (!copied.is_empty())
        .then(|| CustomClaims::new(copied))
        .transpose()
        .map_err(|e| ApiError::unauthorized(format!("subject_token claims: {e}")))?;
    let issue = match r.requested_token_type.as_deref() {
        None => t.issue,
        Some(ACCESS_TOKEN) => Issue::Session,
        Some(TESSERA_TOKEN) => Issue::Token,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "requested_token_type \"{other:.100}\" is not offered ({ACCESS_TOKEN} for a session, {TESSERA_TOKEN} for a Tessera token)"
            )))
        }
    };
    state.metrics.exchanges.inc();
    match issue {
        Issue::Session => {
            let body = NewSessionRequest {
                subject: Some(subject.clone()),
                app: t.app.clone(),
                alg: t.alg.clone(),
                access_ttl: t.access_ttl.clone(),
                refresh_ttl: t.refresh_ttl.clone(),
                strategy: t.strategy,
                operations: t.operations.clone(),
                resources: t.resources.clone(),
                client_ips: t.client_ips.clone(),
                claims: None,
            };
            let inherited = Inheritance { caveats: Vec::new(), revocable: false, claims: custom };
            let (sid, record, spec) = plan(&state, body, subject, inherited, None, false)?;
            let mut out = start(state, sid, record, spec).await?;
            out["issued_token_type"] = json!(ACCESS_TOKEN);
            Ok(HttpResponse::Ok().json(out))
        }
        Issue::Token => {
            let ttl = lifetime("ttl", t.ttl.as_deref(), Duration::from_secs(3600), state.config.max_ttl)?;
            let expires = time::OffsetDateTime::now_utc()
                + time::Duration::try_from(ttl).map_err(|_| ApiError::bad_request("ttl is too long"))?;
            let spec = MintSpec {
                subject,
                description: format!("login through {}", i.config.issuer),
                caveats: restriction_caveats(&t.operations, &t.resources, &t.client_ips)?,
                expires: Some(expires),
                revocable: false,
                parent: None,
                claims: custom,
            };
            let st = state.clone();
            let minted =
                blocking(move || mint(&st.store, &st.location, &st.discharge_location, spec)).await?;
            state.metrics.tokens_minted.inc();
            Ok(HttpResponse::Ok().json(json!({
                "access_token": minted.token.encode(),
                "issued_token_type": TESSERA_TOKEN,
                "token_type": "Bearer",
                "expires_in": ttl.as_secs(),
                "tid": minted.record.tid.to_string(),
                "subject": minted.record.subject,
            })))
        }
    }
}
