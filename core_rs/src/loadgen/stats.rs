//! Per-thread, per-target counters and latency histogram; merged for progress lines and the result.
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// Latencies in microseconds, 1 µs .. 60 s, 3 significant figures.
pub const MAX_US: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("static histogram bounds")
}

/// Written by one worker thread's tasks; read (locked briefly) by the progress reporter.
pub struct Stats {
    inner: Mutex<Inner>,
    pub socket_errors: AtomicU64,
    pub timeouts: AtomicU64,
    /// Open loop: requests whose send time came within the run but that were never sent.
    pub not_sent: AtomicU64,
    /// Requests on the wire right now (what is left at the end was cut off).
    pub in_flight: AtomicU64,
}

#[derive(Clone)]
struct Inner {
    hist: Histogram<u64>,
    statuses: BTreeMap<u16, u64>,
    bytes: u64,
    last_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            inner: Mutex::new(Inner {
                hist: new_histogram(),
                statuses: BTreeMap::new(),
                bytes: 0,
                last_error: None,
            }),
            socket_errors: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            not_sent: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }
}

impl Stats {
    pub fn record(&self, latency_us: u64, status: u16, bytes: u64) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.hist.saturating_record(latency_us.clamp(1, MAX_US));
        *g.statuses.entry(status).or_insert(0) += 1;
        g.bytes += bytes;
    }

    /// A request that got no response (connect, I/O or protocol error); the last message is kept.
    pub fn socket_error(&self, err: impl std::fmt::Display) {
        self.socket_errors.fetch_add(1, Relaxed);
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .last_error = Some(err.to_string());
    }
}

/// The merged view of one target across threads.
#[derive(Clone)]
pub struct Summary {
    pub hist: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub bytes: u64,
    pub socket_errors: u64,
    pub timeouts: u64,
    pub not_sent: u64,
    /// One of the socket errors' messages, to tell the user what went wrong.
    pub last_error: Option<String>,
}

impl Summary {
    /// `cut_off`: the run is over, so requests still in flight will never finish (timeouts).
    pub fn merge<'a>(parts: impl IntoIterator<Item = &'a Stats>, cut_off: bool) -> Summary {
        let mut s = Summary {
            hist: new_histogram(),
            statuses: BTreeMap::new(),
            bytes: 0,
            socket_errors: 0,
            timeouts: 0,
            not_sent: 0,
            last_error: None,
        };
        for p in parts {
            {
                let g = p.inner.lock().unwrap_or_else(|p| p.into_inner());
                // Same bounds everywhere, so adding cannot fail.
                let _ = s.hist.add(&g.hist);
                for (k, v) in &g.statuses {
                    *s.statuses.entry(*k).or_insert(0) += v;
                }
                s.bytes += g.bytes;
                if g.last_error.is_some() {
                    s.last_error.clone_from(&g.last_error);
                }
            }
            s.socket_errors += p.socket_errors.load(Relaxed);
            s.timeouts += p.timeouts.load(Relaxed);
            if cut_off {
                s.timeouts += p.in_flight.load(Relaxed);
            }
            s.not_sent += p.not_sent.load(Relaxed);
        }
        s
    }

    /// Responses received (any status).
    pub fn responses(&self) -> u64 {
        self.hist.len()
    }

    /// Responses that are not 2xx/3xx.
    pub fn status_errors(&self) -> u64 {
        self.statuses
            .iter()
            .filter(|(k, _)| !(200..400).contains(*k))
            .map(|(_, v)| v)
            .sum()
    }

    pub fn errors(&self) -> u64 {
        self.status_errors() + self.socket_errors + self.timeouts
    }

    /// Latency at percentile `p` (0..=100), µs; 0 when nothing was recorded.
    pub fn percentile_us(&self, p: f64) -> u64 {
        if self.hist.is_empty() {
            return 0;
        }
        if p >= 100.0 {
            return self.hist.max();
        }
        self.hist.value_at_quantile(p / 100.0)
    }
}

/// The percentiles of the latency-percentile curve: every 5% up to 90, then ten log-spaced steps per
/// decade of the tail (90, 92.1, 93.7, .., 99, .., 99.9, ..), as HdrHistogram plots do, as deep as
/// the sample count resolves; 100 (the maximum) last.
pub fn curve_percentiles(count: u64) -> Vec<f64> {
    let mut ps: Vec<f64> = (0..18).map(|i| i as f64 * 5.0).collect();
    let n = count as f64;
    'decades: for d in 1..=7 {
        for j in 0..10 {
            // The fraction of samples above this point: 0.1, 0.079, .., 0.01, ..
            let above = 10f64.powf(-(d as f64 + j as f64 / 10.0));
            if above * n < 1.0 {
                break 'decades;
            }
            ps.push(100.0 * (1.0 - above));
        }
    }
    ps.push(100.0);
    ps.dedup_by(|a, b| (*a - *b).abs() < 1e-12);
    ps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_threads_and_counts_errors() {
        let a = Stats::default();
        let b = Stats::default();
        for us in 1..=1000 {
            a.record(us, 200, 10);
        }
        b.record(5_000, 503, 0);
        b.socket_error("reset");
        b.socket_error("refused");
        b.in_flight.fetch_add(1, Relaxed);
        let s = Summary::merge([&a, &b], true);
        assert_eq!(s.responses(), 1001);
        assert_eq!(s.status_errors(), 1);
        assert_eq!(s.errors(), 1 + 2 + 1);
        assert_eq!(s.bytes, 10_000);
        assert_eq!(s.last_error.as_deref(), Some("refused"));
        let p50 = s.percentile_us(50.0);
        assert!((499..=502).contains(&p50), "p50 {p50}");
        assert!(s.hist.equivalent(s.percentile_us(100.0), 5_000));
    }

    #[test]
    fn clamps_out_of_range_latencies() {
        let a = Stats::default();
        a.record(0, 200, 0);
        a.record(u64::MAX, 200, 0);
        let s = Summary::merge([&a], true);
        assert_eq!(s.percentile_us(0.0), 1);
        assert!(s.percentile_us(100.0) >= MAX_US);
    }

    #[test]
    fn curve_goes_as_deep_as_the_samples_allow() {
        let c = curve_percentiles(1000);
        assert_eq!(c.first(), Some(&0.0));
        assert_eq!(c.last(), Some(&100.0));
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(c.iter().any(|p| (p - 99.9).abs() < 1e-9));
        assert!(c.iter().any(|p| (p - 50.0).abs() < 1e-9));
        assert!(!c.iter().any(|p| (p - 99.99).abs() < 1e-9));
        assert!(curve_percentiles(1_000_000).len() > c.len());
    }
}
