//! The access log: one line per request, formatted by the worker's I/O thread into a buffer and
//! handed in batches to a writer thread, so a slow disk never blocks a request. When the writer
//! falls behind, batches are dropped and counted (`pygateway_access_log_dropped_total`), never queued
//! without bound. SIGUSR1 makes the writer reopen the file (logrotate).
//!
//! Formats: `json` (a default set of fields), `combined` (nginx's, plus request and upstream times),
//! a JSON object mapping field names to APISIX/nginx `$variables` (APISIX's `log_format`), or a text
//! template with `$variables`.
use http::{HeaderName, Method, Version};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, PartialEq)]
pub enum Var {
    RemoteAddr,
    RemotePort,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Uri,
    Args,
    ServerProtocol,
    Status,
    BodyBytesSent,
    BytesSent,
    RequestLength,
    RequestTime,
    UpstreamAddr,
    UpstreamStatus,
    UpstreamResponseTime,
    Host,
    /// `$http_<name>`: a request header (index into the captured values).
    Header(usize),
    RouteId,
    ServiceId,
    ConsumerName,
    TraceId,
}

impl Var {
    fn numeric(&self) -> bool {
        matches!(
            self,
            Var::RemotePort
                | Var::Status
                | Var::BodyBytesSent
                | Var::BytesSent
                | Var::RequestLength
                | Var::RequestTime
                | Var::UpstreamResponseTime
                | Var::UpstreamStatus
                | Var::Msec
        )
    }

    /// Values the gateway formats itself from a fixed alphabet: nothing to escape in JSON.
    fn json_safe(&self) -> bool {
        matches!(
            self,
            Var::RemoteAddr
                | Var::TimeLocal
                | Var::TimeIso8601
                | Var::RequestMethod
                | Var::ServerProtocol
                | Var::TraceId
        )
    }
}

#[derive(Clone, Debug)]
enum Piece {
    Lit(String),
    Var(Var),
}

#[derive(Clone, Debug)]
enum Shape {
    Text(Vec<Piece>),
    Json(Vec<JsonField>),
}

/// One member of a JSON line: `prefix` is `{"key":` or `,"key":`, escaped when the format is parsed.
#[derive(Clone, Debug)]
struct JsonField {
    prefix: Box<[u8]>,
    pieces: Vec<Piece>,
}

/// A compiled log format.
#[derive(Clone, Debug)]
pub struct LogFormat {
    shape: Shape,
    /// Request headers `$http_*` variables read, captured when the request starts.
    pub headers: Vec<HeaderName>,
}

const DEFAULT_JSON: &str = r#"{"time":"$time_iso8601","client_ip":"$remote_addr","method":"$request_method","uri":"$request_uri","protocol":"$server_protocol","host":"$host","status":"$status","request_length":"$request_length","bytes_sent":"$bytes_sent","request_time":"$request_time","upstream_addr":"$upstream_addr","upstream_status":"$upstream_status","upstream_response_time":"$upstream_response_time","user_agent":"$http_user_agent","referer":"$http_referer","route_id":"$route_id","service_id":"$service_id","consumer":"$consumer_name","trace_id":"$trace_id"}"#;
const COMBINED: &str = r#"$remote_addr - - [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_time $upstream_response_time"#;

impl LogFormat {
    pub fn parse(spec: &str) -> Result<LogFormat, String> {
        let mut headers = Vec::new();
        let shape = match spec.trim() {
            "json" | "" => return LogFormat::parse(DEFAULT_JSON),
            "combined" => Shape::Text(pieces(COMBINED, &mut headers)?),
            s if s.starts_with('{') => {
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(s)
                    .map_err(|e| format!("access log format: not a JSON object: {e}"))?;
                let mut fields = Vec::new();
                for (k, v) in map {
                    let v = v.as_str().ok_or_else(|| {
                        format!(
                            "access log format: field {k:?} must be a string like \"$remote_addr\""
                        )
                    })?;
                    let mut prefix = if fields.is_empty() {
                        b"{".to_vec()
                    } else {
                        b",".to_vec()
                    };
                    json_key(&mut prefix, &k);
                    prefix.push(b':');
                    fields.push(JsonField {
                        prefix: prefix.into(),
                        pieces: pieces(v, &mut headers)?,
                    });
                }
                Shape::Json(fields)
            }
            s => Shape::Text(pieces(s, &mut headers)?),
        };
        Ok(LogFormat { shape, headers })
    }
}

