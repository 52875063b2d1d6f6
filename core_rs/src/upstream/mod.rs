//! The upstream client: HTTP/1.1 (plain or TLS) to the nodes the proxy picks, with a per-thread
//! keep-alive pool. It knows nothing of the downstream side: the request body is any
//! `http_body::Body` ([`SendBody`]), the response comes back as a [`UpstreamBody`].
//!
//! By concern: `mod.rs` the public API ([`Target`], [`UpstreamRequest`], [`send`]) and one
//! exchange; `pool.rs` the idle pool and its knobs ([`configure_pool`]); `connect.rs` TCP and TLS;
//! `encode.rs` the request; `decode.rs` the response head; `body.rs` the response body;
//! `lb.rs` the balancers. The wire format both sides share (chunked coding, Content-Length,
//! tokens, hop-by-hop names) is `http1/`.
//!
//! Everything runs inside the calling task: the request is written and the response head read by
//! the `send` future itself, and the response body is read from the socket by
//! [`UpstreamBody::poll_frame`]. There is no connection task, no channel, no lock: idle connections
//! live in a `thread_local!` pool keyed by (host, port, tls) and are reused LIFO.
//!
//! Thread assumption: a worker runs a tokio `current_thread` runtime, so `send` and the polling and
//! dropping of the returned body happen on the worker's one thread. The types are `Send` anyway;
//! a connection is only ever put back into the pool of the thread that opened it (its socket is
//! registered with that thread's reactor) — a body finished or dropped on another thread just closes
//! its connection.
mod body;
mod connect;
mod decode;
mod encode;
pub mod lb;
mod pool;
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Method, Response, Version};
use hyper::body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use crate::http1::BoxError;
use crate::http1::{parse_cl_value, ChunkDecoder};
use body::BodyState;
pub use body::UpstreamBody;
use connect::{connect, Conn};
use decode::{read_head, Fail, Head, RespFraming};
use encode::{encode_head, write_simple, write_stream, ReqFraming, StreamWriteError};
pub use pool::configure_pool;
use pool::{checkout, pool_key};
/// Socket reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// ... and reuse the spare capacity of the buffer when at least this much is left.
const MIN_READ: usize = 4 * 1024;

/// Where to send: a node. `tls` = None for http.
pub struct Target<'a> {
    /// IP literal (IPv6 without brackets) or DNS name.
    pub host: &'a str,
    pub port: u16,
    pub tls: Option<TlsMode>,
}

/// How an https upstream's certificate is checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TlsMode {
    /// webpki roots + hostname check (SNI = host).
    Verify,
    /// Accept any certificate (still TLS, handshake signatures still checked).
    NoVerify,
}

/// The request body to send. `B` is the caller's streamed body type (the proxy's is the
/// downstream request body); the client is monomorphised for it, so a stream costs no box.
pub enum SendBody<B> {
    Empty,
    Full(Bytes),
    /// Streamed: chunked unless the headers carry a Content-Length.
    Stream(B),
}

pub struct UpstreamRequest<'a, B> {
    pub method: &'a Method,
    /// origin-form, e.g. "/a/b?x=1"
    pub path_and_query: &'a str,
    /// complete (Host included, hop-by-hop already removed); written as given, except the framing
    /// headers (Content-Length / Transfer-Encoding), which are written to match `body`.
    pub headers: &'a HeaderMap,
    /// Written after `headers`, replacing any of the same names there (the proxy's Host and
    /// X-Forwarded-*: cheaper than inserting them into the map). Values must be valid header values.
    pub extra: &'a [(&'a HeaderName, &'a [u8])],
    pub body: SendBody<B>,
    /// Write after the other requests ready in this event-loop turn (see `write_simple`).
    pub batch: bool,
    /// `Some(replaced)`: the caller forwards the response headers untouched to an HTTP/1 client,
    /// so a 2xx response (not to HEAD, not 204) keeps them as encoded lines
    /// ([`UpstreamBody::raw_headers`]) and comes with an empty `HeaderMap`. Lines named in
    /// `replaced` (lower case) are left out: the caller adds its own ([`UpstreamBody::raw_lines_mut`],
    /// or the map when the response kept no lines).
    pub raw_headers: Option<&'static [&'static [u8]]>,
}

