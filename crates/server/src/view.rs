//! The JSON shape of what a token allows, as `/v1/verify` and `/v1/whoami` answer it.

use serde::Serialize;
use tessera_core::Restrictions;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A token's restrictions as JSON.
#[derive(Serialize)]
pub(crate) struct RestrictionsView<'a> {
    not_before: Option<String>,
    expires: Option<String>,
    operations: Option<&'a [String]>,
    resources: Option<&'a [String]>,
    client_ips: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rate_limits: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    once: bool,
}

impl<'a> RestrictionsView<'a> {
    pub(crate) fn new(r: &'a Restrictions) -> Self {
        let t = |t: Option<OffsetDateTime>| t.and_then(|t| t.format(&Rfc3339).ok());
        RestrictionsView {
            not_before: t(r.not_before),
            expires: t(r.expires),
            operations: r.operations.as_deref(),
            resources: r.resources.as_deref(),
            client_ips: r.networks.as_ref().map(|n| n.iter().map(ToString::to_string).collect()),
            rate_limits: r.rate_limits.iter().map(ToString::to_string).collect(),
            once: r.once,
        }
    }
}
