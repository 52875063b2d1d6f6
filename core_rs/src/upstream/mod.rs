//! Inline HTTP/1.1 upstream client with a per-thread keep-alive pool.
//!
//! Everything runs inside the calling task: the request is written and the response head read by
//! the `send` future itself, and the response body is read from the socket by
//! [`UpstreamBody::poll_frame`]. There is no connection task, no channel, no lock: idle connections
//! live in a `thread_local!` pool keyed by (host, port, tls) and are reused LIFO.
//!
//! Thread assumption: a worker runs a tokio `current_thread` runtime, so `send` and the polling and
//! dropping of the returned body happen on the worker's one thread. The types are `Send` anyway;
//! a connection is only ever put back into the pool of the thread that opened it (its socket is
//! registered with that thread's reactor) — a body finished or dropped on another thread just closes
//! its connection.
pub mod lb;
use crate::sys::rawtcp::RawTcp;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use hyper::body::{Body, Frame, SizeHint};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

pub use crate::http1::BoxError;

/// Largest accepted response head (status line + headers).
const MAX_HEAD: usize = 64 * 1024;
/// Most response headers accepted.
const MAX_HEADERS: usize = 100;
/// Socket reads ask for at least this much room.
const READ_CHUNK: usize = 16 * 1024;
/// ... and reuse the spare capacity of the buffer when at least this much is left.
const MIN_READ: usize = 4 * 1024;
/// A Full body up to this size is copied after the head (one plain write); larger ones use writev.
const COPY_BODY_MAX: usize = 4 * 1024;
/// Longest chunk-size line / total trailer section accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 64 * 1024;

/// Where to send: a node. `tls` = None for http.
pub struct Target<'a> {
    /// IP literal (IPv6 without brackets) or DNS name.
    pub host: &'a str,
    pub port: u16,
    pub tls: Option<TlsMode>,
}

/// How an https upstream's certificate is checked.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TlsMode {
    /// webpki roots + hostname check (SNI = host).
    Verify,
    /// Accept any certificate (still TLS, handshake signatures still checked).
    NoVerify,
}

/// The request body to forward.
pub enum ReqBody {
    Empty,
    Full(Bytes),
    /// Streamed: chunked unless the headers carry a Content-Length.
    Stream(crate::server::h1::ClientBody),
}

pub struct UpstreamRequest<'a> {
    pub method: &'a Method,
    /// origin-form, e.g. "/a/b?x=1"
    pub path_and_query: &'a str,
    /// complete (Host included, hop-by-hop already removed); written as given, except the framing
    /// headers (Content-Length / Transfer-Encoding), which are written to match `body`.
    pub headers: &'a HeaderMap,
    /// Written after `headers`, replacing any of the same names there (the proxy's Host and
    /// X-Forwarded-*: cheaper than inserting them into the map). Values must be valid header values.
    pub extra: &'a [(&'a HeaderName, &'a [u8])],
    pub body: ReqBody,
    /// Write after the other requests ready in this event-loop turn (see `write_simple`).
    pub batch: bool,
    /// `Some(replaced)`: the caller forwards the response headers untouched to an HTTP/1 client,
    /// so a 2xx response (not to HEAD, not 204) keeps them as encoded lines
    /// ([`UpstreamBody::raw_headers`]) and comes with an empty `HeaderMap`. Lines named in
    /// `replaced` (lower case) are left out: the caller adds its own ([`UpstreamBody::raw_lines_mut`],
    /// or the map when the response kept no lines).
    pub raw_headers: Option<&'static [&'static [u8]]>,
}

#[derive(Debug)]
pub enum UpstreamError {
    /// Could not connect (refused, unreachable, DNS): nothing was sent — safe to try another node.
    Connect(io::Error),
    ConnectTimeout,
    Tls(String),
    /// Timed out waiting for the response head (or writing the request).
    Timeout,
    /// The connection failed after the request was (maybe) sent, or the request body failed.
    Io(io::Error),
    BadResponse(&'static str),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "upstream connect error: {e}"),
            UpstreamError::ConnectTimeout => f.write_str("upstream connect timed out"),
            UpstreamError::Tls(e) => write!(f, "upstream TLS error: {e}"),
            UpstreamError::Timeout => f.write_str("upstream timed out"),
            UpstreamError::Io(e) => write!(f, "upstream I/O error: {e}"),
            UpstreamError::BadResponse(e) => write!(f, "bad upstream response: {e}"),
        }
    }
}

impl std::error::Error for UpstreamError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            UpstreamError::Connect(e) | UpstreamError::Io(e) => Some(e),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pool settings and the per-thread pool
// ---------------------------------------------------------------------------------------------

static MAX_IDLE: AtomicUsize = AtomicUsize::new(1024);
static IDLE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(60_000);
static NEXT_THREAD_TOKEN: AtomicU64 = AtomicU64::new(1);

/// Pool settings (call once per worker at start; defaults: 1024 idle per target, 60 s idle
/// timeout). Process-wide; takes effect for every thread's pool.
pub fn configure_pool(max_idle_per_target: usize, idle_timeout: Duration) {
    MAX_IDLE.store(max_idle_per_target, Ordering::Relaxed);
    let ms = u64::try_from(idle_timeout.as_millis()).unwrap_or(u64::MAX);
    IDLE_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

fn idle_timeout_ms() -> u64 {
    IDLE_TIMEOUT_MS.load(Ordering::Relaxed)
}

thread_local! {
    static THREAD_TOKEN: Cell<u64> = const { Cell::new(0) };
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
    static TLS_CONFIGS: RefCell<[Option<Arc<rustls::ClientConfig>>; 2]> = const { RefCell::new([None, None]) };
}

/// A small id unique to the current thread (never reused, unlike addresses or OS ids).
fn thread_token() -> u64 {
    THREAD_TOKEN.with(|t| {
        let v = t.get();
        if v != 0 {
            return v;
        }
        let v = NEXT_THREAD_TOKEN.fetch_add(1, Ordering::Relaxed);
        t.set(v);
        v
    })
}

/// FxHash-style hash of a pool key, with a final avalanche so every bit is usable.
fn key_hash(host: &str, port: u16, tls: Option<TlsMode>) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mut h: u64 = 0;
    let mut add = |w: u64| h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    let mut chunks = host.as_bytes().chunks_exact(8);
    for c in &mut chunks {
        add(u64::from_le_bytes(c.try_into().unwrap()));
    }
    let mut tail = [0u8; 8];
    let rest = chunks.remainder();
    tail[..rest.len()].copy_from_slice(rest);
    add(u64::from_le_bytes(tail) ^ ((rest.len() as u64) << 56));
    let t = match tls {
        None => 0u64,
        Some(TlsMode::Verify) => 1,
        Some(TlsMode::NoVerify) => 2,
    };
    add(u64::from(port) | (t << 16) | ((host.len() as u64) << 24));
    // murmur3 fmix64
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The keys are already well-mixed hashes: use them as is.
#[derive(Default)]
struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Slot {
    host: Box<str>,
    port: u16,
    tls: Option<TlsMode>,
    /// Oldest at the front, most recently used at the back (LIFO reuse).
    idle: VecDeque<Box<Conn>>,
}

#[derive(Default)]
struct Pool {
    /// hash → targets with that hash (almost always exactly one).
    map: HashMap<u64, Vec<Slot>, BuildHasherDefault<IdHasher>>,
}

impl Pool {
    fn slot_mut(
        &mut self,
        hash: u64,
        host: &str,
        port: u16,
        tls: Option<TlsMode>,
    ) -> Option<&mut Slot> {
        self.map
            .get_mut(&hash)?
            .iter_mut()
            .find(|s| s.port == port && s.tls == tls && &*s.host == host)
    }
}

/// Take a live idle connection to the target, if there is one.
fn checkout(hash: u64, target: &Target<'_>) -> Option<Box<Conn>> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let slot = p.slot_mut(hash, target.host, target.port, target.tls)?;
        if slot.idle.is_empty() {
            return None;
        }
        let now = crate::sys::clock::monotonic_ms();
        let max_age = idle_timeout_ms();
        while let Some(mut c) = slot.idle.pop_back() {
            if now.saturating_sub(c.idle_since_ms) > max_age {
                // The others are older still.
                slot.idle.clear();
                return None;
            }
            if c.is_idle_alive() {
                return Some(c);
            }
        }
        None
    })
}

/// Put a connection whose last exchange completed cleanly back into this thread's pool.
fn checkin(mut conn: Box<Conn>) {
    if conn.owner != thread_token() || !conn.rbuf.is_empty() {
        return;
    }
    let max = MAX_IDLE.load(Ordering::Relaxed);
    if max == 0 {
        return;
    }
    let now = crate::sys::clock::monotonic_ms();
    conn.idle_since_ms = now;
    let max_age = idle_timeout_ms();
    let _ = POOL.try_with(|p| {
        let Ok(mut p) = p.try_borrow_mut() else {
            return;
        };
        let (hash, port, tls) = (conn.hash, conn.port, conn.tls);
        let slots = p.map.entry(hash).or_default();
        let idx = match slots
            .iter()
            .position(|s| s.port == port && s.tls == tls && s.host == conn.host)
        {
            Some(i) => i,
            None => {
                slots.push(Slot {
                    host: conn.host.clone(),
                    port,
                    tls,
                    idle: VecDeque::new(),
                });
                slots.len() - 1
            }
        };
        let idle = &mut slots[idx].idle;
        // Drop expired connections from the old end, and the oldest when full.
        while let Some(front) = idle.front() {
            if idle.len() >= max || now.saturating_sub(front.idle_since_ms) > max_age {
                idle.pop_front();
            } else {
                break;
            }
        }
        idle.push_back(conn);
    });
}