#[derive(Debug)]
pub enum UpstreamError {
    /// Could not connect (refused, unreachable, DNS): nothing was sent — safe to try another node.
    Connect(io::Error),
    ConnectTimeout,
    Tls(String),
    /// Timed out waiting for the response head (or writing the request).
    Timeout,
    /// The connection failed after the request was (maybe) sent, or the request body failed.
    Io(io::Error),
    BadResponse(&'static str),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "upstream connect error: {e}"),
            UpstreamError::ConnectTimeout => f.write_str("upstream connect timed out"),
            UpstreamError::Tls(e) => write!(f, "upstream TLS error: {e}"),
            UpstreamError::Timeout => f.write_str("upstream timed out"),
            UpstreamError::Io(e) => write!(f, "upstream I/O error: {e}"),
            UpstreamError::BadResponse(e) => write!(f, "bad upstream response: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) | UpstreamError::Io(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// send
// ---------------------------------------------------------------------------------------------

/// Send one request and return the response with a streaming body. Reuses an idle pooled
/// connection to the same (host, port, tls) when there is a live one; returns the connection to the
/// pool when the response body has been read to its end and both sides allow keep-alive.
///
/// A pooled connection that fails before any response byte arrives (the upstream closed it while
/// idle) is transparently replaced by a new one and the request replayed, once — for Empty/Full
/// bodies, and for Stream bodies of which no frame had been taken yet.
pub async fn send<B>(
    target: &Target<'_>,
    req: UpstreamRequest<'_, B>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Response<UpstreamBody>, UpstreamError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let UpstreamRequest {
        method,
        path_and_query,
        headers,
        extra,
        mut body,
        batch,
        raw_headers,
    } = req;
    let hash = pool_key(target.host, target.port, target.tls);
    let head_request = *method == Method::HEAD;
    if let Some(mut conn) = checkout(hash, target) {
        match exchange(
            &mut conn,
            method,
            path_and_query,
            headers,
            extra,
            &mut body,
            head_request,
            read_timeout,
            true,
            batch,
            raw_headers,
        )
        .await
        {
            Ok((head, close)) => return Ok(into_response(conn, head, close)),
            Err(f) if !f.retry => return Err(f.err),
            Err(_) => {}
        }
    }
    // Boxed: the connect (and TLS handshake) state is large and rare; unboxed it would be copied
    // with every request's future.
    let mut conn = Box::pin(connect(target, hash, connect_timeout)).await?;
    match exchange(
        &mut conn,
        method,
        path_and_query,
        headers,
        extra,
        &mut body,
        head_request,
        read_timeout,
        false,
        batch,
        raw_headers,
    )
    .await
    {
        Ok((head, close)) => Ok(into_response(conn, head, close)),
        Err(f) => Err(f.err),
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange<B>(
    conn: &mut Conn,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &[u8])],
    body: &mut SendBody<B>,
    head_request: bool,
    read_timeout: Duration,
    reused: bool,
    batch: bool,
    raw: Option<&'static [&'static [u8]]>,
) -> Result<(Head, bool), Fail>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    conn.rbuf.clear();
    conn.raw.active = false;
    let timeout_fail = || Fail {
        err: UpstreamError::Timeout,
        retry: false,
    };
    let (simple, framing) = match body {
        SendBody::Empty => (Some(Bytes::new()), ReqFraming::None),
        SendBody::Full(b) if b.is_empty() => (Some(Bytes::new()), ReqFraming::None),
        SendBody::Full(b) => (Some(b.clone()), ReqFraming::Length(b.len() as u64)),
        SendBody::Stream(inc) => {
            let given_cl = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| parse_cl_value(v.as_bytes()));
            if inc.is_end_stream() && given_cl.unwrap_or(0) == 0 {
                (Some(Bytes::new()), ReqFraming::None)
            } else {
                match given_cl {
                    Some(n) => (None, ReqFraming::GivenLength(n)),
                    None => (None, ReqFraming::Chunked),
                }
            }
        }
    };
    let close = encode_head(&mut conn.wbuf, method, path, headers, extra, framing);
    // The connection's response timer is out of it while the exchange borrows the connection (an
    // early error return drops it: that connection is not reused).
    let mut timer = conn.timer.take();
    let head = match simple {
        Some(bytes) => {
            let fut = async {
                if let Err(e) = write_simple(conn, &bytes, batch).await {
                    return Err(Fail {
                        err: UpstreamError::Io(e),
                        retry: reused,
                    });
                }
                read_head(conn, head_request, reused, raw).await
            };
            match within(&mut timer, read_timeout, fut).await {
                Some(r) => r?,
                None => return Err(timeout_fail()),
            }
        }
        None => {
            let SendBody::Stream(inc) = body else {
                unreachable!()
            };
            match write_stream(conn, inc, framing, read_timeout).await {
                Ok(()) => {}
                Err(StreamWriteError::Io(e, touched)) => {
                    return Err(Fail {
                        err: UpstreamError::Io(e),
                        retry: reused && !touched,
                    })
                }
                Err(StreamWriteError::Timeout) => return Err(timeout_fail()),
                Err(StreamWriteError::Body(e)) => {
                    return Err(Fail {
                        err: UpstreamError::Io(e),
                        retry: false,
                    })
                }
            }
            match within(
                &mut timer,
                read_timeout,
                read_head(conn, head_request, false, raw),
            )
            .await
            {
                Some(r) => r?,
                None => return Err(timeout_fail()),
            }
        }
    };
    conn.timer = timer;
    Ok((head, close))
}

