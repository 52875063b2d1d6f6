//! The gateway's own HTTP/1.1 server connection (HTTP/2 prior-knowledge connections are handed to
//! hyper).
//!
//! Why not hyper's: its dispatcher, its buffered writer and the moves of its message types were
//! most of the user-space difference to nginx on a proxied request. Here one task reads a head,
//! calls the service in place (no channel, no move of its future), writes the response head with
//! the first body frame in one `writev`, and streams the rest. The framing rules hyper was lenient
//! about are enforced in front of the parser by [`EdgeIo`] (see `edge.rs`): this parser only has
//! to turn what it lets through into requests; where the edge cut the stream, the loop finds the
//! edge's typed reject instead of EOF and answers it (`write_error`, the one writer of the
//! server's own HTTP/1 errors).
//!
//! The connection and the body of its current request share the socket and the read buffer
//! (`Rc<ConnState>`): the service reads the body while the connection task awaits it, and nothing
//! holds a borrow across an await.
use super::edge::{EdgeIo, H2_PREFACE};
use super::idle::Activity;
use super::{error_response, LocalExec, ResponseBody, Service};
use crate::http1::{
    chunk_header, has_close_token, has_token, parse_cl_value, poll_read_into, BoxError,
    ChunkDecoder, Reject,
};
use crate::sys::rawtcp::RawTcp;
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

type Io = EdgeIo<RawTcp>;

/// Socket reads ask for at least this much room ...
const READ_CHUNK: usize = 8 * 1024;
/// ... and reuse the spare capacity of the buffer when at least this much is left.
const MIN_READ: usize = 1024;
/// Header slots on the stack: `Limits::max_headers` is capped at this.
const MAX_HEADERS: usize = 128;
/// A head still incomplete at this size is refused (431). `EdgeIo` refuses heads over the
/// configured limit long before; this only bounds the buffer.
const MAX_BUFFERED_HEAD: usize = 1024 * 1024;
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

const MALFORMED: Reject = Reject::bad("malformed request");
const URI_TOO_LONG: Reject = Reject {
    status: StatusCode::URI_TOO_LONG,
    reason: "request URI too long",
};
const VERSION_NOT_SUPPORTED: Reject = Reject {
    status: StatusCode::HTTP_VERSION_NOT_SUPPORTED,
    reason: "HTTP version not supported",
};

/// The request body of an HTTP/1.1 or an HTTP/2 request.
pub enum ClientBody {
    H1(H1Body),
    H2(Incoming),
}

/// Reads the current request's body from its connection.
pub struct H1Body {
    conn: Rc<ConnState>,
    /// The request this body belongs to: a body kept past its request reads nothing more.
    seq: u64,
}

/// What a connection and its current request body share.
struct ConnState {
    st: RefCell<IoState>,
    /// The worker is draining: finish the request in flight, then close.
    closing: Cell<bool>,
}

