//! The only PyO3 code: the `Worker` a worker process runs, the plugin views, and small handles
//! onto the router and limiter for validation and micro benchmarks.
pub mod cidr;
pub mod host;
pub mod jwt;
pub mod loadgen;
pub mod settings;
pub mod views;

use crate::config::Snapshot;
use crate::limit::{key_hash, monotonic_ns, Acquire, ShmTable};
use crate::observe::accesslog::{AccessLog, LogFormat, Sink};
use crate::observe::loggers::HttpLogQueue;
use crate::observe::metrics::shm::MetricsShm;
use crate::observe::metrics::Recorder;
use crate::observe::trace::{hex, SpanQueue};
use crate::observe::Observer;
use crate::proxy::phases::Phase;
use crate::proxy::table::RouteTable;
use crate::proxy::WorkerState;
use crate::router::ReqVars;
use crate::server::{self, Limits};
use arc_swap::ArcSwap;
use host::{PyChain, PyObj, SubmitSlot};
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pyo3::create_exception!(
    _core,
    ConfigError,
    pyo3::exceptions::PyValueError,
    "A config the data plane cannot compile."
);

fn parse_snapshot(snapshot: &[u8]) -> PyResult<Snapshot> {
    serde_json::from_slice(snapshot).map_err(|e| ConfigError::new_err(format!("snapshot: {e}")))
}

