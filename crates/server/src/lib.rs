//! Tessera HTTP service on actix-web: mint, verify, discharge, revoke, list, key rotation, JWT
//! exchange, revocation feed, health and metrics.
//!
//! [`app`] builds the application for a shared [`AppState`], so tests run it in-process;
//! [`run`] serves it until SIGINT/SIGTERM (in-flight requests finish first).
//!
//! The layout (docs/ARCHITECTURE.md): `app` assembles; `routes/` holds one file per resource;
//! the service rules they share (`mint`, `spec`, `session`, `envelope`, `exchange`, `uses`,
//! `ticket`, `housekeeping`) sit below them; `http/` is the request machinery every route uses;
//! `state`, `config` and `listener` (the types `config` holds) are at the bottom. No module
//! imports from a module above it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod app;
mod config;
mod envelope;
mod exchange;
mod feed;
#[doc(hidden)]
pub mod fuzzing;
pub mod housekeeping;
mod http;
mod listener;
mod logging;
mod mint;
mod notifier;
mod routes;
mod session;
mod spec;
mod startup;
mod state;
mod ticket;
mod tls;
mod uses;
mod verifying;
mod view;

pub use app::{app, run, write_private, PAGE_ROUTES, ROUTES};
pub use config::{Config, DatabaseUrl, ForwardedHeader, JwtAlg, LogFormat};
pub use feed::Streams;
pub use http::auth::{client_ip, DISCHARGE_HEADER};
pub use http::conn::ConnectionCap;
pub use http::limit::RateLimiter;
pub use http::metrics::{Counter, Metrics};
pub use http::problem::ApiError;
pub use http::request_id::RequestId;
pub use listener::{Listen, TrustedProxy, DEFAULT_SOCKET_MODE};
pub use logging::{init as init_logging, Logging, FLUSH_EVERY, LOG_BUFFER_BYTES, LOG_BUFFER_TOTAL};
pub use mint::{mint, MintSpec, Minted};
pub use startup::{mint_admin_token, Error, Opened};
pub use state::AppState;
