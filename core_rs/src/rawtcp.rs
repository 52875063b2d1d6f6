//! A `TcpStream` whose reads and writes are direct system calls. The worker process has Python
//! threads, so glibc sends every `recv`/`writev` through its thread-cancellation wrappers (two
//! atomic updates around each call, ~1% of a proxied request's CPU); sockets of the I/O thread
//! are never cancelled. Readiness is tokio's, exactly as `TcpStream`'s own `poll_read` uses it.
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub struct RawTcp(pub TcpStream);

/// Linux's IOV_MAX: a longer `writev` is refused, so the rest waits for the next call.
const IOV_MAX: usize = 1024;

fn check(r: libc::c_long) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

fn recv(fd: RawFd, buf: &mut [MaybeUninit<u8>]) -> io::Result<usize> {
    // SAFETY: recvfrom writes at most `buf.len()` bytes into `buf`; no address is asked for.
    check(unsafe {
        libc::syscall(
            libc::SYS_recvfrom,
            fd,
            buf.as_mut_ptr(),
            buf.len(),
            0,
            std::ptr::null_mut::<libc::sockaddr>(),
            std::ptr::null_mut::<libc::socklen_t>(),
        )
    })
}

fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sendto reads at most `buf.len()` bytes of `buf`. MSG_NOSIGNAL as std's `write`.
    check(unsafe {
        libc::syscall(
            libc::SYS_sendto,
            fd,
            buf.as_ptr(),
            buf.len(),
            libc::MSG_NOSIGNAL,
            std::ptr::null::<libc::sockaddr>(),
            0,
        )
    })
}

fn writev(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: `IoSlice` is ABI-compatible with `iovec`; writev only reads the slices.
    check(unsafe { libc::syscall(libc::SYS_writev, fd, bufs.as_ptr(), bufs.len().min(IOV_MAX)) })
}

impl RawTcp {
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut op: impl FnMut(RawFd) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let fd = self.0.as_raw_fd();
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_io(Interest::WRITABLE, || op(fd)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncRead for RawTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let s = &self.0;
        let fd = s.as_raw_fd();
        loop {
            ready!(s.poll_read_ready(cx))?;
            let want = buf.remaining();
            // SAFETY: `recv` only writes into the unfilled part; `assume_init` covers what it wrote.
            let unfilled = unsafe { buf.unfilled_mut() };
            let mut got = None;
            let r = s.try_io(Interest::READABLE, || {
                let n = recv(fd, unfilled)?;
                got = Some(n);
                // A short read emptied the socket (epoll is edge-triggered): answer WouldBlock so
                // tokio clears the readiness and the next read waits for an event instead of
                // making a `recv` that fails with EAGAIN (tokio's `poll_read` does the same).
                if 0 < n && n < want {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            if let Some(n) = got {
                // SAFETY: `recv` wrote these `n` bytes.
                unsafe { buf.assume_init(n) };
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            match r {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(e) => return Poll::Ready(Err(e)),
                Ok(_) => unreachable!("a successful recv sets `got`"),
            }
        }
    }
}

impl AsyncWrite for RawTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |fd| send(fd, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |fd| writev(fd, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_writes_and_sees_eof() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let mut got = vec![0u8; 11];
            c.read_exact(&mut got).await.unwrap();
            c.write_all(&vec![7u8; 300_000]).await.unwrap();
            got
        });
        let (s, _) = l.accept().await.unwrap();
        let mut s = RawTcp(s);
        let n = s
            .write_vectored(&[IoSlice::new(b"hello "), IoSlice::new(b"world")])
            .await
            .unwrap();
        assert_eq!(n, 11);
        assert_eq!(client.await.unwrap(), b"hello world");
        // More than one socket buffer: several reads, some short, then EOF.
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        assert_eq!(all.len(), 300_000);
        assert!(all.iter().all(|&b| b == 7));
        s.shutdown().await.unwrap();
    }
}
