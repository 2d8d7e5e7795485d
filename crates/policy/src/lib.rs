//! Tessera's forward-auth policy: which requests a proxy may pass without a token, which
//! operation on which resource a token must allow for the others, and that everything else is
//! refused.
//!
//! A policy is a TOML file (YAML is not supported: one format, parsed by the `toml` crate, with
//! every error naming its line). Its reference is in `docs/PROXIES.md`; in short:
//!
//! ```toml
//! [token]                 # optional: where the token is, besides `Authorization: Bearer`
//! header = "X-Api-Token"  # a header holding the bare token
//! cookie = "tessera"      # a cookie holding the bare token
//!
//! [[rule]]
//! host = "files.example"  # exact host (a port is optional), or "*" for hosts named nowhere
//! prefix = "/files"       # matched on whole segments; the longest matching prefix wins
//! methods = { DELETE = "delete" }       # overrides: GET and HEAD mean read, others write
//! resource = { strip = "/files", keep = 1 } # or { fixed = "files" }; default: the whole path
//!
//! [[rule]]
//! host = "*"
//! prefix = "/health"
//! public = true           # no token needed
//! ```
//!
//! ```
//! use tessera_policy::{Decision, Policy};
//! let p = Policy::from_toml("[[rule]]\nhost = \"*\"\nprefix = \"/files\"\n").unwrap();
//! assert_eq!(
//!     p.decide("example.org", "PUT", "/files/a?x=1").unwrap(),
//!     Decision::Check { operation: "write".into(), resource: "files/a".into() }
//! );
//! assert_eq!(p.decide("example.org", "GET", "/other").unwrap(), Decision::Unmatched);
//! assert!(p.decide("example.org", "GET", "/files/../admin").is_err());
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod error;
mod file;
mod path;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

pub use error::Error;
pub use path::MAX_PATH_BYTES;

/// The largest policy file read, in bytes.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// The most rules a policy may have.
pub const MAX_RULES: usize = 4096;

/// The identity headers a forward-auth answer carries for the upstream, lower case.
pub const IDENTITY_HEADERS: [&str; 3] = ["x-tessera-subject", "x-tessera-tid", "x-tessera-claims"];

/// Is `name` one of the identity headers, or a spelling a proxy or upstream could take for one
/// (any case, `_` for `-`), or any other `X-Tessera-*` header? A request carrying one is refused:
/// only Tessera's answer may set them.
pub fn is_identity_header(name: &str) -> bool {
    let n = name.as_bytes();
    let prefix = b"x-tessera-";
    n.len() >= prefix.len()
        && n[..prefix.len()]
            .iter()
            .zip(prefix)
            .all(|(a, b)| (if *a == b'_' { b'-' } else { a.to_ascii_lowercase() }) == *b)
}

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A public path: no token needed.
    Public,
    /// A token allowing `operation` on `resource`.
    Check {
        /// The operation, e.g. `read`.
        operation: String,
        /// The resource, e.g. `files/a`.
        resource: String,
    },
    /// No rule covers the request: it is refused.
    Unmatched,
}

/// Where a request's token is read from, besides `Authorization: Bearer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenSource {
    /// A header holding the bare token (lower case), read when there is no bearer token.
    pub header: Option<String>,
    /// A cookie holding the bare token, read when neither header has one.
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Host {
    Any,
    Named(String),
}

#[derive(Debug, Clone)]
struct ResourceMap {
    /// Leading segments dropped.
    strip: usize,
    /// Segments kept after that (all when `None`).
    keep: Option<usize>,
    /// A resource whatever the path.
    fixed: Option<String>,
}

#[derive(Debug, Clone)]
enum Rule {
    Public,
    Check { methods: BTreeMap<String, String>, resource: ResourceMap },
}

/// A checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    token: TokenSource,
    hosts: HashMap<Host, HashMap<Vec<String>, Rule>>,
    rules: usize,
}

/// A host as rules and requests are compared: lower case, no trailing dot.
fn normal_host(h: &str) -> Result<String, Error> {
    let h = h.trim_end_matches('.');
    let ok = h.len() <= 255
        && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
        && !h.starts_with(':');
    if !ok {
        return Err(Error::Host("not a host name with an optional port"));
    }
    Ok(h.to_ascii_lowercase())
}

