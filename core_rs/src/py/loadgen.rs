//! `run_bench`: the whole `pygateway bench` run in one call. The load runs on its own threads and
//! tokio runtimes with the GIL released; Python is entered only to check for Ctrl-C (every 50 ms)
//! and to call the progress callback (every `progress_interval` seconds).
use crate::loadgen::{self, Config, Error, Progress, Report};
use bytes::Bytes;
use pyo3::exceptions::{PyConnectionError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::time::{Duration, Instant};

/// Percentiles of the summary table (100 = max).
const TABLE: [f64; 7] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0];

fn secs(name: &str, v: f64) -> PyResult<Duration> {
    super::seconds(name, v, true)
}

/// Run a benchmark; returns plain data (see `pygateway/_core.pyi`). Raises ValueError for bad
/// arguments and ConnectionError naming the URL when a target cannot be reached.
#[pyfunction]
#[pyo3(signature = (urls, *, rate=None, duration=10.0, warmup=1.0, connections=50, threads=1,
    http2=false, method="GET", headers=Vec::new(), body=Vec::new(), timeout=10.0, progress=None,
    progress_interval=1.0))]
#[allow(clippy::too_many_arguments)]
pub fn run_bench(
    py: Python<'_>,
    urls: Vec<String>,
    rate: Option<f64>,
    duration: f64,
    warmup: f64,
    connections: usize,
    threads: usize,
    http2: bool,
    method: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: f64,
    progress: Option<Py<PyAny>>,
    progress_interval: f64,
) -> PyResult<Py<PyDict>> {
    if urls.is_empty() || urls.len() > 2 {
        return Err(PyValueError::new_err(
            "urls: give one target, or two to compare",
        ));
    }
    let cfg = Config {
        urls,
        rate,
        duration: secs("duration", duration)?,
        warmup: secs("warmup", warmup)?,
        connections,
        threads,
        http2,
        method: method.to_string(),
        headers,
        body: Bytes::from(body),
        timeout: secs("timeout", timeout)?,
    };
    let interval = secs("progress_interval", progress_interval)?;
    let mut next = Instant::now() + interval;
    let result = py.detach(|| {
        loadgen::run(&cfg, |p| {
            Python::attach(|py| {
                py.check_signals()?;
                if let Some(cb) = &progress {
                    if Instant::now() >= next {
                        next += interval;
                        cb.call1(py, (progress_dict(py, p)?,))?;
                    }
                }
                Ok::<(), PyErr>(())
            })
        })
    });
    match result {
        Ok(report) => report_dict(py, &cfg, &report),
        Err(Error::Config(m)) => Err(PyValueError::new_err(m)),
        Err(Error::Unreachable(m)) => Err(PyConnectionError::new_err(m)),
        Err(Error::Stopped(e)) => Err(e),
    }
}

fn progress_dict<'py>(py: Python<'py>, p: &Progress) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("elapsed", p.elapsed())?;
    d.set_item("warmup", p.warming_up())?;
    let targets = PyList::empty(py);
    for t in p.targets() {
        let td = PyDict::new(py);
        td.set_item("requests", t.responses)?;
        td.set_item("errors", t.errors)?;
        td.set_item("rate", t.rate)?;
        td.set_item("p50_us", t.p50_us)?;
        td.set_item("p99_us", t.p99_us)?;
        targets.append(td)?;
    }
    d.set_item("targets", targets)?;
    Ok(d)
}

fn report_dict(py: Python<'_>, cfg: &Config, r: &Report) -> PyResult<Py<PyDict>> {
    let d = PyDict::new(py);
    d.set_item("mode", if cfg.rate.is_some() { "open" } else { "closed" })?;
    d.set_item("rate_asked", cfg.rate)?;
    d.set_item("duration", r.duration)?;
    d.set_item("connections", cfg.connections)?;
    d.set_item("threads", cfg.threads)?;
    d.set_item("http2", cfg.http2)?;
    d.set_item("method", &cfg.method)?;
    let targets = PyList::empty(py);
    for t in &r.targets {
        let s = &t.summary;
        let td = PyDict::new(py);
        td.set_item("url", &t.url)?;
        td.set_item("requests", s.responses())?;
        td.set_item("rate", t.rate)?;
        td.set_item("errors", s.errors())?;
        td.set_item("status_errors", s.status_errors())?;
        td.set_item("socket_errors", s.socket_errors)?;
        td.set_item("last_error", &s.last_error)?;
        td.set_item("timeouts", s.timeouts)?;
        td.set_item("not_sent", s.not_sent)?;
        td.set_item("bytes", s.bytes)?;
        let statuses = PyDict::new(py);
        for (k, v) in &s.statuses {
            statuses.set_item(k, v)?;
        }
        td.set_item("statuses", statuses)?;
        let lat = PyDict::new(py);
        let empty = s.hist.is_empty();
        lat.set_item("min", if empty { 0 } else { s.hist.min() })?;
        lat.set_item("mean", if empty { 0.0 } else { s.hist.mean() })?;
        lat.set_item("stdev", if empty { 0.0 } else { s.hist.stdev() })?;
        lat.set_item("max", s.percentile_us(100.0))?;
        td.set_item("latency_us", lat)?;
        let table: Vec<(f64, u64)> = TABLE.iter().map(|&p| (p, s.percentile_us(p))).collect();
        td.set_item("percentiles", table)?;
        let curve: Vec<(f64, u64)> = loadgen::stats::curve_percentiles(s.responses())
            .into_iter()
            .map(|p| (p, s.percentile_us(p)))
            .collect();
        td.set_item("curve", curve)?;
        // Every recorded value with its count, for tools that want other statistics.
        let hist: Vec<(u64, u64)> = s
            .hist
            .iter_recorded()
            .map(|v| {
                (
                    s.hist.highest_equivalent(v.value_iterated_to()),
                    v.count_at_value(),
                )
            })
            .collect();
        td.set_item("histogram", hist)?;
        targets.append(td)?;
    }
    d.set_item("targets", targets)?;
    Ok(d.unbind())
}