#[cfg(test)]
fn pool_idle_count(target: &Target<'_>) -> usize {
    let hash = key_hash(target.host, target.port, target.tls);
    POOL.with(|p| {
        p.borrow_mut()
            .slot_mut(hash, target.host, target.port, target.tls)
            .map_or(0, |s| s.idle.len())
    })
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

enum Stream {
    Plain(RawTcp),
    Tls(Box<TlsStream<RawTcp>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => &s.0,
            Stream::Tls(s) => &s.get_ref().0 .0,
        }
    }
}

impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(_) => Poll::Ready(Ok(())),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

struct Conn {
    io: Stream,
    /// Bytes read from the upstream and not consumed yet.
    rbuf: BytesMut,
    /// The request head being written (reused across requests).
    wbuf: Vec<u8>,
    host: Box<str>,
    port: u16,
    tls: Option<TlsMode>,
    hash: u64,
    /// `thread_token()` of the thread whose reactor the socket is registered with.
    owner: u64,
    /// `clock::monotonic_ms()` when it went idle.
    idle_since_ms: u64,
    /// The response timer, kept across requests (see `within`).
    timer: Option<Timer>,
    /// Where the response body being read stands (while an `UpstreamBody` holds the connection).
    body: BodyState,
    /// The connection may go back to the pool once that body is read to its end.
    reusable: bool,
    /// The response's headers as lines, when it was read with `raw_headers`.
    raw: RawHead,
}

/// Response header lines kept as received (hop-by-hop and Content-Length left out), for a
/// response whose headers the proxy forwards untouched to an HTTP/1 client.
#[derive(Default)]
pub struct RawHead {
    /// `name: value\r\n` lines.
    lines: Vec<u8>,
    /// They include a Date.
    date: bool,
    /// They belong to the current response (its `HeaderMap` is empty).
    active: bool,
}

impl Conn {
    /// Whether an idle connection is still usable: the upstream must not have sent anything
    /// (EOF, data, TLS alert) while it was idle. Costs no syscall unless tokio saw the socket
    /// become readable, in which case one non-blocking `recv(MSG_PEEK)` tells spurious readiness
    /// (left over from the last read of the previous response) from real data/EOF.
    fn is_idle_alive(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut rb = ReadBuf::uninit(&mut byte);
        self.io.tcp().poll_peek(&mut cx, &mut rb).is_pending()
    }
}

fn tls_config(mode: TlsMode) -> Arc<rustls::ClientConfig> {
    TLS_CONFIGS.with(|c| {
        let mut c = c.borrow_mut();
        let i = (mode == TlsMode::NoVerify) as usize;
        c[i].get_or_insert_with(|| build_tls_config(mode)).clone()
    })
}

fn build_tls_config(mode: TlsMode) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("rustls protocol versions");
    let mut cfg = match mode {
        TlsMode::Verify => builder
            .with_root_certificates(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            })
            .with_no_client_auth(),
        TlsMode::NoVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// Accepts any server certificate (still checks the handshake signatures).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn connect(
    target: &Target<'_>,
    hash: u64,
    connect_timeout: Duration,
) -> Result<Box<Conn>, UpstreamError> {
    let fut = async {
        let tcp = TcpStream::connect((target.host, target.port))
            .await
            .map_err(UpstreamError::Connect)?;
        let _ = tcp.set_nodelay(true);
        let tcp = RawTcp(tcp);
        let io = match target.tls {
            None => Stream::Plain(tcp),
            Some(mode) => {
                let name = rustls::pki_types::ServerName::try_from(target.host.to_owned())
                    .map_err(|e| {
                        UpstreamError::Tls(format!("invalid server name {:?}: {e}", target.host))
                    })?;
                let tls = tokio_rustls::TlsConnector::from(tls_config(mode))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| UpstreamError::Tls(e.to_string()))?;
                Stream::Tls(Box::new(tls))
            }
        };
        Ok(Box::new(Conn {
            io,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
            host: target.host.into(),
            port: target.port,
            tls: target.tls,
            hash,
            owner: thread_token(),
            idle_since_ms: crate::sys::clock::monotonic_ms(),
            timer: None,
            body: BodyState::Done,
            reusable: false,
            raw: RawHead::default(),
        }))
    };
    match tokio::time::timeout(connect_timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(UpstreamError::ConnectTimeout),
    }
}

// ---------------------------------------------------------------------------------------------
// Request writing
// ---------------------------------------------------------------------------------------------

/// "<hex>\r\n" into `out`, returning the used length.
pub(crate) fn chunk_header(out: &mut [u8; 18], n: usize) -> usize {
    let mut tmp = [0u8; 16];
    let mut i = tmp.len();
    let mut v = n as u64;
    loop {
        i -= 1;
        tmp[i] = b"0123456789abcdef"[(v & 15) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    let len = tmp.len() - i;
    out[..len].copy_from_slice(&tmp[i..]);
    out[len] = b'\r';
    out[len + 1] = b'\n';
    len + 2
}

/// Whether a comma-separated header value (e.g. `Connection`) lists `token`.
pub(crate) fn has_token(v: &[u8], token: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether a Connection header value lists `close`.
pub(crate) fn has_close_token(v: &[u8]) -> bool {
    has_token(v, b"close")
}

/// How the request body is framed on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqFraming {
    /// No body: "content-length: 0" is written for POST/PUT/PATCH (as hyper does) or when the
    /// caller's headers had a Content-Length; nothing otherwise.
    None,
    /// Content-Length written by us.
    Length(u64),
    /// Content-Length given by the caller's headers (streamed body of that length).
    GivenLength(u64),
    Chunked,
}

/// Serialize the request head into `buf`. Returns whether the request asks to close.
fn encode_head(
    buf: &mut Vec<u8>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &[u8])],
    framing: ReqFraming,
) -> bool {
    buf.clear();
    buf.extend_from_slice(method.as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let keep_given_cl = matches!(framing, ReqFraming::GivenLength(_));
    let mut close = false;
    let mut had_cl = false;
    for (name, value) in headers {
        let v = value.as_bytes();
        if extra.iter().any(|(n, _)| *n == name) {
            continue;
        }
        if *name == header::CONTENT_LENGTH {
            had_cl = true;
            if !keep_given_cl {
                continue;
            }
        } else if *name == header::TRANSFER_ENCODING {
            continue;
        } else if *name == header::CONNECTION && has_close_token(v) {
            close = true;
        }
        let n = name.as_str().as_bytes();
        buf.reserve(n.len() + v.len() + 4);
        buf.extend_from_slice(n);
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(v);
        buf.extend_from_slice(b"\r\n");
    }
    for (n, v) in extra {
        buf.extend_from_slice(n.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(v);
        buf.extend_from_slice(b"\r\n");
    }
    match framing {
        ReqFraming::None => {
            if had_cl
                || *method == Method::POST
                || *method == Method::PUT
                || *method == Method::PATCH
            {
                buf.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        ReqFraming::GivenLength(_) => {}
        ReqFraming::Length(n) => {
            buf.extend_from_slice(b"content-length: ");
            crate::observe::accesslog::put_u64(buf, n);
            buf.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
    close
}

pub(crate) fn parse_cl_value(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(b - b'0');
    }
    Some(n)
}

async fn write_all_vectored(io: &mut Stream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = poll_fn(|cx| Pin::new(&mut *io).poll_write_vectored(cx, bufs)).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut bufs, n);
    }
    Ok(())
}

async fn flush(io: &mut Stream) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// Write head + (Empty | Full) body. With `batch`, first let the other requests ready in this
/// event-loop turn run, so their upstream writes go out back to back and the upstream wakes once
/// for the batch (waking an idle core is an IPI). That costs a re-poll of the whole connection task
/// (~3k instructions): worth it where a request is slow to prepare (Python plugins: jwt-auth RS256
/// 62 -> 48 us a request), not for plain proxying (no gain measured).
async fn write_simple(conn: &mut Conn, body: &Bytes, batch: bool) -> io::Result<()> {
    if batch {
        tokio::task::yield_now().await;
    }
    if body.is_empty() {
        write_all_vectored(&mut conn.io, &mut [IoSlice::new(&conn.wbuf)]).await?;
    } else if body.len() <= COPY_BODY_MAX {
        conn.wbuf.extend_from_slice(body);
        write_all_vectored(&mut conn.io, &mut [IoSlice::new(&conn.wbuf)]).await?;
    } else {
        write_all_vectored(
            &mut conn.io,
            &mut [IoSlice::new(&conn.wbuf), IoSlice::new(body)],
        )
        .await?;
    }
    flush(&mut conn.io).await
}

enum StreamWriteError {
    /// The socket failed; `touched` = a body frame was already taken from the source.
    Io(io::Error, bool),
    Timeout,
    /// The request body source failed, or did not match its Content-Length.
    Body(io::Error),
}

/// Write head + streamed body (the head goes out with the first frame).
async fn write_stream(
    conn: &mut Conn,
    body: &mut crate::server::h1::ClientBody,
    framing: ReqFraming,
    write_timeout: Duration,
) -> Result<(), StreamWriteError> {
    let chunked = framing == ReqFraming::Chunked;
    let mut remaining = match framing {
        ReqFraming::GivenLength(n) => n,
        _ => u64::MAX,
    };
    let mut head_pending = true;
    let mut touched = false;
    let io = &mut conn.io;
    let wbuf = &conn.wbuf;
    macro_rules! timed_write {
        ($bufs:expr) => {
            match tokio::time::timeout(write_timeout, write_all_vectored(io, $bufs)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(StreamWriteError::Io(e, touched)),
                Err(_) => return Err(StreamWriteError::Timeout),
            }
        };
    }
    loop {
        let frame = match poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => break,
            Some(Err(e)) => return Err(StreamWriteError::Body(io::Error::other(e))),
            Some(Ok(f)) => f,
        };
        touched = true;
        let Ok(data) = frame.into_data() else {
            continue; // trailers are not forwarded
        };
        if data.is_empty() {
            continue;
        }
        let head: &[u8] = if head_pending { wbuf } else { &[] };
        head_pending = false;
        if chunked {
            let mut hdr = [0u8; 18];
            let hl = chunk_header(&mut hdr, data.len());
            timed_write!(&mut [
                IoSlice::new(head),
                IoSlice::new(&hdr[..hl]),
                IoSlice::new(&data),
                IoSlice::new(b"\r\n"),
            ]);
        } else {
            if data.len() as u64 > remaining {
                return Err(StreamWriteError::Body(io::Error::other(
                    "request body longer than its content-length",
                )));
            }
            remaining -= data.len() as u64;
            timed_write!(&mut [IoSlice::new(head), IoSlice::new(&data)]);
        }
    }
    let head: &[u8] = if head_pending { wbuf } else { &[] };
    if chunked {
        timed_write!(&mut [IoSlice::new(head), IoSlice::new(b"0\r\n\r\n")]);
    } else {
        if remaining != 0 {
            return Err(StreamWriteError::Body(io::Error::other(
                "request body shorter than its content-length",
            )));
        }
        if !head.is_empty() {
            timed_write!(&mut [IoSlice::new(head)]);
        }
    }
    match tokio::time::timeout(write_timeout, flush(io)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StreamWriteError::Io(e, touched)),
        Err(_) => Err(StreamWriteError::Timeout),
    }
}

// ---------------------------------------------------------------------------------------------
// Response head
// ---------------------------------------------------------------------------------------------

/// Read into the spare capacity of `buf`, first making room for `chunk` bytes when less than
/// `min` is left (also the client side's reader, `server::h1`).
pub(crate) fn poll_read_into<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
    chunk: usize,
    min: usize,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < min {
        buf.reserve(chunk);
    }
    let dst = buf.spare_capacity_mut();
    let mut rb = ReadBuf::uninit(dst);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    let n = rb.filled().len();
    // SAFETY: `poll_read` initialized the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

fn poll_read_buf(
    io: &mut Stream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    poll_read_into(io, cx, buf, READ_CHUNK, MIN_READ)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RespFraming {
    Empty,
    Length(u64),
    Chunked,
    Eof,
}

struct Head {
    status: StatusCode,
    headers: HeaderMap,
    framing: RespFraming,
    keep_alive: bool,
}

enum Parsed {
    Partial,
    /// 1xx interim response: skip it.
    Interim,
    Final(Head),
}

/// Parse one response head at the start of `buf`, consuming it when complete.
/// Hop-by-hop header names (RFC 9110 §7.6.1 and the usual extras): never forwarded.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str().as_bytes())
}

const HOP_BY_HOP: [&[u8]; 7] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
];

