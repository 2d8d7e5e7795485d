//! Credentials and client addresses.
//!
//! The management API is guarded by Tessera tokens (`Authorization: Bearer <token>`, discharges
//! in `X-Tessera-Discharge`, comma-separated). A request is checked as the operation it performs
//! (`tokens.mint`, `tokens.list`, `tokens.revoke`, `keys.list`, `keys.rotate`, `keys.envelope`)
//! on the resource `subjects/<subject>` (or `keys`), from the client's address, now. The admin
//! subject may act for anyone; any other subject only for itself.

use std::net::IpAddr;

use actix_web::HttpRequest;
use ipnet::IpNet;
use tessera_core::{Context, Identifier, Token, Verifier};

use crate::problem::ApiError;
use crate::AppState;

/// Header carrying discharges for the bearer token.
pub const DISCHARGE_HEADER: &str = "X-Tessera-Discharge";

/// An authenticated caller.
pub(crate) struct Caller {
    pub(crate) token: Token,
}

/// The client address: the connection's peer, or, when the peer is a trusted proxy, the nearest
/// untrusted address in `X-Forwarded-For` (read right to left).
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    let Some(xff) = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok()) else {
        return Some(peer);
    };
    let mut last = peer;
    for hop in xff.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => last = ip,
            Ok(ip) => return Some(ip),
            Err(_) => return Some(last),
        }
    }
    Some(last)
}

fn decode(text: &str, what: &str) -> Result<Token, ApiError> {
    Token::decode(text).map_err(|e| ApiError::unauthorized(format!("{what}: {e}")))
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
            discharges.push(decode(d, "discharge")?);
        }
    }
    Ok((token, discharges))
}

/// Authenticate the caller for `op` on `subjects/<target>` (the caller's own subject when
/// `target` is `None`). Returns the caller and the target subject.
pub(crate) fn authorize(
    state: &AppState,
    req: &HttpRequest,
    op: &str,
    target: Option<&str>,
) -> Result<(Caller, String), ApiError> {
    let (token, discharges) = bearer(req)?;
    let claimed = Identifier::decode(token.identifier())
        .ok_or_else(|| ApiError::unauthorized("bearer token is not a Tessera token"))?;
    let target = target.unwrap_or(&claimed.sub).to_owned();
    let resource = if op.starts_with("keys.") { "keys".to_owned() } else { format!("subjects/{target}") };
    let mut ctx = Context::now().operation(op).resource(resource);
    if let Some(ip) = client_ip(req, &state.config.trusted_proxies) {
        ctx = ctx.client_ip(ip);
    }
    Verifier::with_keys(&state.store).verify(&token, &discharges, &ctx)?;
    let admin = claimed.sub == state.config.admin_subject;
    if op.starts_with("keys.") && !admin {
        return Err(ApiError::forbidden("key management is for the admin subject"));
    }
    if claimed.sub != target && !admin {
        return Err(ApiError::forbidden(format!(
            "subject \"{}\" may not act for \"{target}\": only the admin acts for other subjects",
            claimed.sub
        )));
    }
    Ok((Caller { token }, target))
}
