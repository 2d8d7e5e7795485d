//! Credentials and client addresses.
//!
//! The management API is guarded by Tessera tokens (`Authorization: Bearer <token>`, discharges
//! in `X-Tessera-Discharge`, comma-separated). A request is checked as the operation it performs
//! (`tokens.mint`, `tokens.list`, `tokens.revoke`, `keys.list`, `keys.rotate`, `keys.revoke`, `keys.envelope`,
//! `apps.manage`, `audit.read`) on the resource `subjects/<subject>` (or `keys`, `apps`, `audit`),
//! from the client's address, now. The admin subject may act for anyone; any other subject only
//! for itself; key and application management and reading the audit trail are the admin's
//! alone. A refusal for authorization (403) is noted in the audit trail (`management.refused`).
//!
//! A registered application authenticates with its credential, a token for the subject
//! `app:<name>`, checked as the operation `jwt.issue` on `apps/<name>`.

use std::net::IpAddr;

use actix_web::{HttpMessage, HttpRequest};
use tessera_core::{Context, Identifier, Token, TokenId, Verifier};
use tessera_store::AppRecord;

use crate::config::ForwardedHeader;
use crate::http::conn::{OverUnixSocket, SOCKET_PEER};
use crate::http::problem::ApiError;
use crate::listener::TrustedProxy;
use crate::spec::APP_SUBJECT_PREFIX;
use crate::state::AppState;

/// Header carrying discharges for the bearer token.
pub const DISCHARGE_HEADER: &str = "X-Tessera-Discharge";

/// An authenticated caller.
pub(crate) struct Caller {
    /// The bearer token.
    pub(crate) token: Token,
    /// The discharges it was presented with (all of them were used by the verification).
    pub(crate) discharges: Vec<Token>,
    /// Its token family.
    pub(crate) tid: TokenId,
    /// Whom it speaks for.
    pub(crate) subject: String,
}

/// Who the request's credential speaks for, once its signature verified: in the request's
/// extensions for the access log (`http/request_id`).
#[derive(Clone, Debug)]
pub(crate) struct Principal {
    /// The credential's subject.
    pub(crate) subject: String,
    /// Its token family.
    pub(crate) tid: TokenId,
}

/// Note the verified caller for the access log.
fn note_principal(req: &HttpRequest, claimed: &Identifier) {
    req.extensions_mut().insert(Principal { subject: claimed.sub.clone(), tid: claimed.tid });
}

/// One hop of a forwarding header: a bare address for `X-Forwarded-For`; for RFC 7239
/// `Forwarded`, the `for=` node, quoted or not, an IPv6 address in brackets, an optional port.
fn parse_hop(hop: &str, header: ForwardedHeader) -> Option<IpAddr> {
    // The socket's key for the per-address limits lives in 100::/48 (discard-only, RFC 6666, and
    // reserved around it): no client has such an address, and none may name one to share it.
    parse_any_hop(hop, header).filter(|ip| !crate::http::conn::is_socket_key(*ip))
}

fn parse_any_hop(hop: &str, header: ForwardedHeader) -> Option<IpAddr> {
    match header {
        ForwardedHeader::XForwardedFor => hop.parse().ok(),
        ForwardedHeader::Forwarded => {
            let node = hop.split(';').map(str::trim).find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
            })?;
            let node = node.strip_prefix('"').and_then(|n| n.strip_suffix('"')).unwrap_or(node);
            if let Some(rest) = node.strip_prefix('[') {
                let (v6, port) = rest.split_once(']')?;
                if !(port.is_empty() || port.strip_prefix(':').is_some_and(valid_port)) {
                    return None;
                }
                return v6.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6);
            }
            match node.split_once(':') {
                Some((v4, port)) if valid_port(port) => v4.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
                Some(_) => None,
                None => node.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4),
            }
        }
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit())
}

