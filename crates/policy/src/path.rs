//! Request paths made canonical, or refused.
//!
//! The policy decides on the path as the proxy forwards it, and the upstream may decode it again
//! in its own way. Anything two readers could take for different paths is refused rather than
//! guessed: a client must not reach `/admin` through `/public/../admin`, `/public//admin`,
//! `/public/%2e%2e/admin` or `/public%2Fadmin`.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::error::Error;

/// The longest request path (query excluded) looked at, in bytes.
pub const MAX_PATH_BYTES: usize = 8192;

/// A request path, decoded and checked: the text between the leading `/` and the optional
/// trailing `/`, its segments separated by `/` (none empty, `.` or `..`; none holds a `/`, since
/// encoded slashes are refused, so the text and the list of segments say the same thing). It
/// borrows the request target when nothing in it was percent-encoded: the common case costs no
/// allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Canonical<'a>(pub(crate) Cow<'a, str>);

impl<'a> Canonical<'a> {
    /// The segments, in order (none for `/`).
    pub(crate) fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }
}

/// Does `path` hold a percent-encoded slash or backslash (`%2f`, `%5c`, any case)?
fn encoded_separator(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && matches!((w[1], w[2].to_ascii_lowercase()), (b'2', b'f') | (b'5', b'c')))
}

/// Does `query` hold a `_method` key in a spelling some framework decodes to it? Pairs are split
/// on `&` and `;` (Rack 2 splits on both); each key is percent-decoded (`%5Fmethod`), `+` read as
/// a space, and `.`, `[` and ` ` taken for `_` (PHP does so in parameter names), in any case.
fn overrides_method(query: &str) -> bool {
    const KEY: &[u8] = b"_method";
    query.split(['&', ';']).any(|pair| {
        let key = pair.split('=').next().unwrap_or(pair);
        // Cheap first: a key that is `_method` must be 7 to 21 bytes (`%5F` for each byte).
        if key.len() < KEY.len() || key.len() > KEY.len() * 3 {
            return false;
        }
        let plus = key.replace('+', " ");
        let decoded: Vec<u8> = percent_decode_str(&plus).collect();
        decoded.len() == KEY.len()
            && decoded.iter().zip(KEY).all(|(a, b)| {
                let a = if matches!(a, b'.' | b'[' | b' ') { b'_' } else { a.to_ascii_lowercase() };
                a == *b
            })
    })
}

/// The path of a request target (`/a/b?q`, the query and fragment dropped), decoded and
/// checked. One trailing `/` is allowed and ignored; every other ambiguity is an error.
pub(crate) fn canonical(target: &str) -> Result<Canonical<'_>, Error> {
    // A client never sends a fragment: `/public#/../admin` is refused, not cut to `/public`
    // (an upstream that does not cut it would see another path).
    if target.contains('#') {
        return Err(Error::Path("the request target has a #"));
    }
    let path = match target.split_once('?') {
        Some((path, query)) => {
            // `_method=DELETE` makes many frameworks take a POST for another method: the policy
            // would judge the wrong operation.
            if overrides_method(query) {
                return Err(Error::Path("the query overrides the method (_method=)"));
            }
            path
        }
        None => target,
    };
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::Path("the path is longer than the limit"));
    }
    if !path.starts_with('/') {
        return Err(Error::Path("the path does not start with /"));
    }
    // Encoded separators would become separators for an upstream that decodes before routing.
    if encoded_separator(path) {
        return Err(Error::Path("the path has a percent-encoded slash or backslash"));
    }
    // Borrowed when there is no `%`: nothing to decode.
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
    // Path parameters: servlet containers and others route `/admin;x` as `/admin`, while the
    // policy would see another segment (`admin;x`). Plain or encoded (`%3B`), refused.
    if decoded.contains(';') {
        return Err(Error::Path("the path has a ; (path parameter)"));
    }
    let body = &decoded[1..];
    let body = body.strip_suffix('/').unwrap_or(body);
    if !body.is_empty() {
        for seg in body.split('/') {
            if seg.is_empty() {
                return Err(Error::Path("the path has an empty segment (//)"));
            }
            // `..;x` is `..` to servlet containers (path parameters): refused like `..`.
            let bare = seg.split(';').next().unwrap_or(seg);
            if bare == "." || bare == ".." {
                return Err(Error::Path("the path has a . or .. segment"));
            }
        }
    }
    let (start, end) = (1, 1 + body.len());
    Ok(Canonical(match decoded {
        Cow::Borrowed(d) => Cow::Borrowed(&d[start..end]),
        Cow::Owned(mut d) => {
            d.truncate(end);
            d.drain(..start);
            Cow::Owned(d)
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(p: &str) -> Vec<String> {
        canonical(p).unwrap().segments().map(str::to_owned).collect()
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
        assert_eq!(segs("/a/%C3%A9t%C3%A9/"), vec!["a", "été"]);
        assert_eq!(segs("/%2a/b"), vec!["*", "b"]);
        assert_eq!(segs("/a?my_method=1&x_method=2"), vec!["a"]);
        // Ordinary queries, and keys that only look like `_method`, still pass.
        assert_eq!(segs("/files/x?a=1&b=2;c=3"), vec!["files", "x"]);
        assert_eq!(segs("/files/x?q=_method%3DDELETE&m=_method"), vec!["files", "x"]);
        assert_eq!(segs("/files/x?__method=DELETE&_methods=1&method=DELETE"), vec!["files", "x"]);
        assert_eq!(segs("/files/x?%5F%5Fmethod=1&a%5Bb%5D=2&x=%5Fmethod"), vec!["files", "x"]);
    }

    #[test]
    fn plain_paths_borrow_and_encoded_ones_decode() {
        assert!(matches!(canonical("/a/b/?x").unwrap().0, Cow::Borrowed("a/b")));
        assert!(matches!(canonical("/").unwrap().0, Cow::Borrowed("")));
        let c = canonical("/a/%62/").unwrap();
        assert!(matches!(&c.0, Cow::Owned(s) if s == "a/b"));
        assert_eq!(canonical("/%61").unwrap().0, "a");
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
            "/a%2fb",
            "/a%5Cb",
            "/a/%2",
            "/a/b%",
            "/a/%2e%2E/b",
            "/a/%2e%2e",
            "/a/%2e/",
            "/a/b//",
            "/a/%25/b",
            "/a/%c3%28",
            "/a/%0a",
            // Path parameters: servlet containers route `/admin;x` as `/admin`.
            "/a;x/b",
            "/a%3bx",
            "/a%3Bx/b",
            "/admin;",
            // A fragment is refused, not cut off.
            "/public#/../admin",
            "/a#b",
            "/a?q#x",
            // A method override in the query, in the spellings frameworks decode to `_method`.
            "/a?_method=DELETE",
            "/a?x=1&_METHOD=put",
            "/files/x?%5Fmethod=DELETE",
            "/files/x?%5fmethod=DELETE",
            "/files/x?.method=DELETE",
            "/files/x?[method=DELETE",
            "/files/x?a=1;_method=DELETE",
            "/files/x?+method=DELETE",
            "/files/x?_method",
        ] {
            assert!(canonical(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(canonical(&format!("/{}", "a".repeat(MAX_PATH_BYTES))).is_err());
        assert!(canonical(&format!("/{}", "a".repeat(MAX_PATH_BYTES - 1))).is_ok());
    }
}