fn var_of(name: &str, headers: &mut Vec<HeaderName>) -> Result<Var, String> {
    Ok(match name {
        "remote_addr" => Var::RemoteAddr,
        "remote_port" => Var::RemotePort,
        "time_local" => Var::TimeLocal,
        "time_iso8601" => Var::TimeIso8601,
        "msec" => Var::Msec,
        "request" => Var::Request,
        "request_method" => Var::RequestMethod,
        "request_uri" => Var::RequestUri,
        "uri" => Var::Uri,
        "args" | "query_string" => Var::Args,
        "server_protocol" => Var::ServerProtocol,
        "status" => Var::Status,
        "body_bytes_sent" => Var::BodyBytesSent,
        "bytes_sent" => Var::BytesSent,
        "request_length" => Var::RequestLength,
        "request_time" => Var::RequestTime,
        "upstream_addr" => Var::UpstreamAddr,
        "upstream_status" => Var::UpstreamStatus,
        "upstream_response_time" => Var::UpstreamResponseTime,
        "host" => Var::Host,
        "route_id" => Var::RouteId,
        "service_id" => Var::ServiceId,
        "consumer_name" => Var::ConsumerName,
        "trace_id" => Var::TraceId,
        h if h.starts_with("http_") => {
            let hn = HeaderName::from_bytes(h[5..].replace('_', "-").as_bytes())
                .map_err(|_| format!("access log format: bad header variable ${h}"))?;
            let i = headers.iter().position(|x| *x == hn).unwrap_or_else(|| {
                headers.push(hn);
                headers.len() - 1
            });
            Var::Header(i)
        }
        other => return Err(format!("access log format: unknown variable ${other}")),
    })
}

fn pieces(s: &str, headers: &mut Vec<HeaderName>) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let (name, next) = if b.get(i + 1) == Some(&b'{') {
                let end = s[i + 2..]
                    .find('}')
                    .ok_or("access log format: unclosed ${")?;
                (&s[i + 2..i + 2 + end], i + 3 + end)
            } else {
                let end = s[i + 1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .map_or(s.len(), |e| i + 1 + e);
                (&s[i + 1..end], end)
            };
            if name.is_empty() {
                lit.push('$');
                i += 1;
                continue;
            }
            if !lit.is_empty() {
                out.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            out.push(Piece::Var(var_of(name, headers)?));
            i = next;
        } else {
            let ch = s[i..].chars().next().unwrap_or(' ');
            lit.push(ch);
            i += ch.len_utf8();
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Lit(lit));
    }
    Ok(out)
}

/// What is known when the request arrives (only captured when a log is written). The text is
/// copied, not shared: a clone of the request's `Bytes` would keep hyper's read buffer alive until
/// the response ends, and hyper would then allocate a new buffer for the next request.
pub struct Capture {
    pub method: Method,
    /// Path and query, as received.
    pub uri: Box<str>,
    pub version: Version,
    pub peer: SocketAddr,
    /// The Host header, or the request target's authority (raw bytes: escaped when written).
    pub host: Box<[u8]>,
    pub wall: SystemTime,
    pub headers: Vec<Option<Box<[u8]>>>,
}

impl Capture {
    pub fn new(fmt: &LogFormat, req: &http::Request<impl Sized>, peer: SocketAddr) -> Capture {
        let host = match req.headers().get(http::header::HOST) {
            Some(h) => h.as_bytes().into(),
            None => req
                .uri()
                .authority()
                .map_or("", |a| a.as_str())
                .as_bytes()
                .into(),
        };
        Capture {
            method: req.method().clone(),
            uri: req
                .uri()
                .path_and_query()
                .map_or("/", |p| p.as_str())
                .into(),
            version: req.version(),
            peer,
            host,
            // Coarse, like nginx's cached time: the fields print seconds or milliseconds.
            wall: crate::sys::clock::wall(),
            headers: fmt
                .headers
                .iter()
                .map(|h| req.headers().get(h).map(|v| v.as_bytes().into()))
                .collect(),
        }
    }