/// What a response header means to the framing and to forwarding.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ContentLength,
    TransferEncoding,
    Connection,
    Date,
    /// Another hop-by-hop header: not forwarded.
    HopByHop,
    Other,
}

impl Kind {
    fn of(name: &HeaderName) -> Kind {
        if *name == header::CONTENT_LENGTH {
            Kind::ContentLength
        } else if *name == header::TRANSFER_ENCODING {
            Kind::TransferEncoding
        } else if *name == header::CONNECTION {
            Kind::Connection
        } else if *name == header::DATE {
            Kind::Date
        } else if is_hop_by_hop(name) {
            Kind::HopByHop
        } else {
            Kind::Other
        }
    }

    /// `of` for a name as received (any case).
    fn of_bytes(name: &[u8]) -> Kind {
        let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
        match name.len() {
            4 if is(b"date") => Kind::Date,
            10 if is(b"connection") => Kind::Connection,
            14 if is(b"content-length") => Kind::ContentLength,
            17 if is(b"transfer-encoding") => Kind::TransferEncoding,
            2 | 7 | 10 | 16 if HOP_BY_HOP.iter().any(|h| is(h)) => Kind::HopByHop,
            _ => Kind::Other,
        }
    }
}

/// Framing and keep-alive facts gathered from a response's headers.
#[derive(Default)]
struct Seen {
    content_length: Option<u64>,
    bad_cl: bool,
    te_present: bool,
    te_chunked: bool,
    conn_close: bool,
    conn_keep_alive: bool,
    /// Headers the `Connection` header names (hop-by-hop for this response).
    conn_named: Vec<HeaderName>,
    date: bool,
}

impl Seen {
    fn see(&mut self, kind: Kind, value: &[u8]) {
        match kind {
            Kind::ContentLength => {
                for part in value.split(|&b| b == b',') {
                    match parse_cl_value(part.trim_ascii()) {
                        Some(n) if self.content_length.is_none_or(|c| c == n) => {
                            self.content_length = Some(n)
                        }
                        _ => self.bad_cl = true,
                    }
                }
            }
            Kind::TransferEncoding => {
                self.te_present = true;
                // Only the last coding matters: is it chunked?
                let last = value
                    .rsplit(|&b| b == b',')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii();
                self.te_chunked = last.eq_ignore_ascii_case(b"chunked");
            }
            Kind::Connection => {
                for t in value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    if t.eq_ignore_ascii_case(b"close") {
                        self.conn_close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        self.conn_keep_alive = true;
                    } else if let Ok(n) = HeaderName::from_bytes(t) {
                        self.conn_named.push(n);
                    }
                }
            }
            Kind::Date => self.date = true,
            Kind::HopByHop | Kind::Other => {}
        }
    }
}

