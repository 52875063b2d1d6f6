//! Request path normalization, done once before routing so that what a route (and an auth plugin)
//! authorized is exactly what the upstream receives.
//!
//! Steps: decode percent-encoded unreserved characters (so `%2e%2e` is `..`), refuse encodings that
//! change the path's structure (`%2F`, `%5C`, `%00`) and raw `\` or NUL, remove dot segments
//! (RFC 3986 §5.2.4) and merge repeated slashes. Other percent-escapes are kept as sent (uppercased).

#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    Forbidden(&'static str),
    BadEscape,
}

impl PathError {
    pub fn message(&self) -> &'static str {
        match self {
            PathError::NotAbsolute => "request path must start with '/'",
            PathError::Forbidden(what) => what,
            PathError::BadEscape => "malformed percent-encoding in path",
        }
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// True when `path` is already in normal form (the common case): no escapes, dots after slashes,
/// double slashes, backslashes or NULs. Lets the hot path skip allocation.
fn is_plain(path: &[u8]) -> bool {
    let mut prev = 0u8;
    for &b in path {
        match b {
            b'%' | b'\\' | 0 => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => return false,
            _ => {}
        }
        prev = b;
    }
    true
}

/// Normalize an origin-form path (without the query string).
pub fn normalize_path(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let raw = path.as_bytes();
    if raw.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(raw) {
        return Ok(std::borrow::Cow::Borrowed(path));
    }
    // 1. decode unreserved escapes; keep the others (uppercased) and refuse structural ones.
    let mut decoded: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        match b {
            b'%' => {
                let (h, l) = match (
                    raw.get(i + 1).and_then(|&c| hex(c)),
                    raw.get(i + 2).and_then(|&c| hex(c)),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let v = h * 16 + l;
                match v {
                    b'/' => return Err(PathError::Forbidden("encoded '/' in path is not allowed")),
                    b'\\' => {
                        return Err(PathError::Forbidden("encoded '\\' in path is not allowed"))
                    }
                    0 => return Err(PathError::Forbidden("NUL in path is not allowed")),
                    _ if is_unreserved(v) => decoded.push(v),
                    _ => {
                        decoded.push(b'%');
                        decoded.push(raw[i + 1].to_ascii_uppercase());
                        decoded.push(raw[i + 2].to_ascii_uppercase());
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Forbidden("'\\' in path is not allowed")),
            0 => return Err(PathError::Forbidden("NUL in path is not allowed")),
            _ => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // 2. dot segments and empty segments.
    let mut out: Vec<&[u8]> = Vec::new();
    let trailing = {
        let last = decoded.rsplit(|&c| c == b'/').next().unwrap_or(b"");
        decoded.ends_with(b"/") || last == b"." || last == b".."
    };
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut res = String::with_capacity(decoded.len());
    for seg in &out {
        res.push('/');
        // Safe: input was a &str and we only removed/added ASCII bytes.
        res.push_str(std::str::from_utf8(seg).map_err(|_| PathError::BadEscape)?);
    }
    if res.is_empty() || trailing {
        res.push('/');
    }
    Ok(std::borrow::Cow::Owned(res))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let ok = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../a", "/a"),
            ("/public/../private", "/private"),
            ("/public/%2e%2e/private", "/private"),
            ("/public/%2E%2E/private", "/private"),
            ("/a/b/", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/a/%7euser", "/a/~user"),
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("//", "/"),
            ("/a/.hidden", "/a/.hidden"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize_path(input).unwrap(), want, "input {input}");
        }
        let bad = [
            ("a/b", PathError::NotAbsolute),
            (
                "/a%2fb",
                PathError::Forbidden("encoded '/' in path is not allowed"),
            ),
            (
                "/a%5Cb",
                PathError::Forbidden("encoded '\\' in path is not allowed"),
            ),
            ("/a\\b", PathError::Forbidden("'\\' in path is not allowed")),
            ("/a%00", PathError::Forbidden("NUL in path is not allowed")),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
        ];
        for (input, want) in bad {
            assert_eq!(normalize_path(input).unwrap_err(), want, "input {input}");
        }
    }

    #[test]
    fn plain_paths_borrow() {
        assert!(matches!(
            normalize_path("/api/v1/users").unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
