//! `pygateway bench`'s load engine (no PyO3 here): many keep-alive connections per target, each a
//! task on one of `threads` current-thread tokio runtimes, in one of two modes:
//!
//! * closed loop (`rate: None`): every connection sends its next request as soon as the last one
//!   finished — maximum throughput, like `wrk`;
//! * open loop (`rate: Some(r)`): each target gets `r` req/s on a fixed schedule spread over its
//!   connections, like `wrk2`. A request that has to wait for its busy connection is timed from the
//!   moment it *should* have gone out, so a server stall shows up in every request it delayed rather
//!   than in just one per connection (no coordinated omission).
//!
//! With two targets (`--compare`) each gets its own connections and the same schedule, offset by half
//! a period, so the two are measured interleaved under the same conditions.
pub mod conn;
pub mod stats;
pub mod target;

use bytes::Bytes;
use conn::{Conn, RequestTemplate};
use stats::{Stats, Summary};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use target::Target;
use tokio::time::Instant as TInstant;

pub struct Config {
    pub urls: Vec<String>,
    /// Requests per second offered to each target; `None` = closed loop.
    pub rate: Option<f64>,
    pub duration: Duration,
    pub warmup: Duration,
    /// Connections per target.
    pub connections: usize,
    pub threads: usize,
    pub http2: bool,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// Per request; also how long requests still in flight at the end may take to finish.
    pub timeout: Duration,
}

#[derive(Debug)]
pub enum Error<E> {
    /// Bad arguments (message names the field).
    Config(String),
    /// A target refused or did not answer the first connection.
    Unreachable(String),
    /// The progress callback asked to stop (e.g. Ctrl-C); the run was cut short.
    Stopped(E),
}

/// The live state, computed on demand (merging histograms costs ~100 µs).
pub struct Progress<'a> {
    run: &'a Run,
}

pub struct TargetProgress {
    pub responses: u64,
    pub errors: u64,
    pub rate: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Progress<'_> {
    /// Seconds measured so far (0 during the warm-up).
    pub fn elapsed(&self) -> f64 {
        self.run.measured_elapsed(Instant::now())
    }

    pub fn warming_up(&self) -> bool {
        Instant::now() < self.run.warm_end
    }

    pub fn targets(&self) -> Vec<TargetProgress> {
        let secs = self.elapsed();
        (0..self.run.targets.len())
            .map(|t| {
                let s = self.run.summary(t, false);
                TargetProgress {
                    responses: s.responses(),
                    errors: s.errors(),
                    rate: if secs > 0.0 {
                        s.responses() as f64 / secs
                    } else {
                        0.0
                    },
                    p50_us: s.percentile_us(50.0),
                    p99_us: s.percentile_us(99.0),
                }
            })
            .collect()
    }
}

pub struct TargetReport {
    pub url: String,
    pub summary: Summary,
    /// Responses per second over the measured window.
    pub rate: f64,
}

pub struct Report {
    pub targets: Vec<TargetReport>,
    /// Length of the measured window, seconds.
    pub duration: f64,
}

/// Shared by the worker threads and the caller.
struct Run {
    targets: Vec<Target>,
    templates: Vec<RequestTemplate>,
    rate: Option<f64>,
    connections: usize,
    http2: bool,
    timeout: Duration,
    start: Instant,
    warm_end: Instant,
    end: Instant,
    stop: AtomicBool,
    /// `stats[thread][target]`.
    stats: Vec<Vec<Arc<Stats>>>,
}

impl Run {
    fn summary(&self, target: usize, cut_off: bool) -> Summary {
        Summary::merge(self.stats.iter().map(|th| &*th[target]), cut_off)
    }

    fn measured_elapsed(&self, now: Instant) -> f64 {
        now.min(self.end)
            .saturating_duration_since(self.warm_end)
            .as_secs_f64()
    }
}

