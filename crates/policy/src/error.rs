//! The one error enum of the crate.

use std::path::PathBuf;

/// Why a policy does not load, or why a request is refused before any rule is looked at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy file cannot be read.
    #[error("cannot read the policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The policy file is larger than [`crate::MAX_POLICY_BYTES`].
    #[error("the policy file is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// The policy text is not valid: TOML syntax, an unknown key, a bad value, a duplicate rule.
    #[error("policy line {line}: {message}")]
    Invalid {
        /// 1-based line of the offending key, value or rule.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The request's path is refused (ambiguous encodings, dot segments, empty segments...), so
    /// that no client can route around a prefix.
    #[error("request path refused: {0}")]
    Path(&'static str),
    /// The request's method is not an HTTP method token.
    #[error("request method refused: {0}")]
    Method(&'static str),
    /// The request's host is not a host name.
    #[error("request host refused: {0}")]
    Host(&'static str),
}