/// `chains` (route id → Python chain) come with the worker's async `submit` slot.
fn compile(
    py: Python<'_>,
    snapshot: &[u8],
    chains: Option<(&Bound<'_, PyDict>, &SubmitSlot)>,
) -> PyResult<RouteTable<PyChain>> {
    let snap = parse_snapshot(snapshot)?;
    let mut compiled: std::collections::HashMap<String, Arc<PyChain>> =
        std::collections::HashMap::new();
    if let Some((chains, submit)) = chains {
        for (k, v) in chains.iter() {
            let chain = PyChain::new(py, v.unbind(), submit.clone())?;
            compiled.insert(k.extract()?, Arc::new(chain));
        }
    }
    // Compiling 10k routes takes milliseconds: let the other threads run meanwhile.
    py.detach(|| RouteTable::compile(&snap, |id| compiled.get(id).cloned()))
        .map_err(|e| ConfigError::new_err(e.0))
}

/// One worker's data plane: a listener, a route table, and the loop that serves it.
#[pyclass(module = "pygateway._core", name = "Worker", frozen)]
pub struct Worker {
    table: Arc<ArcSwap<RouteTable<PyChain>>>,
    shm: Arc<ShmTable>,
    limits: Limits,
    max_uri_len: usize,
    /// Idle upstream connections kept per target, and for how long (`upstream::configure_pool`).
    pool: (usize, Duration),
    listener: Mutex<Option<std::net::TcpListener>>,
    submit: SubmitSlot,
    /// `drain() -> [(plugin, calls, ns)]`: Python plugin timings sampled by the chains.
    plugin_times: Mutex<Option<PyObj<PyAny>>>,
    stop_tx: tokio::sync::watch::Sender<bool>,
    /// Metrics slab and access log; moved onto the I/O thread by `run()`.
    observer: Mutex<Option<Observer>>,
    /// Finished trace spans, drained by the exporter thread.
    spans: Arc<SpanQueue>,
    /// http-logger entries, drained by the sender thread.
    http_logs: Arc<HttpLogQueue>,
}

#[pymethods]
impl Worker {
    /// `settings`: the worker settings as JSON (`pygateway.settings.Settings.worker_json`); every
    /// field is required (see `settings.rs`).
    #[new]
    #[pyo3(signature = (settings, shm_path=None, metrics_path=None, worker_id=0))]
    fn new(
        settings: &str,
        shm_path: Option<&str>,
        metrics_path: Option<&str>,
        worker_id: usize,
    ) -> PyResult<Worker> {
        let s = settings::WorkerSettings::parse(settings)
            .and_then(settings::WorkerSettings::check)
            .map_err(PyValueError::new_err)?;
        let observer = observer(
            metrics_path,
            worker_id,
            s.access_log.as_deref(),
            &s.access_log_format,
        )?;
        let spans = observer.spans.clone();
        let http_logs = observer.loggers.http.clone();
        let shm = match shm_path {
            Some(p) => ShmTable::open(std::path::Path::new(p)),
            None => ShmTable::anonymous(65_536),
        }
        .map_err(|e| PyOSError::new_err(format!("shared memory table: {e}")))?;
        let (stop_tx, _) = tokio::sync::watch::channel(false);
        Ok(Worker {
            table: Arc::new(ArcSwap::from_pointee(RouteTable::empty())),
            shm: Arc::new(shm),
            limits: s.limits,
            max_uri_len: s.max_uri_len,
            pool: (s.pool_max_idle, s.pool_idle_timeout),
            listener: Mutex::new(None),
            submit: SubmitSlot::default(),
            plugin_times: Mutex::new(None),
            stop_tx,
            observer: Mutex::new(Some(observer)),
            spans,
            http_logs,
        })
    }

    /// Up to `max` finished spans as tuples `(trace_id, span_id, parent_id | None, kind, name,
    /// start_ns, end_ns, error, [(key, value)])` with ids in hex (for the OTLP exporter).
    #[pyo3(signature = (max=512))]
    #[allow(clippy::type_complexity)]
    fn drain_spans(
        &self,
        max: usize,
    ) -> Vec<(
        String,
        String,
        Option<String>,
        u8,
        String,
        u64,
        u64,
        bool,
        Vec<(&'static str, String)>,
    )> {
        self.spans
            .drain(max)
            .into_iter()
            .map(|s| {
                (
                    hex(&s.trace),
                    hex(&s.span),
                    s.parent.map(|p| hex(&p)),
                    s.kind,
                    s.name,
                    s.start_ns,
                    s.end_ns,
                    s.error,
                    s.attrs,
                )
            })
            .collect()
    }

    /// Up to `max` http-logger entries as `[(target, [entry, ...])]`: `target` is the plugin conf
    /// (JSON, without `log_format`), each entry one JSON object. Report them with `log_entries_done`.
    #[pyo3(signature = (max=4096))]
    fn drain_log_entries<'py>(
        &self,
        py: Python<'py>,
        max: usize,
    ) -> Vec<(String, Vec<Bound<'py, PyBytes>>)> {
        self.http_logs
            .drain(max)
            .into_iter()
            .map(|(t, es)| {
                let es = es.iter().map(|e| PyBytes::new(py, e)).collect();
                (t.to_string(), es)
            })
            .collect()
    }

    /// Sleep (without the GIL) until an http-logger entry is queued or `timeout` seconds pass;
    /// True when entries are waiting. The sender's idle wait: no timer wakes an idle worker.
    fn wait_log_entries(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = seconds("timeout", timeout, true)?;
        let q = self.http_logs.clone();
        Ok(py.detach(|| q.wait(t)))
    }

    /// Like `wait_log_entries`, for the OTLP exporter's span queue.
    fn wait_spans(&self, py: Python<'_>, timeout: f64) -> PyResult<bool> {
        let t = seconds("timeout", timeout, true)?;
        let q = self.spans.clone();
        Ok(py.detach(|| q.wait(t)))
    }

    /// The sender is finished with `n` drained entries (`failed` of them given up): they no
    /// longer count against `max_pending_entries`.
    #[pyo3(signature = (n, failed=0))]
    fn log_entries_done(&self, n: usize, failed: u64) {
        self.http_logs.done(n, failed);
    }

    /// http-logger entries pushed and not yet reported done.
    #[getter]
    fn log_entries_pending(&self) -> usize {
        self.http_logs.pending()
    }

    /// Bind the listening socket (SO_REUSEPORT). Raises OSError naming the address on failure.
    #[pyo3(signature = (host, port, backlog=4096))]
    fn bind(&self, host: &str, port: u16, backlog: i32) -> PyResult<u16> {
        let ip: IpAddr = host.parse().map_err(|_| {
            PyValueError::new_err(format!(
                "listen address must be an IP address, got {host:?}"
            ))
        })?;
        let l = server::bind(SocketAddr::new(ip, port), backlog)
            .map_err(|e| PyOSError::new_err(format!("cannot listen on {host}:{port}: {e}")))?;
        let bound = l.local_addr().map(|a| a.port()).unwrap_or(port);
        *self.listener.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
        Ok(bound)
    }

    /// Compile and publish a config snapshot; requests in flight finish on the table they started with.
    /// `chains` maps route id → `pygateway.worker.host.Chain`.
    fn apply(&self, py: Python<'_>, snapshot: &[u8], chains: &Bound<'_, PyDict>) -> PyResult<u64> {
        let table = compile(py, snapshot, Some((chains, &self.submit)))?;
        let version = table.version;
        let old = self.table.swap(Arc::new(table));
        // The old table may hold Python chains: let it go while attached, off the I/O thread.
        drop(old);
        Ok(version)
    }

    #[getter]
    fn version(&self) -> u64 {
        self.table.load().version
    }

    /// `drain()` returns `[(plugin, calls, ns)]` timed since its last call; pulled once a second into
    /// the metrics (`pygateway_plugin_sampled_*`).
    fn set_plugin_times(&self, drain: Py<PyAny>) {
        *self.plugin_times.lock().unwrap_or_else(|p| p.into_inner()) = Some(PyObj::new(drain));
    }

    /// `submit(coro, waker)`: schedules an async plugin phase on the worker's asyncio loop.
    fn set_async_submit(&self, submit: Py<PyAny>) {
        self.submit.store(Some(Arc::new(PyObj::new(submit))));
    }

    /// Serve until SIGTERM (drain, then return), SIGINT/SIGQUIT (return at once) or `stop()`.
    fn run(&self, py: Python<'_>) -> PyResult<()> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("call bind() before run()"))?;
        let shared = (self.table.clone(), self.shm.clone());
        let limits = self.limits.clone();
        let max_uri_len = self.max_uri_len;
        crate::upstream::configure_pool(self.pool.0, self.pool.1);
        let stop_rx = self.stop_tx.subscribe();
        let mut obs = self
            .observer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| PyRuntimeError::new_err("run() was already called"))?;
        if let Some(drain) = self
            .plugin_times
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            obs.plugin_times = Some(Box::new(move |rec: &Recorder| {
                Python::attach(|py| {
                    let Ok(rows) = drain.get().bind(py).call0() else {
                        return;
                    };
                    if let Ok(rows) = rows.extract::<Vec<(String, u64, u64)>>() {
                        for (name, calls, ns) in rows {
                            rec.plugin_time(&name, calls, ns);
                        }
                    }
                })
            }));
        }
        py.detach(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| PyRuntimeError::new_err(format!("tokio runtime: {e}")))?;
            let local = tokio::task::LocalSet::new();
            let res = local.block_on(&rt, async move {
                let shared = Rc::new(WorkerState {
                    table: shared.0,
                    shm: shared.1,
                    max_uri_len,
                    obs: Rc::new(obs),
                });
                // Spawned, not driven directly: `block_on` polls its own future on every wake-up
                // of any task, and the accept loop's select over signal futures costs ~2.7k
                // instructions per poll; a JoinHandle is cheap to poll.
                let svc = Rc::new(crate::proxy::service::ProxyService::new(shared));
                let serve = server::serve(listener, svc, limits, server::shutdown_signal(stop_rx));
                match tokio::task::spawn_local(serve).await {
                    Ok(r) => r,
                    Err(e) => Err(std::io::Error::other(format!("server task failed: {e}"))),
                }
            });
            // Drop the runtime (and every task still holding Python objects) before returning.
            drop(local);
            drop(rt);
            res.map_err(|e| PyOSError::new_err(format!("serve: {e}")))
        })
    }

    /// Ask `run()` to drain and return (thread-safe).
    fn stop(&self) {
        let _ = self.stop_tx.send(true);
    }
}

