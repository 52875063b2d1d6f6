//! The edge limits of an HTTP/1 connection (docs/architecture.md, "Edge limits"), in front of the
//! parser (`h1.rs`, httparse): the framing rules httparse is lenient about (bare LF line endings,
//! obs-fold, CL+TE, duplicate or malformed Content-Length, Transfer-Encoding other than `chunked`,
//! bad chunk sizes), 8 KiB header lines, 32 KiB heads, and a header read timeout that answers 408
//! instead of closing silently.
//!
//! [`EdgeIo`] wraps the client socket and feeds every byte read to [`Scanner`] (`http1/scan.rs`),
//! which knows where each head starts on a keep-alive or pipelined connection and costs a few
//! nanoseconds a head. When a message breaks a rule, the read is cut before the offending message
//! can be parsed, the typed [`Reject`] (status, reason) is kept, and reads report EOF from then on.
//! The connection loop answers the requests before the cut, then finds the reject where it would
//! have found EOF and writes it (`h1::write_error`): the server answers in order, closes the
//! connection, and never dispatches the bad request, so the upstream never sees it. The header
//! timer works the same way: when it fires, reads report EOF with a 408 reject. The parser only
//! ever sees bytes the client sent. HTTP/2 prior-knowledge connections (the 24-byte preface) are
//! not scanned.
use super::idle::Activity;
use crate::http1::{Reject, Scanner};
use http::StatusCode;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub(super) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A head that started arriving was not complete within `HeadLimits::timeout`.
const TIMED_OUT: Reject = Reject {
    status: StatusCode::REQUEST_TIMEOUT,
    reason: "request header read timeout",
};

#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// Longest header field line (name + `:` + value), CRLF excluded. The request line is bounded
    /// by `max_head` only (a long URI gets 414 from the proxy, not 431 from here).
    pub max_line: usize,
    /// Longest request head (request line + header lines + empty line).
    pub max_head: usize,
    /// From the first byte of a head that did not arrive in one read until the head is complete.
    pub timeout: Duration,
}

/// The client socket as the HTTP/1 server sees it: reads pass through [`Scanner`]; writes pass straight through.
pub struct EdgeIo<S> {
    inner: S,
    scan: Scanner,
    limits: HeadLimits,
    /// Bytes of the h2 preface matched so far; > 24 once the connection is known to be HTTP/1.
    preface: usize,
    /// Why the stream was cut: the answer the connection owes once it reaches the cut.
    reject: Option<Reject>,
    /// Reads return EOF from now on.
    eof: bool,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes still to discard after our FIN (lingering close), once shutdown started.
    linger: Option<usize>,
    /// Reads and writes count as activity for the keep-alive idle timeout.
    act: Rc<Activity>,
}

/// After sending FIN, read and discard what the client still sends (up to this much, for up to
/// `LINGER_TIME`) before the socket is closed: closing with unread input sends an RST, and the
/// client's kernel then drops our last response (a 400/431 to a big head, or the `Connection:
/// close` response when more requests were pipelined) before the client reads it.
const LINGER_BYTES: usize = 256 * 1024;
const LINGER_TIME: Duration = Duration::from_secs(2);

impl<S> EdgeIo<S> {
    pub fn new(inner: S, limits: HeadLimits, act: Rc<Activity>) -> EdgeIo<S> {
        EdgeIo {
            inner,
            scan: Scanner::new(limits.max_line, limits.max_head),
            limits,
            preface: 0,
            reject: None,
            eof: false,
            deadline: None,
            sleep: None,
            linger: None,
            act,
        }
    }

    /// The stream was cut here: reads report EOF; the connection owes the client `reject`.
    fn stop(&mut self, reject: Reject) {
        self.scan.off();
        self.reject = Some(reject);
        self.eof = true;
        self.deadline = None;
        self.sleep = None;
    }

    /// Why reads report EOF, when it is not the client's EOF: the connection answers with it
    /// after the requests before the cut.
    pub fn reject(&self) -> Option<Reject> {
        self.reject
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EdgeIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.eof {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => {
                if let Some(d) = this.deadline {
                    let sleep = this
                        .sleep
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(d)));
                    if sleep.deadline() != d {
                        sleep.as_mut().reset(d);
                    }
                    if sleep.as_mut().poll(cx).is_ready() {
                        this.stop(TIMED_OUT);
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {
                this.act.moved();
                if this.scan.is_off() {
                    return Poll::Ready(Ok(()));
                }
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(())); // EOF
                }
                if this.preface < H2_PREFACE.len() {
                    let p = this.preface;
                    let take = (H2_PREFACE.len() - p).min(new.len());
                    if new[..take] == H2_PREFACE[p..p + take] {
                        this.preface += take;
                        if this.preface == H2_PREFACE.len() {
                            this.scan.off(); // HTTP/2 with prior knowledge: h2 has its own framing
                            this.deadline = None;
                            return Poll::Ready(Ok(()));
                        }
                    } else {
                        this.preface = usize::MAX;
                    }
                }
                let heads = this.scan.heads;
                match this.scan.scan(new) {
                    Ok(()) => {
                        if this.scan.heads != heads {
                            this.deadline = None;
                        }
                        if this.scan.in_head() {
                            let now = Instant::now();
                            match this.deadline {
                                None => this.deadline = Some(now + this.limits.timeout),
                                Some(d) if now >= d => {
                                    buf.set_filled(before);
                                    this.stop(TIMED_OUT);
                                }
                                Some(_) => {}
                            }
                        } else {
                            this.deadline = None;
                        }
                    }
                    Err(bad) => {
                        // What follows the cut is never parsed (EOF from here on).
                        buf.set_filled(before + bad.cut);
                        this.stop(bad.reject);
                    }
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for EdgeIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if r.is_ready() {
            this.act.moved();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if r.is_ready() {
            this.act.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            std::task::ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(LINGER_BYTES);
            let d = Instant::now() + LINGER_TIME;
            match &mut this.sleep {
                Some(s) => s.as_mut().reset(d),
                None => this.sleep = Some(Box::pin(tokio::time::sleep_until(d))),
            }
        }
        let mut scratch = [0u8; 4096];
        loop {
            let left = this.linger.unwrap_or(0);
            if left == 0 {
                return Poll::Ready(Ok(()));
            }
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if !rb.filled().is_empty() => {
                    this.linger = Some(left.saturating_sub(rb.filled().len()));
                }
                Poll::Ready(_) => {
                    this.linger = Some(0);
                }
                Poll::Pending => {
                    let expired = this
                        .sleep
                        .as_mut()
                        .is_none_or(|s| s.as_mut().poll(cx).is_ready());
                    if expired {
                        this.linger = Some(0);
                        continue;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}
