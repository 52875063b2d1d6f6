//! A `TcpStream` whose reads and writes are direct system calls. The worker process has Python
//! threads, so glibc sends every `recv`/`send` through its thread-cancellation wrappers (two
//! atomic updates around each call, ~1% of a proxied request's CPU); sockets of the I/O thread
//! are never cancelled. Writes use the socket calls (`sendto`, `sendmsg`), not `writev`: the VFS
//! write path (file position lock, file permission hooks) cost ~0.15 us a call more, ~3% of a
//! proxied request. Readiness is tokio's, exactly as `TcpStream`'s own `poll_read` uses it.
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub struct RawTcp(pub TcpStream);

/// Linux's IOV_MAX: a longer `sendmsg` is refused, so the rest waits for the next call.
const IOV_MAX: usize = 1024;
/// Vectored writes of up to this many bytes in all (a response head and a small body) are copied
/// into one buffer for a plain `send`: cheaper than `sendmsg`'s iovec import, and copying a few
/// hundred cache-hot bytes takes nanoseconds.
const GATHER_MAX: usize = 2048;

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

fn sendmsg(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no address, no control data); `IoSlice` is
    // ABI-compatible with `iovec`, and sendmsg only reads the slices.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(IOV_MAX) as _;
    check(unsafe {
        libc::syscall(
            libc::SYS_sendmsg,
            fd,
            &msg as *const libc::msghdr,
            libc::MSG_NOSIGNAL,
        )
    })
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
        if let [one] = bufs {
            return self.poll_write_with(cx, |fd| send(fd, one));
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > GATHER_MAX {
            return self.poll_write_with(cx, |fd| sendmsg(fd, bufs));
        }
        let mut tmp = [MaybeUninit::<u8>::uninit(); GATHER_MAX];
        let mut n = 0;
        for b in bufs {
            // SAFETY: n + b.len() <= total <= GATHER_MAX, and a stack buffer overlaps no slice.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    b.as_ptr(),
                    tmp.as_mut_ptr().add(n).cast::<u8>(),
                    b.len(),
                )
            };
            n += b.len();
        }
        // SAFETY: the first n bytes were just written.
        let data = unsafe { std::slice::from_raw_parts(tmp.as_ptr().cast::<u8>(), n) };
        self.poll_write_with(cx, |fd| send(fd, data))
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

    /// Vectored writes of every size arrive whole and in order: one slice sent as it is, several
    /// gathered into one `send` (up to GATHER_MAX bytes), or `sendmsg` with more slices than
    /// IOV_MAX and more bytes than the socket buffer takes at once (partial writes).
    #[tokio::test]
    async fn vectored_writes_of_every_size_arrive_in_order() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut all = Vec::new();
            c.read_to_end(&mut all).await.unwrap();
            all
        });
        let mut s = RawTcp(TcpStream::connect(addr).await.unwrap());
        // Slices of 1..=250 bytes, each filled with its index: any loss or reordering shows.
        let parts: Vec<Vec<u8>> = (0..1500usize)
            .map(|i| vec![(i % 251) as u8; i % 250 + 1])
            .collect();
        let mut expected = Vec::new();
        for sizes in [1, GATHER_MAX - 1, GATHER_MAX, GATHER_MAX + 1, usize::MAX] {
            // The leading slices whose total stays within `sizes` (all of them for usize::MAX).
            let (mut k, mut total) = (0, 0);
            while k < parts.len() && total + parts[k].len() <= sizes {
                total += parts[k].len();
                k += 1;
            }
            let mut slices: Vec<IoSlice<'_>> = parts[..k].iter().map(|p| IoSlice::new(p)).collect();
            let mut bufs = &mut slices[..];
            while !bufs.is_empty() {
                let n = s.write_vectored(bufs).await.unwrap();
                assert!(n > 0);
                IoSlice::advance_slices(&mut bufs, n);
            }
            parts[..k]
                .iter()
                .for_each(|p| expected.extend_from_slice(p));
        }
        s.shutdown().await.unwrap();
        let got = reader.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes lost or reordered");
    }
}