/// The worker's metrics slab (a private one without a master) and its access log, if any.
/// `access_log` is a file path, or `fd:N` for a descriptor inherited from the master.
fn observer(
    metrics_path: Option<&str>,
    worker_id: usize,
    access_log: Option<&str>,
    format: &str,
) -> PyResult<Observer> {
    let shm = match metrics_path {
        Some(p) => MetricsShm::open(std::path::Path::new(p)),
        None => MetricsShm::anonymous(1, 1 << 20),
    }
    .map_err(|e| PyOSError::new_err(format!("metrics file: {e}")))?;
    let log = match access_log {
        None => None,
        Some(spec) => {
            let fmt = LogFormat::parse(format).map_err(PyValueError::new_err)?;
            let sink = match spec.strip_prefix("fd:") {
                Some(fd) => Sink::Fd(fd.parse().map_err(|_| {
                    PyValueError::new_err(format!("access_log: bad descriptor {spec:?}"))
                })?),
                None => Sink::File(spec.into()),
            };
            Some(
                AccessLog::open(fmt, sink)
                    .map_err(|e| PyOSError::new_err(format!("access log {spec}: {e}")))?,
            )
        }
    };
    Ok(Observer {
        rec: Recorder::new(Arc::new(shm), worker_id),
        log,
        spans: Default::default(),
        loggers: Default::default(),
        plugin_times: None,
        housekeeping: Default::default(),
    })
}

