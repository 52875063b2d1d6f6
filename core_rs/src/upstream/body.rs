//! The response body: read from the upstream connection as it is polled.
use super::connect::{poll_read_buf, Conn};
use super::pool::checkin;
use super::UpstreamError;
use crate::http1::{BoxError, ChunkDecoder};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyState {
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
    pub(super) conn: Option<Box<Conn>>,
}

pub(super) fn body_error(msg: &'static str) -> BoxError {
    Box::new(UpstreamError::BadResponse(msg))
}

impl UpstreamBody {
    /// The end was reached: pool or close the connection.
    pub(super) fn finish(&mut self) {
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
                        if dec.is_done() {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Ok(None) => {
                        if dec.is_done() {
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
