//! `handle` driven through `PluginChain` with a scripted fake chain (no interpreter), behind the
//! worker's HTTP/1 server and in front of a real upstream (a tokio listener answering HTTP/1.1).
use super::phases::*;
use super::table::RouteTable;
use super::WorkerState;
use crate::http1::BoxError;
use crate::observe::metrics::shm::MetricsShm;
use crate::observe::metrics::Recorder;
use crate::observe::Observer;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A plugin chain scripted from Rust. Every call is noted in `events`.
#[derive(Default)]
pub struct FakeChain {
    phases: PhaseSet,
    /// Hooks in these phases are "async" (run through `request_phase`, not `begin_and_run`).
    async_phases: PhaseSet,
    /// Answer 403 from this request phase.
    respond_in: Option<Phase>,
    /// `rewrite` sets this request header.
    set_header: Option<(&'static str, &'static str)>,
    events: Arc<Mutex<Vec<String>>>,
}

pub struct FakeReq {
    edits: Mutex<ReqEdits>,
}

impl FakeChain {
    fn note(&self, what: impl Into<String>) {
        self.events.lock().unwrap().push(what.into());
    }

    fn run(&self, req: &FakeReq, phase: Phase) -> Flow {
        self.note(phase.name());
        if self.respond_in == Some(phase) {
            return Flow::Respond(ShortResponse {
                status: 403,
                headers: vec![("x-by".into(), phase.name().into())],
                body: b"denied".to_vec(),
            });
        }
        if let (Phase::Rewrite, Some((k, v))) = (phase, self.set_header) {
            req.edits
                .lock()
                .unwrap()
                .headers
                .insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        Flow::Continue
    }

    fn edits_of(req: &FakeReq) -> ReqEdits {
        let e = req.edits.lock().unwrap();
        ReqEdits {
            method: e.method.clone(),
            path: e.path.clone(),
            query: e.query.clone(),
            headers: e.headers.clone(),
            consumer: e.consumer.clone(),
            upstream: e.upstream.clone(),
            body: e.body.clone(),
        }
    }
}

impl PluginChain for FakeChain {
    type Req = FakeReq;

    fn phases(&self) -> PhaseSet {
        self.phases
    }

    fn needs_body(&self) -> bool {
        false
    }

    fn all_sync(&self, phases: &[Phase]) -> bool {
        self.async_phases.0 & PhaseSet::of(phases).0 == 0
    }

    fn begin(&self, info: ReqInfo) -> FakeReq {
        FakeReq {
            edits: Mutex::new(ReqEdits {
                method: info.method,
                path: info.path,
                query: info.query,
                headers: info.headers,
                consumer: None,
                upstream: None,
                body: info.body,
            }),
        }
    }

    fn begin_and_run(
        &self,
        info: ReqInfo,
        phases: &[Phase],
    ) -> (FakeReq, Result<ReqEdits, ShortResponse>) {
        let req = self.begin(info);
        for &p in phases {
            if self.has(p) {
                if let Flow::Respond(r) = self.run(&req, p) {
                    return (req, Err(r));
                }
            }
        }
        let edits = Self::edits_of(&req);
        (req, Ok(edits))
    }

    async fn request_phase<'a>(&'a self, req: &'a FakeReq, phase: Phase) -> Flow {
        tokio::task::yield_now().await;
        self.run(req, phase)
    }

    fn edits(&self, req: &FakeReq, _: Phase) -> ReqEdits {
        Self::edits_of(req)
    }

    fn header_filter(
        &self,
        _: &mut FakeReq,
        status: &mut u16,
        headers: &mut HeaderMap,
    ) -> Option<ShortResponse> {
        if self.has(Phase::HeaderFilter) {
            self.note("header_filter");
            *status = 299;
            headers.insert("x-filtered", HeaderValue::from_static("yes"));
            headers.remove("x-up");
        }
        None
    }

    fn body_filter(&self, _: &FakeReq, chunk: Bytes, eof: bool) -> Result<Bytes, BoxError> {
        self.note(format!("body_filter eof={eof}"));
        Ok(Bytes::from(chunk.to_ascii_uppercase()))
    }

    fn log(&self, _: &FakeReq) {
        self.note("log");
    }
}

fn phases(p: &[Phase]) -> PhaseSet {
    PhaseSet::of(p)
}