pub fn run<E>(
    cfg: &Config,
    mut poll: impl FnMut(&Progress) -> Result<(), E>,
) -> Result<Report, Error<E>> {
    let targets = cfg
        .urls
        .iter()
        .map(|u| Target::parse(u))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Config)?;
    check_config(cfg).map_err(Error::Config)?;
    let templates = targets
        .iter()
        .map(|t| RequestTemplate::new(t, &cfg.method, &cfg.headers, cfg.body.clone(), cfg.http2))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Config)?;
    probe(
        &targets,
        &templates,
        cfg.http2,
        cfg.timeout.min(Duration::from_secs(5)),
    )
    .map_err(Error::Unreachable)?;

    let threads = cfg.threads.min(cfg.connections * targets.len()).max(1);
    // A short lead so every thread's runtime is up before the first scheduled send.
    let start = Instant::now() + Duration::from_millis(20);
    let run = Arc::new(Run {
        rate: cfg.rate,
        connections: cfg.connections,
        http2: cfg.http2,
        timeout: cfg.timeout,
        start,
        warm_end: start + cfg.warmup,
        end: start + cfg.warmup + cfg.duration,
        stop: AtomicBool::new(false),
        stats: (0..threads)
            .map(|_| targets.iter().map(|_| Arc::default()).collect())
            .collect(),
        targets,
        templates,
    });

    // Connection c of target t runs on thread (t * connections + c) % threads.
    let mut jobs: Vec<Vec<(usize, usize)>> = vec![Vec::new(); threads];
    for t in 0..run.targets.len() {
        for c in 0..cfg.connections {
            jobs[(t * cfg.connections + c) % threads].push((t, c));
        }
    }
    let handles: Vec<_> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, jobs)| {
            let run = run.clone();
            std::thread::Builder::new()
                .name(format!("bench-{i}"))
                .spawn(move || thread_main(run, i, jobs))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| Error::Config(format!("cannot start a thread: {e}")))?;

    let mut stopped = None;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        if stopped.is_none() {
            if let Err(e) = poll(&Progress { run: &run }) {
                run.stop.store(true, Relaxed);
                stopped = Some(e);
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if let Some(e) = stopped {
        return Err(Error::Stopped(e));
    }
    let duration = run.measured_elapsed(Instant::now());
    Ok(Report {
        duration,
        targets: (0..run.targets.len())
            .map(|t| {
                let summary = run.summary(t, true);
                TargetReport {
                    url: run.targets[t].url.clone(),
                    rate: summary.responses() as f64 / duration.max(1e-9),
                    summary,
                }
            })
            .collect(),
    })
}

fn check_config(cfg: &Config) -> Result<(), String> {
    if cfg.connections == 0 {
        return Err("connections: must be at least 1".into());
    }
    if cfg.threads == 0 {
        return Err("threads: must be at least 1".into());
    }
    if cfg.duration.is_zero() {
        return Err("duration: must be more than 0".into());
    }
    if let Some(r) = cfg.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!(
                "rate: must be a positive number of requests/s, got {r}"
            ));
        }
    }
    if cfg.timeout.is_zero() {
        return Err("timeout: must be more than 0".into());
    }
    Ok(())
}

/// One request to each target before the run, so an unreachable target (or one that does not speak
/// the protocol) is one clear error rather than a run of nothing but socket errors.
fn probe(
    targets: &[Target],
    templates: &[RequestTemplate],
    http2: bool,
    timeout: Duration,
) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(async {
        for (t, tpl) in targets.iter().zip(templates) {
            let mut conn = match tokio::time::timeout(timeout, Conn::connect(t, http2)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(format!("{}: cannot connect to {}: {e}", t.url, t.addr)),
                Err(_) => {
                    return Err(format!(
                        "{}: cannot connect to {}: no answer within {timeout:?}",
                        t.url, t.addr
                    ))
                }
            };
            let proto = if http2 { "h2c" } else { "HTTP/1.1" };
            match tokio::time::timeout(timeout, conn.exchange(tpl)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    let e = conn::describe(&e);
                    return Err(format!("{}: first {proto} request failed: {e}", t.url));
                }
                Err(_) => {
                    return Err(format!(
                        "{}: no response to a first {proto} request within {timeout:?}",
                        t.url
                    ))
                }
            }
        }
        Ok(())
    })
}

