//! The state every handler reads: [`AppState`]. How it is opened on start: `startup`.

use tessera_store::Store;

use crate::config::Config;
use crate::exchange;
use crate::http::limit::RateLimiter;
use crate::http::metrics::Metrics;
use crate::notifier::Notifier;

/// Shared state of the service.
#[derive(Debug)]
pub struct AppState {
    /// The key store.
    pub store: Store,
    /// The configuration.
    pub config: Config,
    /// Counters.
    pub metrics: Metrics,
    /// Per-client rate limiter.
    pub limiter: RateLimiter,
    /// Location written into minted tokens (the public URL).
    pub location: String,
    /// Location of the discharge endpoint (in revocable tokens).
    pub discharge_location: String,
    /// `iss` of envelopes.
    pub issuer: String,
    /// Trusted issuers of the login exchange (`--exchange-config`).
    pub exchange: Option<exchange::Exchange>,
    /// The expiry-notice webhook (`--notify-webhook`).
    pub notifier: Option<Notifier>,
    /// Token texts `/v1/verify` has verified, so the same token again skips its signature chain
    /// (keyed to the store's key generation: any key change makes every entry a miss).
    pub memo: tessera_core::SignatureMemo,
    /// The revocation stream's hub (`GET /v1/revocations/stream`).
    pub streams: crate::feed::Streams,
}
