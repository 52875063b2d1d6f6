//! The request as it came in: its host, its body, and (submodules) its normalized path and the
//! variables routes and plugins read.
pub mod normalize;
pub mod vars;

use super::body::GwBody;
use super::respond::{error_response, with_close};
use crate::server::h1::ClientBody;
use bytes::Bytes;
use http::header;
use http::{Request, Response, StatusCode};

pub(crate) fn host_of(req: &Request<ClientBody>) -> String {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("");
    // Strip the port (keep IPv6 brackets' content intact).
    let hostpart = if raw.starts_with('[') {
        raw.split(']').next().map(|s| &s[1..]).unwrap_or(raw)
    } else {
        raw.rsplit_once(':').map(|(h, _)| h).unwrap_or(raw)
    };
    hostpart.to_ascii_lowercase()
}

/// The request body: streamed to the upstream, or read whole because a plugin asked for it (the
/// bytes then live in the plugin view, where plugins may replace them).
pub(crate) enum ReqBody {
    Stream(ClientBody),
    Buffered,
}

/// Read a whole request body for plugins that need it: at most 1 MiB (413), 30 s idle (408).
pub(crate) async fn read_body(incoming: ClientBody) -> Result<Bytes, Response<GwBody>> {
    use http_body_util::BodyExt;
    let limited = http_body_util::Limited::new(incoming, MAX_BUFFERED_BODY);
    match tokio::time::timeout(BODY_TIMEOUT, limited.collect()).await {
        Err(_) => Err(with_close(error_response(
            StatusCode::REQUEST_TIMEOUT,
            "request body timed out",
        ))),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(with_close(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body larger than 1 MiB",
            )))
        }
        Ok(Err(_)) => Err(with_close(error_response(
            StatusCode::BAD_REQUEST,
            "malformed request body",
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

const MAX_BUFFERED_BODY: usize = 1024 * 1024;
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
