//! Hop-by-hop headers: they describe one connection and are never forwarded.
use http::header::HeaderName;

/// Hop-by-hop header names (RFC 9110 §7.6.1 and the usual extras): never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str().as_bytes())
}

pub const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];