/// Parse a response head. Hop-by-hop headers (and any the `Connection` header names) are read for
/// framing and keep-alive, and left out of the returned map: the body is decoded here, and the
/// proxy must not forward them.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    raw: Option<(&mut RawHead, &[&[u8]])>,
) -> Result<Parsed, &'static str> {
    let mut slots: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        [const { MaybeUninit::uninit() }; MAX_HEADERS];
    // (name start, name len, value start, value len) relative to the head start.
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let (len, code, minor, count) = {
        let mut resp = httparse::Response::new(&mut []);
        let base = buf.as_ptr() as usize;
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => {
                if n > MAX_HEAD {
                    return Err("response head too large");
                }
                for (s, h) in spans.iter_mut().zip(resp.headers.iter()) {
                    *s = (
                        (h.name.as_ptr() as usize - base) as u32,
                        h.name.len() as u32,
                        (h.value.as_ptr() as usize - base) as u32,
                        h.value.len() as u32,
                    );
                }
                (
                    n,
                    resp.code.unwrap_or(0),
                    resp.version.unwrap_or(1),
                    resp.headers.len(),
                )
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD {
                    return Err("response head too large");
                }
                return Ok(Parsed::Partial);
            }
            Err(httparse::Error::TooManyHeaders) => return Err("too many response headers"),
            Err(httparse::Error::Status) => return Err("invalid response status"),
            Err(httparse::Error::Version) => return Err("invalid response version"),
            Err(_) => return Err("malformed response head"),
        }
    };
    if (100..200).contains(&code) {
        if code == 101 {
            return Err("upgrade not supported");
        }
        buf.advance(len);
        return Ok(Parsed::Interim);
    }
    let status = StatusCode::from_u16(code).map_err(|_| "invalid response status")?;
    let at = |(o, l): (u32, u32)| o as usize..(o + l) as usize;
    let mut seen = Seen::default();
    let mut headers = HeaderMap::new();
    // Kept as encoded lines: the client gets exactly these (no map to build and walk) — unless
    // `Connection` names headers to drop, which the map does.
    let raw = raw.filter(|_| (200..300).contains(&code) && code != 204 && !head_request);
    let mut as_lines = false;
    if let Some((out, replaced)) = raw {
        out.lines.clear();
        for &(no, nl, vo, vl) in &spans[..count] {
            let (name, value) = (&buf[at((no, nl))], &buf[at((vo, vl))]);
            let kind = Kind::of_bytes(name);
            seen.see(kind, value);
            if matches!(kind, Kind::Date | Kind::Other)
                && !replaced.iter().any(|r| name.eq_ignore_ascii_case(r))
            {
                out.lines.extend_from_slice(name);
                out.lines.extend_from_slice(b": ");
                out.lines.extend_from_slice(value);
                out.lines.extend_from_slice(b"\r\n");
            }
        }
        as_lines = seen.conn_named.is_empty();
        out.date = seen.date;
        out.active = as_lines;
        if as_lines {
            buf.advance(len);
        } else {
            seen = Seen::default();
        }
    }
    if !as_lines {
        let head = buf.split_to(len).freeze();
        // Headroom for the headers the gateway adds (x-ratelimit-*, plugins'): no rehash on insert.
        headers.reserve(count + 4);
        for &(no, nl, vo, vl) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[at((no, nl))])
                .map_err(|_| "invalid response header name")?;
            let kind = Kind::of(&name);
            seen.see(kind, &head[at((vo, vl))]);
            if matches!(
                kind,
                Kind::HopByHop | Kind::Connection | Kind::TransferEncoding
            ) {
                continue;
            }
            // SAFETY: httparse admits exactly the bytes a HeaderValue may hold (HTAB, 0x20-0x7E,
            // 0x80-0xFF), so the second validation pass is skipped, as hyper's own parser does.
            let value =
                unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(at((vo, vl)))) };
            headers.append(name, value);
        }
        for n in &seen.conn_named {
            headers.remove(n);
        }
    }
    let Seen {
        content_length,
        bad_cl,
        te_present,
        te_chunked,
        conn_close,
        conn_keep_alive,
        ..
    } = seen;
    let mut keep_alive = if minor == 1 {
        !conn_close
    } else {
        conn_keep_alive && !conn_close
    };
    let framing = if head_request || code == 204 || code == 304 {
        RespFraming::Empty
    } else if te_present {
        if content_length.is_some() || bad_cl {
            keep_alive = false; // RFC 9112 §6.3: TE overrides CL, but the connection is suspect
        }
        if te_chunked {
            RespFraming::Chunked
        } else {
            keep_alive = false;
            RespFraming::Eof
        }
    } else if bad_cl {
        return Err("invalid content-length");
    } else if let Some(n) = content_length {
        RespFraming::Length(n)
    } else {
        keep_alive = false;
        RespFraming::Eof
    };
    Ok(Parsed::Final(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

/// A failed exchange, and whether it may be replayed on a fresh connection.
struct Fail {
    err: UpstreamError,
    retry: bool,
}

/// Read the final response head. `reused`: the connection came from the pool, so a failure before
/// any response byte arrives is the idle-close race and may be retried.
async fn read_head(
    conn: &mut Conn,
    head_request: bool,
    reused: bool,
    raw: Option<&'static [&'static [u8]]>,
) -> Result<Head, Fail> {
    let mut got_bytes = !conn.rbuf.is_empty();
    loop {
        if !conn.rbuf.is_empty() {
            let keep = raw.map(|replaced| (&mut conn.raw, replaced));
            match parse_head(&mut conn.rbuf, head_request, keep) {
                Ok(Parsed::Final(h)) => return Ok(h),
                Ok(Parsed::Interim) => continue,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    return Err(Fail {
                        err: UpstreamError::BadResponse(e),
                        retry: false,
                    })
                }
            }
        }
        let (io, buf) = (&mut conn.io, &mut conn.rbuf);
        match poll_fn(|cx| poll_read_buf(io, cx, buf)).await {
            Ok(0) => {
                return Err(Fail {
                    err: UpstreamError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the response head",
                    )),
                    retry: reused && !got_bytes,
                })
            }
            Ok(_) => got_bytes = true,
            Err(e) => {
                return Err(Fail {
                    err: UpstreamError::Io(e),
                    retry: reused && !got_bytes,
                })
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// send
// ---------------------------------------------------------------------------------------------

/// Send one request and return the response with a streaming body. Reuses an idle pooled
/// connection to the same (host, port, tls) when there is a live one; returns the connection to the
/// pool when the response body has been read to its end and both sides allow keep-alive.
///
/// A pooled connection that fails before any response byte arrives (the upstream closed it while
/// idle) is transparently replaced by a new one and the request replayed, once — for Empty/Full
/// bodies, and for Stream bodies of which no frame had been taken yet.
pub async fn send(
    target: &Target<'_>,
    req: UpstreamRequest<'_>,
    connect_timeout: Duration,
    read_timeout: Duration,
) -> Result<Response<UpstreamBody>, UpstreamError> {
    let UpstreamRequest {
        method,
        path_and_query,
        headers,
        extra,
        mut body,
        batch,
        raw_headers,
    } = req;
    let hash = key_hash(target.host, target.port, target.tls);
    let head_request = *method == Method::HEAD;
    if let Some(mut conn) = checkout(hash, target) {
        match exchange(
            &mut conn,
            method,
            path_and_query,
            headers,
            extra,
            &mut body,
            head_request,
            read_timeout,
            true,
            batch,
            raw_headers,
        )
        .await
        {
            Ok((head, close)) => return Ok(into_response(conn, head, close)),
            Err(f) if !f.retry => return Err(f.err),
            Err(_) => {}
        }
    }
    // Boxed: the connect (and TLS handshake) state is large and rare; unboxed it would be copied
    // with every request's future.
    let mut conn = Box::pin(connect(target, hash, connect_timeout)).await?;
    match exchange(
        &mut conn,
        method,
        path_and_query,
        headers,
        extra,
        &mut body,
        head_request,
        read_timeout,
        false,
        batch,
        raw_headers,
    )
    .await
    {
        Ok((head, close)) => Ok(into_response(conn, head, close)),
        Err(f) => Err(f.err),
    }
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    conn: &mut Conn,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    extra: &[(&HeaderName, &[u8])],
    body: &mut ReqBody,
    head_request: bool,
    read_timeout: Duration,
    reused: bool,
    batch: bool,
    raw: Option<&'static [&'static [u8]]>,
) -> Result<(Head, bool), Fail> {
    conn.rbuf.clear();
    conn.raw.active = false;
    let timeout_fail = || Fail {
        err: UpstreamError::Timeout,
        retry: false,
    };
    let (simple, framing) = match body {
        ReqBody::Empty => (Some(Bytes::new()), ReqFraming::None),
        ReqBody::Full(b) if b.is_empty() => (Some(Bytes::new()), ReqFraming::None),
        ReqBody::Full(b) => (Some(b.clone()), ReqFraming::Length(b.len() as u64)),
        ReqBody::Stream(inc) => {
            let given_cl = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| parse_cl_value(v.as_bytes()));
            if inc.is_end_stream() && given_cl.unwrap_or(0) == 0 {
                (Some(Bytes::new()), ReqFraming::None)
            } else {
                match given_cl {
                    Some(n) => (None, ReqFraming::GivenLength(n)),
                    None => (None, ReqFraming::Chunked),
                }
            }
        }
    };
    let close = encode_head(&mut conn.wbuf, method, path, headers, extra, framing);
    // The connection's response timer is out of it while the exchange borrows the connection (an
    // early error return drops it: that connection is not reused).
    let mut timer = conn.timer.take();
    let head = match simple {
        Some(bytes) => {
            let fut = async {
                if let Err(e) = write_simple(conn, &bytes, batch).await {
                    return Err(Fail {
                        err: UpstreamError::Io(e),
                        retry: reused,
                    });
                }
                read_head(conn, head_request, reused, raw).await
            };
            match within(&mut timer, read_timeout, fut).await {
                Some(r) => r?,
                None => return Err(timeout_fail()),
            }
        }
        None => {
            let ReqBody::Stream(inc) = body else {
                unreachable!()
            };
            match write_stream(conn, inc, framing, read_timeout).await {
                Ok(()) => {}
                Err(StreamWriteError::Io(e, touched)) => {
                    return Err(Fail {
                        err: UpstreamError::Io(e),
                        retry: reused && !touched,
                    })
                }
                Err(StreamWriteError::Timeout) => return Err(timeout_fail()),
                Err(StreamWriteError::Body(e)) => {
                    return Err(Fail {
                        err: UpstreamError::Io(e),
                        retry: false,
                    })
                }
            }
            match within(
                &mut timer,
                read_timeout,
                read_head(conn, head_request, false, raw),
            )
            .await
            {
                Some(r) => r?,
                None => return Err(timeout_fail()),
            }
        }
    };
    conn.timer = timer;
    Ok((head, close))
}

/// A connection's response timer and the coarse-clock deadline (ms) it is armed for.
struct Timer(Pin<Box<tokio::time::Sleep>>, u64);

/// `fut`, or None once `dur` has passed. The timer is the connection's own and outlives a
/// request. It is moved only when it would fire too late: a request that needs a later deadline
/// leaves it armed and it is re-armed when it fires early (once per timeout on a busy
/// connection). Resetting it for every request cost a clock read and a timer update (~0.6% of a
/// proxied request); this costs a read of the coarse clock.
async fn within<F: Future>(timer: &mut Option<Timer>, dur: Duration, fut: F) -> Option<F::Output> {
    let dur_ms = dur.as_millis() as u64;
    let due = crate::sys::clock::monotonic_ms() + dur_ms;
    let timer = match timer {
        Some(t) if t.1 <= due => t,
        Some(t) => {
            t.0.as_mut().reset(tokio::time::Instant::now() + dur);
            t.1 = due;
            t
        }
        None => timer.insert(Timer(Box::pin(tokio::time::sleep(dur)), due)),
    };
    let mut fut = std::pin::pin!(fut);
    poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        while timer.0.as_mut().poll(cx).is_ready() {
            let now = crate::sys::clock::monotonic_ms();
            if now >= due {
                return Poll::Ready(None);
            }
            timer
                .0
                .as_mut()
                .reset(tokio::time::Instant::now() + Duration::from_millis(due - now));
            timer.1 = due;
        }
        Poll::Pending
    })
    .await
}

fn into_response(mut conn: Box<Conn>, head: Head, req_close: bool) -> Response<UpstreamBody> {
    conn.body = match head.framing {
        RespFraming::Empty => BodyState::Done,
        RespFraming::Length(0) => BodyState::Done,
        RespFraming::Length(n) => BodyState::Length(n),
        RespFraming::Chunked => BodyState::Chunked(ChunkDecoder::default()),
        RespFraming::Eof => BodyState::Eof,
    };
    conn.reusable = head.keep_alive && !req_close;
    let c = &mut *conn;
    let done = match &mut c.body {
        BodyState::Done => true,
        // A chunked body that is already complete in the buffer ("0\r\n\r\n").
        BodyState::Chunked(dec) => {
            dec.skip_framing(&mut c.rbuf).is_ok() && dec.state == ChunkState::Done
        }
        _ => false,
    };
    // Raw header lines live in the connection: it stays with the body until its first poll.
    let keep_for_raw = c.raw.active;
    let mut body = UpstreamBody { conn: Some(conn) };
    if done && !keep_for_raw {
        body.finish();
    }
    let mut resp = Response::new(body);
    *resp.status_mut() = head.status;
    *resp.version_mut() = Version::HTTP_11;
    *resp.headers_mut() = head.headers;
    resp
}