/// Whether the request's peer is a trusted proxy: an address in a trusted network, or the Unix
/// socket when `unix` is trusted.
fn from_trusted_peer(req: &HttpRequest, trusted: &[TrustedProxy]) -> bool {
    match req.peer_addr() {
        Some(peer) => trusted.iter().any(|t| t.contains(&peer.ip())),
        None => trusted.contains(&TrustedProxy::UnixSocket) && req.conn_data::<OverUnixSocket>().is_some(),
    }
}

/// The client address: the connection's peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address of the forwarding header (read right to left; every line of the header, in
/// order, forms one list, as RFC 9110 combines them).
///
/// A request on the Unix socket has no peer address: without `--trusted-proxy unix` it has no
/// client address (`None`, its header ignored); with it, the header's nearest untrusted address
/// (`None` when the header names none).
///
/// Fails closed: a forwarding header that is not text, or an entry that is not an address
/// (`ip:port` in `X-Forwarded-For`, `unknown`, an obfuscated `Forwarded` node), is an error
/// naming the header, never a fallback to the proxy's own address.
pub fn client_ip(
    req: &HttpRequest,
    trusted: &[TrustedProxy],
    header: ForwardedHeader,
) -> Result<Option<IpAddr>, ApiError> {
    let peer = req.peer_addr().map(|a| a.ip());
    if !from_trusted_peer(req, trusted) {
        if peer.is_none() && req.conn_data::<OverUnixSocket>().is_some() {
            if let Some(name) =
                ["X-Forwarded-For", "Forwarded"].into_iter().find(|n| req.headers().contains_key(*n))
            {
                untrusted_socket_forwards(name);
            }
        }
        return Ok(peer);
    }
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|t| t.contains(ip));
    let name = header.name();
    let bad = |what: &str| {
        ApiError::bad_request(format!(
            "{name} header from a trusted proxy has {what}: every entry must be a client address"
        ))
    };
    let mut hops = Vec::new();
    for line in req.headers().get_all(name) {
        let line = line.to_str().map_err(|_| bad("bytes that are not text"))?;
        for hop in line.split(',').map(str::trim) {
            hops.push(parse_hop(hop, header).ok_or_else(|| bad(&format!("the entry \"{hop:.64}\"")))?);
        }
    }
    let mut last = peer;
    for ip in hops.into_iter().rev() {
        if !is_trusted(&ip) {
            return Ok(Some(ip));
        }
        last = Some(ip);
    }
    Ok(last)
}

/// The client address the guard (`http/guard`) read from a trusted proxy's forwarding header,
/// kept in the request's extensions so the handler and the access line do not parse the header
/// again (forward auth asked three times per request). Only a success is kept: a header that
/// does not parse is answered 400 by the guard before any handler runs.
#[derive(Clone, Copy)]
pub(crate) struct ClientAddr(Option<IpAddr>);

/// Said once per process: a proxy on the Unix socket sends a forwarding header that is not
/// believed (no `--trusted-proxy unix`), so its clients have no address: `client-ip` caveats
/// refuse them and the per-client limits count them all as one.
fn untrusted_socket_forwards(name: &str) {
    static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            header = name,
            "a request on the Unix socket carries a forwarding header, which is ignored: without \
             --trusted-proxy unix its clients have no address (client-ip caveats refuse them, and \
             the per-client limits count every such request as one client)"
        );
    }
}

/// Who the per-client limits (the rate limiter, revocation streams per address) count a request
/// against: its client address (`client`, by the trusted-proxy rules), or, for a request over the
/// Unix socket that has none, every such request together under [`SOCKET_PEER`]. `None` only for
/// a TCP connection whose peer is unknown.
pub(crate) fn limit_key(req: &HttpRequest, client: Option<IpAddr>) -> Option<IpAddr> {
    client.or_else(|| req.conn_data::<OverUnixSocket>().map(|_| SOCKET_PEER))
}

/// The client address as the service's configuration reads it (what the guard kept, if it kept
/// it).
pub(crate) fn client_ip_of(state: &AppState, req: &HttpRequest) -> Result<Option<IpAddr>, ApiError> {
    if let Some(ClientAddr(ip)) = req.extensions().get::<ClientAddr>() {
        return Ok(*ip);
    }
    client_ip(req, &state.config.trusted_proxies, state.config.forwarded_header)
}

