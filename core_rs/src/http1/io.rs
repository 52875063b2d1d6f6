//! Reading a socket into a `BytesMut` without zeroing its spare capacity.
use bytes::BytesMut;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// Read into the spare capacity of `buf`, first making room for `chunk` bytes when less than
/// `min` is left (also the client side's reader, `server::h1`).
pub fn poll_read_into<R: AsyncRead + Unpin>(
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
