//! Request metrics: recorded in Rust by each worker into its slab of a shared-memory file
//! (`shm.rs`), summed across workers and rendered as Prometheus text by the master (`render`).
//! Metric names and labels follow APISIX's prometheus plugin so its Grafana dashboard works.
pub mod shm;

use shm::{
    observe, Counters, MetricsShm, SlabWriter, BUCKETS_MS, HIST_WORDS, KIND_HTTP, KIND_LIMIT,
    KIND_PLUGIN, KIND_UPSTREAM,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// Label separator inside entry keys (never valid in a label value we write).
const SEP: u8 = 0x1f;

/// One finished request, as APISIX labels it.
pub struct HttpSample<'a> {
    pub code: u16,
    pub route: &'a str,
    pub matched_uri: &'a str,
    pub matched_host: &'a str,
    pub service: &'a str,
    pub consumer: &'a str,
    pub node: &'a str,
    pub ingress: u64,
    pub egress: u64,
    pub request_us: u64,
    pub upstream_us: Option<u64>,
}

/// A worker's recorder: its slab plus a reused key buffer (no allocation once an entry exists).
pub struct Recorder {
    slab: SlabWriter,
    key: RefCell<Vec<u8>>,
}

impl Recorder {
    pub fn new(shm: std::sync::Arc<MetricsShm>, slab: usize) -> Recorder {
        Recorder {
            slab: SlabWriter::new(shm, slab),
            key: RefCell::new(Vec::with_capacity(256)),
        }
    }

    pub fn gauge(&self, g: usize) -> &std::sync::atomic::AtomicU64 {
        self.slab.gauge(g)
    }

    /// Single writer: a plain add.
    pub fn bump(&self, g: usize, v: i64) {
        let w = self.slab.gauge(g);
        w.store(
            w.load(Ordering::Relaxed).wrapping_add(v as u64),
            Ordering::Relaxed,
        );
    }