fn thread_main(run: Arc<Run>, thread: usize, jobs: Vec<(usize, usize)>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return, // counted as nothing sent; the caller's report shows it
    };
    rt.block_on(async {
        let mut set = tokio::task::JoinSet::new();
        for (t, c) in jobs {
            set.spawn(drive(run.clone(), t, c, run.stats[thread][t].clone()));
        }
        // Requests in flight at the end get `timeout` more to finish; what is left then is cut off.
        let deadline = TInstant::from_std(run.end + run.timeout);
        let all_done = async { while set.join_next().await.is_some() {} };
        let stop = async {
            while !run.stop.load(Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            _ = tokio::time::timeout_at(deadline, all_done) => {}
            _ = stop => {}
        }
        set.abort_all();
    });
}

/// One connection's loop: send, wait for the whole response, record, repeat until the end.
async fn drive(run: Arc<Run>, t: usize, c: usize, stats: Arc<Stats>) {
    let end = TInstant::from_std(run.end);
    let warm_end = TInstant::from_std(run.warm_end);
    // Open loop: this connection's share of the schedule. Target t's slots are offset by t/n of a
    // period so that two targets alternate.
    let schedule = run.rate.map(|r| {
        let n = run.targets.len() as f64;
        let first = run.start + Duration::from_secs_f64((c as f64 + t as f64 / n) / r);
        (
            TInstant::from_std(first),
            Duration::from_secs_f64(run.connections as f64 / r),
        )
    });
    let tpl = &run.templates[t];
    let mut conn: Option<Conn> = None;
    let mut k: u64 = 0;
    let mut idle_since = TInstant::from_std(run.start);
    loop {
        let now = TInstant::now();
        let intended = match schedule {
            Some((first, period)) => first + period.mul_f64(k as f64),
            None => now,
        };
        if intended >= end || now >= end || run.stop.load(Relaxed) {
            if let Some((_, period)) = schedule {
                // Slots this connection owed but could not send: the offered rate was not reached.
                let from = intended.max(warm_end);
                if from < end {
                    let owed = (end - from).as_secs_f64() / period.as_secs_f64();
                    stats.not_sent.fetch_add(owed.ceil() as u64, Relaxed);
                }
            }
            break;
        }
        k += 1;
        if intended > now {
            tokio::time::sleep_until(intended).await;
        }
        let begin = TInstant::now();
        // A request that waited behind a busy connection is timed from when it should have been sent;
        // if the connection was idle, any lateness is our timer's, not the server's.
        let from = if schedule.is_some() && idle_since > intended {
            intended
        } else {
            begin
        };
        let measured = match schedule {
            Some(_) => intended >= warm_end,
            None => begin >= warm_end,
        };
        // A keep-alive connection the server closed is replaced quietly (not an error).
        if let Some(c) = conn.as_mut() {
            if !c.ready().await {
                conn = None;
            }
        }
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Conn::connect(&run.targets[t], run.http2).await {
                Ok(new) => conn.insert(new),
                Err(e) => {
                    conn = None;
                    if measured {
                        stats.socket_error(format_args!("connect: {e}"));
                    }
                    // Do not spin on a refusing target; an open-loop slot waits for its turn anyway.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    idle_since = TInstant::now();
                    continue;
                }
            },
        };
        if measured {
            stats.in_flight.fetch_add(1, Relaxed);
        }
        let res = tokio::time::timeout(run.timeout, c.exchange(tpl)).await;
        let done = TInstant::now();
        idle_since = done;
        if measured {
            stats.in_flight.fetch_sub(1, Relaxed);
        }
        match res {
            Ok(Ok(ex)) => {
                if measured {
                    let us = (done - from).as_micros().min(u64::MAX as u128) as u64;
                    stats.record(us, ex.status, ex.bytes);
                }
                if ex.closed {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                conn = None;
                if measured {
                    stats.socket_error(conn::describe(&e));
                }
            }
            Err(_) => {
                conn = None;
                if measured {
                    stats.timeouts.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
