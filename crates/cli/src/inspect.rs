//! `tessera inspect`: what a token says, in plain words. Nothing here is verified.

use base64::Engine as _;
use serde_json::{json, Value};
use tessera_core::{Caveat, Predicate, Restrictions, Token};
use time::format_description::well_known::Rfc3339;

fn when(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

/// A first-party caveat in plain words.
pub(crate) fn describe(cid: &[u8]) -> String {
    match Predicate::parse(cid) {
        Ok(Predicate::TimeBefore(t)) => format!("expires at {}", when(t)),
        Ok(Predicate::TimeAfter(t)) => format!("not valid before {}", when(t)),
        Ok(Predicate::Allow(ops)) => format!("only operations: {}", ops.replace(' ', ", ")),
        Ok(Predicate::Resource(r)) => format!("only resources: {}", r.replace(' ', ", ")),
        Ok(Predicate::ClientIp(n)) => format!("only from client addresses in: {}", n.replace(' ', ", ")),
        Ok(Predicate::RateLimit(l)) => format!(
            "at most {} uses per {} s for the whole token family (counted by the Tessera service; offline verifiers refuse it)",
            l.count, l.period
        ),
        Ok(Predicate::Once) => {
            "works for one successful use (recorded by the Tessera service; offline verifiers refuse it)".into()
        }
        Ok(Predicate::Other(t)) => format!("application caveat \"{t}\" (fails unless the verifier knows it)"),
        Err(e) => format!("INVALID: {e}"),
    }
}

fn restrictions(t: &Token) -> Restrictions {
    let mut r = Restrictions::default();
    if let Some(id) = t.tessera_identifier() {
        r.kid = Some(id.kid);
        r.tid = Some(id.tid);
        r.subject = Some(id.sub);
    }
    for c in t.caveats() {
        if let Caveat::FirstParty(cid) = c {
            if let Ok(p) = Predicate::validate(cid) {
                r.add(&p);
            }
        }
    }
    r
}

fn list(v: &Option<Vec<String>>) -> String {
    match v {
        None => "any".into(),
        Some(v) if v.is_empty() => "none (nothing is allowed)".into(),
        Some(v) => v.join(", "),
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Plain text.
pub(crate) fn text(t: &Token, show_signature: bool) -> String {
    let mut out = String::new();
    out.push_str(&format!("location:   {}\n", t.location().unwrap_or("(none)")));
    match t.tessera_identifier() {
        Some(id) => {
            out.push_str(&format!(
                "identifier: Tessera v1, key {}, token {}, subject \"{}\"\n",
                id.kid, id.tid, id.sub
            ));
            if let Some(c) = &id.claims {
                out.push_str(&format!("claims:     {} (bound by the signature)\n", c.to_json()));
            }
        }
        None => match std::str::from_utf8(t.identifier()) {
            Ok(s) => out.push_str(&format!("identifier: \"{s}\" (not a Tessera identifier)\n")),
            Err(_) => out.push_str(&format!(
                "identifier: {} (binary, base64url; not a Tessera identifier)\n",
                b64(t.identifier())
            )),
        },
    }
    out.push_str(&format!("caveats:    {}\n", t.caveat_count()));
    for (i, c) in t.caveats().enumerate() {
        match c {
            Caveat::FirstParty(cid) => {
                out.push_str(&format!("  {:>2}. {}\n      {}\n", i + 1, String::from_utf8_lossy(cid), describe(cid)))
            }
            Caveat::ThirdParty { location, id, .. } => out.push_str(&format!(
                "  {:>2}. third-party caveat at {location}\n      needs a discharge from that service (ticket {})\n",
                i + 1,
                b64(id)
            )),
        }
    }
    let r = restrictions(t);
    out.push_str("effective restrictions (unverified):\n");
    out.push_str(&format!("  operations: {}\n", list(&r.operations)));
    out.push_str(&format!("  resources:  {}\n", list(&r.resources)));
    let nets = r.networks.as_ref().map(|n| n.iter().map(ToString::to_string).collect::<Vec<_>>());
    out.push_str(&format!("  client ips: {}\n", list(&nets)));
    out.push_str(&format!("  not before: {}\n", r.not_before.map_or("-".into(), when)));
    out.push_str(&format!("  expires:    {}\n", r.expires.map_or("never".into(), when)));
    if !r.rate_limits.is_empty() {
        let l: Vec<String> = r.rate_limits.iter().map(ToString::to_string).collect();
        out.push_str(&format!("  rate limit: {} (all hold)\n", l.join(", ")));
    }
    if r.once {
        out.push_str("  single use\n");
    }
    if show_signature {
        out.push_str(&format!("signature:  {}\n", b64(t.signature())));
    }
    out
}

/// Machine-readable.
pub(crate) fn json(t: &Token, show_signature: bool) -> Value {
    let identifier = match t.tessera_identifier() {
        Some(id) => {
            json!({"kind": "tessera", "kid": id.kid.to_string(), "tid": id.tid.to_string(), "subject": id.sub,
                   "claims": id.claims.as_ref().map(|c| c.as_map())})
        }
        None => {
            json!({"kind": "opaque", "text": std::str::from_utf8(t.identifier()).ok(), "base64url": b64(t.identifier())})
        }
    };
    let caveats: Vec<Value> = t
        .caveats()
        .map(|c| match c {
            Caveat::FirstParty(cid) => {
                json!({"type": "first-party", "text": String::from_utf8_lossy(cid), "meaning": describe(cid)})
            }
            Caveat::ThirdParty { location, id, .. } => {
                json!({"type": "third-party", "location": location, "ticket": b64(id)})
            }
        })
        .collect();
    let r = restrictions(t);
    let mut v = json!({
        "location": t.location(),
        "identifier": identifier,
        "caveats": caveats,
        "restrictions": {
            "operations": r.operations,
            "resources": r.resources,
            "client_ips": r.networks.map(|n| n.iter().map(ToString::to_string).collect::<Vec<_>>()),
            "not_before": r.not_before.map(when),
            "expires": r.expires.map(when),
            "rate_limits": r.rate_limits.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "once": r.once,
        },
        "verified": false,
    });
    if show_signature {
        v["signature"] = json!(b64(t.signature()));
    }
    v
}
