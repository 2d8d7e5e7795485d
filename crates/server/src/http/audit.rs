//! Who asked, and from where: the audit trail's [`Actor`] of a request, built once per request
//! from the credential's subject and tid, the client address (by the trusted-proxy rules of
//! [`client_ip_of`]), the request id and the `User-Agent`; and [`note`], a refusal written
//! through the store's queue without waiting (it never blocks a request).

use actix_web::http::header::USER_AGENT;
use actix_web::{HttpMessage, HttpRequest};
use tessera_core::TokenId;
use tessera_store::{Actor, AuditKind, AuditNote, Outcome, Target};

use crate::http::auth::{bearer_token, client_ip_of};
use crate::http::request_id::RequestId;
use crate::state::AppState;

/// Longest `User-Agent`, reason or detail kept (bytes; the store holds the same bound).
const MAX_TEXT: usize = 200;

/// `text` cut to at most `max` bytes, on a character boundary.
pub(crate) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// The actor of a request made with a credential for `subject` whose family is `tid` (both
/// `None` for a request without one).
pub(crate) fn actor(
    state: &AppState,
    req: &HttpRequest,
    subject: Option<&str>,
    tid: Option<TokenId>,
) -> Actor {
    Actor {
        subject: subject.map(str::to_owned),
        tid,
        issuer: None,
        // A forwarding header the rules refuse has refused the request already (400).
        address: client_ip_of(state, req).ok().flatten().map(|ip| ip.to_string()),
        request_id: req.extensions().get::<RequestId>().map(|r| r.as_str().to_owned()),
        user_agent: req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()).map(|ua| cut(ua, MAX_TEXT)),
    }
}

/// The reason noted when a revocation is refused as "not found": the same for an unknown id and
/// for an id the credential may not revoke, as the answer is.
pub(crate) const NOT_YOURS: &str = "nothing by this id that this credential may revoke";

/// The actor of a request whose bearer credential was authenticated (`auth::authenticate`): its
/// identifier's subject and tid.
pub(crate) fn credential_actor(state: &AppState, req: &HttpRequest) -> Actor {
    let id = bearer_token(req).ok().and_then(|(token, _)| token.tessera_identifier());
    actor(state, req, id.as_ref().map(|i| i.sub.as_str()), id.as_ref().map(|i| i.tid))
}

/// Note an entry that is not part of a state change, with `outcome`: see [`note`].
pub(crate) fn note_outcome(
    state: &AppState,
    kind: AuditKind,
    outcome: Outcome,
    actor: Actor,
    target: Target,
    reason: Option<&str>,
    detail: Option<String>,
) {
    let note = AuditNote {
        kind,
        outcome,
        actor,
        target,
        reason: reason.map(|r| cut(r, MAX_TEXT)),
        detail: detail.map(|d| cut(&d, MAX_TEXT)),
    };
    let _ = state.store.audit_note(note);
}

/// Note a refusal (or another entry that is not part of a state change): queued to the store's
/// writer without waiting. When the writer is behind it is dropped and counted
/// (`Store::audit_dropped`), never waited for. Identical refusals within the store's window are
/// collapsed into the first entry and a summary with their count (docs/AUDIT.md).
pub(crate) fn note(
    state: &AppState,
    kind: AuditKind,
    actor: Actor,
    target: Target,
    reason: Option<&str>,
    detail: Option<String>,
) {
    note_outcome(state, kind, Outcome::Refused, actor, target, reason, detail);
}

#[cfg(test)]
mod tests {
    use super::cut;

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("abc", 200), "abc");
        assert_eq!(cut("abcdef", 3), "abc");
        // 'é' is two bytes: a cut inside it keeps the character before.
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut(&"x".repeat(500), 200).len(), 200);
    }
}
