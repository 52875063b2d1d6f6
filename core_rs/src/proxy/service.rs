//! The proxy as the server's [`Service`]: what happens around [`handle`](super::handle) for every
//! request (request gauges, the access-log capture and the metering of the response), the
//! connection gauges, and the housekeeping task that flushes logs. The server (`server/`) knows
//! none of this; it only calls the trait.
use super::body::GwBody;
use super::meter;
use super::phases::PluginChain;
use super::WorkerState;
use crate::observe::accesslog::Capture;
use crate::observe::metrics::shm::{G_INFLIGHT, G_REQUESTS};
use crate::observe::{trace_id, Exchange, Observer};
use crate::server::{ClientBody, ResponseBody, Service};
use bytes::Bytes;
use http::{Request, Response};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

/// The worker's request handler, as the server sees it; `C` is the routes' plugin chain.
pub struct ProxyService<C: PluginChain>(Rc<WorkerState<C>>);

impl<C: PluginChain> ProxyService<C> {
    pub fn new(state: Rc<WorkerState<C>>) -> ProxyService<C> {
        ProxyService(state)
    }
}

/// `Box::pin(make())` without the copy: the allocation comes first, so the future is built straight
/// into it (`Box::pin` builds the ~3 KB proxy future on the stack and then copies all of it).
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    Box::into_pin(Box::write(Box::<F>::new_uninit(), make()))
}

impl<C: PluginChain> Service for ProxyService<C> {
    type Body = GwBody;

    fn call(
        &self,
        req: Request<ClientBody>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<GwBody>> + use<C> {
        let shared = self.0.clone();
        async move {
            let obs = shared.obs.clone();
            obs.rec.bump(G_REQUESTS, 1);
            obs.housekeeping.note();
            obs.rec.bump(G_INFLIGHT, 1);
            let capture = obs
                .log
                .as_ref()
                .map(|l| Box::new(Capture::new(&l.format, &req, peer)));
            let mut ex = Exchange::default();
            if capture.is_some() {
                ex.mark_start();
                ex.trace_id = trace_id(&req);
            }
            // Boxed in place: the ~3 KB proxy state is built on the heap once; returned by value
            // it would be copied into the connection's future (hyper's HTTP/2 server moves it
            // again). memcpy was ~4% of a request's CPU.
            let resp = boxed_in_place(|| super::handle(shared, req, peer, &mut ex)).await;
            obs.rec.bump(G_INFLIGHT, -1);
            meter(&obs, resp, ex, capture)
        }
    }

    fn conn_opened(&self) {
        self.0.obs.conn_opened();
    }

    fn conn_closed(&self) {
        self.0.obs.conn_closed();
    }

    fn housekeeping(&self) -> impl Future<Output = ()> + use<C> {
        // Always: routes with file-logger / http-logger may come with any config change.
        log_housekeeping(self.0.obs.clone())
    }

    fn stopped(&self) {
        self.0.obs.flush_log();
    }
}

impl ResponseBody for GwBody {
    fn full(data: Bytes) -> GwBody {
        GwBody::full(data)
    }

    fn raw_headers(&self) -> Option<(&[u8], bool)> {
        GwBody::raw_headers(self)
    }
}

/// Flush access log (and file-logger) lines at least every 100 ms and pull Python plugin timings
/// once a second while requests come; sleep while the worker is idle. Reopen the log files on
/// SIGUSR1 (logrotate).
async fn log_housekeeping(obs: Rc<Observer>) {
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
