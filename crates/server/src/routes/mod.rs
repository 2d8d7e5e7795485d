//! One file per resource, named by its URL. A route file uses `http/`, `state` and the service
//! rules; it never imports another route file.

pub(crate) mod apps;
pub(crate) mod audit;
pub(crate) mod authz;
pub(crate) mod backup;
pub(crate) mod discharge;
pub(crate) mod envelopes;
pub(crate) mod exchange;
pub(crate) mod health;
pub(crate) mod keys;
pub(crate) mod links;
pub(crate) mod revocations;
pub(crate) mod sessions;
pub(crate) mod tokens;
pub(crate) mod ui;
pub(crate) mod verify;
