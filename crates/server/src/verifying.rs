//! One verification of a presented token, shared by `POST /v1/verify` and the forward-auth
//! endpoints (`/v1/authz/*`): the same staleness rule, the same signature memo, the same
//! revocation, subject and caveat checks, then the same uses (budgets, single use, last use).
//! A route that answers for a request verifies through here, so no endpoint checks less.

use std::sync::Arc;

use actix_web::{web, HttpRequest};
use tessera_core::{Context, KeyProvider, Restrictions, SignatureMemo, VerifiedText, Verifier};

use crate::http::blocking;
use crate::http::problem::ApiError;
use crate::http::text::{decode_all, decode_token};
use crate::state::AppState;
use crate::uses::Headers;

/// A token that verified: through the memo (with its rendered answer kept there) or afresh.
pub(crate) enum Checked {
    /// Verified by text, remembered by the signature memo.
    Text(VerifiedText),
    /// Verified with discharges (never remembered: the memo is for tokens alone).
    Fresh(Arc<Restrictions>),
}

impl Checked {
    /// The folded restrictions.
    pub(crate) fn restrictions(&self) -> &Restrictions {
        match self {
            Checked::Text(v) => v.restrictions(),
            Checked::Fresh(r) => r,
        }
    }

    /// The folded restrictions, shared (for work on another thread). Taken only when needed: a
    /// remembered token's are shared by every thread verifying it, and each clone passes the
    /// count's cache line between cores.
    fn shared_restrictions(&self) -> Arc<Restrictions> {
        match self {
            Checked::Text(v) => v.shared_restrictions(),
            Checked::Fresh(r) => Arc::clone(r),
        }
    }

    /// The caller's rendering of the restrictions; kept with the token in the memo when it is
    /// remembered, so `render` must depend on the restrictions alone.
    pub(crate) fn rendered(
        &self,
        render: impl FnOnce(&Restrictions) -> Result<Vec<u8>, ApiError>,
    ) -> Result<Vec<u8>, ApiError> {
        match self {
            Checked::Text(v) => v.rendered(render).map(<[u8]>::to_vec),
            Checked::Fresh(r) => render(r),
        }
    }
}

/// Check a token text and its discharge texts against `ctx` with `keys` (the service caveats
/// included). Without discharges the token goes through `memo`, when there is one. No I/O.
pub(crate) fn check(
    keys: &dyn KeyProvider,
    memo: Option<&SignatureMemo>,
    token: &str,
    discharges: &[String],
    ctx: &Context,
) -> Result<Checked, ApiError> {
    let mut verifier = Verifier::with_keys(keys).service_caveats();
    if discharges.is_empty() {
        if let Some(memo) = memo {
            verifier = verifier.memo(memo);
        }
        return Ok(Checked::Text(verifier.verify_text(token, ctx)?));
    }
    let token = decode_token(token)?;
    let discharges = decode_all(discharges)?;
    let r = verifier.verify(&token, &discharges, ctx)?.restrictions();
    Ok(Checked::Fresh(Arc::new(r)))
}

/// Everything a use of a token goes through on this service: the store must be fresh (else
/// 503), the token must verify ([`check`], through the state's memo), and the use must be
/// granted (`uses::record`: budgets with their headers or a 429, single use, last use; on the
/// blocking pool when it may wait for the database). Counted in the verify metrics.
pub(crate) async fn verify(
    req: &HttpRequest,
    token: &str,
    discharges: &[String],
    ctx: &Context,
) -> Result<(Checked, Headers), ApiError> {
    let data = req.app_data::<web::Data<AppState>>().ok_or_else(|| ApiError::internal("no app state"))?;
    let state: &AppState = data;
    let outcome = async {
        state.store.check_fresh()?;
        let checked = check(&state.store, Some(&state.memo), token, discharges, ctx)?;
        let headers = if crate::uses::needs_database(state, checked.restrictions()) {
            let (st, r) = (web::Data::clone(data), checked.shared_restrictions());
            blocking(move || crate::uses::record(&st, &r)).await?
        } else {
            crate::uses::record(state, checked.restrictions())?
        };
        Ok((checked, headers))
    }
    .await;
    match &outcome {
        Ok(_) => state.metrics.verify_allowed.inc(),
        Err(_) => state.metrics.verify_denied.inc(),
    }
    outcome
}