/// Creates the metrics file the workers write (one slab each) and renders it for Prometheus.
#[pyclass(module = "pygateway._core", name = "Metrics", frozen)]
pub struct Metrics {
    shm: MetricsShm,
}

#[pymethods]
impl Metrics {
    /// `create=True` (the master) makes a fresh file with `workers` slabs of `slab_bytes`.
    #[new]
    #[pyo3(signature = (path, workers=1, slab_bytes=4_194_304, create=false))]
    fn new(path: &str, workers: usize, slab_bytes: usize, create: bool) -> PyResult<Metrics> {
        let p = std::path::Path::new(path);
        let shm = if create {
            MetricsShm::create(p, workers, slab_bytes)
        } else {
            MetricsShm::open(p)
        }
        .map_err(|e| PyOSError::new_err(format!("metrics file {path}: {e}")))?;
        Ok(Metrics { shm })
    }

    /// Prometheus text exposition of every worker's counters, summed.
    fn render(&self, py: Python<'_>) -> String {
        py.detach(|| crate::observe::metrics::render(&self.shm))
    }
}

/// Dry-run compile of a snapshot (the master validates before pushing to workers).
#[pyfunction]
fn check_snapshot(py: Python<'_>, snapshot: &[u8]) -> PyResult<usize> {
    Ok(compile(py, snapshot, None)?.routes.len())
}

/// Route lookups without a server: for tests and micro benchmarks.
#[pyclass(module = "pygateway._core", name = "RouteMatcher", frozen)]
pub struct RouteMatcher {
    table: RouteTable<PyChain>,
}

#[pymethods]
impl RouteMatcher {
    #[new]
    fn new(py: Python<'_>, snapshot: &[u8]) -> PyResult<RouteMatcher> {
        Ok(RouteMatcher {
            table: compile(py, snapshot, None)?,
        })
    }

    /// The id of the route that `method host path` from `remote_addr` matches, or None.
    #[pyo3(signature = (method, host, path, remote_addr="127.0.0.1", headers=None, query=None))]
    fn find(
        &self,
        method: &str,
        host: &str,
        path: &str,
        remote_addr: &str,
        headers: Option<Vec<(String, String)>>,
        query: Option<&str>,
    ) -> PyResult<Option<String>> {
        let remote: IpAddr = remote_addr
            .parse()
            .map_err(|_| PyValueError::new_err(format!("bad address {remote_addr:?}")))?;
        let mut hm = http::HeaderMap::new();
        for (k, v) in headers.unwrap_or_default() {
            if let (Ok(k), Ok(v)) = (
                http::HeaderName::from_bytes(k.as_bytes()),
                http::HeaderValue::from_str(&v),
            ) {
                hm.append(k, v);
            }
        }
        let vars = ReqVars {
            headers: &hm,
            query,
            path,
            host,
            method,
            remote,
            scheme: "http",
            consumer: None,
        };
        let input = crate::router::MatchInput {
            path,
            host,
            method,
            remote_addr: remote,
            vars: &vars,
        };
        Ok(self
            .table
            .router
            .find(&input)
            .map(|i| self.table.routes[i].id.to_string()))
    }

    fn __len__(&self) -> usize {
        self.table.routes.len()
    }
}

/// The shared-memory limiter table, for tests and micro benchmarks.
#[pyclass(module = "pygateway._core", name = "Limiter", frozen)]
pub struct Limiter {
    shm: ShmTable,
}

