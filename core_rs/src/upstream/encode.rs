//! Writing the request: head encoding and the body (in one write, or streamed).
use super::connect::{Conn, Stream};
use crate::http1::{chunk_header, has_close_token, BoxError};
use bytes::Bytes;
use http::header::{self, HeaderName};
use http::{HeaderMap, Method};
use hyper::body::Body;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::time::Duration;
use tokio::io::AsyncWrite;

/// A Full body up to this size is copied after the head (one plain write); larger ones use writev.
pub(super) const COPY_BODY_MAX: usize = 4 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum ReqFraming {
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
pub(super) fn encode_head(
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
            buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        ReqFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
    close
}

pub(super) async fn write_all_vectored(
    io: &mut Stream,
    mut bufs: &mut [IoSlice<'_>],
) -> io::Result<()> {
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

pub(super) async fn flush(io: &mut Stream) -> io::Result<()> {
    poll_fn(|cx| Pin::new(&mut *io).poll_flush(cx)).await
}

/// Write head + (Empty | Full) body. With `batch`, first let the other requests ready in this
/// event-loop turn run, so their upstream writes go out back to back and the upstream wakes once
/// for the batch (waking an idle core is an IPI). That costs a re-poll of the whole connection task
/// (~3k instructions): worth it where a request is slow to prepare (Python plugins: jwt-auth RS256
/// 62 -> 48 us a request), not for plain proxying (no gain measured).
pub(super) async fn write_simple(conn: &mut Conn, body: &Bytes, batch: bool) -> io::Result<()> {
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

pub(super) enum StreamWriteError {
    /// The socket failed; `touched` = a body frame was already taken from the source.
    Io(io::Error, bool),
    Timeout,
    /// The request body source failed, or did not match its Content-Length.
    Body(io::Error),
}

/// Write head + streamed body (the head goes out with the first frame).
pub(super) async fn write_stream<B>(
    conn: &mut Conn,
    body: &mut B,
    framing: ReqFraming,
    write_timeout: Duration,
) -> Result<(), StreamWriteError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

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
}
