//! One body type for everything the gateway sends: its own short responses, streamed upstream
//! bodies, streams that pass through a Python `body_filter`, and gzip-compressed streams.
use crate::plugins::gzip::GzipBody;
use crate::upstream::UpstreamBody;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

pub use crate::http1::BoxError;

/// Transforms data chunks of a streamed body (the Python `body_filter` chain implements it).
pub trait ChunkFilter: Send {
    fn filter(&mut self, chunk: Bytes, eof: bool) -> Result<Bytes, BoxError>;
}

/// Every variant is one pointer, so a `Response<GwBody>` (moved many times between the service
/// and hyper's encoder) is 128 bytes: moved inline rather than by a `memcpy` call.
pub enum GwBody {
    /// A body made by the gateway (errors, plugin responses): sent in one frame.
    Full(Option<Box<Bytes>>),
    /// A response body streamed from an upstream connection (returns it to the pool at its end).
    Upstream(UpstreamBody),
    /// Passed through a Python `body_filter` chain as it streams.
    Filtered(Box<Filtered>),
    /// Runs a hook once the body is finished or dropped (the `log` phase: after the response is sent).
    Hooked(Box<(GwBody, DropHook)>),
    /// Counts the bytes sent; its meter records metrics and the access log line when dropped.
    Metered(Box<(GwBody, crate::observe::Meter)>),
    /// Compressed as it streams (the `gzip` plugin).
    Gzip(Box<GzipBody<GwBody>>),
}

const _: () = assert!(
    std::mem::size_of::<GwBody>() <= 16,
    "keep GwBody one pointer wide"
);

pub struct Filtered {
    pub inner: GwBody,
    pub filter: Box<dyn ChunkFilter + Send>,
    pub done: bool,
}

pub struct DropHook(pub Option<Box<dyn FnOnce() + Send>>);

impl Drop for DropHook {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

impl GwBody {
    pub fn full(b: impl Into<Bytes>) -> GwBody {
        let b: Bytes = b.into();
        GwBody::Full(if b.is_empty() {
            None
        } else {
            Some(Box::new(b))
        })
    }
    pub fn empty() -> GwBody {
        GwBody::Full(None)
    }
}

/// How `plugins::gzip::apply` wraps a response body it compresses.
impl From<GzipBody<GwBody>> for GwBody {
    fn from(g: GzipBody<GwBody>) -> GwBody {
        GwBody::Gzip(Box::new(g))
    }
}

impl GwBody {
    /// Upstream response header lines to send as they are (see `UpstreamRequest::raw_headers`).
    /// Routes that compress never ask for them.
    pub fn raw_headers(&self) -> Option<(&[u8], bool)> {
        match self {
            GwBody::Upstream(b) => b.raw_headers(),
            GwBody::Hooked(b) => b.0.raw_headers(),
            GwBody::Metered(m) => m.0.raw_headers(),
            GwBody::Filtered(f) => f.inner.raw_headers(),
            GwBody::Full(_) | GwBody::Gzip(_) => None,
        }
    }
}

impl Body for GwBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            GwBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(*b)))),
            GwBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            GwBody::Hooked(b) => Pin::new(&mut b.0).poll_frame(cx),
            GwBody::Gzip(g) => Pin::new(&mut **g).poll_frame(cx),
            GwBody::Metered(m) => {
                let (inner, meter) = &mut **m;
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(f))) = &polled {
                    if let Some(d) = f.data_ref() {
                        meter.body_bytes += d.len() as u64;
                    }
                }
                polled
            }
            GwBody::Filtered(f) => {
                let Filtered {
                    inner,
                    filter,
                    done,
                } = &mut **f;
                if *done {
                    return Poll::Ready(None);
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            let out = filter.filter(data, false)?;
                            Poll::Ready(Some(Ok(Frame::data(out))))
                        }
                        // Trailers pass through untouched.
                        Err(frame) => Poll::Ready(Some(Ok(frame))),
                    },
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                    Poll::Ready(None) => {
                        *done = true;
                        let out = filter.filter(Bytes::new(), true)?;
                        if out.is_empty() {
                            Poll::Ready(None)
                        } else {
                            Poll::Ready(Some(Ok(Frame::data(out))))
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GwBody::Full(b) => b.is_none(),
            GwBody::Upstream(b) => b.is_end_stream(),
            GwBody::Filtered(f) => f.done,
            GwBody::Hooked(b) => b.0.is_end_stream(),
            GwBody::Metered(m) => m.0.is_end_stream(),
            GwBody::Gzip(g) => g.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GwBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            GwBody::Upstream(b) => b.size_hint(),
            // A filter may change the length: no exact hint.
            GwBody::Filtered(_) => SizeHint::default(),
            GwBody::Hooked(b) => b.0.size_hint(),
            GwBody::Metered(m) => m.0.size_hint(),
            GwBody::Gzip(g) => g.size_hint(),
        }
    }
}