/// `host` without its port (`[::1]:80` → `[::1]`, `a:80` → `a`), if it has one.
fn without_port(host: &str) -> Option<&str> {
    let colon = host.rfind(':')?;
    let (name, port) = (&host[..colon], &host[colon + 1..]);
    let bracketed = host.starts_with('[');
    if (bracketed && !name.ends_with(']')) || (!bracketed && name.contains(':')) {
        return None;
    }
    port.bytes().all(|b| b.is_ascii_digit()).then_some(name)
}

impl Policy {
    /// Parse and check a policy from TOML text.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        file::parse(text)
    }

    /// Read, parse and check a policy file (at most [`MAX_POLICY_BYTES`]).
    pub fn load(path: &Path) -> Result<Self, Error> {
        let read = |source| Error::Read { path: path.to_owned(), source };
        let size = std::fs::metadata(path).map_err(read)?.len();
        if size > MAX_POLICY_BYTES as u64 {
            return Err(Error::TooLarge { size, limit: MAX_POLICY_BYTES });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::from_toml(&text)
    }

    /// Where tokens are read from.
    pub fn token_source(&self) -> &TokenSource {
        &self.token
    }

    /// How many rules the policy has.
    pub fn rules(&self) -> usize {
        self.rules
    }

    /// What a request needs. `host` is the `Host` the client asked for (empty when unknown: only
    /// `*` rules apply), `target` the request target as sent (path and query). The rules of the
    /// most specific host the policy names apply (`host:port`, then `host`, then `*`); among them
    /// the longest prefix that matches whole segments. A path two readers could take differently
    /// (`..`, `//`, `%2F`, `%252e`...) is an error, never a decision.
    pub fn decide(&self, host: &str, method: &str, target: &str) -> Result<Decision, Error> {
        if method.is_empty()
            || method.len() > 32
            || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            return Err(Error::Method("not an HTTP method in capitals"));
        }
        let segments = path::canonical(target)?.0;
        let host = if host.is_empty() { String::new() } else { normal_host(host)? };
        let mut candidates = Vec::with_capacity(3);
        if !host.is_empty() {
            candidates.push(Host::Named(host.clone()));
            if let Some(name) = without_port(&host) {
                candidates.push(Host::Named(name.to_owned()));
            }
        }
        candidates.push(Host::Any);
        // A host the policy names uses its own rules only: no fall-through to "*".
        let Some(rules) = candidates.iter().find_map(|h| self.hosts.get(h)) else {
            return Ok(Decision::Unmatched);
        };
        for len in (0..=segments.len()).rev() {
            if let Some(rule) = rules.get(&segments[..len]) {
                return Ok(rule.decision(method, &segments));
            }
        }
        Ok(Decision::Unmatched)
    }
}

impl Rule {
    fn decision(&self, method: &str, segments: &[String]) -> Decision {
        let Rule::Check { methods, resource } = self else {
            return Decision::Public;
        };
        let operation = match methods.get(method).or_else(|| methods.get("*")) {
            Some(op) => op.clone(),
            None if method == "GET" || method == "HEAD" => "read".to_owned(),
            None => "write".to_owned(),
        };
        let resource = match &resource.fixed {
            Some(f) => f.clone(),
            None => {
                let rest = &segments[resource.strip.min(segments.len())..];
                let rest = &rest[..resource.keep.unwrap_or(rest.len()).min(rest.len())];
                if rest.is_empty() {
                    "/".to_owned()
                } else {
                    rest.join("/")
                }
            }
        };
        Decision::Check { operation, resource }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_header_spellings() {
        for n in
            ["X-Tessera-Subject", "x_tessera_subject", "X_Tessera-Tid", "x-tessera-anything", "X-TESSERA-"]
        {
            assert!(is_identity_header(n), "{n}");
        }
        for n in ["X-Tessera", "Tessera-Subject", "X-Forwarded-For", "x-tesserasubject"] {
            assert!(!is_identity_header(n), "{n}");
        }
    }

    #[test]
    fn ports_come_off() {
        assert_eq!(without_port("a.b:80"), Some("a.b"));
        assert_eq!(without_port("[::1]:80"), Some("[::1]"));
        assert_eq!(without_port("[::1]"), None);
        assert_eq!(without_port("a.b"), None);
        assert_eq!(without_port("a:b"), None);
    }
}