#[pymethods]
impl Limiter {
    /// Create (`create=True`) or open the table at `path`; no path = process-local table.
    #[new]
    #[pyo3(signature = (path=None, slots=65_536, create=false))]
    fn new(path: Option<&str>, slots: usize, create: bool) -> PyResult<Limiter> {
        let shm = match path {
            Some(p) if create => ShmTable::create(std::path::Path::new(p), slots),
            Some(p) => ShmTable::open(std::path::Path::new(p)),
            None => ShmTable::anonymous(slots),
        }
        .map_err(|e| PyOSError::new_err(format!("shared memory table: {e}")))?;
        Ok(Limiter { shm })
    }

    /// GCRA decision for `key`: seconds to delay (0.0 = now), or None when rejected.
    fn gcra(&self, key: &str, rate: f64, burst: f64) -> Option<f64> {
        self.shm
            .gcra(key_hash(&[key.as_bytes()]), rate, burst, monotonic_ns())
            .ok()
            .map(|ns| ns as f64 / 1e9)
    }

    /// Fixed-window decision: (allowed, remaining, seconds until reset).
    fn fixed_window(&self, key: &str, count: u64, window: f64) -> (bool, u64, f64) {
        let d = self.shm.fixed_window(
            key_hash(&[key.as_bytes()]),
            count,
            (window * 1e9) as u64,
            monotonic_ns(),
        );
        (d.allowed, d.remaining, d.reset_ns as f64 / 1e9)
    }

    /// Take one of `limit` concurrent places of `key` (exact across the processes sharing the
    /// table): `(holders including this one, ticket)`, or None when all places are taken. Pass
    /// the ticket to `counter_release` exactly once. Ticket -1 = the table was full and the
    /// caller was let in uncounted (releasing it is a no-op).
    fn counter_acquire(&self, key: &str, limit: u64) -> Option<(u64, i64)> {
        match self
            .shm
            .counter_acquire(key_hash(&[key.as_bytes()]), limit, monotonic_ns())
        {
            Acquire::Admitted { count, slot } => Some((count, slot as i64)),
            Acquire::Rejected => None,
            Acquire::Untracked => Some((0, -1)),
        }
    }

    /// Give back the place `ticket` took; returns the holders left in its slot.
    fn counter_release(&self, key: &str, ticket: i64) -> u64 {
        match usize::try_from(ticket) {
            Ok(slot) => self.shm.counter_release(key_hash(&[key.as_bytes()]), slot),
            Err(_) => 0,
        }
    }

    /// Current holders of `key`.
    fn counter_value(&self, key: &str) -> u64 {
        self.shm.counter_value(key_hash(&[key.as_bytes()]))
    }
}

/// The extension module `pygateway._core`.
#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    register(m)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The phase list, in order: Python numbers its hooks by position (`Phase as u8`).
    let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.name()).collect();
    m.add("PHASES", pyo3::types::PyTuple::new(m.py(), phases)?)?;
    m.add_class::<Worker>()?;
    m.add_class::<RouteMatcher>()?;
    m.add_class::<Limiter>()?;
    m.add_class::<Metrics>()?;
    m.add_class::<cidr::CidrSet>()?;
    m.add_class::<views::PyRequest>()?;
    m.add_class::<views::PyHeaders>()?;
    m.add_class::<views::PyResponseView>()?;
    m.add_class::<host::Waker>()?;
    m.add_function(wrap_pyfunction!(check_snapshot, m)?)?;
    m.add_function(wrap_pyfunction!(jwt::verify_jws_signature, m)?)?;
    m.add_function(wrap_pyfunction!(jwt::check_jws_key, m)?)?;
    m.add_function(wrap_pyfunction!(loadgen::run_bench, m)?)?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

/// Seconds from Python as a `Duration`; a ValueError naming the argument for a negative, NaN or
/// too large value (and 0 unless `zero_ok`).
pub(crate) fn seconds(name: &str, v: f64, zero_ok: bool) -> PyResult<Duration> {
    Duration::try_from_secs_f64(v)
        .ok()
        .filter(|d| zero_ok || !d.is_zero())
        .ok_or_else(|| {
            let least = if zero_ok { ">= 0" } else { "> 0" };
            PyValueError::new_err(format!("{name}: expected seconds {least}, got {v}"))
        })
}
