//! Login exchange, shaped like RFC 8693 token exchange: `POST /v1/exchange` takes an ID token
//! (or another JWT) from a configured trusted issuer and returns a Tessera token or a session
//! for its `sub`, built from the issuer's template.
//!
//! Trusted issuers come from the JSON file named by `--exchange-config` (docs/SESSIONS.md): each
//! has its issuer URL, this service's client id at it (`audience`), its JWKS (a URL fetched and
//! cached, [`jwks`]; or a file), the algorithms allowed (ES256, EdDSA), a clock leeway, the
//! prefix that namespaces its subjects, and the template.
//!
//! The handler runs in three steps, the first and last without I/O (the fuzz target drives them
//! through `crate::fuzzing`): [`ask`] parses and checks the request up to the `kid`; the key is
//! looked up (perhaps fetched); [`admit`] verifies the ID token and names the subject.

mod jwks;

use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::HttpRequest;
use serde::Deserialize;
use serde_json::{Map, Value};
use tessera_core::envelope::{
    id_token_key_id, verify_id_token, Algorithm, IdTokenRules, PublicKey, VerifyKey, MAX_LEEWAY,
};
use tessera_core::{CustomClaims, REGISTERED_CLAIMS};

use crate::http::problem::ApiError;
use crate::session::strategy::Strategy;
use crate::spec::{check_subject, lifetime, restriction_caveats, APP_SUBJECT_PREFIX, SYSTEM_SUBJECT};
use jwks::{parse_jwks, IssuerKeys, Missing};

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// RFC 8693's grant type.
pub(crate) const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Subject token types accepted.
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// Issued token types: a session (its access token is a JWT) or a Tessera token.
pub(crate) const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A Tessera token (a macaroon), for `requested_token_type`.
pub(crate) const TESSERA_TOKEN: &str = "urn:tessera:params:oauth:token-type:tessera";
/// The trusted issuers file.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    issuers: Vec<IssuerConfig>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub(crate) struct IssuerConfig {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) jwks_url: Option<String>,
    pub(crate) jwks_file: Option<PathBuf>,
    pub(crate) algorithms: Vec<String>,
    #[serde(default)]
    pub(crate) leeway: Option<String>,
    #[serde(default)]
    pub(crate) subject_prefix: String,
    pub(crate) template: Template,
}

/// What a login gets.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct Template {
    /// `session` or `token` (the default when the request does not say).
    #[serde(default)]
    pub(crate) issue: Issue,
    pub(crate) operations: Option<Vec<String>>,
    pub(crate) resources: Option<Vec<String>>,
    pub(crate) client_ips: Option<Vec<String>>,
    /// Lifetime of a Tessera token.
    pub(crate) ttl: Option<String>,
    /// Claims of the subject token copied into the custom claims, by name.
    #[serde(default)]
    pub(crate) claims: Vec<String>,
    /// For sessions.
    pub(crate) app: Option<String>,
    pub(crate) alg: Option<String>,
    pub(crate) access_ttl: Option<String>,
    pub(crate) refresh_ttl: Option<String>,
    pub(crate) strategy: Option<Strategy>,
}

#[derive(Deserialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Issue {
    #[default]
    Token,
    Session,
}

/// One trusted issuer, checked, with its keys.
#[derive(Debug)]
pub(crate) struct Issuer {
    pub(crate) config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    leeway: time::Duration,
    keys: IssuerKeys,
}

/// The configured issuers.
#[derive(Debug)]
pub struct Exchange {
    pub(crate) issuers: Vec<Issuer>,
}

impl Issue {
    fn name(self) -> &'static str {
        match self {
            Issue::Token => "Tessera tokens",
            Issue::Session => "sessions",
        }
    }
}