/// A connection's response timer and the coarse-clock deadline (ms) it is armed for.
struct Timer(Pin<Box<tokio::time::Sleep>>, u64);

/// `fut`, or None once `dur` has passed. The timer is the connection's own and outlives a
/// request. It is moved only when it would fire too late: a request that needs a later deadline
/// leaves it armed and it is re-armed when it fires early (once per timeout on a busy
/// connection). Resetting it for every request cost a clock read and a timer update (~0.6% of a
/// proxied request); this costs a read of the coarse clock.
async fn within<F: Future>(timer: &mut Option<Timer>, dur: Duration, fut: F) -> Option<F::Output> {
    let dur_ms = dur.as_millis() as u64;
    let due = crate::sys::clock::monotonic_ms() + dur_ms;
    let timer = match timer {
        Some(t) if t.1 <= due => t,
        Some(t) => {
            t.0.as_mut().reset(tokio::time::Instant::now() + dur);
            t.1 = due;
            t
        }
        None => timer.insert(Timer(Box::pin(tokio::time::sleep(dur)), due)),
    };
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        while timer.0.as_mut().poll(cx).is_ready() {
            let now = crate::sys::clock::monotonic_ms();
            if now >= due {
                return Poll::Ready(None);
            }
            timer
                .0
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(due - now));
            timer.1 = due;
        }
        Poll::Pending
    })
    .await
}

