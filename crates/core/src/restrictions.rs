//! Folding: the effective restrictions of a verified token, every caveat intersected, as the
//! HTTP answer and JWT envelopes (`cap`) carry them.

use ipnet::IpNet;
use time::OffsetDateTime;

use crate::args::words;
use crate::caveat::predicate::{parse_net, resource_matches, Context, Predicate, RateLimit};
use crate::error::{Error, Result};
use crate::id::{KeyId, TokenId};

/// The meet of two resource patterns: what both allow, as a pattern, if anything.
///
/// Defined through [`resource_matches`], so the folded restrictions never allow a resource that
/// checking the caveats one by one denies (a property test holds them to it).
fn meet_resource<'a>(a: &'a str, b: &'a str) -> Option<&'a str> {
    let prefix = |p: &'a str| p.strip_suffix('*').filter(|p| p.ends_with('/'));
    match (prefix(a), prefix(b)) {
        (None, None) => (a == b).then_some(a),
        (Some(_), None) => resource_matches(a, b).then_some(b),
        (None, Some(_)) => resource_matches(b, a).then_some(a),
        // The narrower pattern, if its prefix is itself a resource the wider pattern allows.
        (Some(pa), Some(_)) if resource_matches(b, pa) => Some(a),
        (Some(_), Some(pb)) if resource_matches(a, pb) => Some(b),
        _ => None,
    }
}

fn meet_net(a: &IpNet, b: &IpNet) -> Option<IpNet> {
    if a.contains(b) {
        Some(*b)
    } else if b.contains(a) {
        Some(*a)
    } else {
        None
    }
}

/// The effective restrictions of a verified token: every caveat folded together.
///
/// `None` for a set means unrestricted; `Some(empty)` means nothing is allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// Key that signed the token (Tessera identifiers only).
    pub kid: Option<KeyId>,
    /// Token family (Tessera identifiers only).
    pub tid: Option<TokenId>,
    /// Whom the token speaks for (Tessera identifiers only).
    pub subject: Option<String>,
    /// Custom claims bound into the identifier (Tessera identifiers only).
    pub claims: Option<crate::claims::CustomClaims>,
    /// Latest `time-after`.
    pub not_before: Option<OffsetDateTime>,
    /// Earliest `time-before`.
    pub expires: Option<OffsetDateTime>,
    /// Intersection of every `allow`.
    pub operations: Option<Vec<String>>,
    /// Intersection of every `resource` (names and `/*` patterns).
    pub resources: Option<Vec<String>>,
    /// Intersection of every `client-ip`.
    pub networks: Option<Vec<IpNet>>,
    /// Application-defined caveats that registered checkers accepted.
    pub other: Vec<String>,
    /// Every distinct `rate-limit` budget (all must hold; the service counts them).
    pub rate_limits: Vec<RateLimit>,
    /// A `once` caveat: single use (the service records the use).
    pub once: bool,
}

impl Restrictions {
    /// Fold one more caveat in.
    pub fn add(&mut self, p: &Predicate<'_>) {
        match p {
            Predicate::TimeBefore(t) => {
                self.expires = Some(self.expires.map_or(*t, |e| e.min(*t)));
            }
            Predicate::TimeAfter(t) => {
                self.not_before = Some(self.not_before.map_or(*t, |n| n.max(*t)));
            }
            Predicate::Allow(ops) => {
                let new: Vec<String> = words(ops).map(str::to_owned).collect();
                self.operations = Some(match self.operations.take() {
                    None => dedup(new),
                    Some(old) => old.into_iter().filter(|o| new.contains(o)).collect(),
                });
            }
            Predicate::Resource(names) => {
                let new: Vec<&str> = words(names).collect();
                self.resources = Some(match self.resources.take() {
                    None => dedup(new.iter().map(|s| s.to_string()).collect()),
                    Some(old) => dedup(
                        old.iter()
                            .flat_map(|a| new.iter().filter_map(move |b| meet_resource(a, b)))
                            .map(str::to_owned)
                            .collect(),
                    ),
                });
            }
            Predicate::ClientIp(nets) => {
                let new: Vec<IpNet> = words(nets).filter_map(parse_net).collect();
                self.networks = Some(match self.networks.take() {
                    None => dedup(new),
                    Some(old) => {
                        dedup(old.iter().flat_map(|a| new.iter().filter_map(|b| meet_net(a, b))).collect())
                    }
                });
            }
            Predicate::RateLimit(limit) => {
                if !self.rate_limits.contains(limit) {
                    self.rate_limits.push(*limit);
                }
            }
            Predicate::Once => self.once = true,
            Predicate::Other(text) => self.other.push((*text).to_owned()),
        }
    }

    /// Check a request against the folded restrictions (used for JWT envelopes, whose `cap`
    /// claim carries them). Application-defined caveats are not re-checked here.
    pub fn check(&self, ctx: &Context) -> Result<()> {
        let unmet = |what: &str, reason: String| Err(Error::CaveatNotMet { caveat: what.to_owned(), reason });
        if self.once || !self.rate_limits.is_empty() {
            // Like the caveats themselves offline: only the service can count uses.
            let what = if self.once { "once" } else { "rate-limit" };
            return unmet(what, "checked by the Tessera service; fails closed here".into());
        }
        if let Some(e) = self.expires {
            if ctx.time >= e {
                return unmet("exp", "token has expired".into());
            }
        }
        if let Some(n) = self.not_before {
            if ctx.time < n {
                return unmet("nbf", "token is not valid yet".into());
            }
        }
        if let Some(ops) = &self.operations {
            match &ctx.operation {
                Some(op) if ops.contains(op) => {}
                Some(op) => return unmet("allow", format!("operation \"{op}\" is not allowed")),
                None => return unmet("allow", "request names no operation".into()),
            }
        }
        if let Some(rs) = &self.resources {
            match &ctx.resource {
                Some(r) if rs.iter().any(|p| resource_matches(p, r)) => {}
                Some(r) => return unmet("resource", format!("resource \"{r}\" is not allowed")),
                None => return unmet("resource", "request names no resource".into()),
            }
        }
        if let Some(nets) = &self.networks {
            match ctx.client_ip {
                Some(ip) if nets.iter().any(|n| n.contains(&ip)) => {}
                Some(ip) => return unmet("client-ip", format!("client address {ip} is not allowed")),
                None => return unmet("client-ip", "client address is unknown".into()),
            }
        }
        Ok(())
    }
}

fn dedup<T: PartialEq>(v: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(&x) {
            out.push(x);
        }
    }
    out
}
