//! When a session's renewal also replaces its refresh token (JWTIS's names): what sessions,
//! applications and login templates name.

use serde::{Deserialize, Serialize};

use crate::http::problem::ApiError;

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// When a renewal also replaces the refresh token (JWTIS's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Strategy {
    /// A new access token only (the default).
    NoRefresh,
    /// Also a new refresh token once the old one is within `--refresh-rotate-fraction` of its end.
    RefreshOnExpire,
    /// Always both; the old refresh token is spent.
    RefreshBoth,
}

impl Strategy {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Strategy::NoRefresh => "noRefresh",
            Strategy::RefreshOnExpire => "refreshOnExpire",
            Strategy::RefreshBoth => "refreshBoth",
        }
    }

    pub(crate) fn from_name(name: &str) -> Strategy {
        match name {
            "refreshOnExpire" => Strategy::RefreshOnExpire,
            "refreshBoth" => Strategy::RefreshBoth,
            _ => Strategy::NoRefresh,
        }
    }

    /// How far renewals may extend a session: `noRefresh` never issues a new refresh token (the
    /// session ends with its refresh token), `refreshOnExpire` only near the end of one,
    /// `refreshBoth` at every renewal. Lower is stricter.
    fn looseness(self) -> u8 {
        match self {
            Strategy::NoRefresh => 0,
            Strategy::RefreshOnExpire => 1,
            Strategy::RefreshBoth => 2,
        }
    }

    /// The stricter of the two.
    pub(crate) fn stricter(self, other: Strategy) -> Strategy {
        if other.looseness() < self.looseness() {
            other
        } else {
            self
        }
    }

    /// `self` when it is as strict as `policy` (the session's, its application's or a
    /// template's) or stricter; a looser request is refused (403): the requester may give up
    /// renewals, never add them.
    pub(crate) fn within(self, policy: Strategy, whose: &str) -> Result<Strategy> {
        if self.looseness() > policy.looseness() {
            return Err(ApiError::forbidden(format!(
                "strategy {} is looser than {whose}'s {}: a request may only choose a strategy as strict \
                 or stricter (noRefresh, then refreshOnExpire, then refreshBoth)",
                self.name(),
                policy.name()
            )));
        }
        Ok(self)
    }
}
