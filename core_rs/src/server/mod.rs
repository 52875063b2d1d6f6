//! The downstream side: listener, accept loop and per-connection HTTP (HTTP/1.1 keep-alive served
//! by `h1.rs`, HTTP/2 prior knowledge handed to hyper), the edge limits (docs/architecture.md, "Edge
//! limits"; `edge.rs`), connection caps, the keep-alive idle timeout and a graceful drain.
//!
//! The server knows nothing of what a request means: it calls a [`Service`] for each one (the proxy
//! implements it in `proxy/service.rs`) and writes the response it gets back. It is generic over
//! the service and its body, monomorphised, so the call costs what a direct call costs. Its own
//! answers (edge rejects, heads it cannot parse, HTTP/2 framing errors) are built by one function,
//! [`error_response`].
mod drain;
pub mod edge;
pub mod h1;
mod idle;

use crate::http1::{error_body, BoxError};
use crate::sys::rawtcp::RawTcp;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::StatusCode;
use hyper::body::Body;
use hyper::server::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::TokioTimer;
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::net::TcpListener;

pub use h1::ClientBody;

/// What the server calls: one request in, one response out, plus the connection events a service
/// may count. Everything else (framing, keep-alive, limits, drain) is the server's.
pub trait Service: 'static {
    type Body: ResponseBody;

    /// Handle one request from `peer`. The future runs on the worker's thread, pinned in place on
    /// HTTP/1 (boxed by hyper on HTTP/2); dropped if the client goes away meanwhile. It borrows
    /// nothing from `self` (`use<Self>`): it may outlive the call.
    fn call(
        &self,
        req: Request<ClientBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + use<Self>;

    /// A connection was accepted (and admitted by the caps).
    fn conn_opened(&self) {}

    /// A connection closed.
    fn conn_closed(&self) {}

    /// Runs beside the accept loop until the server stops (e.g. periodic log flushes).
    fn housekeeping(&self) -> impl Future<Output = ()> + use<Self> {
        std::future::pending()
    }

    /// The server stopped accepting and drained (or gave up draining).
    fn stopped(&self) {}
}

/// What the server needs from a response body beyond [`Body`].
pub trait ResponseBody: Body<Data = Bytes, Error = BoxError> + Unpin + 'static {
    /// A body of these bytes, sent in one frame (the server's own error responses).
    fn full(data: Bytes) -> Self;

    /// Header lines to write as they are, after the response's header map, and whether they
    /// include a Date: the header pass-through (see `UpstreamRequest::raw_headers`).
    fn raw_headers(&self) -> Option<(&[u8], bool)> {
        None
    }
}

/// A response the gateway makes itself: `status` with `{"error_msg": reason}` as JSON. Every error
/// the server answers on its own (400/408/413/414/431/505 on HTTP/1, framing errors on HTTP/2) is
/// built here, and so are the request path's (404, 502, 504, a limiter's refusal, ...): the proxy
/// calls this with its own body type.
pub fn error_response<B: ResponseBody>(status: StatusCode, reason: &str) -> Response<B> {
    let mut r = Response::new(B::full(Bytes::from(error_body(reason))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The edge limits of one worker; built from the worker settings (`py/settings.rs`), which hold
/// the only defaults.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head_bytes: usize,
    /// Longest header field line (431); a longer request line gets 414 from the proxy.
    pub max_line_bytes: usize,
    pub max_headers: usize,
    /// A request head that started arriving must be complete within this (else 408 and close).
    pub header_timeout: Duration,
    /// An idle keep-alive connection (no request started) is closed after this.
    pub keepalive_idle: Duration,
    pub keepalive_requests: u64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub drain_timeout: Duration,
}

/// A listening socket with SO_REUSEPORT so every worker process accepts on the same port.
pub fn bind(addr: SocketAddr, backlog: i32) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_tcp_nodelay(true)?;
    sock.bind(&addr.into())?;
    sock.listen(backlog)?;
    sock.set_nonblocking(true)?;
    Ok(sock.into())
}

/// Executor for hyper's HTTP/2 streams: tasks stay on this worker's single thread.
#[derive(Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

fn h2_builder(limits: &Limits) -> http2::Builder<LocalExec> {
    let mut b = http2::Builder::new(LocalExec);
    b.timer(TokioTimer::new())
        .max_concurrent_streams(100)
        .initial_stream_window_size(64 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_header_list_size(limits.max_head_bytes as u32)
        .max_pending_accept_reset_streams(50)
        .keep_alive_interval(Duration::from_secs(30));
    b
}

/// Accept and serve until `shutdown` resolves, then drain in-flight requests (capped).
pub async fn serve<S: Service>(
    listener: std::net::TcpListener,
    svc: Rc<S>,
    limits: Limits,
    shutdown: impl Future<Output = bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let h2 = Rc::new(h2_builder(&limits));
    let head_limits = edge::HeadLimits {
        max_line: limits.max_line_bytes,
        max_head: limits.max_head_bytes,
        timeout: limits.header_timeout,
    };
    let drain_set = drain::Drain::default();
    let keepalive_idle = limits.keepalive_idle;
    // Open connections per client address (this worker's share; each worker enforces the cap).
    let per_ip: Rc<RefCell<HashMap<IpAddr, usize>>> = Rc::new(RefCell::new(HashMap::new()));
    tokio::pin!(shutdown);
    let housekeeping = tokio::task::spawn_local(svc.housekeeping());
    let drain = loop {
        tokio::select! {
            drain = &mut shutdown => break drain,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than spin.
                        eprintln!("pygateway: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let ip = peer.ip();
                let from_ip = per_ip.borrow().get(&ip).copied().unwrap_or(0);
                if drain_set.open() >= limits.max_connections || from_ip >= limits.max_connections_per_ip {
                    drop(stream); // over a cap: close fast so admitted latency stays bounded
                    continue;
                }
                let _ = stream.set_nodelay(true);
                svc.conn_opened();
                let admitted = drain_set.admit();
                *per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
                let act = Rc::new(idle::Activity::default());
                let io = edge::EdgeIo::new(RawTcp(stream), head_limits, act.clone());
                let opts = h1::ConnOpts {
                    peer,
                    act: act.clone(),
                    max_headers: limits.max_headers,
                    max_requests: limits.keepalive_requests,
                };
                let conn = h1::Conn::new(io, svc.clone(), h2.clone(), opts);
                let drain_set = drain_set.clone();
                let per_ip = per_ip.clone();
                let svc = svc.clone();
                tokio::task::spawn_local(async move {
                    drain_set.serve(admitted, conn, idle::IdleTimer::new(act, keepalive_idle)).await;
                    svc.conn_closed();
                    let mut m = per_ip.borrow_mut();
                    if let Some(n) = m.get_mut(&ip) {
                        *n -= 1;
                        if *n == 0 {
                            m.remove(&ip);
                        }
                    }
                });
            }
        }
    };
    drop(listener); // stop accepting: new connections go to the other workers
    if drain {
        drain_set.start();
        let _ = tokio::time::timeout(limits.drain_timeout, drain_set.closed()).await;
    }
    housekeeping.abort();
    svc.stopped();
    Ok(())
}

/// Resolves on SIGTERM (true: drain) or SIGINT/SIGQUIT (false: stop fast), or when `stop` fires.
pub async fn shutdown_signal(stop: tokio::sync::watch::Receiver<bool>) -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
    let mut stop = stop;
    tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => false,
        _ = quit.recv() => false,
        _ = stop.changed() => true,
    }
}
