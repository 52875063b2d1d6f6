//! The HTTP/1 wire format shared by the downstream server (`server/`) and the upstream client
//! (`upstream/`): what both sides need to read and write HTTP/1.1 messages. Nothing here knows about
//! routes, plugins or sockets, and nothing here imports the rest of the crate.
//!
//! `token.rs` comma-separated header tokens; `length.rs` Content-Length values; `chunked.rs` the
//! chunked coding (chunk headers, the decoder); `hop.rs` the hop-by-hop header names; `addr.rs` an
//! IP address as header text (X-Forwarded-For; the router's `remote_addr` and the access log use it
//! too, so it sits here, below both); `io.rs` reading a socket into a buffer; `scan.rs` the
//! request-stream scanner behind the edge limits, with its typed [`Reject`]; here, the one
//! [`error_body`] of the gateway's own errors and the one [`BoxError`].
mod addr;
mod chunked;
mod hop;
mod io;
mod length;
mod scan;
mod token;

pub use addr::{ip_string, put_ip};
pub use chunked::{chunk_header, ChunkDecoder};
pub use hop::{is_hop_by_hop, HOP_BY_HOP};
pub use io::poll_read_into;
pub use length::parse_cl_value;
pub use scan::{Bad, Reject, Scanner};
pub use token::{has_close_token, has_token};

/// The error type of every body in the gateway (request bodies, upstream bodies, filtered bodies).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body of every error the gateway makes itself: `{"error_msg": "<msg>"}`, APISIX's shape, with
/// `msg` JSON-escaped.
pub fn error_body(msg: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 16);
    out.extend_from_slice(b"{\"error_msg\":");
    out.extend_from_slice(serde_json::Value::String(msg.into()).to_string().as_bytes());
    out.push(b'}');
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_body_is_json_with_the_message_escaped() {
        let b = super::error_body("bad \"x\"\n");
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error_msg"], "bad \"x\"\n");
        assert_eq!(super::error_body("a"), b"{\"error_msg\":\"a\"}");
    }
}
