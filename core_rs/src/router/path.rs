//! URI pattern parsing (lua-resty-radixtree path syntax).
//!
//! * `/a/b`        exact path (hash lookup)
//! * `/a/*`, `/a*` prefix: the radix-tree key is everything before the first `*`
//!   (byte prefix, so `/a*` also matches `/abc` and `/a` itself; `/a/*` does not
//!   match `/a`).
//! * `/user/:id`   parameter: the tree key is everything before the first
//!   parameter marker, and the whole path must also match the pattern built from
//!   the segments (`:name` = one non-empty segment, `*name` = anything incl. `/`).

use regex::Regex;

/// How one uri of a route is indexed.
pub(crate) enum UriKind {
    /// Full match, looked up in the exact-path hash map.
    Exact(String),
    /// Lives in the radix tree under `key`; when `pattern` is set the whole
    /// request path must also match it (parameter routes).
    Tree {
        key: String,
        pattern: Option<ParamPattern>,
    },
}

/// One segment of a parameter pattern.
pub(crate) enum Seg {
    /// Literal segment text.
    Lit(Box<str>),
    /// `:name`: one non-empty segment (radixtree `([^/]+)`).
    Param,
}

/// Full-path pattern of a parameter uri. Every construct is segment-aligned, so
/// no regex is needed for the usual shapes; patterns with two or more `*name`
/// segments fall back to a (linear-time) regex.
pub(crate) enum ParamPattern {
    /// No `*`: the path must have exactly these segments.
    Segments(Vec<Seg>),
    /// One `*name` segment (radixtree `((.|\n)*)`, may span `/` and be empty)
    /// between `left` and `right` segments.
    Star {
        left: Vec<Seg>,
        right: Vec<Seg>,
    },
    Regex(Regex),
}

fn seg_matches(seg: &Seg, s: &str) -> bool {
    match seg {
        // Empty literals are skipped explicitly: an empty `Box<str>` has a
        // dangling pointer, and glibc's AVX-512 memcmp does a masked load from it
        // that costs a ~80 ns microcode assist even for zero length.
        Seg::Lit(l) => l.len() == s.len() && (l.is_empty() || **l == *s),
        Seg::Param => !s.is_empty(),
    }
}

/// Matches `segs` against the leading `/`-separated segments of `path`; returns
/// the unconsumed rest (after the separator following the last matched
/// segment), `Some("")`-vs-`None` distinguishing "ended exactly" from "more".
fn match_front<'p>(segs: &[Seg], path: &'p str) -> Option<Option<&'p str>> {
    let mut rest = Some(path);
    for seg in segs {
        let cur = rest?;
        let (s, tail) = match cur.as_bytes().iter().position(|&b| b == b'/') {
            Some(j) => (&cur[..j], Some(&cur[j + 1..])),
            None => (cur, None),
        };
        if !seg_matches(seg, s) {
            return None;
        }
        rest = tail;
    }
    Some(rest)
}

/// Same as [`match_front`] from the end of `path` (segments in pattern order).
fn match_back<'p>(segs: &[Seg], path: &'p str) -> Option<Option<&'p str>> {
    let mut rest = Some(path);
    for seg in segs.iter().rev() {
        let cur = rest?;
        let (s, head) = match cur.as_bytes().iter().rposition(|&b| b == b'/') {
            Some(j) => (&cur[j + 1..], Some(&cur[..j])),
            None => (cur, None),
        };
        if !seg_matches(seg, s) {
            return None;
        }
        rest = head;
    }
    Some(rest)
}

impl ParamPattern {
    pub(crate) fn is_match(&self, path: &str) -> bool {
        match self {
            // Exactly these segments, nothing after.
            ParamPattern::Segments(segs) => matches!(match_front(segs, path), Some(None)),
            ParamPattern::Star { left, right } => {
                // `left` from the front and `right` from the back, leaving at
                // least one (possibly empty) segment for the `*` between them,
                // without the two sides overlapping.
                let Some(Some(after_left)) = match_front(left, path) else {
                    return false;
                };
                let Some(Some(before_right)) = match_back(right, path) else {
                    return false;
                };
                let star_start = path.len() - after_left.len();
                let star_end = before_right.len();
                star_start <= star_end
            }
            ParamPattern::Regex(re) => re.is_match(path),
        }
    }
}

/// Parses one uri. Errors when it does not start with `/`.
pub(crate) fn parse(uri: &str) -> Result<UriKind, String> {
    if !uri.starts_with('/') {
        return Err(format!("uri {uri:?} must start with '/'"));
    }
    let bytes = uri.as_bytes();
    // First parameter marker: any `*`, or a `:` that starts a segment.
    // (radixtree treats any `:` as a marker; we only treat segment-leading ones,
    // so `/v1/things:batchGet` stays an exact path instead of degrading into a
    // prefix match on `/v1/things`.)
    let marker = bytes
        .iter()
        .enumerate()
        .position(|(i, &b)| b == b'*' || (b == b':' && i > 0 && bytes[i - 1] == b'/'));
    let Some(pos) = marker else {
        return Ok(UriKind::Exact(uri.to_owned()));
    };
    let key = uri[..pos].to_owned();

    let segments: Vec<&str> = uri.split('/').collect();
    let params = segments.iter().filter(|s| s.starts_with(':')).count();
    let stars = segments.iter().filter(|s| s.starts_with('*')).count();

    let last = segments.last().copied().unwrap_or("");
    let last_start = uri.len() - last.len();
    // No named segment at all (e.g. `/blog/bar*`), or the only one is a trailing
    // `*` segment right at the key end (`/blog/*`, `/blog/*rest`): a pure prefix.
    let pure_prefix = params + stars == 0
        || (params == 0 && stars == 1 && last.starts_with('*') && last_start == pos);
    if pure_prefix {
        return Ok(UriKind::Tree { key, pattern: None });
    }

    let to_seg = |s: &&str| {
        if s.starts_with(':') {
            Seg::Param
        } else {
            Seg::Lit((*s).into())
        }
    };
    let pattern = match stars {
        0 => ParamPattern::Segments(segments.iter().map(to_seg).collect()),
        1 => {
            let at = segments
                .iter()
                .position(|s| s.starts_with('*'))
                .unwrap_or(0);
            ParamPattern::Star {
                left: segments[..at].iter().map(to_seg).collect(),
                right: segments[at + 1..].iter().map(to_seg).collect(),
            }
        }
        _ => ParamPattern::Regex(full_regex(uri)?),
    };
    Ok(UriKind::Tree {
        key,
        pattern: Some(pattern),
    })
}

/// The radixtree full-path regex for a uri (`:x` -> `[^/]+`, `*x` -> `.*`,
/// literal segments escaped), anchored at both ends.
pub(crate) fn full_regex(uri: &str) -> Result<Regex, String> {
    let mut re = String::with_capacity(uri.len() + 16);
    re.push_str(r"\A(?:");
    for (i, seg) in uri.split('/').enumerate() {
        if i > 0 {
            re.push('/');
        }
        if seg.starts_with(':') {
            re.push_str("[^/]+");
        } else if seg.starts_with('*') {
            re.push_str("(?s:.*)");
        } else {
            re.push_str(&regex::escape(seg));
        }
    }
    re.push_str(r")\z");
    Regex::new(&re).map_err(|e| format!("uri {uri:?}: {e}"))
}
