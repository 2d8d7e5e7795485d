//! Tessera core: macaroon capability tokens.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
