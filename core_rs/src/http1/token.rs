//! Comma-separated header value tokens (`Connection: close, x-hop`).

/// Whether a comma-separated header value (e.g. `Connection`) lists `token`.
pub fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a Connection header value lists `close`.
pub fn has_close_token(v: &[u8]) -> bool {
    has_token(v, b"close")
}