    fn path(&self) -> &str {
        self.uri.split_once('?').map_or(&self.uri, |(p, _)| p)
    }

    fn query(&self) -> &str {
        self.uri.split_once('?').map_or("", |(_, q)| q)
    }
}

/// What is known when the response is done.
pub struct Done<'a> {
    pub status: u16,
    pub body_bytes: u64,
    pub bytes_sent: u64,
    pub request_length: u64,
    pub request_us: u64,
    pub upstream_addr: Option<(&'a str, u16)>,
    pub upstream_status: Option<u16>,
    pub upstream_us: Option<u64>,
    pub route_id: &'a str,
    pub service_id: &'a str,
    pub consumer: &'a str,
    pub trace_id: &'a str,
}

fn protocol(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Decimal digits of `v`, without allocating.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

/// Microseconds as seconds with millisecond resolution, as nginx prints `$request_time`.
fn put_secs(out: &mut Vec<u8>, us: u64) {
    put_u64(out, us / 1_000_000);
    let ms = (us % 1_000_000) / 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// Append the raw value of `v` to `out` (nothing when unknown).
fn value(out: &mut Vec<u8>, v: &Var, c: &Capture, d: &Done<'_>) {
    match v {
        Var::RemoteAddr => crate::http1::put_ip(out, c.peer.ip()),
        Var::RemotePort => put_u64(out, c.peer.port().into()),
        Var::TimeLocal => with_time(c.wall, |_, local| out.extend_from_slice(local)),
        Var::TimeIso8601 => with_time(c.wall, |iso, _| out.extend_from_slice(iso)),
        Var::Msec => {
            let t = c.wall.duration_since(UNIX_EPOCH).unwrap_or_default();
            put_secs(out, t.as_micros() as u64);
        }
        Var::Request => {
            out.extend_from_slice(c.method.as_str().as_bytes());
            out.push(b' ');
            out.extend_from_slice(c.uri.as_bytes());
            out.push(b' ');
            out.extend_from_slice(protocol(c.version).as_bytes());
        }
        Var::RequestMethod => out.extend_from_slice(c.method.as_str().as_bytes()),
        Var::RequestUri => out.extend_from_slice(c.uri.as_bytes()),
        Var::Uri => out.extend_from_slice(c.path().as_bytes()),
        Var::Args => out.extend_from_slice(c.query().as_bytes()),
        Var::ServerProtocol => out.extend_from_slice(protocol(c.version).as_bytes()),
        Var::Status => put_u64(out, d.status.into()),
        Var::BodyBytesSent => put_u64(out, d.body_bytes),
        Var::BytesSent => put_u64(out, d.bytes_sent),
        Var::RequestLength => put_u64(out, d.request_length),
        Var::RequestTime => put_secs(out, d.request_us),
        Var::UpstreamAddr => {
            if let Some((h, p)) = d.upstream_addr {
                let v6 = h.contains(':');
                if v6 {
                    out.push(b'[');
                }
                out.extend_from_slice(h.as_bytes());
                out.extend_from_slice(if v6 { b"]:" } else { b":" });
                put_u64(out, p.into());
            }
        }
        Var::UpstreamStatus => {
            if let Some(s) = d.upstream_status {
                put_u64(out, s.into());
            }
        }
        Var::UpstreamResponseTime => {
            if let Some(us) = d.upstream_us {
                put_secs(out, us);
            }
        }
        Var::Host => out.extend_from_slice(&c.host),
        Var::Header(i) => {
            if let Some(Some(h)) = c.headers.get(*i) {
                out.extend_from_slice(h);
            }
        }
        Var::RouteId => out.extend_from_slice(d.route_id.as_bytes()),
        Var::ServiceId => out.extend_from_slice(d.service_id.as_bytes()),
        Var::ConsumerName => out.extend_from_slice(d.consumer.as_bytes()),
        Var::TraceId => out.extend_from_slice(d.trace_id.as_bytes()),
    }
}

/// Bytes a JSON string cannot carry as they are: quote, backslash, controls, and non-ASCII (checked
/// for valid UTF-8 the slow way).
static NEEDS_ESCAPE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i < 0x20 || i >= 0x80 || i == b'"' as usize || i == b'\\' as usize;
        i += 1;
    }
    t
};