/// [`client_ip_of`], kept in the request's extensions when it came through a trusted proxy (a
/// direct client's address is its peer's, cheaper to read again than to keep).
pub(crate) fn read_client_ip(state: &AppState, req: &HttpRequest) -> Result<Option<IpAddr>, ApiError> {
    let ip = client_ip_of(state, req)?;
    if from_trusted_peer(req, &state.config.trusted_proxies) {
        req.extensions_mut().insert(ClientAddr(ip));
    }
    Ok(ip)
}

fn decode(text: &str, what: &str) -> Result<Token, ApiError> {
    Token::decode(text).map_err(|e| ApiError::unauthorized(format!("{what}: {e}")))
}

/// The bearer token and its discharges, decoded (not verified).
pub(crate) fn bearer_token(req: &HttpRequest) -> Result<(Token, Vec<Token>), ApiError> {
    bearer(req)
}

fn bearer(req: &HttpRequest) -> Result<(Token, Vec<Token>), ApiError> {
    let header = req
        .headers()
        .get("authorization")
        .ok_or_else(|| ApiError::unauthorized("send Authorization: Bearer <token>"))?;
    let text = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be: Bearer <token>"))?;
    let token = decode(text.trim(), "bearer token")?;
    let mut discharges = Vec::new();
    for v in req.headers().get_all(DISCHARGE_HEADER) {
        let v = v.to_str().map_err(|_| ApiError::unauthorized("discharge header is not text"))?;
        for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            if discharges.len() == tessera_core::limits::MAX_DISCHARGES {
                return Err(ApiError::too_large(format!(
                    "at most {} discharges",
                    tessera_core::limits::MAX_DISCHARGES
                )));
            }
            discharges.push(decode(d, "discharge")?);
        }
    }
    Ok((token, discharges))
}

fn claimed_identity(token: &Token) -> Result<Identifier, ApiError> {
    Identifier::decode(token.identifier())
        .ok_or_else(|| ApiError::unauthorized("bearer token is not a Tessera token"))
}

/// Authenticate only: signature, discharges, time and revocation, with the operation, resource
/// and client restrictions left for [`authorize`]. Says nothing about any resource, so callers
/// that must not reveal whether something exists authenticate first.
pub(crate) fn authenticate(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    state.store.check_fresh()?;
    let (token, discharges) = bearer(req)?;
    let claimed = claimed_identity(&token)?;
    // Budgets and single use are counted by `authorize`, which always follows.
    Verifier::with_keys(&state.store).service_caveats().verify(
        &token,
        &discharges,
        &Context::deferring_scope(time::OffsetDateTime::now_utc()),
    )?;
    note_principal(req, &claimed);
    Ok(())
}

/// Authenticate the caller for `op` on `subjects/<target>` (the caller's own subject when
/// `target` is `None`). Returns the caller and the target subject.
pub(crate) fn authorize(
    state: &AppState,
    req: &HttpRequest,
    op: &str,
    target: Option<&str>,
) -> Result<(Caller, String), ApiError> {
    authorize_noting(state, req, op, target, true)
}

/// [`authorize`] for a route that answers a refusal as "not found" (so unknown ids and ids the
/// caller may not touch look alike) and notes its refusals itself, alike for both.
pub(crate) fn authorize_unnoted(
    state: &AppState,
    req: &HttpRequest,
    op: &str,
    target: Option<&str>,
) -> Result<(Caller, String), ApiError> {
    authorize_noting(state, req, op, target, false)
}