    fn with_entry(&self, kind: u32, labels: &[&str], f: impl FnOnce(&Counters<'_>)) {
        let mut key = self.key.borrow_mut();
        key.clear();
        key.push(kind as u8);
        for (i, l) in labels.iter().enumerate() {
            if i > 0 {
                key.push(SEP);
            }
            // A separator inside a value would shift labels: drop it.
            if l.as_bytes().contains(&SEP) {
                key.extend(l.bytes().filter(|&b| b != SEP));
            } else {
                key.extend_from_slice(l.as_bytes());
            }
        }
        if let Some(c) = self.slab.counters(&key) {
            f(&c);
        }
    }

    pub fn http(&self, s: &HttpSample<'_>) {
        let mut code = itoa::Buffer::new();
        let code = code.format(s.code);
        let labels = [
            code,
            s.route,
            s.matched_uri,
            s.matched_host,
            s.service,
            s.consumer,
            s.node,
        ];
        self.with_entry(KIND_HTTP, &labels, |c| {
            c.add(0, 1);
            c.add(1, s.ingress);
            c.add(2, s.egress);
            observe(c, 3, s.request_us);
            if let Some(up) = s.upstream_us {
                observe(c, 3 + HIST_WORDS, up);
                observe(c, 3 + 2 * HIST_WORDS, s.request_us.saturating_sub(up));
            } else {
                observe(c, 3 + 2 * HIST_WORDS, s.request_us);
            }
        });
    }

    pub fn plugin_time(&self, plugin: &str, calls: u64, ns: u64) {
        self.with_entry(KIND_PLUGIN, &[plugin], |c| {
            c.add(0, calls);
            c.add(1, ns);
        });
    }

    pub fn limit_rejected(&self, route: &str, plugin: &str) {
        self.with_entry(KIND_LIMIT, &[route, plugin], |c| c.add(0, 1));
    }

    /// Passive health of an upstream node as this worker last saw it (1 reachable, 0 not).
    pub fn upstream_health(&self, name: &str, ip: &str, port: u16, healthy: bool) {
        let mut p = itoa::Buffer::new();
        let p = p.format(port);
        self.with_entry(KIND_UPSTREAM, &[name, ip, p], |c| c.set(0, healthy as u64));
    }
}

fn esc(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn labels(out: &mut String, names: &[&str], values: &[&str]) {
    out.push('{');
    for (i, (n, v)) in names.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(n);
        out.push_str("=\"");
        esc(out, v);
        out.push('"');
    }
    out.push('}');
}

fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Totals of every worker's slab, keyed by (kind, label values).
type Totals = BTreeMap<(u32, Vec<String>), Vec<u64>>;

fn add_into(v: &mut Vec<u64>, values: &[u64]) {
    if v.len() < values.len() {
        v.resize(values.len(), 0);
    }
    for (a, b) in v.iter_mut().zip(values) {
        *a = a.wrapping_add(*b);
    }
}

/// Render all workers' metrics as Prometheus text (exposition format 0.0.4).
pub fn render(shm: &MetricsShm) -> String {
    let mut totals: Totals = BTreeMap::new();
    let mut health: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    let mut gauges = [0u64; shm::GAUGES];
    let mut per_worker = Vec::new();
    for slab in 0..shm.slabs() {
        for (g, total) in gauges.iter_mut().enumerate() {
            *total = total.wrapping_add(shm.gauge(slab, g).load(Ordering::Relaxed));
        }
        per_worker.push(shm.gauge(slab, shm::G_REQUESTS).load(Ordering::Relaxed));
        shm.entries(slab, |kind, key, values| {
            let labels: Vec<String> = key
                .split(|&b| b == SEP)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect();
            if kind == KIND_UPSTREAM {
                // Healthy only if every worker that used the node last reached it.
                let h = health.entry(labels).or_insert(1);
                *h = (*h).min(values[0]);
            } else {
                add_into(totals.entry((kind, labels)).or_default(), values);
            }
        });
    }
    let mut out = String::with_capacity(4096);

    head(
        &mut out,
        "apisix_http_status",
        "counter",
        "HTTP status codes per service in APISIX",
    );
    let status_names = [
        "code",
        "route",
        "matched_uri",
        "matched_host",
        "service",
        "consumer",
        "node",
    ];
    // Latency and bandwidth drop code, matched_uri and matched_host (APISIX's label sets).
    let mut by_route: BTreeMap<Vec<&str>, Vec<u64>> = BTreeMap::new();
    for ((kind, l), v) in &totals {
        if *kind != KIND_HTTP || l.len() != status_names.len() {
            continue;
        }
        out.push_str("apisix_http_status");
        labels(
            &mut out,
            &status_names,
            &l.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let _ = writeln!(out, " {}", v[0]);
        let key = vec![l[1].as_str(), l[4].as_str(), l[5].as_str(), l[6].as_str()];
        add_into(by_route.entry(key).or_default(), v);
    }
    let route_names = ["route", "service", "consumer", "node"];

    head(
        &mut out,
        "apisix_http_latency",
        "histogram",
        "HTTP request latency in milliseconds per service in APISIX",
    );
    for (t, ty) in ["request", "upstream", "apisix"].iter().enumerate() {
        for (l, v) in &by_route {
            let first = 3 + t * HIST_WORDS;
            let hist = &v[first..first + HIST_WORDS];
            let count: u64 = hist[..=BUCKETS_MS.len()].iter().sum();
            if count == 0 {
                continue;
            }
            let mut base = String::new();
            labels(&mut base, &["type"], &[ty]);
            base.pop();
            base.push(',');
            let mut rest = String::new();
            labels(&mut rest, &route_names, l);
            base.push_str(&rest[1..rest.len() - 1]);
            let mut cum = 0;
            for (i, b) in BUCKETS_MS.iter().enumerate() {
                cum += hist[i];
                let _ = writeln!(out, "apisix_http_latency_bucket{base},le=\"{b}\"}} {cum}");
            }
            let _ = writeln!(
                out,
                "apisix_http_latency_bucket{base},le=\"+Inf\"}} {count}"
            );
            let sum_ms = hist[BUCKETS_MS.len() + 1] as f64 / 1000.0;
            let _ = writeln!(out, "apisix_http_latency_sum{base}}} {sum_ms}");
            let _ = writeln!(out, "apisix_http_latency_count{base}}} {count}");
        }
    }

    head(
        &mut out,
        "apisix_bandwidth",
        "counter",
        "Total bandwidth in bytes consumed per service in APISIX",
    );
    for (i, ty) in ["ingress", "egress"].iter().enumerate() {
        for (l, v) in &by_route {
            let mut vals = vec![*ty];
            vals.extend(l.iter().copied());
            out.push_str("apisix_bandwidth");
            labels(
                &mut out,
                &["type", "route", "service", "consumer", "node"],
                &vals,
            );
            let _ = writeln!(out, " {}", v[1 + i]);
        }
    }

    head(
        &mut out,
        "apisix_nginx_http_current_connections",
        "gauge",
        "Number of HTTP connections",
    );
    let active = gauges[shm::G_CONN_ACTIVE];
    let writing = gauges[shm::G_INFLIGHT];
    for (state, v) in [
        ("accepted", gauges[shm::G_CONN_ACCEPTED]),
        ("active", active),
        ("handled", gauges[shm::G_CONN_HANDLED]),
        ("reading", 0),
        ("waiting", active.saturating_sub(writing)),
        ("writing", writing),
    ] {
        let _ = writeln!(
            out,
            "apisix_nginx_http_current_connections{{state=\"{state}\"}} {v}"
        );
    }
    head(
        &mut out,
        "apisix_http_requests_total",
        "gauge",
        "The total number of client requests since APISIX started",
    );
    let _ = writeln!(
        out,
        "apisix_http_requests_total {}",
        gauges[shm::G_REQUESTS]
    );

    head(
        &mut out,
        "apisix_upstream_status",
        "gauge",
        "Upstream status from passive checks (1 reachable, 0 not)",
    );
    for (l, h) in &health {
        out.push_str("apisix_upstream_status");
        let vals: Vec<&str> = l.iter().map(String::as_str).collect();
        labels(&mut out, &["name", "ip", "port"], &vals);
        let _ = writeln!(out, " {h}");
    }

    head(
        &mut out,
        "pygateway_worker_requests_total",
        "counter",
        "Requests served by each worker process",
    );
    for (w, n) in per_worker.iter().enumerate() {
        let _ = writeln!(out, "pygateway_worker_requests_total{{worker=\"{w}\"}} {n}");
    }
    head(
        &mut out,
        "pygateway_plugin_sampled_calls_total",
        "counter",
        "Python plugin request-phase hook calls timed (one chain run in 64 is timed)",
    );
    let plugins: Vec<_> = totals
        .iter()
        .filter(|((k, l), _)| *k == KIND_PLUGIN && l.len() == 1)
        .collect();
    for ((_, l), v) in &plugins {
        out.push_str("pygateway_plugin_sampled_calls_total");
        labels(&mut out, &["plugin"], &[&l[0]]);
        let _ = writeln!(out, " {}", v[0]);
    }
    head(
        &mut out,
        "pygateway_plugin_sampled_seconds_total",
        "counter",
        "Time spent in the timed Python plugin hook calls (divide by the calls for a mean)",
    );
    for ((_, l), v) in &plugins {
        out.push_str("pygateway_plugin_sampled_seconds_total");
        labels(&mut out, &["plugin"], &[&l[0]]);
        let _ = writeln!(out, " {}", v[1] as f64 / 1e9);
    }
    head(
        &mut out,
        "pygateway_limit_rejections_total",
        "counter",
        "Requests rejected by a native limiter",
    );
    for ((k, l), v) in &totals {
        if *k == KIND_LIMIT && l.len() == 2 {
            out.push_str("pygateway_limit_rejections_total");
            labels(&mut out, &["route", "plugin"], &[&l[0], &l[1]]);
            let _ = writeln!(out, " {}", v[0]);
        }
    }
    for (name, g, help) in [
        (
            "pygateway_access_log_dropped_total",
            shm::G_LOG_DROPPED,
            "Access log lines dropped because the writer fell behind",
        ),
        (
            "pygateway_spans_dropped_total",
            shm::G_SPANS_DROPPED,
            "Trace spans dropped because the export queue was full",
        ),
        (
            "pygateway_file_logger_dropped_total",
            shm::G_FILE_LOG_DROPPED,
            "file-logger lines dropped because the writer fell behind or the file cannot be opened",
        ),
        (
            "pygateway_http_logger_dropped_total",
            shm::G_HTTP_LOG_DROPPED,
            "http-logger entries dropped because max_pending_entries were pending",
        ),
        (
            "pygateway_http_logger_failed_total",
            shm::G_HTTP_LOG_FAILED,
            "http-logger entries given up after max_retry_count failed deliveries",
        ),
        (
            "pygateway_metrics_entries_dropped_total",
            shm::G_SLAB_FULL,
            "Metric samples not recorded because a worker's metrics slab is full",
        ),
    ] {
        head(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", gauges[g]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn sample(code: u16, route: &str, us: u64, up: Option<u64>) -> HttpSample<'_> {
        HttpSample {
            code,
            route,
            matched_uri: "/a/*",
            matched_host: "",
            service: "",
            consumer: "",
            node: "127.0.0.1",
            ingress: 100,
            egress: 200,
            request_us: us,
            upstream_us: up,
        }
    }

    #[test]
    fn totals_sum_across_slabs_and_survive_a_new_writer() {
        let shm = Arc::new(MetricsShm::anonymous(2, 1 << 16).unwrap());
        let a = Recorder::new(shm.clone(), 0);
        let b = Recorder::new(shm.clone(), 1);
        for _ in 0..3 {
            a.http(&sample(200, "r1", 1500, Some(1000)));
        }
        b.http(&sample(200, "r1", 70_000, None));
        b.http(&sample(404, "", 10, None));
        // A respawned worker on slab 0 continues its predecessor's counts.
        let a2 = Recorder::new(shm.clone(), 0);
        a2.http(&sample(200, "r1", 1500, Some(1000)));
        let text = render(&shm);
        assert!(text.contains("apisix_http_status{code=\"200\",route=\"r1\",matched_uri=\"/a/*\",matched_host=\"\",service=\"\",consumer=\"\",node=\"127.0.0.1\"} 5"), "{text}");
        assert!(text.contains("code=\"404\""));
        // 4 requests at 1.5 ms fall in le=2, the 70 ms one in le=100.
        assert!(text.contains("apisix_http_latency_bucket{type=\"request\",route=\"r1\",service=\"\",consumer=\"\",node=\"127.0.0.1\",le=\"1\"} 0"), "{text}");
        assert!(text.contains("apisix_http_latency_bucket{type=\"request\",route=\"r1\",service=\"\",consumer=\"\",node=\"127.0.0.1\",le=\"2\"} 4"));
        assert!(text.contains("apisix_http_latency_bucket{type=\"request\",route=\"r1\",service=\"\",consumer=\"\",node=\"127.0.0.1\",le=\"100\"} 5"));
        assert!(text.contains("apisix_http_latency_count{type=\"upstream\",route=\"r1\",service=\"\",consumer=\"\",node=\"127.0.0.1\"} 4"));
        assert!(text.contains("apisix_http_latency_sum{type=\"request\",route=\"r1\",service=\"\",consumer=\"\",node=\"127.0.0.1\"} 76"));
        assert!(text.contains("apisix_bandwidth{type=\"egress\",route=\"r1\",service=\"\",consumer=\"\",node=\"127.0.0.1\"} 1000"));
    }

    #[test]
    fn a_full_slab_counts_what_it_dropped() {
        let shm = Arc::new(MetricsShm::anonymous(1, 1024).unwrap());
        let r = Recorder::new(shm.clone(), 0);
        for i in 0..100 {
            r.http(&sample(200, &format!("route-{i}"), 1, None));
        }
        let text = render(&shm);
        assert!(text.contains("route-0"));
        assert!(!text.contains("route-99"));
        let dropped = shm.gauge(0, shm::G_SLAB_FULL).load(Ordering::Relaxed);
        assert!(dropped > 90, "{dropped}");
    }

    #[test]
    fn label_values_are_escaped() {
        let shm = Arc::new(MetricsShm::anonymous(1, 1 << 14).unwrap());
        let r = Recorder::new(shm.clone(), 0);
        r.limit_rejected("we\"ird\\", "limit-req");
        let text = render(&shm);
        assert!(text.contains("route=\"we\\\"ird\\\\\""), "{text}");
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use std::sync::Arc;

    /// `cargo test --release --lib metrics::cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn cost_of_a_sample() {
        let shm = Arc::new(MetricsShm::anonymous(1, 1 << 20).unwrap());
        let r = Recorder::new(shm, 0);
        let n = 1_000_000;
        let t = crate::observe::accesslog::cost::thread_cpu_ns();
        for i in 0..n {
            r.http(&HttpSample {
                code: 200,
                route: "plain",
                matched_uri: "/plain",
                matched_host: "",
                service: "",
                consumer: "",
                node: "127.0.0.1",
                ingress: 80,
                egress: 140,
                request_us: 400 + (i % 100),
                upstream_us: Some(300),
            });
        }
        println!(
            "{:.0} ns per sample",
            (crate::observe::accesslog::cost::thread_cpu_ns() - t) as f64 / n as f64
        );
    }
}