impl Exchange {
    /// Read and check the trusted issuers file: every mistake is an error naming the issuer.
    pub fn load(path: &Path, max_ttl: Duration) -> std::result::Result<Exchange, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let read =
            |file: &Path| std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()));
        Exchange::parse(&text, &path.display().to_string(), max_ttl, &read)
    }

    /// Check the trusted issuers file's `text` (named `origin` in errors); `read` reads the
    /// `jwks_file`s it names.
    pub(crate) fn parse(
        text: &str,
        origin: &str,
        max_ttl: Duration,
        read: &dyn Fn(&Path) -> std::result::Result<String, String>,
    ) -> std::result::Result<Exchange, String> {
        let file: File = serde_json::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let mut issuers: Vec<Issuer> = Vec::new();
        for c in file.issuers {
            let name = c.issuer.clone();
            let bad = |why: String| format!("{origin}: issuer \"{name}\": {why}");
            if c.issuer.is_empty() || issuers.iter().any(|i| i.config.issuer == c.issuer) {
                return Err(bad("issuer must be non-empty and listed once".into()));
            }
            if c.audience.is_empty() {
                return Err(bad("audience (this service's client id at the issuer) is required".into()));
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
            let leeway = time::Duration::try_from(leeway)
                .ok()
                .filter(|l| *l <= MAX_LEEWAY)
                .ok_or_else(|| bad(format!("leeway must be at most {MAX_LEEWAY} (it is for clock skew)")))?;
            if c.subject_prefix.starts_with(APP_SUBJECT_PREFIX) {
                return Err(bad(format!(
                    "subject_prefix \"{}\" would make every subject an application's ({APP_SUBJECT_PREFIX}...)",
                    c.subject_prefix
                )));
            }
            let t = &c.template;
            if let Some(name) = t.claims.iter().find(|n| REGISTERED_CLAIMS.contains(&n.as_str())) {
                return Err(bad(format!("template claim \"{name}\" is a registered claim")));
            }
            restriction_caveats(&t.operations, &t.resources, &t.client_ips)
                .map_err(|e| bad(e.detail().to_owned()))?;
            lifetime("ttl", t.ttl.as_deref(), Duration::from_secs(3600), max_ttl)
                .map_err(|e| bad(e.detail().to_owned()))?;
            let keys = match (&c.jwks_url, &c.jwks_file) {
                (Some(url), None) => IssuerKeys::from_url(&c.issuer, url),
                (None, Some(file)) => {
                    let text = read(file).map_err(&bad)?;
                    let doc: Value =
                        serde_json::from_str(&text).map_err(|e| bad(format!("{}: {e}", file.display())))?;
                    IssuerKeys::from_file(&c.issuer, parse_jwks(&doc).map_err(&bad)?)
                }
                _ => return Err(bad("give exactly one of jwks_url and jwks_file".into())),
            };
            issuers.push(Issuer { config: c, algorithms, leeway, keys });
        }
        check_namespaces(&issuers).map_err(|e| format!("{origin}: {e}"))?;
        Ok(Exchange { issuers })
    }
}

/// Two issuers never share a subject, so with more than one, each needs a non-empty prefix that
/// no other's starts with (`idp:` and `idp:2:` would both map some `sub` to `idp:2:x`).
fn check_namespaces(issuers: &[Issuer]) -> std::result::Result<(), String> {
    if issuers.len() < 2 {
        return Ok(());
    }
    for a in issuers {
        let (name, prefix) = (&a.config.issuer, &a.config.subject_prefix);
        if prefix.is_empty() {
            return Err(format!(
                "issuer \"{name}\": with more than one issuer, each needs its own non-empty subject_prefix (e.g. \"{}:\")",
                name.trim_start_matches("https://").split(['/', '.']).next().unwrap_or("idp")
            ));
        }
        for b in issuers.iter().filter(|b| !std::ptr::eq(*b, a)) {
            if b.config.subject_prefix.starts_with(prefix.as_str()) {
                return Err(format!(
                    "issuers \"{name}\" and \"{}\": subject_prefix \"{prefix}\" starts subject_prefix \"{}\", so their subjects could meet; give each issuer a prefix no other starts with",
                    b.config.issuer, b.config.subject_prefix
                ));
            }
        }
    }
    Ok(())
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

/// The `iss` and `sub` an exchange request's subject token claims, unverified: what the audit
/// trail notes of a refused sign-in. `None` for what cannot be read.
pub(crate) fn claimed(json: bool, body: &[u8]) -> (Option<String>, Option<String>) {
    use base64::Engine;
    let Ok(r) = parse_body(json, body) else { return (None, None) };
    let payload = r.subject_token.split('.').nth(1).unwrap_or_default();
    let v: Option<Value> = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let text = |name: &str| v.as_ref().and_then(|v| v[name].as_str()).map(|s| s.chars().take(200).collect());
    (text("iss"), text("sub"))
}

/// Whether a request's body is JSON (`true`) or RFC 8693's form encoding (`false`, also when no
/// Content-Type is sent); any other type is a 415.
pub(crate) fn is_json(req: &HttpRequest) -> Result<bool> {
    let Some(value) = req.headers().get("content-type") else { return Ok(false) };
    let value = value.to_str().unwrap_or_default().to_ascii_lowercase();
    match value.split(';').next().unwrap_or_default().trim() {
        "application/json" => Ok(true),
        "application/x-www-form-urlencoded" => Ok(false),
        _ => Err(ApiError::unsupported_media()),
    }
}

/// A form or JSON body.
fn parse_body(json: bool, body: &[u8]) -> Result<ExchangeRequest> {
    if json {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    } else {
        serde_urlencoded::from_bytes(body)
            .map_err(|e| ApiError::bad_request(format!("invalid form body: {e}")))
    }
}

/// A request checked up to the key lookup.
#[derive(Debug)]
pub(crate) struct Asked {
    issuer: usize,
    token: String,
    kid: String,
    issue: Issue,
}

/// Step 1: parse and check the request (grant, types, which issuer, what it may issue, the ID
/// token's header), no I/O. A request may only ask for what the issuer's template issues: the
/// one choice it has is the issued type, and neither type is stricter than the other (a
/// session renews; a Tessera token outlives an access token and is not ended with a session).
pub(crate) fn ask(exchange: &Exchange, json: bool, body: &[u8]) -> Result<Asked> {
    let r = parse_body(json, body)?;
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
        // The claim is unverified caller text: escaped, so a problem body never carries a
        // terminal escape or a line break (review finding F2).
        .ok_or_else(|| {
            let shown: String = iss.chars().take(200).collect();
            ApiError::unauthorized(format!("issuer \"{}\" is not trusted", shown.escape_debug()))
        })?;
    let i = &exchange.issuers[issuer];
    let template = i.config.template.issue;
    let issue = match r.requested_token_type.as_deref() {
        None => template,
        Some(ACCESS_TOKEN) => Issue::Session,
        Some(TESSERA_TOKEN) => Issue::Token,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "requested_token_type \"{other:.100}\" is not offered ({ACCESS_TOKEN} for a session, {TESSERA_TOKEN} for a Tessera token)"
            )))
        }
    };
    if issue != template {
        return Err(ApiError::forbidden(format!(
            "the template of issuer \"{}\" issues {}: a request may ask only for what its template issues",
            i.config.issuer,
            template.name()
        )));
    }
    let kid = id_token_key_id(&r.subject_token, &i.algorithms)
        .map_err(|e| ApiError::unauthorized(format!("subject_token: {e}")))?;
    Ok(Asked { issuer, token: r.subject_token, kid, issue })
}