fn authorize_noting(
    state: &AppState,
    req: &HttpRequest,
    op: &str,
    target: Option<&str>,
    noting: bool,
) -> Result<(Caller, String), ApiError> {
    state.store.check_fresh()?;
    let (token, discharges) = bearer(req)?;
    let claimed = claimed_identity(&token)?;
    let target = target.unwrap_or(&claimed.sub).to_owned();
    let admin_area = ["keys", "apps", "audit", "store"]
        .into_iter()
        .find(|area| op.strip_prefix(area).is_some_and(|r| r.starts_with('.')));
    let resource = match admin_area {
        Some(area) => area.to_owned(),
        None => format!("subjects/{target}"),
    };
    let mut ctx = Context::now().operation(op).resource(resource);
    if let Some(ip) = client_ip_of(state, req)? {
        ctx = ctx.client_ip(ip);
    }
    // A refusal for authorization (403) is noted in the audit trail: the signature verified, so
    // the claimed subject and tid are the caller's. The reason names the caller's own caveat or
    // the rule, never the target (an entry the caller reads back says nothing about others).
    let refused = |reason: String| {
        if noting {
            let actor = crate::http::audit::actor(state, req, Some(&claimed.sub), Some(claimed.tid));
            crate::http::audit::note(
                state,
                tessera_store::AuditKind::Refused,
                actor,
                tessera_store::Target::default(),
                Some(&reason),
                Some(format!("op={op}")),
            );
        }
    };
    let v = match Verifier::with_keys(&state.store).service_caveats().verify(&token, &discharges, &ctx) {
        Ok(v) => v,
        Err(e) => {
            let why = match &e {
                tessera_core::Error::CaveatNotMet { caveat, .. }
                | tessera_core::Error::UnknownCaveat(caveat) => {
                    format!("caveat \"{caveat}\" not met")
                }
                _ => "a discharge is missing".to_owned(),
            };
            let e = ApiError::from(e);
            if e.status() == actix_web::http::StatusCode::FORBIDDEN {
                refused(why);
            }
            return Err(e);
        }
    };
    note_principal(req, &claimed);
    let admin = claimed.sub == state.config.admin_subject;
    if let Some(area) = admin_area.filter(|_| !admin) {
        refused(format!("{area} management is for the admin subject"));
        return Err(ApiError::forbidden(format!("{area} management is for the admin subject")));
    }
    if claimed.sub != target && !admin {
        refused("only the admin acts for other subjects".to_owned());
        return Err(ApiError::forbidden(format!(
            "subject \"{}\" may not act for \"{target}\": only the admin acts for other subjects",
            claimed.sub
        )));
    }
    // Management calls count against the token's budgets once authorized (a refusal spends
    // nothing) and use it up like verification does. The budgets are given back if the handler's
    // answer is not a success (a bad query, a missing token: `uses::settle`); a success carries
    // the budget's headers.
    crate::uses::record_for(state, req, &v.restrictions())?;
    Ok((Caller { token, discharges, tid: claimed.tid, subject: claimed.sub }, target))
}

/// The registered application calling, when the request carries a bearer token: its credential
/// must verify as `jwt.issue` on `apps/<name>`, be the credential the application was registered
/// with, and the application must be enabled. `None` without an `Authorization` header.
pub(crate) fn application(state: &AppState, req: &HttpRequest) -> Result<Option<AppRecord>, ApiError> {
    if req.headers().get("authorization").is_none() {
        return Ok(None);
    }
    let (token, discharges) = bearer(req)?;
    let claimed = claimed_identity(&token)?;
    let name = claimed.sub.strip_prefix(APP_SUBJECT_PREFIX).ok_or_else(|| {
        ApiError::forbidden(
            "the bearer token is not an application credential (subject app:<name>); send the token \
             to wrap in the body only",
        )
    })?;
    let mut ctx = Context::now().operation("jwt.issue").resource(format!("apps/{name}"));
    if let Some(ip) = client_ip_of(state, req)? {
        ctx = ctx.client_ip(ip);
    }
    let v = Verifier::with_keys(&state.store).service_caveats().verify(&token, &discharges, &ctx)?;
    note_principal(req, &claimed);
    let app = state
        .store
        .app(name)
        .filter(|a| a.credential == claimed.tid)
        .ok_or_else(|| ApiError::forbidden(format!("no application \"{name}\" has this credential")))?;
    if app.disabled_at.is_some() {
        return Err(ApiError::forbidden(format!("application \"{name}\" is disabled")));
    }
    crate::uses::record_for(state, req, &v.restrictions())?;
    Ok(Some(app))
}