/// Whether any byte of `s` needs escaping, 8 bytes at a time (the usual answer is no).
fn needs_escape(s: &[u8]) -> bool {
    const LO: u64 = u64::from_ne_bytes([0x01; 8]);
    const HI: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte of `w` is below `n` (exact when every byte is below 0x80).
    let below = |w: u64, n: u8| w.wrapping_sub(LO * n as u64) & !w & HI != 0;
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
        if w & HI != 0
            || below(w, 0x20)
            || below(w ^ (LO * b'"' as u64), 1)
            || below(w ^ (LO * b'\\' as u64), 1)
        {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| NEEDS_ESCAPE[b as usize])
}

/// JSON-escape `out[from..]` in place (a no-op copy-free check in the usual case).
fn escape_tail(out: &mut Vec<u8>, from: usize) {
    if !needs_escape(&out[from..]) {
        return;
    }
    let raw = out.split_off(from);
    // Header bytes may be any octets: decode lossily so the line stays valid JSON (UTF-8).
    for ch in String::from_utf8_lossy(&raw).chars() {
        match ch {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut b = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
}

fn json_key(out: &mut Vec<u8>, k: &str) {
    out.push(b'"');
    let at = out.len();
    out.extend_from_slice(k.as_bytes());
    escape_tail(out, at);
    out.push(b'"');
}

impl LogFormat {
    /// Append one line (with its newline) to `out`.
    pub fn write(&self, out: &mut Vec<u8>, c: &Capture, d: &Done<'_>) {
        match &self.shape {
            Shape::Text(ps) => {
                let line_start = out.len();
                for p in ps {
                    match p {
                        Piece::Lit(l) => out.extend_from_slice(l.as_bytes()),
                        Piece::Var(v) => {
                            let before = out.len();
                            value(out, v, c, d);
                            if out.len() == before {
                                out.push(b'-'); // nginx prints "-" for an empty value
                            }
                        }
                    }
                }
                // One request, one line: a header value cannot break it.
                for b in &mut out[line_start..] {
                    if *b == b'\n' || *b == b'\r' {
                        *b = b' ';
                    }
                }
            }
            Shape::Json(fields) => {
                if fields.is_empty() {
                    out.push(b'{');
                }
                for JsonField { prefix, pieces: ps } in fields {
                    out.extend_from_slice(prefix);
                    match ps.as_slice() {
                        [Piece::Var(v)] => {
                            let quoted = !v.numeric();
                            let open = out.len();
                            if quoted {
                                out.push(b'"');
                            }
                            let at = out.len();
                            value(out, v, c, d);
                            if out.len() == at {
                                out.truncate(open);
                                out.extend_from_slice(b"null");
                                continue;
                            }
                            if quoted {
                                if !v.json_safe() {
                                    escape_tail(out, at);
                                }
                                out.push(b'"');
                            }
                        }
                        _ => {
                            out.push(b'"');
                            let at = out.len();
                            for p in ps {
                                match p {
                                    Piece::Lit(l) => out.extend_from_slice(l.as_bytes()),
                                    Piece::Var(v) => value(out, v, c, d),
                                }
                            }
                            escape_tail(out, at);
                            out.push(b'"');
                        }
                    }
                }
                out.push(b'}');
            }
        }
        out.push(b'\n');
    }
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn formatted(secs: u64) -> (String, String) {
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (y, mo, d) = civil((secs / 86_400) as i64);
    let r = secs % 86_400;
    let (h, mi, s) = (r / 3600, r % 3600 / 60, r % 60);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}+00:00"),
        format!(
            "{d:02}/{}/{y:04}:{h:02}:{mi:02}:{s:02} +0000",
            MON[(mo - 1) as usize]
        ),
    )
}

thread_local! {
    /// The last second formatted: (unix seconds, ISO 8601, nginx's time_local). Lines of the same
    /// second reuse it.
    static TIME: std::cell::RefCell<(u64, String, String)> = const {
        std::cell::RefCell::new((u64::MAX, String::new(), String::new()))
    };
}

fn with_time(t: SystemTime, f: impl FnOnce(&[u8], &[u8])) {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    TIME.with(|cell| {
        let mut c = cell.borrow_mut();
        if c.0 != secs {
            let (iso, local) = formatted(secs);
            *c = (secs, iso, local);
        }
        f(c.1.as_bytes(), c.2.as_bytes());
    })
}

pub fn time_iso8601(t: SystemTime) -> String {
    formatted(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()).0
}

/// Where lines go.
#[derive(Clone, Debug)]
pub enum Sink {
    File(PathBuf),
    /// An inherited descriptor (the master's stdout).
    Fd(i32),
}

enum Msg {
    Lines(Vec<u8>),
    Reopen,
}

/// The I/O thread's end: a line buffer and the channel to the writer thread.
pub struct AccessLog {
    pub format: LogFormat,
    buf: std::cell::RefCell<Vec<u8>>,
    tx: SyncSender<Msg>,
}

/// Batches are flushed at this size, or by the periodic flush. Large: each batch wakes the writer
/// thread, and a wake-up (two context switches) costs more than formatting a few lines.
const BATCH: usize = 128 * 1024;
/// Batches in flight to the writer before new ones are dropped (≈ 4 MiB).
const QUEUE: usize = 32;

impl AccessLog {
    pub fn open(format: LogFormat, sink: Sink) -> std::io::Result<AccessLog> {
        let out = open_sink(&sink)?;
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("pygateway-accesslog".into())
            .spawn(move || writer(sink, out, rx))?;
        Ok(AccessLog {
            format,
            buf: std::cell::RefCell::new(Vec::with_capacity(BATCH * 2)),
            tx,
        })
    }

    /// Format one line; hand the batch to the writer once it is big enough. Returns lines dropped.
    pub fn log(&self, c: &Capture, d: &Done<'_>) -> u64 {
        let mut buf = self.buf.borrow_mut();
        self.format.write(&mut buf, c, d);
        if buf.len() >= BATCH {
            drop(buf);
            return self.flush();
        }
        0
    }

    /// `log` with another format (file-logger: one writer per path, the route's format).
    pub fn log_with(&self, format: &LogFormat, c: &Capture, d: &Done<'_>) -> u64 {
        let mut buf = self.buf.borrow_mut();
        format.write(&mut buf, c, d);
        if buf.len() >= BATCH {
            drop(buf);
            return self.flush();
        }
        0
    }

    /// Send what is buffered; returns how many lines were dropped because the writer is behind.
    pub fn flush(&self) -> u64 {
        let mut buf = self.buf.borrow_mut();
        if buf.is_empty() {
            return 0;
        }
        let batch = std::mem::replace(&mut *buf, Vec::with_capacity(BATCH * 2));
        match self.tx.try_send(Msg::Lines(batch)) {
            Ok(()) => 0,
            Err(TrySendError::Full(Msg::Lines(b)) | TrySendError::Disconnected(Msg::Lines(b))) => {
                b.iter().filter(|&&c| c == b'\n').count() as u64
            }
            Err(_) => 0,
        }
    }

    pub fn reopen(&self) {
        self.flush();
        let _ = self.tx.send(Msg::Reopen);
    }
}

fn open_sink(sink: &Sink) -> std::io::Result<File> {
    match sink {
        Sink::File(p) => OpenOptions::new().create(true).append(true).open(p),
        Sink::Fd(fd) => {
            use std::os::fd::FromRawFd;
            // SAFETY: the master passed this descriptor to us for the log; we own it from here.
            Ok(unsafe { File::from_raw_fd(*fd) })
        }
    }
}

/// Keeps a log file's page-cache footprint bounded ("drop-behind"): what was written more than
/// `STEP` ago is sent to writeback, and the step before that is dropped from the cache. The next
/// writes then reuse warm, recently freed pages: appending into fresh pages cost 0.6-0.9 us of
/// kernel time per 400-byte line on this project's VMs, reused ones ~0.1 us (and a busy log no
/// longer evicts the rest of the page cache).
struct DropBehind {
    /// File offsets: written up to, writeback started up to, dropped up to.
    written: u64,
    synced: u64,
    dropped: u64,
}

impl DropBehind {
    const STEP: u64 = 8 << 20;

    /// For regular files only (not a pipe or terminal on stdout).
    fn of(f: &File) -> Option<DropBehind> {
        use std::io::Seek as _;
        if !f.metadata().ok()?.file_type().is_file() {
            return None;
        }
        // Appending: the position is the end of the file (other workers append to it too).
        let end = (&*f).seek(std::io::SeekFrom::End(0)).ok()?;
        Some(DropBehind {
            written: end,
            synced: end,
            dropped: end,
        })
    }

    fn wrote(&mut self, f: &File) {
        use std::io::Seek as _;
        use std::os::fd::AsRawFd as _;
        let Ok(end) = (&*f).stream_position() else {
            return;
        };
        self.written = end;
        if self.written < self.synced + Self::STEP {
            return;
        }
        let fd = f.as_raw_fd();
        // SAFETY: plain syscalls on a descriptor we own; the ranges are within the file.
        unsafe {
            libc::sync_file_range(
                fd,
                self.synced as i64,
                (self.written - self.synced) as i64,
                libc::SYNC_FILE_RANGE_WRITE,
            );
            if self.synced >= self.dropped + Self::STEP {
                libc::posix_fadvise(
                    fd,
                    self.dropped as i64,
                    (self.synced - self.dropped) as i64,
                    libc::POSIX_FADV_DONTNEED,
                );
                self.dropped = self.synced;
            }
        }
        self.synced = self.written;
    }
}

fn writer(sink: Sink, mut out: File, rx: Receiver<Msg>) {
    // SCHED_BATCH: waking this thread (once a batch) must not preempt the I/O thread mid-request
    // (profiles showed the switch pair costing ~0.1 us a request); it runs at the next natural
    // switch, or on another core.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread (pid 0) with a valid parameter struct.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    let mut behind = DropBehind::of(&out);
    while let Ok(msg) = rx.recv() {
        match msg {
            Msg::Lines(b) => {
                if let Err(e) = out.write_all(&b) {
                    eprintln!("pygateway: access log write failed: {e}");
                }
                if let Some(d) = &mut behind {
                    d.wrote(&out);
                }
            }
            Msg::Reopen => {
                if let Sink::File(_) = sink {
                    match open_sink(&sink) {
                        Ok(f) => {
                            behind = DropBehind::of(&f);
                            out = f;
                        }
                        Err(e) => eprintln!("pygateway: access log reopen failed: {e}"),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_behind_keeps_every_byte() {
        let dir = std::env::temp_dir().join(format!("pgw-dropbehind-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.log");
        std::fs::write(&path, b"before\n").unwrap();
        let sink = Sink::File(path.clone());
        let (tx, rx) = sync_channel(4);
        let out = open_sink(&sink).unwrap();
        let t = std::thread::spawn(move || writer(sink, out, rx));
        let batch: Vec<u8> = (0..(1 << 20) / 16)
            .flat_map(|i| format!("{i:015}\n").into_bytes())
            .collect();
        let n = 3 * DropBehind::STEP as usize / batch.len() + 1;
        for _ in 0..n {
            tx.send(Msg::Lines(batch.clone())).unwrap();
        }
        drop(tx);
        t.join().unwrap();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 7 + n * batch.len());
        assert!(data.starts_with(b"before\n"));
        assert!(data[7..].chunks(batch.len()).all(|c| c == batch.as_slice()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn needs_escape_agrees_with_the_table() {
        let mut s = *b"abcdefghijklmnopqrstuvwxy";
        assert!(!needs_escape(&s));
        for pos in 0..s.len() {
            for b in 0..=255u8 {
                let keep = s[pos];
                s[pos] = b;
                assert_eq!(
                    needs_escape(&s),
                    NEEDS_ESCAPE[b as usize],
                    "byte {b:#x} at {pos}"
                );
                s[pos] = keep;
            }
        }
    }

    fn cap(fmt: &LogFormat) -> Capture {
        let req = http::Request::builder()
            .method("POST")
            .uri("/a/b?x=1")
            .header("host", "example.com")
            .header("user-agent", "curl/8 \"q\"")
            .body(())
            .unwrap();
        let mut c = Capture::new(fmt, &req, "10.0.0.1:5555".parse().unwrap());
        c.wall = UNIX_EPOCH + std::time::Duration::from_millis(1_764_135_000_123);
        c
    }

    fn done() -> Done<'static> {
        Done {
            status: 201,
            body_bytes: 12,
            bytes_sent: 140,
            request_length: 80,
            request_us: 1_234_567,
            upstream_addr: Some(("127.0.0.1", 1980)),
            upstream_status: Some(201),
            upstream_us: Some(1_000_000),
            route_id: "r1",
            service_id: "",
            consumer: "jack",
            trace_id: "",
        }
    }

    #[test]
    fn default_json_line_is_valid_json_with_typed_fields() {
        let f = LogFormat::parse("json").unwrap();
        let mut out = Vec::new();
        f.write(&mut out, &cap(&f), &done());
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["status"], 201);
        assert_eq!(v["uri"], "/a/b?x=1");
        assert_eq!(v["client_ip"], "10.0.0.1");
        assert_eq!(v["user_agent"], "curl/8 \"q\"");
        assert_eq!(v["upstream_addr"], "127.0.0.1:1980");
        assert_eq!(v["request_time"], 1.234);
        assert_eq!(v["upstream_response_time"], 1.0);
        assert_eq!(v["time"], "2025-11-26T05:30:00+00:00");
        assert_eq!(v["consumer"], "jack");
        assert!(v["referer"].is_null());
        assert!(out.ends_with(b"\n"));
    }

    #[test]
    fn combined_matches_nginx_shape() {
        let f = LogFormat::parse("combined").unwrap();
        let mut out = Vec::new();
        f.write(&mut out, &cap(&f), &done());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.1 - - [26/Nov/2025:05:30:00 +0000] \"POST /a/b?x=1 HTTP/1.1\" 201 12 \"-\" \"curl/8 \"q\"\" 1.234 1.000\n"
        );
    }

    #[test]
    fn custom_formats_and_errors() {
        let f = LogFormat::parse(r#"{"ip":"$remote_addr","s":"$status","x":"id=${route_id}"}"#)
            .unwrap();
        let mut out = Vec::new();
        f.write(&mut out, &cap(&f), &done());
        assert_eq!(out, b"{\"ip\":\"10.0.0.1\",\"s\":201,\"x\":\"id=r1\"}\n");
        let e = LogFormat::parse("$nope").unwrap_err();
        assert!(e.contains("$nope"), "{e}");
        assert!(LogFormat::parse(r#"{"a": 1}"#)
            .unwrap_err()
            .contains("\"a\""));
    }
}

#[cfg(test)]
pub(crate) mod cost {
    use super::*;

    /// CPU time of this thread: unlike wall time, not inflated by other processes on a busy machine.
    pub(crate) fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec; CLOCK_THREAD_CPUTIME_ID exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// `cargo test --release --lib accesslog::cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn cost_of_a_json_line() {
        let f = LogFormat::parse("json").unwrap();
        let req = http::Request::builder()
            .uri("/plain?x=1")
            .header("host", "127.0.0.1:9080")
            .header("user-agent", "wrk")
            .body(())
            .unwrap();
        let d = Done {
            status: 200,
            body_bytes: 5,
            bytes_sent: 140,
            request_length: 80,
            request_us: 412,
            upstream_addr: Some(("127.0.0.1", 1980)),
            upstream_status: Some(200),
            upstream_us: Some(300),
            route_id: "plain",
            service_id: "",
            consumer: "",
            trace_id: "",
        };
        let mut out = Vec::with_capacity(1 << 20);
        let n = 200_000;
        let t = thread_cpu_ns();
        for _ in 0..n {
            std::hint::black_box(Capture::new(&f, &req, "127.0.0.1:5555".parse().unwrap()));
        }
        println!(
            "{:.0} ns per capture",
            (thread_cpu_ns() - t) as f64 / n as f64
        );
        let t = thread_cpu_ns();
        for _ in 0..n {
            let c = Capture::new(&f, &req, "127.0.0.1:5555".parse().unwrap());
            f.write(&mut out, &c, &d);
            if out.len() > 1 << 19 {
                out.clear();
            }
        }
        println!("{:.0} ns per line", (thread_cpu_ns() - t) as f64 / n as f64);
    }
}