/// Step 2: the key the ID token's `kid` names (from the cache, or fetched).
pub(crate) async fn key(exchange: &Exchange, asked: &Asked) -> Result<PublicKey> {
    let i = &exchange.issuers[asked.issuer];
    i.keys.key(&asked.kid).await.map_err(|m| missing(i, &asked.kid, m))
}

fn missing(i: &Issuer, kid: &str, why: Missing) -> ApiError {
    match why {
        Missing::Unknown => ApiError::unauthorized(format!(
            "subject_token: kid \"{}\" is not in the JWKS of issuer \"{}\"",
            kid.chars().take(80).collect::<String>().escape_debug(),
            i.config.issuer
        )),
        // The details (where, what the upstream said) are in the log, not for the caller.
        Missing::Unavailable => ApiError::unavailable(format!(
            "the keys of issuer \"{}\" cannot be fetched right now; try again later",
            i.config.issuer
        )),
    }
}

/// What a verified ID token gets.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// `<subject_prefix><sub>`: never the admin subject nor an application's.
    pub(crate) subject: String,
    /// The template's claims copied from the ID token.
    pub(crate) custom: Option<CustomClaims>,
    pub(crate) issue: Issue,
    pub(crate) issuer: usize,
}

impl Admitted {
    /// `session` or `token`.
    pub(crate) fn issues_session(&self) -> bool {
        self.issue == Issue::Session
    }
}

/// Step 3: verify the ID token with `key` at `now` and name its subject, no I/O. The final
/// subject is what is checked, so no prefix and `sub` together make a reserved one.
pub(crate) fn admit(
    exchange: &Exchange,
    asked: &Asked,
    key: PublicKey,
    now: time::OffsetDateTime,
    admin_subject: &str,
) -> Result<Admitted> {
    let i = &exchange.issuers[asked.issuer];
    let rules = IdTokenRules {
        issuer: &i.config.issuer,
        audience: &i.config.audience,
        algorithms: &i.algorithms,
        now,
        leeway: i.leeway,
    };
    let lookup = |kid: &str| {
        if kid == asked.kid {
            Ok(VerifyKey::Public(key))
        } else {
            Err(tessera_core::Error::Envelope("kid changed between looking and verifying".into()))
        }
    };
    let claims = verify_id_token(&asked.token, lookup, &rules)
        .map_err(|e| ApiError::unauthorized(format!("subject_token: {e}")))?;
    let sub = claims["sub"].as_str().unwrap_or_default();
    let subject = format!("{}{sub}", i.config.subject_prefix);
    if subject == admin_subject || subject == SYSTEM_SUBJECT || subject.starts_with(APP_SUBJECT_PREFIX) {
        return Err(ApiError::forbidden(format!(
            "subject_token: the subject \"{subject:.100}\" is reserved (the admin's, the service's or an application's) and is never given by an exchange"
        )));
    }
    check_subject(Some(&subject))?;
    let t = &i.config.template;
    let copied: Map<String, Value> =
        t.claims.iter().filter_map(|n| claims.get(n).map(|v| (n.clone(), v.clone()))).collect();
    let custom = (!copied.is_empty())
        .then(|| CustomClaims::new(copied))
        .transpose()
        .map_err(|e| ApiError::unauthorized(format!("subject_token claims: {e}")))?;
    Ok(Admitted { subject, custom, issue: asked.issue, issuer: asked.issuer })
}

/// The key for a request without fetching (the fuzz target's issuers read their keys from files).
pub(crate) fn cached_key(exchange: &Exchange, asked: &Asked) -> Result<PublicKey> {
    let i = &exchange.issuers[asked.issuer];
    i.keys.cached(&asked.kid).ok_or_else(|| missing(i, &asked.kid, Missing::Unknown))
}