// ---------------------------------------------------------------------------------------------
// Chunked decoding
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    DataCrlf,
    Trailers,
    Done,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkDecoder {
    state: ChunkState,
    trailer_bytes: usize,
}

fn find_lf(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n')
}

/// chunk-size [ BWS ; chunk-ext ] — `line` excludes the CRLF.
fn parse_chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let mut size: u64 = 0;
    let mut i = 0;
    while i < line.len() {
        let d = match line[i] {
            b @ b'0'..=b'9' => b - b'0',
            b @ b'a'..=b'f' => b - b'a' + 10,
            b @ b'A'..=b'F' => b - b'A' + 10,
            _ => break,
        };
        if size > (u64::MAX >> 4) {
            return Err("chunk size overflow");
        }
        size = (size << 4) | u64::from(d);
        i += 1;
    }
    if i == 0 {
        return Err("invalid chunk size");
    }
    while i < line.len() && (line[i] == b' ' || line[i] == b'\t') {
        i += 1;
    }
    if i < line.len() && line[i] != b';' {
        return Err("invalid chunk size");
    }
    if line[i..]
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err("invalid chunk extension");
    }
    Ok(size)
}

impl ChunkDecoder {
    /// The last chunk and the trailers have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Advance through everything but chunk data: stops in `Data` (with data to come), `Done`,
    /// or when more input is needed.
    fn skip_framing(&mut self, buf: &mut BytesMut) -> Result<(), &'static str> {
        loop {
            match self.state {
                ChunkState::Data(_) | ChunkState::Done => return Ok(()),
                ChunkState::DataCrlf => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|&b| b != b'\r') {
                            return Err("invalid chunk terminator");
                        }
                        return Ok(());
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("invalid chunk terminator");
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Size => {
                    let Some(lf) = find_lf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err("chunk size line too long");
                        }
                        return Ok(());
                    };
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err("invalid chunk size line");
                    }
                    let size = parse_chunk_size(&buf[..lf - 1])?;
                    buf.advance(lf + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Trailers => {
                    let Some(lf) = find_lf(buf) else {
                        if self.trailer_bytes + buf.len() > MAX_TRAILERS {
                            return Err("chunked trailers too large");
                        }
                        return Ok(());
                    };
                    if lf == 0 || buf[lf - 1] != b'\r' {
                        return Err("invalid chunked trailer line");
                    }
                    self.trailer_bytes += lf + 1;
                    if self.trailer_bytes > MAX_TRAILERS {
                        return Err("chunked trailers too large");
                    }
                    let empty = lf == 1;
                    buf.advance(lf + 1);
                    if empty {
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }

    /// Decode from `buf`: `Some(data)` when chunk data is available, `None` when more input is
    /// needed or the body is complete (`state == Done`). After returning data, the framing that
    /// follows is consumed as far as the buffer allows, so `Done` is seen as early as possible.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, &'static str> {
        self.skip_framing(buf)?;
        let ChunkState::Data(rem) = self.state else {
            return Ok(None);
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let take = rem.min(buf.len() as u64);
        let data = buf.split_to(take as usize).freeze();
        self.state = if take == rem {
            ChunkState::DataCrlf
        } else {
            ChunkState::Data(rem - take)
        };
        // Errors in what follows surface on the next call (skip_framing consumes nothing then).
        let _ = self.skip_framing(buf);
        Ok(Some(data))
    }
}

// ---------------------------------------------------------------------------------------------
// Response body
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Length(u64),
    Chunked(ChunkDecoder),
    Eof,
    Done,
}

/// The streaming response body. Reads straight from the upstream connection; when the end is
/// reached and the connection is reusable, it goes back into the (current thread's) pool.
/// Dropping it before the end closes the connection. One pointer: the body's state is the
/// connection's (a response is moved many times on its way out; a small one moves cheaply).
pub struct UpstreamBody {
    /// None once the body ended.
    conn: Option<Box<Conn>>,
}

fn body_error(msg: &'static str) -> BoxError {
    Box::new(UpstreamError::BadResponse(msg))
}

