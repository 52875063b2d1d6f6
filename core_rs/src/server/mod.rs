//! Listener, accept loop and per-connection HTTP setup (HTTP/1.1 keep-alive + h2c prior knowledge),
//! with the edge limits of DESIGN §7 and a graceful drain.
mod drain;
pub mod edge;
pub mod h1;
mod idle;

use crate::observe::accesslog::Capture;
use crate::observe::metrics::shm::{G_INFLIGHT, G_REQUESTS};
use crate::proxy::{self, body::GwBody, phases::PluginChain, WorkerState};
use crate::sys::rawtcp::RawTcp;
use h1::ClientBody;
use hyper::server::conn::http2;
use hyper::{Request, Response};
use hyper_util::rt::TokioTimer;
use socket2::{Domain, Protocol, Socket, Type};
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;
use tokio::net::TcpListener;

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

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_bytes: 32 * 1024,
            max_line_bytes: 8 * 1024,
            max_headers: 100,
            header_timeout: Duration::from_secs(10),
            keepalive_idle: Duration::from_secs(60),
            keepalive_requests: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 1000,
            drain_timeout: Duration::from_secs(30),
        }
    }
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

/// `Box::pin(make())` without the copy: the allocation comes first, so the future is built straight
/// into it (`Box::pin` builds the ~3 KB proxy future on the stack and then copies all of it).
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::<F>::new_uninit(), make()))
}

/// Accept and serve until `shutdown` resolves, then drain in-flight requests (capped).
pub async fn serve<C: PluginChain>(
    listener: std::net::TcpListener,
    shared: Rc<WorkerState<C>>,
    limits: Limits,
    shutdown: impl Future<Output = bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    let h2 = Rc::new(h2_builder(&limits));
    let head_limits = edge::HeadLimits {
        max_line: limits.max_line_bytes,
        max_head: limits.max_head_bytes,
        max_headers: limits.max_headers,
        timeout: limits.header_timeout,
    };
    let drain_set = drain::Drain::default();
    let keepalive_idle = limits.keepalive_idle;
    // Open connections per client address (this worker's share; each worker enforces the cap).
    let per_ip: Rc<RefCell<HashMap<IpAddr, usize>>> = Rc::new(RefCell::new(HashMap::new()));
    tokio::pin!(shutdown);
    // Always: routes with file-logger / http-logger may come with any config change.
    let log_task = Some(tokio::task::spawn_local(log_housekeeping(
        shared.obs.clone(),
    )));
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
                shared.obs.conn_opened();
                let admitted = drain_set.admit();
                *per_ip.borrow_mut().entry(ip).or_insert(0) += 1;
                let conn_obs = shared.obs.clone();
                let shared = shared.clone();
                let max_req = limits.keepalive_requests;
                let act = Rc::new(idle::Activity::default());
                let conn_act = act.clone();
                let svc = Rc::new(move |req: Request<ClientBody>| {
                    let shared = shared.clone();
                    let in_flight = act.request();
                    let close = act.requests() >= max_req;
                    async move {
                        let _in_flight = in_flight;
                        let obs = shared.obs.clone();
                        obs.rec.bump(G_REQUESTS, 1);
                        obs.housekeeping.note();
                        obs.rec.bump(G_INFLIGHT, 1);
                        let capture = obs.log.as_ref().map(|l| Box::new(Capture::new(&l.format, &req, peer)));
                        let mut ex = crate::observe::Exchange::default();
                        if capture.is_some() {
                            ex.mark_start();
                            ex.trace_id = crate::observe::trace_id(&req);
                        }
                        // Boxed in place: the ~3 KB proxy state is built on the heap once; returned by
                        // value it would be copied into the connection's future (hyper's HTTP/2 server
                        // moves it again). memcpy was ~4% of a request's CPU.
                        let mut resp: Response<GwBody> = boxed_in_place(|| proxy::handle(shared, req, peer, &mut ex)).await;
                        obs.rec.bump(G_INFLIGHT, -1);
                        if close {
                            resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                        }
                        crate::proxy::meter(&obs, resp, ex, capture)
                    }
                });
                let io = edge::EdgeIo::new(RawTcp(stream), head_limits, conn_act.clone());
                let conn = h1::Conn::new(io, svc, h2.clone(), limits.max_headers);
                let drain_set = drain_set.clone();
                let per_ip = per_ip.clone();
                tokio::task::spawn_local(async move {
                    drain_set.serve(admitted, conn, idle::IdleTimer::new(conn_act, keepalive_idle)).await;
                    conn_obs.conn_closed();
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
    if let Some(t) = log_task {
        t.abort();
    }
    shared.obs.flush_log();
    Ok(())
}

/// Flush access log (and file-logger) lines at least every 100 ms and pull Python plugin timings
/// once a second while requests come; sleep while the worker is idle. Reopen the log files on
/// SIGUSR1 (logrotate).
async fn log_housekeeping(obs: Rc<crate::observe::Observer>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut usr1 = signal(SignalKind::user_defined1()).ok();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u32;
    let mut idle = false;
    loop {
        tokio::select! {
            _ = tick.tick(), if !idle => {
                // Looked at before the flush: an http-logger failure is counted before its entries
                // stop being pending, so the flush below moves it into the metrics.
                let quiet = obs.housekeeping.quiet() && obs.loggers.http.pending() == 0;
                obs.flush_log();
                ticks = ticks.wrapping_add(1);
                if ticks.is_multiple_of(10) || quiet {
                    obs.pull_plugin_times();
                }
                idle = quiet;
            }
            _ = obs.housekeeping.sleep(), if idle => {
                idle = false;
                tick.reset();
            }
            Some(_) = async { match usr1.as_mut() { Some(s) => s.recv().await, None => std::future::pending().await } } => {
                if let Some(log) = &obs.log {
                    log.reopen();
                }
                obs.loggers.reopen();
            }
        }
    }
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