struct IoState {
    io: Io,
    rbuf: BytesMut,
    seq: u64,
    body: InBody,
    /// Bytes of the `100 Continue` written so far, while the client waits for it.
    cont: Option<usize>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum InBody {
    Length(u64),
    Chunked(ChunkDecoder),
    Done,
    Failed,
}

fn poll_read_buf(io: &mut Io, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
    poll_read_into(io, cx, buf, READ_CHUNK, MIN_READ)
}

impl IoState {
    /// Write the `100 Continue` the client waits for before it sends the body.
    fn poll_continue(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(done) = self.cont {
            if done == CONTINUE.len() {
                self.cont = None;
                break;
            }
            let k = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[done..]))?;
            if k == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.cont = Some(done + k);
        }
        Poll::Ready(Ok(()))
    }

    /// Take the next piece of the body out of the read buffer, if there is one.
    fn next_data(&mut self) -> Option<Result<Option<Bytes>, &'static str>> {
        match &mut self.body {
            InBody::Done => Some(Ok(None)),
            InBody::Failed => Some(Err("the request body failed earlier")),
            InBody::Length(rem) => {
                if self.rbuf.is_empty() {
                    return None;
                }
                let take = (*rem).min(self.rbuf.len() as u64);
                let data = self.rbuf.split_to(take as usize).freeze();
                *rem -= take;
                if *rem == 0 {
                    self.body = InBody::Done;
                }
                Some(Ok(Some(data)))
            }
            InBody::Chunked(dec) => match dec.decode(&mut self.rbuf) {
                Ok(Some(data)) => {
                    if dec.is_done() {
                        self.body = InBody::Done;
                    }
                    Some(Ok(Some(data)))
                }
                Ok(None) if dec.is_done() => {
                    self.body = InBody::Done;
                    Some(Ok(None))
                }
                Ok(None) => None,
                Err(e) => {
                    self.body = InBody::Failed;
                    Some(Err(e))
                }
            },
        }
    }

    /// Skip what is left of the request body if it is all buffered; false if it is not.
    fn skip_body(&mut self) -> bool {
        loop {
            match self.next_data() {
                Some(Ok(Some(_))) => {}
                Some(Ok(None)) => return true,
                Some(Err(_)) | None => return false,
            }
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut st = self.conn.st.borrow_mut();
        if st.seq != self.seq {
            return Poll::Ready(Some(Err("request body read after its request".into())));
        }
        loop {
            match st.next_data() {
                Some(Ok(Some(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Some(Ok(None)) => return Poll::Ready(None),
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {}
            }
            let st = &mut *st;
            let read = match st.poll_continue(cx) {
                Poll::Ready(Ok(())) => ready!(poll_read_buf(&mut st.io, cx, &mut st.rbuf)),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => return Poll::Pending,
            };
            match read {
                Ok(0) => {
                    st.body = InBody::Failed;
                    // The edge cut the stream inside this body (a bad chunk): say why.
                    let why = st.io.reject().map_or(
                        "client closed the connection before the end of the body",
                        |r| r.reason,
                    );
                    return Poll::Ready(Some(Err(why.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    st.body = InBody::Failed;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn
            .st
            .try_borrow()
            .is_ok_and(|st| st.seq != self.seq || st.body == InBody::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.conn.st.try_borrow().map(|st| (st.seq, st.body)) {
            Ok((seq, InBody::Length(n))) if seq == self.seq => SizeHint::with_exact(n),
            Ok((seq, InBody::Done)) if seq == self.seq => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx),
            ClientBody::H2(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|f| f.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Request head
// ---------------------------------------------------------------------------------------------

/// A parsed request head and what the connection needs to know about it.
struct Head {
    parts: http::request::Parts,
    body: InBody,
    expect_continue: bool,
    keep_alive: bool,
}

enum Next {
    Request(Box<Head>),
    /// The client speaks HTTP/2 (prior knowledge): the buffered bytes start with its preface.
    H2,
    /// A head that cannot be served (or the edge's reject where the stream was cut): answer and
    /// close.
    Bad(Reject),
    /// EOF, a read error, or the worker is draining and no request has started.
    Close,
}

/// A header as offsets into the head (names are built while parsing, values after the head is
/// split off the buffer).
type HeaderAt = (HeaderName, usize, usize);

fn offset(base: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - base.as_ptr() as usize
}

/// Parse one complete head out of `buf`, if it holds one.
fn parse_head(
    buf: &mut BytesMut,
    max_headers: usize,
    found: &mut Vec<HeaderAt>,
    first: bool,
) -> Option<Next> {
    if first && buf.first() == Some(&b'P') {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] == H2_PREFACE[..n] {
            return (n == H2_PREFACE.len()).then_some(Next::H2);
        }
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut slots[..max_headers.min(MAX_HEADERS)]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => return Some(Next::Bad(Reject::TOO_LARGE)),
        Err(httparse::Error::Version) => return Some(Next::Bad(VERSION_NOT_SUPPORTED)),
        Err(_) => return Some(Next::Bad(MALFORMED)),
    };
    let Ok(method) = Method::from_bytes(req.method.unwrap_or("").as_bytes()) else {
        return Some(Next::Bad(MALFORMED));
    };
    let version = if req.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let path = req.path.unwrap_or("");
    let path_at = (offset(buf, path.as_bytes()), path.len());
    let mut body = InBody::Length(0);
    let mut keep_alive = version == Version::HTTP_11;
    let mut expect_continue = false;
    found.clear();
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Some(Next::Bad(MALFORMED));
        };
        let v = h.value;
        // Framing errors (CL + TE, duplicates, codings other than chunked) never get here:
        // `EdgeIo` cut them off; the proxy checks the map once more.
        if name == header::CONTENT_LENGTH {
            match parse_cl_value(v) {
                Some(n) if body == InBody::Length(0) => body = InBody::Length(n),
                _ => return Some(Next::Bad(Reject::bad("invalid Content-Length"))),
            }
        } else if name == header::TRANSFER_ENCODING {
            body = InBody::Chunked(ChunkDecoder::default());
        } else if name == header::CONNECTION {
            if has_close_token(v) {
                keep_alive = false;
            } else if version == Version::HTTP_10 && has_token(v, b"keep-alive") {
                keep_alive = true;
            }
        } else if name == header::EXPECT {
            expect_continue = v.eq_ignore_ascii_case(b"100-continue");
        }
        found.push((name, offset(buf, v), v.len()));
    }
    if body == InBody::Length(0) {
        body = InBody::Done;
    }
    let head = buf.split_to(len).freeze();
    let uri = match Uri::from_maybe_shared(head.slice(path_at.0..path_at.0 + path_at.1)) {
        Ok(u) => u,
        Err(_) if path_at.1 >= u16::MAX as usize - 1 => return Some(Next::Bad(URI_TOO_LONG)),
        Err(_) => return Some(Next::Bad(MALFORMED)),
    };
    let mut headers = HeaderMap::with_capacity(found.len());
    for (name, at, n) in found.drain(..) {
        // SAFETY: httparse accepted the value: no control bytes but HTAB, as HeaderValue requires.
        let value = unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(at..at + n)) };
        headers.append(name, value);
    }
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Some(Next::Request(Box::new(Head {
        parts,
        body,
        expect_continue,
        keep_alive,
    })))
}

impl ConnState {
    fn poll_next(
        &self,
        cx: &mut Context<'_>,
        max_headers: usize,
        found: &mut Vec<HeaderAt>,
    ) -> Poll<Next> {
        let mut st = self.st.borrow_mut();
        let st = &mut *st;
        let first = st.seq == 0;
        loop {
            if !st.rbuf.is_empty() {
                if let Some(next) = parse_head(&mut st.rbuf, max_headers, found, first) {
                    return Poll::Ready(next);
                }
                if st.rbuf.len() > MAX_BUFFERED_HEAD {
                    return Poll::Ready(Next::Bad(Reject::TOO_LARGE));
                }
            } else if self.closing.get() {
                return Poll::Ready(Next::Close);
            }
            match ready!(poll_read_buf(&mut st.io, cx, &mut st.rbuf)) {
                // The edge cut the stream here: its answer is owed now that the requests before
                // the cut are answered.
                Ok(0) => return Poll::Ready(st.io.reject().map_or(Next::Close, Next::Bad)),
                Err(_) => return Poll::Ready(Next::Close),
                Ok(_) => {}
            }
        }
    }

    /// Run the service, but give up when the client closes the connection meanwhile.
    async fn run_watched<F: Future>(&self, mut call: Pin<&mut F>) -> Option<F::Output> {
        poll_fn(|cx| {
            if let Poll::Ready(r) = call.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if self.poll_client_gone(cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the client closed its side. Looked at only while nothing is buffered (as hyper
    /// does): a pipelined request waits in the buffer, and reading stops there. With nothing new
    /// on the socket this costs no system call (the readiness flag is clear).
    fn poll_client_gone(&self, cx: &mut Context<'_>) -> bool {
        let Ok(mut st) = self.st.try_borrow_mut() else {
            return false;
        };
        let st = &mut *st;
        // A stream the edge cut is not a client that left: it waits for its answers.
        if !st.rbuf.is_empty() || st.io.reject().is_some() {
            return false;
        }
        matches!(
            poll_read_buf(&mut st.io, cx, &mut st.rbuf),
            Poll::Ready(Ok(0) | Err(_))
        )
    }

    async fn write_all(&self, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
        IoSlice::advance_slices(&mut bufs, 0);
        while !bufs.is_empty() {
            let n = poll_fn(|cx| {
                let mut st = self.st.borrow_mut();
                Pin::new(&mut st.io).poll_write_vectored(cx, bufs)
            })
            .await?;
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut bufs, n);
        }
        Ok(())
    }

    /// FIN, then read and discard what the client still sends for a while (`EdgeIo` lingers).
    async fn close(&self) {
        let _ = poll_fn(|cx| Pin::new(&mut self.st.borrow_mut().io).poll_shutdown(cx)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------------------------

/// How the response body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// `date: <IMF-fixdate>\r\n`, made once a second.
fn date_line(out: &mut Vec<u8>) {
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = crate::sys::clock::wall();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            let s = httpdate::fmt_http_date(now);
            if s.len() == 29 {
                d.1.copy_from_slice(s.as_bytes());
            }
            d.0 = secs;
        }
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&d.1);
        out.extend_from_slice(b"\r\n");
    });
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Encode the response head into `out`; returns the body framing and whether the connection
/// stays open after this response.
fn encode_head<B: ResponseBody>(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &B,
    head_request: bool,
    version: Version,
    mut keep_alive: bool,
) -> (Framing, bool) {
    let status = parts.status;
    status_line(out, status);
    let mut given_len = None;
    let mut has_date = false;
    let mut has_connection = false;
    for (name, value) in parts.headers.iter() {
        if *name == header::CONTENT_LENGTH {
            given_len = parse_cl_value(value.as_bytes());
            continue;
        }
        if *name == header::TRANSFER_ENCODING {
            continue; // the framing is chosen below
        }
        if *name == header::CONNECTION {
            has_connection = true;
            if has_close_token(value.as_bytes()) {
                keep_alive = false;
            }
        } else if *name == header::DATE {
            has_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some((lines, date)) = body.raw_headers() {
        out.extend_from_slice(lines);
        has_date |= date;
    }
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let framing = if bodiless || head_request {
        // A HEAD response (or a 304) says what a GET would have carried.
        if !bodiless || status == StatusCode::NOT_MODIFIED {
            if let Some(n) = given_len.or(exact.filter(|&n| n > 0 || head_request)) {
                content_length(out, n);
            }
        }
        Framing::None
    } else if let Some(n) = exact.or(given_len) {
        content_length(out, n);
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };
    if !has_date {
        date_line(out);
    }
    if !has_connection {
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        } else if version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

fn content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Write a response; true if the connection can carry another request.
async fn write_response<B: ResponseBody>(
    conn: &ConnState,
    resp: Response<B>,
    wbuf: &mut Vec<u8>,
    head_request: bool,
    version: Version,
    keep_alive: bool,
) -> bool {
    let (parts, mut body) = resp.into_parts();
    wbuf.clear();
    let (framing, keep_alive) = encode_head(wbuf, &parts, &body, head_request, version, keep_alive);
    drop(parts);
    if framing == Framing::None {
        return conn.write_all(&mut [IoSlice::new(wbuf)]).await.is_ok() && keep_alive;
    }
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => u64::MAX,
    };
    let mut head: &[u8] = wbuf;
    loop {
        // The head waits for the first frame (one write for both) unless that frame is not ready.
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await;
        let frame = match polled {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !head.is_empty() {
                    if conn.write_all(&mut [IoSlice::new(head)]).await.is_err() {
                        return false;
                    }
                    head = &[];
                }
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            }
        };
        let frame = match frame {
            None => break,
            Some(Err(_)) => return false, // cut short: the client sees an incomplete body
            Some(Ok(f)) => f,
        };
        let data = match frame.into_data() {
            Ok(d) => d,
            Err(frame) => {
                if let (Framing::Chunked, Ok(trailers)) = (framing, frame.into_trailers()) {
                    let mut t = Vec::with_capacity(64);
                    t.extend_from_slice(b"0\r\n");
                    for (name, value) in trailers.iter() {
                        t.extend_from_slice(name.as_str().as_bytes());
                        t.extend_from_slice(b": ");
                        t.extend_from_slice(value.as_bytes());
                        t.extend_from_slice(b"\r\n");
                    }
                    t.extend_from_slice(b"\r\n");
                    let ok = conn
                        .write_all(&mut [IoSlice::new(head), IoSlice::new(&t)])
                        .await
                        .is_ok();
                    return ok && keep_alive;
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        let written = match framing {
            Framing::Chunked => {
                let mut hdr = [0u8; 18];
                let hl = chunk_header(&mut hdr, data.len());
                let end: &[u8] = if body.is_end_stream() {
                    b"\r\n0\r\n\r\n"
                } else {
                    b"\r\n"
                };
                let ok = conn
                    .write_all(&mut [
                        IoSlice::new(head),
                        IoSlice::new(&hdr[..hl]),
                        IoSlice::new(&data),
                        IoSlice::new(end),
                    ])
                    .await;
                if end.len() > 2 && ok.is_ok() {
                    return keep_alive;
                }
                ok
            }
            _ => {
                if data.len() as u64 > remaining {
                    return false; // longer than its content-length: cut the connection
                }
                remaining -= data.len() as u64;
                conn.write_all(&mut [IoSlice::new(head), IoSlice::new(&data)])
                    .await
            }
        };
        if written.is_err() {
            return false;
        }
        head = &[];
        if remaining == 0 {
            break;
        }
    }
    match framing {
        Framing::Chunked => {
            conn.write_all(&mut [IoSlice::new(head), IoSlice::new(b"0\r\n\r\n")])
                .await
                .is_ok()
                && keep_alive
        }
        Framing::Length(_) => {
            if remaining != 0 {
                return false; // shorter than its content-length
            }
            (head.is_empty() || conn.write_all(&mut [IoSlice::new(head)]).await.is_ok())
                && keep_alive
        }
        _ => {
            let _ = conn.write_all(&mut [IoSlice::new(head)]).await;
            false
        }
    }
}

/// Answer a request the server refuses itself (the edge's rejects, heads the parser refuses):
/// every such HTTP/1 answer is written here, and the connection closes after it.
async fn write_error<B: ResponseBody>(conn: &ConnState, reject: Reject, wbuf: &mut Vec<u8>) {
    let resp: Response<B> = error_response(reject.status, reject.reason);
    write_response(conn, resp, wbuf, false, Version::HTTP_11, false).await;
}

// ---------------------------------------------------------------------------------------------
// Connection
// ---------------------------------------------------------------------------------------------

/// What a connection needs to know besides its socket.
pub struct ConnOpts {
    pub peer: SocketAddr,
    /// Shared with the IO wrapper and the idle timer: requests in flight count as activity.
    pub act: Rc<Activity>,
    /// The parser's header count cap (431 above it).
    pub max_headers: usize,
    /// The response to the request that reaches this count closes the connection.
    pub max_requests: u64,
}

/// One client connection: HTTP/1.1 served here, HTTP/2 handed to hyper.
pub struct Conn {
    shared: Rc<ConnState>,
    fut: Pin<Box<dyn Future<Output = ()>>>,
}

impl Conn {
    pub fn new<S: Service>(
        io: Io,
        svc: Rc<S>,
        h2: Rc<http2::Builder<LocalExec>>,
        opts: ConnOpts,
    ) -> Conn {
        let shared = Rc::new(ConnState {
            st: RefCell::new(IoState {
                io,
                rbuf: BytesMut::with_capacity(READ_CHUNK),
                seq: 0,
                body: InBody::Done,
                cont: None,
            }),
            closing: Cell::new(false),
        });
        let fut = Box::pin(serve(shared.clone(), svc, h2, opts));
        Conn { shared, fut }
    }

    /// Finish the request in flight (if any) and close.
    pub fn graceful_shutdown(&self) {
        self.shared.closing.set(true);
    }
}

impl Future for Conn {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().fut.as_mut().poll(cx)
    }
}

async fn serve<S: Service>(
    conn: Rc<ConnState>,
    svc: Rc<S>,
    h2: Rc<http2::Builder<LocalExec>>,
    opts: ConnOpts,
) {
    let mut found: Vec<HeaderAt> = Vec::new();
    let mut wbuf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = match poll_fn(|cx| conn.poll_next(cx, opts.max_headers, &mut found)).await {
            Next::Request(h) => h,
            Next::H2 => return serve_h2(conn, svc, h2, opts).await,
            Next::Bad(reject) => {
                write_error::<S::Body>(&conn, reject, &mut wbuf).await;
                break;
            }
            Next::Close => break,
        };
        let Head {
            parts,
            body,
            expect_continue,
            keep_alive,
        } = *head;
        let seq = {
            let mut st = conn.st.borrow_mut();
            st.seq += 1;
            st.body = body;
            st.cont = (expect_continue && body != InBody::Done).then_some(0);
            st.seq
        };
        let head_request = parts.method == Method::HEAD;
        let version = parts.version;
        let req = Request::from_parts(
            parts,
            ClientBody::H1(H1Body {
                conn: conn.clone(),
                seq,
            }),
        );
        let in_flight = opts.act.request();
        // The keep-alive request cap: this response says `connection: close`.
        let last = opts.act.requests() >= opts.max_requests;
        let call = std::pin::pin!(svc.call(req, opts.peer));
        let Some(resp) = conn.run_watched(call).await else {
            break; // the client went away: the request was dropped (upstream call cancelled)
        };
        drop(in_flight);
        // Draining: this response says so (`connection: close`).
        let keep_alive = keep_alive && !last && !conn.closing.get();
        let keep = write_response(&conn, resp, &mut wbuf, head_request, version, keep_alive).await;
        if !keep || conn.closing.get() {
            break;
        }
        let mut st = conn.st.borrow_mut();
        // What the service left of the body is skipped if it is here; otherwise (a slow upload,
        // or one still waiting for its `100 Continue`) the connection closes.
        if !st.skip_body() {
            break;
        }
        st.cont = None;
    }
    conn.close().await;
}

/// Request-smuggling checks hyper's HTTP/2 server does not make: refuse anything ambiguous.
fn h2_framing_error(h: &HeaderMap) -> Option<&'static str> {
    let cls = h.get_all(header::CONTENT_LENGTH).iter().count();
    if cls > 1 {
        return Some("multiple Content-Length headers");
    }
    let mut te = h.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => None,
        (Some(_), _) if cls > 0 => Some("both Content-Length and Transfer-Encoding"),
        (Some(v), None) if v.as_bytes().eq_ignore_ascii_case(b"chunked") => None,
        _ => Some("unsupported Transfer-Encoding"),
    }
}

/// The client socket for hyper's HTTP/2 server: the bytes already read come first.
struct ConnIo(Rc<ConnState>);

impl AsyncRead for ConnIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.0.st.borrow_mut();
        if !st.rbuf.is_empty() {
            let k = st.rbuf.len().min(buf.remaining());
            buf.put_slice(&st.rbuf[..k]);
            st.rbuf.advance(k);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut st.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.st.borrow_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0.st.borrow_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.st.borrow_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0.st.borrow_mut().io).poll_shutdown(cx)
    }
}

async fn serve_h2<S: Service>(
    conn: Rc<ConnState>,
    svc: Rc<S>,
    h2: Rc<http2::Builder<LocalExec>>,
    opts: ConnOpts,
) {
    let ConnOpts { peer, act, .. } = opts;
    let service = service_fn(move |req: Request<Incoming>| {
        // A request with ambiguous framing never reaches the service (as `edge` does for HTTP/1).
        let call = match h2_framing_error(req.headers()) {
            None => Ok((act.request(), svc.call(req.map(ClientBody::H2), peer))),
            Some(why) => Err(error_response(StatusCode::BAD_REQUEST, why)),
        };
        async move {
            Ok::<_, Infallible>(match call {
                Ok((in_flight, f)) => {
                    let resp = f.await;
                    drop(in_flight);
                    resp
                }
                Err(resp) => resp,
            })
        }
    });
    let mut h2conn =
        std::pin::pin!(h2.serve_connection(TokioIo::new(ConnIo(conn.clone())), service));
    let mut told = false;
    let _ = poll_fn(|cx| {
        if conn.closing.get() && !told {
            h2conn.as_mut().graceful_shutdown();
            told = true;
        }
        h2conn.as_mut().poll(cx)
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::edge::HeadLimits;
    use crate::server::idle::Activity;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    #[test]
    fn h2_framing_is_checked_on_the_header_map() {
        let map = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                );
            }
            h
        };
        assert_eq!(h2_framing_error(&map(&[("content-length", "3")])), None);
        assert_eq!(
            h2_framing_error(&map(&[("transfer-encoding", "Chunked")])),
            None
        );
        for (pairs, why) in [
            (
                &[("content-length", "3"), ("content-length", "3")][..],
                "multiple Content-Length headers",
            ),
            (
                &[("content-length", "3"), ("transfer-encoding", "chunked")][..],
                "both Content-Length and Transfer-Encoding",
            ),
            (
                &[("transfer-encoding", "gzip")][..],
                "unsupported Transfer-Encoding",
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ][..],
                "unsupported Transfer-Encoding",
            ),
        ] {
            assert_eq!(h2_framing_error(&map(pairs)), Some(why), "{pairs:?}");
        }
    }

    /// The tests' response body: one frame; `streamed` hides its length, so the response is
    /// chunked (close-delimited for HTTP/1.0).
    struct TestBody {
        data: Option<Bytes>,
        streamed: bool,
    }

    impl Body for TestBody {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
        }

        fn is_end_stream(&self) -> bool {
            self.data.is_none()
        }

        fn size_hint(&self) -> SizeHint {
            match &self.data {
                _ if self.streamed => SizeHint::default(),
                Some(d) => SizeHint::with_exact(d.len() as u64),
                None => SizeHint::with_exact(0),
            }
        }
    }

    impl ResponseBody for TestBody {
        fn full(data: Bytes) -> TestBody {
            TestBody {
                data: (!data.is_empty()).then_some(data),
                streamed: false,
            }
        }
    }

    struct TestService {
        dropped: Rc<Cell<bool>>,
    }

    impl Service for TestService {
        type Body = TestBody;

        fn call(
            &self,
            req: Request<ClientBody>,
            _peer: SocketAddr,
        ) -> impl Future<Output = Response<TestBody>> + use<> {
            service(req, self.dropped.clone())
        }
    }

    /// Drops set the flag: shows that an abandoned request's future was dropped.
    struct Dropped(Rc<Cell<bool>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }

    /// Answers `<method> <uri> <body>`; `/stream` without a length, `/hang` never (it flags its
    /// drop), `/unread` without reading the body.
    async fn service(req: Request<ClientBody>, dropped: Rc<Cell<bool>>) -> Response<TestBody> {
        let path = req.uri().path().to_string();
        if path == "/hang" {
            let _guard = Dropped(dropped);
            std::future::pending::<()>().await;
        }
        if path == "/slow" {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (parts, body) = req.into_parts();
        let body = if path == "/unread" {
            Bytes::new()
        } else {
            match body.collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => Bytes::from(format!("body error: {e}")),
            }
        };
        let text = format!(
            "{} {} {}",
            parts.method,
            parts.uri,
            String::from_utf8_lossy(&body)
        );
        let mut body = TestBody::full(Bytes::from(text));
        body.streamed = path == "/stream";
        Response::new(body)
    }

    const HEAD_TIMEOUT: Duration = Duration::from_millis(500);

    /// A server on a free port running `Conn` for each connection; returns the port and the flag
    /// `/hang` sets.
    async fn server() -> (u16, Rc<Cell<bool>>) {
        let (port, dropped, _) = server_with_conns(1000).await;
        (port, dropped)
    }

    /// ... with a keep-alive request cap, and the connections' shared state (to drain them).
    async fn server_with_conns(
        max_requests: u64,
    ) -> (u16, Rc<Cell<bool>>, Rc<RefCell<Vec<Rc<ConnState>>>>) {
        let conns: Rc<RefCell<Vec<Rc<ConnState>>>> = Rc::default();
        let seen = conns.clone();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let dropped = Rc::new(Cell::new(false));
        let flag = dropped.clone();
        let limits = HeadLimits {
            max_line: 8192,
            max_head: 32768,
            timeout: HEAD_TIMEOUT,
        };
        let h2 = Rc::new(http2::Builder::new(LocalExec));
        tokio::task::spawn_local(async move {
            loop {
                let (s, peer) = l.accept().await.unwrap();
                let act = Rc::new(Activity::default());
                let io = EdgeIo::new(RawTcp(s), limits, act.clone());
                let svc = Rc::new(TestService {
                    dropped: dropped.clone(),
                });
                let opts = ConnOpts {
                    peer,
                    act,
                    max_headers: 100,
                    max_requests,
                };
                let conn = Conn::new(io, svc, h2.clone(), opts);
                seen.borrow_mut().push(conn.shared.clone());
                tokio::task::spawn_local(conn);
            }
        });
        (port, flag, conns)
    }

    /// Read until `want` responses ended (by their content-length, or a chunked body's end) or
    /// the connection closed; returns all bytes read.
    async fn read_responses(c: &mut TcpStream, want: usize) -> String {
        let mut buf = Vec::new();
        loop {
            let text = String::from_utf8_lossy(&buf).to_string();
            if complete_responses(&text) >= want {
                return text;
            }
            let mut tmp = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut tmp))
                .await
                .expect("response in time")
                .unwrap();
            if n == 0 {
                return text;
            }
            buf.extend_from_slice(&tmp[..n]);
        }
    }

    fn complete_responses(mut s: &str) -> usize {
        let mut n = 0;
        while let Some(end) = s.find("\r\n\r\n") {
            let head = s[..end].to_ascii_lowercase();
            let rest = &s[end + 4..];
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.parse::<usize>().unwrap());
            let used = if head.starts_with("http/1.1 100") {
                0
            } else if let Some(len) = len {
                if head.starts_with("http/1.1 204") || rest.len() < len {
                    return n + usize::from(rest.len() >= len);
                }
                len
            } else if head.contains("transfer-encoding: chunked") {
                match rest.find("\r\n0\r\n\r\n") {
                    Some(i) => i + 7,
                    None => return n,
                }
            } else {
                0
            };
            n += usize::from(!head.starts_with("http/1.1 100"));
            s = &rest[used..];
        }
        n
    }

    async fn exchange(port: u16, req: &[u8], want: usize) -> (String, bool) {
        let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        c.write_all(req).await.unwrap();
        let text = read_responses(&mut c, want).await;
        // Closed by the server? (a read returns EOF quickly, or times out: still open)
        let mut tmp = [0u8; 16];
        let closed = matches!(
            tokio::time::timeout(Duration::from_millis(300), c.read(&mut tmp)).await,
            Ok(Ok(0)) | Ok(Err(_))
        );
        (text, closed)
    }

    fn run(f: impl Future<Output = ()>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f);
    }

    /// `run` a test against a fresh `server()` on its port.
    fn with_server<F: Future<Output = ()>>(test: impl FnOnce(u16) -> F) {
        run(async {
            let (port, _) = server().await;
            test(port).await;
        });
    }

    #[test]
    fn pipelined_requests_with_bodies_in_order() {
        with_server(|port| async move {
            let (text, closed) = exchange(
                port,
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
                  POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
                  POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                3,
            )
            .await;
            assert!(!closed, "{text}");
            let bodies: Vec<&str> = text
                .split("\r\n\r\n")
                .skip(1)
                .map(|s| s.split("HTTP/1.1").next().unwrap())
                .collect();
            assert_eq!(
                bodies,
                ["GET /a ", "POST /b hello", "POST /c abcde"],
                "{text}"
            );
            assert!(
                text.starts_with("HTTP/1.1 200 OK\r\ncontent-length: 7\r\ndate: "),
                "{text}"
            );
        });
    }

    #[test]
    fn unknown_length_is_chunked_for_1_1_and_close_delimited_for_1_0() {
        with_server(|port| async move {
            let (text, closed) =
                exchange(port, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n", 1).await;
            assert!(!closed);
            assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
            assert!(
                text.ends_with("\r\n\r\nc\r\nGET /stream \r\n0\r\n\r\n"),
                "{text}"
            );
            let (text, closed) = exchange(port, b"GET /stream HTTP/1.0\r\n\r\n", 1).await;
            assert!(closed);
            assert!(text.contains("connection: close\r\n"), "{text}");
            assert!(!text.contains("chunked"), "{text}");
            assert!(text.ends_with("\r\n\r\nGET /stream "), "{text}");
        });
    }

    #[test]
    fn http_1_0_keeps_alive_only_when_asked() {
        with_server(|port| async move {
            let (text, closed) = exchange(port, b"GET /a HTTP/1.0\r\n\r\n", 1).await;
            assert!(closed && text.contains("connection: close\r\n"), "{text}");
            let (text, closed) = exchange(
                port,
                b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                1,
            )
            .await;
            assert!(
                !closed && text.contains("connection: keep-alive\r\n"),
                "{text}"
            );
            let (text, closed) =
                exchange(port, b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n", 1).await;
            assert!(closed && text.contains("connection: close\r\n"), "{text}");
        });
    }

    #[test]
    fn head_response_has_the_length_but_no_body() {
        with_server(|port| async move {
            let (text, closed) = exchange(
                port,
                b"HEAD /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n",
                2,
            )
            .await;
            assert!(!closed);
            let mut parts = text.split("\r\n\r\n");
            assert!(
                parts.next().unwrap().contains("content-length: 8"),
                "{text}"
            );
            assert!(
                parts.next().unwrap().starts_with("HTTP/1.1 200 OK"),
                "{text}"
            );
            assert_eq!(parts.next(), Some("GET /b "), "{text}");
        });
    }

    #[test]
    fn expect_100_continue_is_answered_when_the_body_is_read() {
        with_server(|port| async move {
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(b"POST /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
                .await
                .unwrap();
            let mut tmp = [0u8; 64];
            let n = c.read(&mut tmp).await.unwrap();
            assert_eq!(&tmp[..n], b"HTTP/1.1 100 Continue\r\n\r\n");
            c.write_all(b"data").await.unwrap();
            let text = read_responses(&mut c, 1).await;
            assert!(text.ends_with("POST /up data"), "{text}");
        });
    }

    #[test]
    fn unread_body_is_skipped_when_buffered_else_the_connection_closes() {
        with_server(|port| async move {
            let (text, closed) = exchange(
                port,
                b"POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGET /next HTTP/1.1\r\nHost: x\r\n\r\n",
                2,
            )
            .await;
            assert!(!closed && text.ends_with("GET /next "), "{text}");
            // The body never came: the connection cannot be reused.
            let (text, closed) = exchange(
                port,
                b"POST /unread HTTP/1.1\r\nHost: x\r\nContent-Length: 300\r\n\r\nab",
                1,
            )
            .await;
            assert!(closed && text.ends_with("POST /unread "), "{text}");
        });
    }

    #[test]
    fn bad_heads_get_json_errors_and_close() {
        with_server(|port| async move {
            for (req, status) in [
                (
                    &b"GET /a HTTP/1.1\r\nBad Name: x\r\n\r\n"[..],
                    "400 Bad Request",
                ),
                (b"GET /a HTTP/3.0\r\n\r\n", "505 HTTP Version Not Supported"),
                (
                    b"GET /a HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                    "400 Bad Request",
                ),
            ] {
                let (text, closed) = exchange(port, req, 1).await;
                assert!(closed, "{text}");
                assert!(
                    text.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                    "{text}"
                );
                assert!(text.contains("content-type: application/json"), "{text}");
                assert!(text.ends_with("\"}"), "{text}");
            }
            let many: String = (0..101).map(|i| format!("h{i}: v\r\n")).collect();
            let req = format!("GET /a HTTP/1.1\r\n{many}\r\n");
            let (text, closed) = exchange(port, req.as_bytes(), 1).await;
            assert!(closed && text.starts_with("HTTP/1.1 431 "), "{text}");
        });
    }

    /// The edge's typed rejects: answered after the requests before them, then the connection
    /// closes; the rejected request never reaches the service.
    #[test]
    fn edge_rejects_are_answered_in_order_then_close() {
        with_server(|port| async move {
            let (text, closed) = exchange(
                port,
                b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\nHost: x\r\n\r\n",
                2,
            )
            .await;
            assert!(closed, "{text}");
            let (first, second) = text.split_once("HTTP/1.1 400").expect(&text);
            assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(first.ends_with("GET /a "), "{text}");
            assert!(
                second.contains("content-type: application/json\r\n"),
                "{text}"
            );
            assert!(second.contains("connection: close\r\n"), "{text}");
            assert!(
                second.ends_with("{\"error_msg\":\"bare LF in request head\"}"),
                "{text}"
            );

            let long = format!("GET /c HTTP/1.1\r\nX-Long: {}\r\n\r\n", "a".repeat(9000));
            let (text, closed) = exchange(port, long.as_bytes(), 1).await;
            assert!(closed && text.starts_with("HTTP/1.1 431 "), "{text}");
            assert!(
                text.ends_with("{\"error_msg\":\"request header fields too large\"}"),
                "{text}"
            );

            // A head that does not complete in time: 408 from the connection loop, then close.
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                .await
                .unwrap();
            let started = std::time::Instant::now();
            let text = read_responses(&mut c, 1).await;
            assert!(started.elapsed() >= HEAD_TIMEOUT / 2, "{text}");
            assert!(
                text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
                "{text}"
            );
            assert!(
                text.ends_with("{\"error_msg\":\"request header read timeout\"}"),
                "{text}"
            );
            let mut tmp = [0u8; 8];
            assert_eq!(c.read(&mut tmp).await.unwrap(), 0, "closed after the 408");
        });
    }

    /// The response to the connection's last allowed request says `connection: close`, and the
    /// connection closes after it.
    #[test]
    fn keep_alive_request_cap_closes_after_the_last() {
        run(async {
            let (port, _, _) = server_with_conns(2).await;
            let (text, closed) = exchange(
                port,
                b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
                2,
            )
            .await;
            assert!(closed, "{text}");
            let (first, second) = text.split_once("GET /1 ").expect(&text);
            assert!(!first.contains("connection: close"), "{text}");
            assert!(second.contains("\r\nconnection: close\r\n"), "{text}");
            assert!(second.ends_with("GET /2 "), "{text}");
        });
    }

    #[test]
    fn client_that_leaves_cancels_its_request() {
        run(async {
            let (port, dropped) = server().await;
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(!dropped.get());
            drop(c);
            for _ in 0..50 {
                if dropped.get() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the request of a client that left was not dropped");
        });
    }

    #[test]
    fn draining_finishes_the_request_in_flight_then_closes() {
        run(async {
            let (port, _, conns) = server_with_conns(1000).await;
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            for conn in conns.borrow().iter() {
                conn.closing.set(true);
            }
            let text = read_responses(&mut c, 1).await;
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
            let mut tmp = [0u8; 8];
            assert_eq!(
                c.read(&mut tmp).await.unwrap(),
                0,
                "closed after the response"
            );
        });
    }

    #[test]
    fn h2_preface_goes_to_hyper() {
        with_server(|port| async move {
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            c.write_all(H2_PREFACE).await.unwrap();
            // An empty SETTINGS frame; the server answers with its own SETTINGS (type 4).
            c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
            let mut tmp = [0u8; 9];
            c.read_exact(&mut tmp).await.unwrap();
            assert_eq!(tmp[3], 4, "{tmp:?}");
        });
    }

    #[test]
    fn empty_header_values_are_kept() {
        let mut buf = BytesMut::from(
            &b"GET /a?b=1 HTTP/1.1\r\nX-Empty:\r\nX-Blank:   \r\nHost: h\r\n\r\n"[..],
        );
        let mut found = Vec::new();
        let Some(Next::Request(head)) = parse_head(&mut buf, 100, &mut found, true) else {
            panic!("not parsed");
        };
        assert_eq!(head.parts.uri, "/a?b=1");
        assert_eq!(head.parts.headers["x-empty"], "");
        assert_eq!(head.parts.headers["x-blank"], "");
        assert_eq!(head.parts.headers["host"], "h");
        assert!(buf.is_empty());
    }
}