impl UpstreamBody {
    /// The end was reached: pool or close the connection.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if conn.reusable {
                checkin(conn);
            }
        }
    }

    fn fail(&mut self) {
        self.conn = None;
    }

    /// The response's header lines and whether they include a Date, when it was read with
    /// `raw_headers` (its `HeaderMap` is then empty). Valid until the body is first polled.
    pub fn raw_headers(&self) -> Option<(&[u8], bool)> {
        let c = self.conn.as_deref()?;
        c.raw.active.then_some((&c.raw.lines[..], c.raw.date))
    }

    /// The raw header lines to add to, when the response keeps its lines as received (the
    /// caller writes whole `name: value\r\n` lines of names it asked to leave out).
    pub fn raw_lines_mut(&mut self) -> Option<&mut Vec<u8>> {
        let c = self.conn.as_deref_mut()?;
        c.raw.active.then_some(&mut c.raw.lines)
    }

    fn state(&self) -> BodyState {
        self.conn.as_ref().map_or(BodyState::Done, |c| c.body)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_deref_mut() else {
                return Poll::Ready(None);
            };
            match &mut conn.body {
                BodyState::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                BodyState::Length(rem) => {
                    if !conn.rbuf.is_empty() {
                        let take = (*rem).min(conn.rbuf.len() as u64);
                        let data = conn.rbuf.split_to(take as usize).freeze();
                        *rem -= take;
                        if *rem == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Eof => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Chunked(dec) => match dec.decode(&mut conn.rbuf) {
                    Ok(Some(data)) => {
                        if dec.state == ChunkState::Done {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) => {
                        if dec.state == ChunkState::Done {
                            this.finish();
                            return Poll::Ready(None);
                        }
                    }
                    Err(e) => {
                        this.fail();
                        return Poll::Ready(Some(Err(body_error(e))));
                    }
                },
            }
            // Need more bytes from the socket.
            match ready!(poll_read_buf(&mut conn.io, cx, &mut conn.rbuf)) {
                Ok(0) => {
                    if conn.body == BodyState::Eof {
                        this.fail(); // read-until-close: this is the end; not reusable
                        return Poll::Ready(None);
                    }
                    this.fail();
                    return Poll::Ready(Some(Err(Box::new(UpstreamError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the body",
                    ))))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.fail();
                    return Poll::Ready(Some(Err(Box::new(UpstreamError::Io(e)))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state() == BodyState::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.state() {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("state", &self.state())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    /// What the scripted upstream does with the n-th request (over all connections).
    enum Act {
        /// Write these bytes and keep reading requests on the connection.
        Reply(Vec<u8>),
        /// Write these bytes, then close.
        ReplyClose(Vec<u8>),
        /// Write these bytes one at a time (with small pauses), keep the connection.
        Trickle(Vec<u8>),
        /// Close without answering (with RST when `true`).
        Close(bool),
        /// Never answer.
        Hang,
    }

    struct Upstream {
        port: u16,
        conns: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    impl Upstream {
        fn target(&self) -> Target<'static> {
            Target {
                host: "127.0.0.1",
                port: self.port,
                tls: None,
            }
        }
        fn conns(&self) -> usize {
            self.conns.load(Ordering::SeqCst)
        }
        fn request(&self, i: usize) -> Vec<u8> {
            self.requests.lock().unwrap()[i].clone()
        }
    }

    /// Read one request (head + content-length or chunked body) from `s` into `buf`; returns its
    /// length, or None at EOF.
    async fn read_request<S: AsyncRead + Unpin>(s: &mut S, buf: &mut Vec<u8>) -> Option<usize> {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let mut total = end + 4;
                if let Some(cl) = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                {
                    total += cl.trim().parse::<usize>().unwrap();
                    if buf.len() >= total {
                        return Some(total);
                    }
                } else if head.contains("transfer-encoding: chunked") {
                    if let Some(p) = buf[end + 4..].windows(5).position(|w| w == b"0\r\n\r\n") {
                        return Some(end + 4 + p + 5);
                    }
                } else {
                    return Some(total);
                }
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    async fn upstream(script: impl Fn(usize) -> Act + Send + Sync + 'static) -> Upstream {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let (c2, r2) = (conns.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let (script, reqs) = (script.clone(), r2.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(n) = read_request(&mut s, &mut buf).await {
                        let i = {
                            let mut r = reqs.lock().unwrap();
                            r.push(buf.drain(..n).collect());
                            r.len() - 1
                        };
                        match script(i) {
                            Act::Reply(b) => s.write_all(&b).await.unwrap(),
                            Act::ReplyClose(b) => {
                                let _ = s.write_all(&b).await;
                                return;
                            }
                            Act::Trickle(b) => {
                                for byte in b {
                                    s.write_all(&[byte]).await.unwrap();
                                    tokio::time::sleep(Duration::from_millis(1)).await;
                                }
                            }
                            Act::Close(rst) => {
                                if rst {
                                    #[allow(deprecated)]
                                    let _ = s.set_linger(Some(Duration::ZERO));
                                }
                                return;
                            }
                            Act::Hang => {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                            }
                        }
                    }
                });
            }
        });
        Upstream {
            port,
            conns,
            requests,
        }
    }

    /// `GET /` with these headers and no body.
    fn get_root(h: &HeaderMap) -> UpstreamRequest<'_> {
        UpstreamRequest {
            method: &Method::GET,
            path_and_query: "/",
            headers: h,
            extra: &[],
            body: ReqBody::Empty,
            batch: false,
            raw_headers: None,
        }
    }

    fn host_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("up.example"));
        h
    }

    async fn req(
        t: &Target<'_>,
        method: &Method,
        path: &str,
        body: ReqBody,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        let h = host_headers();
        send(
            t,
            UpstreamRequest {
                method,
                path_and_query: path,
                headers: &h,
                extra: &[],
                body,
                batch: false,
                raw_headers: None,
            },
            T,
            T,
        )
        .await
    }

    async fn get(t: &Target<'_>) -> Result<Response<UpstreamBody>, UpstreamError> {
        req(t, &Method::GET, "/", ReqBody::Empty).await
    }

    async fn body_of(r: Response<UpstreamBody>) -> Result<Vec<u8>, BoxError> {
        Ok(r.into_body().collect().await?.to_bytes().to_vec())
    }

    fn ok(body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-A: 1\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn content_length_body_and_reuse() {
        let up = upstream(|_| Act::Reply(ok("hello"))).await;
        let t = up.target();
        for _ in 0..3 {
            let r = get(&t).await.unwrap();
            assert_eq!(r.status(), 200);
            assert_eq!(r.version(), Version::HTTP_11);
            assert_eq!(r.headers()["x-a"], "1");
            assert_eq!(r.headers()["content-length"], "5");
            assert_eq!(r.body().size_hint().exact(), Some(5));
            assert_eq!(body_of(r).await.unwrap(), b"hello");
        }
        assert_eq!(up.conns(), 1);
        assert_eq!(pool_idle_count(&t), 1);
    }

    /// `raw_headers`: a 2xx response keeps its header lines (hop-by-hop, Content-Length and the
    /// headers `Connection` names left out) with an empty map; others get the map as usual.
    #[tokio::test(flavor = "current_thread")]
    async fn raw_header_lines() {
        let up = upstream(|i| {
            Act::Reply(match i {
                0 => b"HTTP/1.1 200 OK\r\nServer: up\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\
                       Keep-Alive: timeout=5\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nX-A: 1\r\n\r\nok"
                    .to_vec(),
                1 => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-B: 2\r\n\r\n".to_vec(),
                2 => b"HTTP/1.1 200 OK\r\nConnection: x-hop\r\nX-Hop: 1\r\nContent-Length: 0\r\n\r\n".to_vec(),
                4 => b"HTTP/1.1 200 OK\r\nX-RateLimit-Limit: 9\r\nX-D: 4\r\nContent-Length: 0\r\n\r\n".to_vec(),
                _ => b"HTTP/1.1 404 Not Found\r\nX-C: 3\r\nContent-Length: 0\r\n\r\n".to_vec(),
            })
        })
        .await;
        let t = up.target();
        let h = host_headers();
        let raw_get = || UpstreamRequest {
            raw_headers: Some(&[]),
            ..get_root(&h)
        };
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert!(r.headers().is_empty());
        assert_eq!(
            r.body().raw_headers(),
            Some((
                &b"Server: up\r\nDate: Thu, 26 Nov 2026 10:00:00 GMT\r\nX-A: 1\r\n"[..],
                true
            ))
        );
        assert_eq!(r.body().size_hint().exact(), Some(2));
        assert_eq!(body_of(r).await.unwrap(), b"ok");
        // An empty body keeps its connection (and lines) until polled, then pools it.
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert_eq!(r.body().raw_headers(), Some((&b"X-B: 2\r\n"[..], false)));
        assert!(r.body().is_end_stream());
        assert_eq!(pool_idle_count(&t), 0);
        assert_eq!(body_of(r).await.unwrap(), b"");
        assert_eq!(pool_idle_count(&t), 1);
        // Headers named by Connection: the map, which drops them.
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert_eq!(r.body().raw_headers(), None);
        assert!(!r.headers().contains_key("x-hop"));
        assert_eq!(body_of(r).await.unwrap(), b"");
        // Not a 2xx: the map.
        let r = send(&t, raw_get(), T, T).await.unwrap();
        assert_eq!(r.body().raw_headers(), None);
        assert_eq!(r.headers()["x-c"], "3");
        // Lines the caller replaces are left out.
        let r = send(
            &t,
            UpstreamRequest {
                raw_headers: Some(&[b"x-ratelimit-limit"]),
                ..get_root(&h)
            },
            T,
            T,
        )
        .await
        .unwrap();
        assert_eq!(r.body().raw_headers(), Some((&b"X-D: 4\r\n"[..], false)));
        assert_eq!(body_of(r).await.unwrap(), b"");
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn body_is_end_stream_after_last_frame() {
        let up = upstream(|_| Act::Reply(ok("abc"))).await;
        let t = up.target();
        let mut r = get(&t).await.unwrap();
        let f = r.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "abc");
        assert!(r.body().is_end_stream());
        // pooled as soon as the last byte was yielded
        assert_eq!(pool_idle_count(&t), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_content_length_body_streams() {
        let big = "x".repeat(300_000);
        let b2 = big.clone();
        let up = upstream(move |_| Act::Reply(ok(&b2))).await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            let mut body = r.into_body();
            let mut total = Vec::new();
            let mut frames = 0;
            while let Some(f) = body.frame().await {
                let d = f.unwrap().into_data().unwrap();
                assert!(d.len() <= READ_CHUNK + MIN_READ + 1024);
                total.extend_from_slice(&d);
                frames += 1;
            }
            assert!(frames > 2);
            assert_eq!(total, big.as_bytes());
        }
        assert_eq!(up.conns(), 1);
    }

    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=val\r\nhello\r\n1 ; x\r\n \r\nB\r\nworld!!!!!!\r\n0\r\nX-T: 1\r\nX-U: 2\r\n\r\n";

    #[tokio::test(flavor = "current_thread")]
    async fn chunked_body() {
        let up = upstream(|_| Act::Reply(CHUNKED.to_vec())).await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            // Decoded here: the framing header is not handed on.
            assert!(!r.headers().contains_key("transfer-encoding"));
            assert_eq!(body_of(r).await.unwrap(), b"hello world!!!!!!");
        }
        assert_eq!(up.conns(), 1);
    }

    #[test]
    fn extra_headers_replace_the_maps() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("client.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-other", HeaderValue::from_static("kept"));
        let xff = HeaderName::from_static("x-forwarded-for");
        let extra: [(&HeaderName, &[u8]); 2] =
            [(&header::HOST, b"node:8080"), (&xff, b"1.1.1.1, 10.0.0.9")];
        let mut buf = Vec::new();
        encode_head(&mut buf, &Method::GET, "/a", &h, &extra, ReqFraming::None);
        let text = String::from_utf8(buf).unwrap();
        let mut lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines.remove(0), "GET /a HTTP/1.1");
        lines.retain(|l| !l.is_empty());
        lines.sort();
        assert_eq!(
            lines,
            [
                "host: node:8080",
                "x-forwarded-for: 1.1.1.1, 10.0.0.9",
                "x-other: kept"
            ]
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn hop_by_hop_response_headers_left_out() {
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\n\
                  X-Private: 1\r\nUpgrade: h2c\r\nX-Kept: yes\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        })
        .await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            let mut names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
            names.sort();
            assert_eq!(names, ["content-length", "x-kept"]);
            assert_eq!(body_of(r).await.unwrap(), b"ok");
        }
        assert_eq!(up.conns(), 1, "keep-alive still honoured");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn chunked_body_trickled_byte_by_byte() {
        let up = upstream(|_| Act::Trickle(CHUNKED.to_vec())).await;
        let t = up.target();
        for _ in 0..2 {
            let r = get(&t).await.unwrap();
            assert_eq!(body_of(r).await.unwrap(), b"hello world!!!!!!");
        }
        assert_eq!(up.conns(), 1);
    }

    /// The decoder fed with every possible split of the body into two reads, and byte by byte.
    #[test]
    fn chunk_decoder_every_split() {
        let body = &CHUNKED[CHUNKED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        let run = |parts: &[&[u8]]| -> Vec<u8> {
            let mut dec = ChunkDecoder::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for p in parts {
                buf.extend_from_slice(p);
                while let Some(d) = dec.decode(&mut buf).unwrap() {
                    out.extend_from_slice(&d);
                }
            }
            assert_eq!(dec.state, ChunkState::Done);
            assert!(buf.is_empty());
            out
        };
        for i in 0..=body.len() {
            assert_eq!(
                run(&[&body[..i], &body[i..]]),
                b"hello world!!!!!!",
                "split at {i}"
            );
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(run(&bytes), b"hello world!!!!!!");
    }

    #[test]
    fn chunk_decoder_rejects_garbage() {
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5x\r\nhello\r\n",
            b"\r\n",
            b"11111111111111111\r\n",
            b"5;a\x01b\r\nhello\r\n",
            b"0\r\nbad trailer\n\r\n",
        ] {
            let mut dec = ChunkDecoder::default();
            let mut buf = BytesMut::from(bad);
            let r = (|| {
                while dec.decode(&mut buf)?.is_some() {}
                Ok::<_, &str>(())
            })();
            assert!(r.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let mut buf = BytesMut::from(&b"0000000000000000000005\r\nhello\r\n0\r\n\r\n"[..]);
        let mut dec = ChunkDecoder::default();
        assert_eq!(&dec.decode(&mut buf).unwrap().unwrap()[..], b"hello");
        assert_eq!(dec.state, ChunkState::Done);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bad_chunk_is_body_error() {
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n"
                    .to_vec(),
            )
        })
        .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        let mut body = r.into_body();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "hello"
        );
        assert!(body.frame().await.unwrap().is_err());
        assert!(body.frame().await.is_none());
        assert_eq!(pool_idle_count(&t), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_until_close_body() {
        let up =
            upstream(|_| Act::ReplyClose(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nall of it".to_vec()))
                .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert!(!r.body().is_end_stream());
        assert_eq!(body_of(r).await.unwrap(), b"all of it");
        assert_eq!(pool_idle_count(&t), 0);
        // HTTP/1.0 without keep-alive, with a length: not reused either
        let up =
            upstream(|_| Act::Reply(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()))
                .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert_eq!(body_of(r).await.unwrap(), b"ok");
        assert_eq!(pool_idle_count(&t), 0);
        // HTTP/1.0 with keep-alive is
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec(),
            )
        })
        .await;
        let t = up.target();
        for _ in 0..2 {
            assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"ok");
        }
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn no_body_responses() {
        let up = upstream(|i| {
            Act::Reply(match i {
                0 => b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n".to_vec(),
                1 => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
                2 => b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n".to_vec(),
                _ => ok("end"),
            })
        })
        .await;
        let t = up.target();
        let r = req(&t, &Method::HEAD, "/", ReqBody::Empty).await.unwrap();
        assert!(r.body().is_end_stream());
        assert_eq!(r.headers()["content-length"], "10");
        assert_eq!(body_of(r).await.unwrap(), b"");
        for status in [204, 304] {
            let r = get(&t).await.unwrap();
            assert_eq!(r.status(), status);
            assert!(r.body().is_end_stream());
            assert_eq!(body_of(r).await.unwrap(), b"");
        }
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"end");
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn interim_responses_skipped_101_rejected() {
        let up = upstream(|i| {
            Act::Reply(if i == 0 {
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
                    .to_vec()
            } else {
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec()
            })
        })
        .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("link").is_none());
        assert_eq!(body_of(r).await.unwrap(), b"ok");
        assert!(matches!(
            get(&t).await,
            Err(UpstreamError::BadResponse("upgrade not supported"))
        ));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connection_close_not_reused() {
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na".to_vec(),
            )
        })
        .await;
        let t = up.target();
        for _ in 0..2 {
            assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"a");
            assert_eq!(pool_idle_count(&t), 0);
        }
        assert_eq!(up.conns(), 2);
        // Connection: close on the request side
        let up = upstream(|_| Act::Reply(ok("b"))).await;
        let t = up.target();
        let mut h = host_headers();
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        for _ in 0..2 {
            let rq = get_root(&h);
            assert_eq!(
                body_of(send(&t, rq, T, T).await.unwrap()).await.unwrap(),
                b"b"
            );
        }
        assert_eq!(up.conns(), 2);
        assert!(String::from_utf8(up.request(0))
            .unwrap()
            .contains("\r\nconnection: close\r\n"));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_conn_closed_by_upstream_is_replaced() {
        // First answer then close (the FIN arrives while the connection sits in the pool).
        let up = upstream(|i| {
            if i == 0 {
                Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1".to_vec())
            } else {
                Act::Reply(ok("2"))
            }
        })
        .await;
        let t = up.target();
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"1");
        assert_eq!(pool_idle_count(&t), 1);
        tokio::time::sleep(Duration::from_millis(50)).await; // let the reactor see the FIN
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"2");
        assert_eq!(up.conns(), 2);
        assert_eq!(up.requests.lock().unwrap().len(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reused_conn_failing_before_response_is_retried() {
        // Request 1 answered; request 2 (on the same, reused connection) gets a reset; the retry
        // on a new connection is answered.
        for rst in [true, false] {
            let up = upstream(move |i| match i {
                0 => Act::Reply(ok("1")),
                1 => Act::Close(rst),
                _ => Act::Reply(ok("3")),
            })
            .await;
            let t = up.target();
            assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"1");
            let r = req(
                &t,
                &Method::POST,
                "/p",
                ReqBody::Full(Bytes::from_static(b"data")),
            )
            .await
            .unwrap();
            assert_eq!(body_of(r).await.unwrap(), b"3");
            assert_eq!(up.conns(), 2);
            assert_eq!(up.request(1), up.request(2));
            assert!(up.request(2).ends_with(b"content-length: 4\r\n\r\ndata"));
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn fresh_conn_failing_is_not_retried() {
        let up = upstream(|_| Act::Close(true)).await;
        let t = up.target();
        assert!(matches!(get(&t).await, Err(UpstreamError::Io(_))));
        assert_eq!(up.conns(), 1);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn malformed_responses() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"HTTP/1.1 2x0 OK\r\n\r\n", "invalid response status"),
            (b"HTTZ/1.1 200 OK\r\n\r\n", "invalid response version"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nab",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "invalid content-length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n",
                "malformed response head",
            ),
            (
                b"HTTP/1.1 200 OK\r\nBad Name: a\r\n\r\n",
                "malformed response head",
            ),
        ];
        for (resp, want) in cases {
            let r = resp.to_vec();
            let up = upstream(move |_| Act::Reply(r.clone())).await;
            match get(&up.target()).await {
                Err(UpstreamError::BadResponse(m)) => {
                    assert_eq!(m, want, "{:?}", String::from_utf8_lossy(resp))
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(resp)),
            }
        }
        // same content-length twice is fine
        let up = upstream(|_| {
            Act::Reply(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nab".to_vec(),
            )
        })
        .await;
        assert_eq!(
            body_of(get(&up.target()).await.unwrap()).await.unwrap(),
            b"ab"
        );
        // huge head
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        while huge.len() < 70_000 {
            huge.extend_from_slice(format!("X-Filler: {}\r\n", "y".repeat(1000)).as_bytes());
        }
        let up = upstream(move |_| Act::Reply(huge.clone())).await;
        assert!(matches!(
            get(&up.target()).await,
            Err(UpstreamError::BadResponse("response head too large"))
        ));
        // too many headers
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let up = upstream(move |_| Act::Reply(many.clone())).await;
        assert!(matches!(
            get(&up.target()).await,
            Err(UpstreamError::BadResponse("too many response headers"))
        ));
        // truncated content-length body
        let up = upstream(|_| {
            Act::ReplyClose(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec())
        })
        .await;
        assert!(body_of(get(&up.target()).await.unwrap()).await.is_err());
        // leftover bytes after the body: not pooled
        let up = upstream(|_| {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naEXTRA".to_vec())
        })
        .await;
        let t = up.target();
        let r = get(&t).await.unwrap();
        assert_eq!(body_of(r).await.unwrap(), b"a");
        assert_eq!(pool_idle_count(&t), 0);
        // TE + CL: chunked wins, not reused
        let up = upstream(|_| {
            Act::Reply(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n".to_vec())
        })
        .await;
        let t = up.target();
        assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"z");
        assert_eq!(pool_idle_count(&t), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_refused() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let t = Target {
            host: "127.0.0.1",
            port,
            tls: None,
        };
        assert!(matches!(get(&t).await, Err(UpstreamError::Connect(_))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn read_timeout() {
        let up = upstream(|_| Act::Hang).await;
        let h = host_headers();
        let rq = get_root(&h);
        let start = std::time::Instant::now();
        let r = send(&up.target(), rq, T, Duration::from_millis(100)).await;
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    /// The response timer is the connection's and outlives a request: on a pooled connection a
    /// longer timeout must push it later (no early fire), and a shorter one must still fire.
    #[tokio::test(flavor = "current_thread")]
    async fn read_timeout_on_a_reused_connection() {
        let slow_head = format!(
            "HTTP/1.1 200 OK\r\nx-pad: {}\r\ncontent-length: 1\r\n\r\nb",
            "p".repeat(100)
        );
        let up = upstream(move |i| match i {
            0 => Act::Reply(ok("a")),
            1 => Act::Trickle(slow_head.clone().into_bytes()), // head takes > 130 ms
            _ => Act::Hang,
        })
        .await;
        let send_with = |read: Duration| {
            let h = host_headers();
            let target = up.target();
            async move {
                let rq = get_root(&h);
                send(&target, rq, T, read).await
            }
        };
        let r = send_with(Duration::from_millis(50)).await.unwrap(); // arms the timer at +50 ms
        assert_eq!(body_of(r).await.unwrap(), b"a");
        let start = std::time::Instant::now();
        let r = send_with(Duration::from_secs(5)).await.unwrap();
        assert!(
            start.elapsed() > Duration::from_millis(100),
            "the head was trickled"
        );
        assert_eq!(body_of(r).await.unwrap(), b"b");
        let start = std::time::Instant::now();
        let r = send_with(Duration::from_millis(100)).await;
        assert!(matches!(r, Err(UpstreamError::Timeout)), "{r:?}");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(up.conns(), 1, "all three went over the pooled connection");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connect_timeout() {
        // No routable black hole is allowed in tests: fill the accept queue of a listener that
        // never accepts, so further SYNs are dropped and connect() hangs.
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let l = sock.listen(0).unwrap();
        let port = l.local_addr().unwrap().port();
        let t = Target {
            host: "127.0.0.1",
            port,
            tls: None,
        };
        let h = host_headers();
        for _ in 0..8 {
            let rq = get_root(&h);
            let start = std::time::Instant::now();
            match send(&t, rq, Duration::from_millis(200), Duration::from_millis(1)).await {
                Err(UpstreamError::ConnectTimeout) => {
                    assert!(start.elapsed() < Duration::from_secs(2));
                    return;
                }
                Err(UpstreamError::Timeout) => {}
                other => panic!("{other:?}"),
            }
            // connected (queued, then read timeout): it stays in the queue; try again
        }
        panic!("accept queue never filled");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_serialization() {
        let up = upstream(|_| Act::Reply(ok(""))).await;
        let t = up.target();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("up.example:8080"));
        h.append("x-multi", HeaderValue::from_static("a"));
        h.append("x-multi", HeaderValue::from_static("b"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999")); // replaced
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        ); // dropped
        let send_one = |m: &'static Method, body: ReqBody| {
            let h = h.clone();
            let t = up.target();
            async move {
                let rq = UpstreamRequest {
                    method: m,
                    path_and_query: "/a/b?x=1",
                    headers: &h,
                    extra: &[],
                    body,
                    batch: false,
                    raw_headers: None,
                };
                body_of(send(&t, rq, T, T).await.unwrap()).await.unwrap();
            }
        };
        send_one(&Method::POST, ReqBody::Full(Bytes::from_static(b"hello"))).await;
        let big = Bytes::from(vec![b'z'; 100_000]);
        send_one(&Method::PUT, ReqBody::Full(big.clone())).await;
        send_one(&Method::DELETE, ReqBody::Empty).await;
        let h2 = host_headers();
        let rq = UpstreamRequest {
            method: &Method::GET,
            path_and_query: "",
            headers: &h2,
            extra: &[],
            body: ReqBody::Full(Bytes::new()),
            batch: false,
            raw_headers: None,
        };
        body_of(send(&t, rq, T, T).await.unwrap()).await.unwrap();
        assert_eq!(
            up.request(0),
            b"POST /a/b?x=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 5\r\n\r\nhello"
        );
        let mut want = b"PUT /a/b?x=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 100000\r\n\r\n".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(up.request(1), want);
        assert_eq!(
            up.request(2),
            b"DELETE /a/b?x=1 HTTP/1.1\r\nhost: up.example:8080\r\nx-multi: a\r\nx-multi: b\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(up.request(3), b"GET / HTTP/1.1\r\nhost: up.example\r\n\r\n");
        assert_eq!(up.conns(), 1);
    }

    async fn exchange(c: &mut TcpStream, req: &'static [u8]) -> Vec<u8> {
        c.write_all(req).await.unwrap();
        let mut buf = Vec::new();
        loop {
            let mut tmp = [0u8; 1024];
            let n = c.read(&mut tmp).await.unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&tmp[..n]);
            if buf.ends_with(b"done") {
                return buf;
            }
        }
    }

    /// Streamed bodies need a real `Incoming`: run a hyper server that forwards to the upstream.
    #[tokio::test(flavor = "current_thread")]
    async fn streamed_request_bodies() {
        use hyper::service::service_fn;
        let up = upstream(|_| Act::Reply(ok("done"))).await;
        let up_port = up.port;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_port = l.local_addr().unwrap().port();
        // Local tasks: a streamed request body stays on its connection's thread.
        let local = tokio::task::LocalSet::new();
        local.spawn_local(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                tokio::task::spawn_local(async move {
                    let svc =
                        service_fn(move |r: http::Request<hyper::body::Incoming>| async move {
                            let (parts, body) = r.into_parts();
                            let mut h = parts.headers.clone();
                            h.remove(header::TRANSFER_ENCODING);
                            let t = Target {
                                host: "127.0.0.1",
                                port: up_port,
                                tls: None,
                            };
                            let rq = UpstreamRequest {
                                method: &parts.method,
                                path_and_query: parts
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |p| p.as_str()),
                                headers: &h,
                                extra: &[],
                                body: ReqBody::Stream(crate::server::h1::ClientBody::H2(body)),
                                batch: false,
                                raw_headers: None,
                            };
                            match send(&t, rq, T, T).await {
                                Ok(resp) => Ok::<_, UpstreamError>(resp),
                                Err(e) => Err(e),
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        let mut c = TcpStream::connect(("127.0.0.1", gw_port)).await.unwrap();
        local
            .run_until(async {
                exchange(
                    &mut c,
                    b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                )
                .await;
                exchange(
                    &mut c,
                    b"PUT /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
                )
                .await;
                exchange(&mut c, b"GET /none HTTP/1.1\r\nHost: x\r\n\r\n").await;
            })
            .await;
        let r0 = String::from_utf8(up.request(0)).unwrap();
        assert!(r0.starts_with("POST /up HTTP/1.1\r\nhost: x\r\n"), "{r0}");
        assert!(
            r0.contains("\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{r0}"
        );
        let body0 = &r0[r0.find("\r\n\r\n").unwrap() + 4..];
        // however hyper split the frames, the decoded content is the same
        let mut dec = ChunkDecoder::default();
        let mut b = BytesMut::from(body0.as_bytes());
        let mut out = Vec::new();
        while let Some(d) = dec.decode(&mut b).unwrap() {
            out.extend_from_slice(&d);
        }
        assert_eq!(dec.state, ChunkState::Done);
        assert_eq!(out, b"hello world");
        assert_eq!(
            up.request(1),
            b"PUT /cl HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc"
        );
        assert_eq!(up.request(2), b"GET /none HTTP/1.1\r\nhost: x\r\n\r\n");
        assert_eq!(up.conns(), 1);
    }

    /// Self-signed (CN=localhost, SAN localhost + 127.0.0.1, valid until 2126), test only.
    const TEST_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBnDCCAUGgAwIBAgIUeAlDOGkLZO28Q9W7xeuJMs3ZJd8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNjAzMjMxOFoYDzIxMjYxMTAy
MDMyMzE4WjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO
PQMBBwNCAAQQQnpc/8mHIgotM9D0vdfMpUzGbQMYJUnMMlmUK4su0rnMo6OJMjMT
3ywfOouG8yQn+V4MN4jK3biVMiWvvKFFo28wbTAdBgNVHQ4EFgQU7UajgIpArAV/
BkSYGa3RJsUOM3AwHwYDVR0jBBgwFoAU7UajgIpArAV/BkSYGa3RJsUOM3AwDwYD
VR0TAQH/BAUwAwEB/zAaBgNVHREEEzARgglsb2NhbGhvc3SHBH8AAAEwCgYIKoZI
zj0EAwIDSQAwRgIhAJLOXJwAD6DlzNcUe5JZO0UkDjOGrpCnQl25lROY3Di/AiEA
mUKlZXbLm+P09Zk+g3Qoex8gMkz1Z7qdumLf8UaEwpM=
-----END CERTIFICATE-----
";
    const TEST_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgCM684ubc6miZdx8r
uhvgpXyg55bxfwC1GtgF5SXVAnqhRANCAAQQQnpc/8mHIgotM9D0vdfMpUzGbQMY
JUnMMlmUK4su0rnMo6OJMjMT3ywfOouG8yQn+V4MN4jK3biVMiWvvKFF
-----END PRIVATE KEY-----
";

    #[tokio::test(flavor = "current_thread")]
    async fn tls_upstream() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let cert = CertificateDer::from_pem_slice(TEST_CERT.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(TEST_KEY.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let conns = Arc::new(AtomicUsize::new(0));
        let c2 = conns.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c2.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut s) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = Vec::new();
                    while let Some(n) = read_request(&mut s, &mut buf).await {
                        buf.drain(..n);
                        s.write_all(&ok("tls")).await.unwrap();
                        s.flush().await.unwrap();
                    }
                });
            }
        });
        for host in ["127.0.0.1", "localhost"] {
            let t = Target {
                host,
                port,
                tls: Some(TlsMode::NoVerify),
            };
            for _ in 0..3 {
                assert_eq!(body_of(get(&t).await.unwrap()).await.unwrap(), b"tls");
            }
        }
        assert_eq!(conns.load(Ordering::SeqCst), 2);
        let t = Target {
            host: "localhost",
            port,
            tls: Some(TlsMode::Verify),
        };
        assert!(matches!(get(&t).await, Err(UpstreamError::Tls(_))));
    }

    /// A response body may end on another thread (see the next test). The `send` future is not
    /// `Send`: a streamed request body reads from its client connection, which lives on the
    /// worker's one thread.
    #[test]
    fn types_are_send() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<UpstreamBody>();
        is_send_sync::<UpstreamError>();
    }

    #[test]
    fn body_dropped_on_other_thread_is_not_pooled() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let up = upstream(|_| Act::Reply(ok("abc"))).await;
            let t = up.target();
            let r = get(&t).await.unwrap();
            let body = std::thread::spawn(move || {
                let mut b = r.into_body();
                // finish it on another thread: must not enter that thread's pool
                let data = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async { b.frame().await.unwrap().unwrap().into_data().unwrap() });
                assert_eq!(
                    pool_idle_count(&Target {
                        host: "127.0.0.1",
                        port: t.port,
                        tls: None
                    }),
                    0
                );
                data
            })
            .join()
            .unwrap();
            assert_eq!(body, "abc");
            assert_eq!(pool_idle_count(&t), 0);
        });
    }

    #[test]
    fn key_hash_differs() {
        let a = key_hash("127.0.0.1", 80, None);
        assert_ne!(a, key_hash("127.0.0.1", 81, None));
        assert_ne!(a, key_hash("127.0.0.1", 80, Some(TlsMode::Verify)));
        assert_ne!(a, key_hash("127.0.0.2", 80, None));
        assert_eq!(a, key_hash("127.0.0.1", 80, None));
    }
}
