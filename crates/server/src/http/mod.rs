//! The request machinery every route shares, knowing nothing of any one route: problem+json
//! errors, credentials and client addresses, rate and connection limits, the request guard,
//! metrics, public-document caching, and text helpers.

pub(crate) mod audit;
pub(crate) mod auth;
pub(crate) mod cached;
pub(crate) mod conn;
pub(crate) mod guard;
pub(crate) mod limit;
pub(crate) mod metrics;
pub(crate) mod problem;
pub(crate) mod request_id;
pub(crate) mod text;

use actix_web::web;

use problem::ApiError;

/// Run `f` off the async workers (store calls block), its panic a 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    web::block(f).await.map_err(ApiError::internal)?
}
