//! The first-party caveat language: `name arg...`, UTF-8, single spaces.
//!
//! | caveat | holds when |
//! |---|---|
//! | `time-before <RFC3339>` | request time < T |
//! | `time-after <RFC3339>` | request time >= T |
//! | `allow <op>...` | the request operation is one of them |
//! | `resource <name>...` | the request resource equals one, or one ends in `/*` and is its prefix |
//! | `client-ip <net>...` | the client address is in one of the networks (a bare address is one host) |
//!
//! Anything else is unknown and fails closed unless the application registered a checker.

pub(crate) mod predicate;

pub use predicate::*;

pub use crate::restrictions::Restrictions;