/// An upstream that answers every request `200 hello` (with `x-up: 1`) and keeps the heads it got.
async fn upstream() -> (u16, Rc<RefCell<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let heads: Rc<RefCell<Vec<String>>> = Rc::default();
    let seen = heads.clone();
    tokio::task::spawn_local(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let seen = seen.clone();
            tokio::task::spawn_local(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head: Vec<u8> = buf.drain(..end + 4).collect();
                        seen.borrow_mut()
                            .push(String::from_utf8_lossy(&head).to_ascii_lowercase());
                        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello";
                        if s.write_all(resp).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, heads)
}

/// A worker serving one route `/r` to `upstream_port`, with `chain` as its plugin chain.
fn gateway(upstream_port: u16, chain: Option<FakeChain>) -> u16 {
    let snap: crate::config::Snapshot = serde_json::from_value(serde_json::json!({
        "routes": [{"id": "r", "uris": ["/r"],
                    "upstream": {"nodes": [{"host": "127.0.0.1", "port": upstream_port}]}}],
    }))
    .unwrap();
    let chain = chain.map(Arc::new);
    let table = RouteTable::compile(&snap, |_| chain.clone()).unwrap();
    let shm = MetricsShm::anonymous(1, 1 << 16).unwrap();
    let state = Rc::new(WorkerState {
        table: Arc::new(ArcSwap::from_pointee(table)),
        shm: Arc::new(crate::limit::ShmTable::anonymous(1024).unwrap()),
        max_uri_len: 8192,
        obs: Rc::new(Observer {
            rec: Recorder::new(Arc::new(shm), 0),
            log: None,
            spans: Default::default(),
            loggers: Default::default(),
            plugin_times: None,
            housekeeping: Default::default(),
        }),
    });
    let listener = crate::server::bind("127.0.0.1:0".parse().unwrap(), 64).unwrap();
    let port = listener.local_addr().unwrap().port();
    // The edge values of `pygateway/settings.py` (this test runs no worker settings through Python).
    let limits = crate::server::Limits {
        max_head_bytes: 32 * 1024,
        max_line_bytes: 8 * 1024,
        max_headers: 100,
        header_timeout: Duration::from_secs(10),
        keepalive_idle: Duration::from_secs(60),
        keepalive_requests: 1000,
        max_connections: 10_000,
        max_connections_per_ip: 1000,
        drain_timeout: Duration::from_secs(30),
    };
    tokio::task::spawn_local(crate::server::serve(
        listener,
        Rc::new(super::service::ProxyService::new(state)),
        limits,
        std::future::pending(),
    ));
    port
}

/// One request (`Connection: close`): status line, lowercased head, body.
async fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head[9..12].parse().unwrap();
    let head = head.to_ascii_lowercase();
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").expect("chunk size line");
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
}

fn run(f: impl std::future::Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f);
}

fn events(chain: &FakeChain) -> Arc<Mutex<Vec<String>>> {
    chain.events.clone()
}

#[test]
fn plain_route_reaches_the_upstream() {
    run(async {
        let (up, heads) = upstream().await;
        let gw = gateway(up, None);
        let (status, head, body) = get(gw, "/r?x=1").await;
        assert_eq!((status, body.as_str()), (200, "hello"));
        assert!(head.contains("x-up: 1"), "{head}");
        let heads = heads.borrow();
        assert!(heads[0].starts_with("get /r?x=1 http/1.1"), "{}", heads[0]);
        assert!(
            heads[0].contains("x-forwarded-for: 127.0.0.1"),
            "{}",
            heads[0]
        );
    });
}

#[test]
fn short_circuit_in_rewrite_and_access_never_contacts_the_upstream() {
    for (phase, async_phases) in [
        (Phase::Rewrite, PhaseSet::default()),
        (Phase::Access, PhaseSet::default()),
        // The same through `request_phase` (an async hook) instead of `begin_and_run`.
        (Phase::Access, phases(&[Phase::Access])),
    ] {
        run(async move {
            let (up, heads) = upstream().await;
            let chain = FakeChain {
                phases: phases(&[Phase::Rewrite, Phase::Access, Phase::Log]),
                async_phases,
                respond_in: Some(phase),
                ..Default::default()
            };
            let ev = events(&chain);
            let gw = gateway(up, Some(chain));
            let (status, head, body) = get(gw, "/r").await;
            assert_eq!((status, body.as_str()), (403, "denied"));
            assert!(head.contains(&format!("x-by: {}", phase.name())), "{head}");
            assert!(heads.borrow().is_empty(), "the upstream was contacted");
            let ev = ev.lock().unwrap().clone();
            // No phase after the one that answered; log still runs.
            let expect: Vec<&str> = match phase {
                Phase::Rewrite => vec!["rewrite", "log"],
                _ => vec!["rewrite", "access", "log"],
            };
            assert_eq!(ev, expect);
        });
    }
}

#[test]
fn header_edits_reach_the_upstream() {
    run(async {
        let (up, heads) = upstream().await;
        let chain = FakeChain {
            phases: phases(&[Phase::Rewrite]),
            set_header: Some(("x-plugin", "set-in-rewrite")),
            ..Default::default()
        };
        let gw = gateway(up, Some(chain));
        let (status, _, _) = get(gw, "/r").await;
        assert_eq!(status, 200);
        let heads = heads.borrow();
        assert!(
            heads[0].contains("x-plugin: set-in-rewrite"),
            "{}",
            heads[0]
        );
    });
}

#[test]
fn header_filter_changes_status_and_headers() {
    run(async {
        let (up, _) = upstream().await;
        let chain = FakeChain {
            phases: phases(&[Phase::HeaderFilter]),
            ..Default::default()
        };
        let gw = gateway(up, Some(chain));
        let (status, head, body) = get(gw, "/r").await;
        assert_eq!((status, body.as_str()), (299, "hello"));
        assert!(head.contains("x-filtered: yes"), "{head}");
        assert!(!head.contains("x-up"), "{head}");
    });
}

#[test]
fn body_filter_changes_the_body_and_log_runs_after_it() {
    run(async {
        let (up, _) = upstream().await;
        let chain = FakeChain {
            phases: phases(&[Phase::BodyFilter, Phase::Log]),
            ..Default::default()
        };
        let ev = events(&chain);
        let gw = gateway(up, Some(chain));
        let (status, _, body) = get(gw, "/r").await;
        assert_eq!((status, body.as_str()), (200, "HELLO"));
        let ev = ev.lock().unwrap().clone();
        assert_eq!(ev.last().map(String::as_str), Some("log"), "{ev:?}");
        assert!(ev.contains(&"body_filter eof=true".to_string()), "{ev:?}");
        let last_filter = ev
            .iter()
            .rposition(|e| e.starts_with("body_filter"))
            .unwrap();
        assert_eq!(
            last_filter + 1,
            ev.len() - 1,
            "log right after the last chunk: {ev:?}"
        );
    });
}
