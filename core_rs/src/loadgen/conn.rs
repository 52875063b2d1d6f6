//! One client connection (HTTP/1.1 keep-alive, or h2c with prior knowledge) and one request on it.
use super::target::Target;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// What every request of a target looks like; built once, cloned per request (cheap: `Bytes`).
#[derive(Clone)]
pub struct RequestTemplate {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl RequestTemplate {
    pub fn new(
        target: &Target,
        method: &str,
        headers: &[(String, String)],
        body: Bytes,
        http2: bool,
    ) -> Result<RequestTemplate, String> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| format!("bad HTTP method {method:?}"))?;
        // h2 needs scheme and authority in the URI (they become pseudo-headers); h1 sends origin-form.
        let uri = if http2 {
            format!("http://{}{}", target.authority, target.path)
        } else {
            target.path.clone()
        };
        let uri: Uri = uri
            .parse()
            .map_err(|e| format!("{}: bad path: {e}", target.url))?;
        let mut map = HeaderMap::new();
        if !http2 {
            map.insert(
                http::header::HOST,
                target
                    .authority
                    .parse()
                    .map_err(|_| format!("{}: bad host", target.url))?,
            );
        }
        for (k, v) in headers {
            let name = http::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| format!("bad header name {k:?}"))?;
            let value = http::HeaderValue::from_str(v.trim())
                .map_err(|_| format!("bad value for header {k:?}"))?;
            if http2 && name == http::header::HOST {
                continue; // `:authority` carries it
            }
            map.insert(name, value);
        }
        Ok(RequestTemplate {
            method,
            uri,
            headers: map,
            body,
        })
    }

    fn build(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(self.body.clone()));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }
}

pub enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// What a finished exchange tells the stats: status and body bytes read.
pub struct Exchange {
    pub status: u16,
    pub bytes: u64,
    /// The server asked to close (or the connection can no longer be used).
    pub closed: bool,
}

impl Conn {
    pub async fn connect(target: &Target, http2: bool) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let io = TokioIo::new(stream);
        let err = |e: hyper::Error| std::io::Error::other(e.to_string());
        if http2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(err)?;
            tokio::spawn(conn);
            Ok(Conn::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io).await.map_err(err)?;
            tokio::spawn(conn);
            Ok(Conn::H1(sender))
        }
    }

    /// Whether the connection can take another request (a closed keep-alive connection cannot).
    pub async fn ready(&mut self) -> bool {
        match self {
            Conn::H1(s) => s.ready().await.is_ok(),
            Conn::H2(s) => s.ready().await.is_ok(),
        }
    }

    /// Send one request and read the whole response body (so the connection can be reused).
    pub async fn exchange(&mut self, tpl: &RequestTemplate) -> Result<Exchange, hyper::Error> {
        let resp = match self {
            Conn::H1(s) => s.send_request(tpl.build()).await?,
            Conn::H2(s) => s.send_request(tpl.build()).await?,
        };
        let status = resp.status().as_u16();
        let closed = resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let mut body = resp.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            if let Some(d) = frame?.data_ref() {
                bytes += d.len() as u64;
            }
        }
        Ok(Exchange {
            status,
            bytes,
            closed,
        })
    }
}

/// An error with its causes ("http2 error: connection error detected: frame with invalid size"):
/// hyper's own messages alone are too terse to act on.
pub fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let msg = c.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cause = c.source();
    }
    out
}
