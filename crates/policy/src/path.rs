//! Request paths made canonical, or refused.
//!
//! The policy decides on the path as the proxy forwards it, and the upstream may decode it again
//! in its own way. Anything two readers could take for different paths is refused rather than
//! guessed: a client must not reach `/admin` through `/public/../admin`, `/public//admin`,
//! `/public/%2e%2e/admin` or `/public%2Fadmin`.

use percent_encoding::percent_decode_str;

use crate::error::Error;

/// The longest request path (query excluded) looked at, in bytes.
pub const MAX_PATH_BYTES: usize = 8192;

/// A request path, decoded and split into segments (no empty, `.` or `..` segment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Segments(pub(crate) Vec<String>);

/// The path of a request target (`/a/b?q`, the query and fragment dropped), decoded and
/// checked. One trailing `/` is allowed and ignored; every other ambiguity is an error.
pub(crate) fn canonical(target: &str) -> Result<Segments, Error> {
    let path = match target.find(['?', '#']) {
        Some(i) => &target[..i],
        None => target,
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::Path("the path is longer than the limit"));
    }
    if !path.starts_with('/') {
        return Err(Error::Path("the path does not start with /"));
    }
    // Encoded separators would become separators for an upstream that decodes before routing.
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(Error::Path("the path has a percent-encoded slash or backslash"));
    }
    let decoded = percent_decode_str(path)
        .decode_utf8()
        .map_err(|_| Error::Path("the path is not UTF-8 once decoded"))?;
    if decoded.contains('%') {
        // `%25` decodes to `%`: a second decoding upstream would see a different path.
        return Err(Error::Path("the path is percent-encoded twice"));
    }
    if decoded.contains('\\') {
        return Err(Error::Path("the path has a backslash"));
    }
    if decoded.chars().any(char::is_control) {
        return Err(Error::Path("the path has a control character"));
    }
    let body = &decoded[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if body.is_empty() {
        return Ok(Segments(Vec::new()));
    }
    let mut out = Vec::new();
    for seg in body.split('/') {
        if seg.is_empty() {
            return Err(Error::Path("the path has an empty segment (//)"));
        }
        // `..;x` is `..` to servlet containers (path parameters): refused like `..`.
        let bare = seg.split(';').next().unwrap_or(seg);
        if bare == "." || bare == ".." {
            return Err(Error::Path("the path has a . or .. segment"));
        }
        out.push(seg.to_owned());
    }
    Ok(Segments(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        canonical(p).unwrap().0
    }

    #[test]
    fn plain_paths_split_into_segments() {
        assert_eq!(segs("/"), Vec::<String>::new());
        assert_eq!(segs("/a/b"), vec!["a", "b"]);
        assert_eq!(segs("/a/b/"), vec!["a", "b"]);
        assert_eq!(segs("/a/b?x=../..//"), vec!["a", "b"]);
        assert_eq!(segs("/a/%62"), vec!["a", "b"]);
        assert_eq!(segs("/a/b%20c"), vec!["a", "b c"]);
        assert_eq!(segs("/a/.well-known/x..y"), vec!["a", ".well-known", "x..y"]);
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        for bad in [
            "",
            "a/b",
            "http://h/a",
            "//a",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/a/..",
            "/a/.",
            "/a/%2e%2e/b",
            "/a/%2E/b",
            "/a/.%2e/b",
            "/a%2fb",
            "/a%2Fb",
            "/a%5cb",
            "/a\\b",
            "/a/%252e%252e/b",
            "/a/..;x/b",
            "/a/%00",
            "/a/\u{7f}",
            "/a/%ff",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(canonical(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
        assert!(canonical(&format!("/{}", "a".repeat(MAX_PATH_BYTES - 1))).is_ok());
    }
}