fn into_response(mut conn: Box<Conn>, head: Head, req_close: bool) -> Response<UpstreamBody> {
    conn.body = match head.framing {
        RespFraming::Empty => BodyState::Done,
        RespFraming::Length(0) => BodyState::Done,
        RespFraming::Length(n) => BodyState::Length(n),
        RespFraming::Chunked => BodyState::Chunked(ChunkDecoder::default()),
        RespFraming::Eof => BodyState::Eof,
    };
    conn.reusable = head.keep_alive && !req_close;
    let c = &mut *conn;
    let done = match &mut c.body {
        BodyState::Done => true,
        // A chunked body that is already complete in the buffer ("0\r\n\r\n").
        BodyState::Chunked(dec) => dec.skip_framing(&mut c.rbuf).is_ok() && dec.is_done(),
        _ => false,
    };
    // Raw header lines live in the connection: it stays with the body until its first poll.
    let keep_for_raw = c.raw.active;
    let mut body = UpstreamBody { conn: Some(conn) };
    if done && !keep_for_raw {
        body.finish();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = head.headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The tests' request bodies: Empty and Full (a streamed body type is needed only to name one).
    type ReqBody = SendBody<http_body_util::Full<Bytes>>;
    use crate::http1::ChunkDecoder;
    use bytes::BytesMut;
    use http::header::HeaderValue;
    use http_body_util::BodyExt;
    use pool::pool_idle_count;
    use std::sync::atomic::AtomicUsize;
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    use std::sync::Mutex;
    use tokio::io::AsyncRead;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;

    const T: Duration = Duration::from_secs(5);

    /// What the scripted upstream does with the n-th request (over all connections).
    enum Act {
        /// Write these bytes and keep reading requests on the connection.
        Reply(Vec<u8>),
        /// Write these bytes, then close.
        ReplyClose(Vec<u8>),
        /// Write these bytes one at a time (with small pauses), keep the connection.
        Trickle(Vec<u8>),
        /// Close without answering (with RST when `true`).
        Close(bool),
        /// Never answer.
        Hang,
    }

    struct Upstream {
        port: u16,
        conns: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Upstream {
        fn target(&self) -> Target<'static> {
            Target {
                host: "127.0.0.1",
                port: self.port,
                tls: None,
            }
        }
        fn conns(&self) -> usize {
            self.conns.load(Ordering::SeqCst)
        }
        fn request(&self, i: usize) -> Vec<u8> {
            self.requests.lock().unwrap()[i].clone()
        }
    }

    /// Read one request (head + content-length or chunked body) from `s` into `buf`; returns its
    /// length, or None at EOF.
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let mut total = end + 4;
                if let Some(cl) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                {
                    total += cl.trim().parse::<usize>().unwrap();
                    if buf.len() >= total {
                        return Some(total);
                    }
                } else if head.contains("transfer-encoding: chunked") {
                    if let Some(p) = buf[end + 4..].windows(5).position(|w| w == b"0\r\n\r\n") {
                        return Some(end + 4 + p + 5);
                    }
                } else {
                    return Some(total);
                }
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    async fn upstream(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c2, r2) = (conns.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let (script, reqs) = (script.clone(), r2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(n) = read_request(&mut s, &mut buf).await {
                        let i = {
                            let mut r = reqs.lock().unwrap();
                            r.push(buf.drain(..n).collect());
                            r.len() - 1
                        };
                        match script(i) {
                            Act::Reply(b) => s.write_all(&b).await.unwrap(),
                            Act::ReplyClose(b) => {
                                let _ = s.write_all(&b).await;
                                return;
                            }
                            Act::Trickle(b) => {
                                for byte in b {
                                    s.write_all(&[byte]).await.unwrap();
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                            }
                            Act::Close(rst) => {
                                if rst {
                                    #[allow(deprecated)]
                                    let _ = s.set_linger(Some(Duration::ZERO));
                                }
                                return;
                            }
                            Act::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            port,
            conns,
            requests,
        }
    }

    /// `GET /` with these headers and no body.
    fn get_root(h: &HeaderMap) -> UpstreamRequest<'_, http_body_util::Full<Bytes>> {
        UpstreamRequest {
            method: &Method::GET,
            path_and_query: "/",
            headers: h,
            extra: &[],
            body: ReqBody::Empty,
            batch: false,
            raw_headers: None,
        }
    }

    fn host_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("up.example"));
        h
    }

    async fn req(
        t: &Target<'_>,
        method: &Method,
        path: &str,
        body: ReqBody,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let h = host_headers();
        send(
            t,
            UpstreamRequest {
                method,
                path_and_query: path,
                headers: &h,
                extra: &[],
                body,
                batch: false,
                raw_headers: None,
            },
            T,
            T,
        )
        .await
    }

    async fn get(t: &Target<'_>) -> Result<Response<UpstreamBody>, UpstreamError> {
        req(t, &Method::GET, "/", ReqBody::Empty).await
    }

    async fn body_of(r: Response<UpstreamBody>) -> Result<Vec<u8>, BoxError> {
        Ok(r.into_body().collect().await?.to_bytes().to_vec())
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-A: 1\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn content_length_body_and_reuse() {
        let up = upstream(|_| Act::Reply(ok("hello"))).await;
        let t = up.target();
        for _ in 0..3 {
            let r = get(&t).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.version(), Version::HTTP_11);
            assert_eq!(r.headers()["x-a"], "1");
            assert_eq!(r.headers()["content-length"], "5");
            assert_eq!(r.body().size_hint().exact(), Some(5));
            assert_eq!(body_of(r).await.unwrap(), b"hello");
        }
        assert_eq!(up.conns(), 1);
        assert_eq!(pool_idle_count(&t), 1);
    }

    /// `raw_headers`: a 2xx response keeps its header lines (hop-by-hop, Content-Length and the
    /// headers `Connection` names left out) with an empty map; others get the map as usual.
    #[tokio::test(flavor = "current_thread")]
    async fn raw_header_lines() {
        let up = upstream(|i| {
            Act::Reply(match i {
                0 => b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\
                       Keep-Alive: timeout=5\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nX-A: 1\r\n\r\nok"
                    .to_vec(),
                1 => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-B: 2\r\n\r\n".to_vec(),
                2 => b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n".to_vec(),
                4 => b"HTTP/1.1 200 OK\r\nX-RateLimit-Limit: 9\r\nX-D: 4\r\nContent-Length: 0\r\n\r\n".to_vec(),
                _ => b"HTTP/1.1 404 Not Found\r\nX-C: 3\r\nContent-Length: 0\r\n\r\n".to_vec(),
            })
        })
        .await;
        let t = up.target();
        let h = host_headers();
        let raw_get = || UpstreamRequest {
            raw_headers: Some(&[]),
            ..get_root(&h)
        };
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert!(r.headers().is_empty());
        assert_eq!(
            r.body().raw_headers(),
            Some((
                &b"Server: up\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nX-A: 1\r\n"[..],
                true
            ))
        );
        assert_eq!(r.body().size_hint().exact(), Some(2));
        assert_eq!(body_of(r).await.unwrap(), b"ok");
        // An empty body keeps its connection (and lines) until polled, then pools it.
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert_eq!(r.body().raw_headers(), Some((&b"X-B: 2\r\n"[..], false)));
        assert!(r.body().is_end_stream());
        assert_eq!(pool_idle_count(&t), 0);
        assert_eq!(body_of(r).await.unwrap(), b"");
        assert_eq!(pool_idle_count(&t), 1);
        // Headers named by Connection: the map, which drops them.
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert_eq!(r.body().raw_headers(), None);
        assert!(!r.headers().contains_key("x-hop"));
        assert_eq!(body_of(r).await.unwrap(), b"");
        // Not a 2xx: the map.
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert_eq!(r.body().raw_headers(), None);
        assert_eq!(r.headers()["x-c"], "3");
        // Lines the caller replaces are left out.
        let r = send(
            &t,
            UpstreamRequest {
                raw_headers: Some(&[b"x-ratelimit-limit"]),
                ..get_root(&h)
            },
            T,
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.body().raw_headers(), Some((&b"X-D: 4\r\n"[..], false)));
        assert_eq!(body_of(r).await.unwrap(), b"");
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn body_is_end_stream_after_last_frame() {
        let up = upstream(|_| Act::Reply(ok("abc"))).await;
        let t = up.target();
        let mut r = get(&t).await.unwrap();
        let f = r.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        assert!(r.body().is_end_stream());
        // pooled as soon as the last byte was yielded
        assert_eq!(pool_idle_count(&t), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_content_length_body_streams() {
        let big = "x".repeat(300_000);
        let b2 = big.clone();
        let up = upstream(move |_| Act::Reply(ok(&b2))).await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            let mut body = r.into_body();
            let mut total = Vec::new();
            let mut frames = 0;
            while let Some(f) = body.frame().await {
                let d = f.unwrap().into_data().unwrap();
                assert!(d.len() <= READ_CHUNK + MIN_READ + 1024);
                total.extend_from_slice(&d);
                frames += 1;
            }
            assert!(frames > 2);
            assert_eq!(total, big.as_bytes());
        }
        assert_eq!(up.conns(), 1);
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=val\r\nhello\r\n1 ; x\r\n \r\nB\r\nworld!!!!!!\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n";

    #[tokio::test(flavor = "current_thread")]
    async fn chunked_body() {
        let up = upstream(|_| Act::Reply(CHUNKED.to_vec())).await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            // Decoded here: the framing header is not handed on.
            assert!(!r.headers().contains_key("transfer-encoding"));
            assert_eq!(body_of(r).await.unwrap(), b"hello world!!!!!!");
        }
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hop_by_hop_response_headers_left_out() {
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
                  X-Private: 1\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        })
        .await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
            names.sort();
            assert_eq!(names, ["content-length", "x-kept"]);
            assert_eq!(body_of(r).await.unwrap(), b"ok");
        }
        assert_eq!(up.conns(), 1, "keep-alive still honoured");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn chunked_body_trickled_byte_by_byte() {
        let up = upstream(|_| Act::Trickle(CHUNKED.to_vec())).await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            assert_eq!(body_of(r).await.unwrap(), b"hello world!!!!!!");
        }
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_chunk_is_body_error() {
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
                    .to_vec(),
            )
        })
        .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        let mut body = r.into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "hello"
        );
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none());
        assert_eq!(pool_idle_count(&t), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_until_close_body() {
        let up =
            upstream(|_| Act::ReplyClose(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nall of it".to_vec()))
                .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert!(!r.body().is_end_stream());
        assert_eq!(body_of(r).await.unwrap(), b"all of it");
        assert_eq!(pool_idle_count(&t), 0);
        // HTTP/1.0 without keep-alive, with a length: not reused either
        let up =
            upstream(|_| Act::Reply(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()))
                .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert_eq!(body_of(r).await.unwrap(), b"ok");
        assert_eq!(pool_idle_count(&t), 0);
        // HTTP/1.0 with keep-alive is
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        })
        .await;
        let t = up.target();
        for _ in 0..2 {
            assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"ok");
        }
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_body_responses() {
        let up = upstream(|i| {
            Act::Reply(match i {
                0 => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(),
                1 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                2 => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n".to_vec(),
                _ => ok("end"),
            })
        })
        .await;
        let t = up.target();
        let r = req(&t, &Method::HEAD, "/", ReqBody::Empty).await.unwrap();
        assert!(r.body().is_end_stream());
        assert_eq!(r.headers()["content-length"], "10");
        assert_eq!(body_of(r).await.unwrap(), b"");
        for status in [204, 304] {
            let r = get(&t).await.unwrap();
            assert_eq!(r.status(), status);
            assert!(r.body().is_end_stream());
            assert_eq!(body_of(r).await.unwrap(), b"");
        }
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"end");
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn interim_responses_skipped_101_rejected() {
        let up = upstream(|i| {
            Act::Reply(if i == 0 {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec()
            } else {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec()
            })
        })
        .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("link").is_none());
        assert_eq!(body_of(r).await.unwrap(), b"ok");
        assert!(matches!(
            get(&t).await,
            Err(UpstreamError::BadResponse("upgrade not supported"))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connection_close_not_reused() {
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na".to_vec(),
            )
        })
        .await;
        let t = up.target();
        for _ in 0..2 {
            assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"a");
            assert_eq!(pool_idle_count(&t), 0);
        }
        assert_eq!(up.conns(), 2);
        // Connection: close on the request side
        let up = upstream(|_| Act::Reply(ok("b"))).await;
        let t = up.target();
        let mut h = host_headers();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        for _ in 0..2 {
            let rq = get_root(&h);
            assert_eq!(
                body_of(send(&t, rq, T, T).await.unwrap()).await.unwrap(),
                b"b"
            );
        }
        assert_eq!(up.conns(), 2);
        assert!(String::from_utf8(up.request(0))
            .unwrap()
            .contains("\r\nconnection: close\r\n"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_conn_closed_by_upstream_is_replaced() {
        // First answer then close (the FIN arrives while the connection sits in the pool).
        let up = upstream(|i| {
            if i == 0 {
                Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1".to_vec())
            } else {
                Act::Reply(ok("2"))
            }
        })
        .await;
        let t = up.target();
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"1");
        assert_eq!(pool_idle_count(&t), 1);
        tokio::time::sleep(Duration::from_millis(50)).await; // let the reactor see the FIN
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"2");
        assert_eq!(up.conns(), 2);
        assert_eq!(up.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reused_conn_failing_before_response_is_retried() {
        // Request 1 answered; request 2 (on the same, reused connection) gets a reset; the retry
        // on a new connection is answered.
        for rst in [true, false] {
            let up = upstream(move |i| match i {
                0 => Act::Reply(ok("1")),
                1 => Act::Close(rst),
                _ => Act::Reply(ok("3")),
            })
            .await;
            let t = up.target();
            assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"1");
            let r = req(
                &t,
                &Method::POST,
                "/p",
                ReqBody::Full(Bytes::from_static(b"data")),
            )
            .await
            .unwrap();
            assert_eq!(body_of(r).await.unwrap(), b"3");
            assert_eq!(up.conns(), 2);
            assert_eq!(up.request(1), up.request(2));
            assert!(up.request(2).ends_with(b"content-length: 4\r\n\r\ndata"));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fresh_conn_failing_is_not_retried() {
        let up = upstream(|_| Act::Close(true)).await;
        let t = up.target();
        assert!(matches!(get(&t).await, Err(UpstreamError::Io(_))));
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_responses() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid response status"),
            (b"HTTZ/1.1 200 OK\r\n\r\n", "invalid response version"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
                "malformed response head",
            ),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
                "malformed response head",
            ),
        ];
        for (resp, want) in cases {
            let r = resp.to_vec();
            let up = upstream(move |_| Act::Reply(r.clone())).await;
            match get(&up.target()).await {
                Err(UpstreamError::BadResponse(m)) => {
                    assert_eq!(m, want, "{:?}", String::from_utf8_lossy(resp))
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(resp)),
            }
        }
        // same content-length twice is fine
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nab".to_vec(),
            )
        })
        .await;
        assert_eq!(
            body_of(get(&up.target()).await.unwrap()).await.unwrap(),
            b"ab"
        );
        // huge head
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() < 70_000 {
            huge.extend_from_slice(format!("X-Filler: {}\r\n", "y".repeat(1000)).as_bytes());
        }
        let up = upstream(move |_| Act::Reply(huge.clone())).await;
        assert!(matches!(
            get(&up.target()).await,
            Err(UpstreamError::BadResponse("response head too large"))
        ));
        // too many headers
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let up = upstream(move |_| Act::Reply(many.clone())).await;
        assert!(matches!(
            get(&up.target()).await,
            Err(UpstreamError::BadResponse("too many response headers"))
        ));
        // truncated content-length body
        let up = upstream(|_| {
            Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
        })
        .await;
        assert!(body_of(get(&up.target()).await.unwrap()).await.is_err());
        // leftover bytes after the body: not pooled
        let up = upstream(|_| {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naEXTRA".to_vec())
        })
        .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert_eq!(body_of(r).await.unwrap(), b"a");
        assert_eq!(pool_idle_count(&t), 0);
        // TE + CL: chunked wins, not reused
        let up = upstream(|_| {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n".to_vec())
        })
        .await;
        let t = up.target();
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"z");
        assert_eq!(pool_idle_count(&t), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Target {
            host: "127.0.0.1",
            port,
            tls: None,
        };
        assert!(matches!(get(&t).await, Err(UpstreamError::Connect(_))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_timeout() {
        let up = upstream(|_| Act::Hang).await;
        let h = host_headers();
        let rq = get_root(&h);
        let start = std::time::Instant::now();
        let r = send(&up.target(), rq, T, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// The response timer is the connection's and outlives a request: on a pooled connection a
    /// longer timeout must push it later (no early fire), and a shorter one must still fire.
    #[tokio::test(flavor = "current_thread")]
    async fn read_timeout_on_a_reused_connection() {
        let slow_head = format!(
            "HTTP/1.1 200 OK\r\nx-pad: {}\r\ncontent-length: 1\r\n\r\nb",
            "p".repeat(100)
        );
        let up = upstream(move |i| match i {
            0 => Act::Reply(ok("a")),
            1 => Act::Trickle(slow_head.clone().into_bytes()), // head takes > 130 ms
            _ => Act::Hang,
        })
        .await;
        let send_with = |read: Duration| {
            let h = host_headers();
            let target = up.target();
            async move {
                let rq = get_root(&h);
                send(&target, rq, T, read).await
            }
        };
        let r = send_with(Duration::from_millis(50)).await.unwrap(); // arms the timer at +50 ms
        assert_eq!(body_of(r).await.unwrap(), b"a");
        let start = std::time::Instant::now();
        let r = send_with(Duration::from_secs(5)).await.unwrap();
        assert!(
            start.elapsed() > Duration::from_millis(100),
            "the head was trickled"
        );
        assert_eq!(body_of(r).await.unwrap(), b"b");
        let start = std::time::Instant::now();
        let r = send_with(Duration::from_millis(100)).await;
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(up.conns(), 1, "all three went over the pooled connection");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_timeout() {
        // No routable black hole is allowed in tests: fill the accept queue of a listener that
        // never accepts, so further SYNs are dropped and connect() hangs.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = sock.listen(0).unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Target {
            host: "127.0.0.1",
            port,
            tls: None,
        };
        let h = host_headers();
        for _ in 0..8 {
            let rq = get_root(&h);
            let start = std::time::Instant::now();
            match send(&t, rq, Duration::from_millis(200), Duration::from_millis(1)).await {
                Err(UpstreamError::ConnectTimeout) => {
                    assert!(start.elapsed() < Duration::from_secs(2));
                    return;
                }
                Err(UpstreamError::Timeout) => {}
                other => panic!("{other:?}"),
            }
            // connected (queued, then read timeout): it stays in the queue; try again
        }
        panic!("accept queue never filled");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_serialization() {
        let up = upstream(|_| Act::Reply(ok(""))).await;
        let t = up.target();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("up.example:8080"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999")); // replaced
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        ); // dropped
        let send_one = |m: &'static Method, body: ReqBody| {
            let h = h.clone();
            let t = up.target();
            async move {
                let rq = UpstreamRequest {
                    method: m,
                    path_and_query: "/a/b?x=1",
                    headers: &h,
                    extra: &[],
                    body,
                    batch: false,
                    raw_headers: None,
                };
                body_of(send(&t, rq, T, T).await.unwrap()).await.unwrap();
            }
        };
        send_one(&Method::POST, ReqBody::Full(Bytes::from_static(b"hello"))).await;
        let big = Bytes::from(vec![b'z'; 100_000]);
        send_one(&Method::PUT, ReqBody::Full(big.clone())).await;
        send_one(&Method::DELETE, ReqBody::Empty).await;
        let h2 = host_headers();
        let rq = UpstreamRequest {
            method: &Method::GET,
            path_and_query: "",
            headers: &h2,
            extra: &[],
            body: ReqBody::Full(Bytes::new()),
            batch: false,
            raw_headers: None,
        };
        body_of(send(&t, rq, T, T).await.unwrap()).await.unwrap();
        assert_eq!(
            up.request(0),
            b"POST /a/b?x=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 5\r\n\r\nhello"
        );
        let mut want = b"PUT /a/b?x=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 100000\r\n\r\n".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(up.request(1), want);
        assert_eq!(
            up.request(2),
            b"DELETE /a/b?x=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(up.request(3), b"GET / HTTP/1.1\r\nhost: up.example\r\n\r\n");
        assert_eq!(up.conns(), 1);
    }

    async fn exchange(c: &mut TcpStream, req: &'static [u8]) -> Vec<u8> {
        c.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut tmp = [0u8; 1024];
            let n = c.read(&mut tmp).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&tmp[..n]);
            if buf.ends_with(b"done") {
                return buf;
            }
        }
    }

    /// Streamed bodies need a real `Incoming`: run a hyper server that forwards to the upstream.
    #[tokio::test(flavor = "current_thread")]
    async fn streamed_request_bodies() {
        use hyper::service::service_fn;
        let up = upstream(|_| Act::Reply(ok("done"))).await;
        let up_port = up.port;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_port = l.local_addr().unwrap().port();
        // Local tasks: a streamed request body stays on its connection's thread.
        let local = tokio::task::LocalSet::new();
        local.spawn_local(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::task::spawn_local(async move {
                    let svc =
                        service_fn(move |r: http::Request<hyper::body::Incoming>| async move {
                            let (parts, body) = r.into_parts();
                            let mut h = parts.headers.clone();
                            h.remove(header::TRANSFER_ENCODING);
                            let t = Target {
                                host: "127.0.0.1",
                                port: up_port,
                                tls: None,
                            };
                            let rq = UpstreamRequest {
                                method: &parts.method,
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str()),
                                headers: &h,
                                extra: &[],
                                body: SendBody::Stream(body),
                                batch: false,
                                raw_headers: None,
                            };
                            match send(&t, rq, T, T).await {
                                Ok(resp) => Ok::<_, UpstreamError>(resp),
                                Err(e) => Err(e),
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let mut c = TcpStream::connect(("127.0.0.1", gw_port)).await.unwrap();
        local
            .run_until(async {
                exchange(
                    &mut c,
                    b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                )
                .await;
                exchange(
                    &mut c,
                    b"PUT /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
                )
                .await;
                exchange(&mut c, b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n").await;
            })
            .await;
        let r0 = String::from_utf8(up.request(0)).unwrap();
        assert!(r0.starts_with("POST /up HTTP/1.1\r\nhost: x\r\n"), "{r0}");
        assert!(
            r0.contains("\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{r0}"
        );
        let body0 = &r0[r0.find("\r\n\r\n").unwrap() + 4..];
        // however hyper split the frames, the decoded content is the same
        let mut dec = ChunkDecoder::default();
        let mut b = BytesMut::from(body0.as_bytes());
        let mut out = Vec::new();
        while let Some(d) = dec.decode(&mut b).unwrap() {
            out.extend_from_slice(&d);
        }
        assert!(dec.is_done());
        assert_eq!(out, b"hello world");
        assert_eq!(
            up.request(1),
            b"PUT /cl HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(up.request(2), b"GET /none HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(up.conns(), 1);
    }

    /// Self-signed (CN=localhost, SAN localhost + 127.0.0.1, valid until 2126), test only.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUeAlDOGkLZO28Q9W7xeuJMs3ZJd8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNjAzMjMxOFoYDzIxMjYxMTAy
MDMyMzE4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQQQnpc/8mHIgotM9D0vdfMpUzGbQMYJUnMMlmUK4su0rnMo6OJMjMT
3ywfOouG8yQn+V4MN4jK3biVMiWvvKFFo28wbTAdBgNVHQ4EFgQU7UajgIpArAV/
BkSYGa3RJsUOM3AwHwYDVR0jBBgwFoAU7UajgIpArAV/BkSYGa3RJsUOM3AwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAJLOXJwAD6DlzNcUe5JZO0UkDjOGrpCnQl25lROY3Di/AiEA
mUKlZXbLm+P09Zk+g3Qoex8gMkz1Z7qdumLf8UaEwpM=
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCM684ubc6miZdx8r
uhvgpXyg55bxfwC1GtgF5SXVAnqhRANCAAQQQnpc/8mHIgotM9D0vdfMpUzGbQMY
JUnMMlmUK4su0rnMo6OJMjMT3ywfOouG8yQn+V4MN4jK3biVMiWvvKFF
-----END PRIVATE KEY-----
";

    #[tokio::test(flavor = "current_thread")]
    async fn tls_upstream() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    while let Some(n) = read_request(&mut s, &mut buf).await {
                        buf.drain(..n);
                        s.write_all(&ok("tls")).await.unwrap();
                        s.flush().await.unwrap();
                    }
                });
            }
        });
        for host in ["127.0.0.1", "localhost"] {
            let t = Target {
                host,
                port,
                tls: Some(TlsMode::NoVerify),
            };
            for _ in 0..3 {
                assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"tls");
            }
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        let t = Target {
            host: "localhost",
            port,
            tls: Some(TlsMode::Verify),
        };
        assert!(matches!(get(&t).await, Err(UpstreamError::Tls(_))));
    }

    /// A response body may end on another thread (see the next test). The `send` future is not
    /// `Send`: a streamed request body reads from its client connection, which lives on the
    /// worker's one thread.
    #[test]
    fn types_are_send() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<UpstreamBody>();
        is_send_sync::<UpstreamError>();
    }

    #[test]
    fn body_dropped_on_other_thread_is_not_pooled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = upstream(|_| Act::Reply(ok("abc"))).await;
            let t = up.target();
            let r = get(&t).await.unwrap();
            let body = std::thread::spawn(move || {
                let mut b = r.into_body();
                // finish it on another thread: must not enter that thread's pool
                let data = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async { b.frame().await.unwrap().unwrap().into_data().unwrap() });
                assert_eq!(
                    pool_idle_count(&Target {
                        host: "127.0.0.1",
                        port: t.port,
                        tls: None
                    }),
                    0
                );
                data
            })
            .join()
            .unwrap();
            assert_eq!(body, "abc");
            assert_eq!(pool_idle_count(&t), 0);
        });
    }
}
